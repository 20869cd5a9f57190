"""Database: one engine per process, sessions for CLI/tasks (`session_scope`) and routes (`SessionDep`).

SQLite is the embedded default (WAL, foreign keys, busy timeout); PostgreSQL by URL with the same code.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Connection, Engine, MetaData, create_engine, event, make_url, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from suite.core.config import get_settings
from suite.core.errors import DatabaseError

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_BEGIN_OPTION = "suite_sqlite_begin"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def normalise_url(url: str) -> str:
    """Pick our drivers: psycopg 3 for PostgreSQL."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")
    conn.exec_driver_sql("BEGIN DEFERRED" if mode == "DEFERRED" else "BEGIN IMMEDIATE")


def build_engine(url: str, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling breaks SAVEPOINT; emit BEGIN ourselves (SQLAlchemy's recipe).
        # IMMEDIATE takes the write lock up front: a deferred read-then-write transaction fails at once with
        # "database is locked" under WAL instead of waiting out busy_timeout. Readers (requests with safe
        # HTTP methods) ask for DEFERRED through an execution option so they never queue behind writers.
        event.listen(engine, "connect", lambda conn, _rec: setattr(conn, "isolation_level", None))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("connect_args", {"connect_timeout": 5})
    return create_engine(url, **kwargs)


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The process's engine, created on first use (never at import)."""
    return build_engine(get_settings().effective_database_url)


@lru_cache(maxsize=1)
def _sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@lru_cache(maxsize=1)
def _read_sessionmaker() -> sessionmaker[Session]:
    """Sessions that begin DEFERRED on SQLite (no effect elsewhere): for work that does not write."""
    engine = get_engine().execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
    return sessionmaker(bind=engine, expire_on_commit=False)


_override: Connection | None = None
_override_lock = threading.RLock()


@contextmanager
def bind_to(connection: Connection) -> Iterator[None]:
    """Tests: every new session joins `connection`'s transaction via savepoints."""
    global _override
    previous = _override
    _override = connection
    try:
        yield
    finally:
        _override = previous


def new_session(*, read_only: bool = False) -> Session:
    """A session on the process's engine. `read_only` sessions must not write (on SQLite a write there can
    fail with "database is locked" when another writer committed since its first read)."""
    if _override is not None:
        return Session(bind=_override, join_transaction_mode="create_savepoint", expire_on_commit=False)
    return (_read_sessionmaker() if read_only else _sessionmaker())()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error (CLI commands, tasks)."""
    prepare_database()
    session = new_session()
    try:
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        raise DatabaseError(describe_db_error(exc)) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_session(request: Request) -> Iterator[Session]:
    """The request's session: GET/HEAD/OPTIONS read without taking SQLite's write lock; other methods write."""
    session = new_session(read_only=request.method in SAFE_METHODS)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# scope="function": the session commits when the route returns, before the response is sent, so a client
# never sees 201 or a redirect for a write that is not visible yet. Streaming routes open their own sessions.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def describe_db_error(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None) or exc
    reason = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return f"database {safe_url(get_settings().effective_database_url)}: {reason}"


def is_busy_error(exc: BaseException) -> bool:
    """SQLite's "database is locked" / busy: the database is fine, another writer held it too long."""
    text_ = str(getattr(exc, "orig", exc)).lower()
    return "database is locked" in text_ or "database is busy" in text_


def check_connection(engine: Engine | None = None) -> None:
    """Raise DatabaseError when the database does not answer."""
    engine = engine or get_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot connect to {describe_db_error(exc)}") from exc


_prepared = False
_prepare_lock = threading.Lock()


def prepare_database() -> None:
    """Create or upgrade the database to the current heads once per process (serve and one-shot commands)."""
    global _prepared
    if _prepared or _override is not None:
        return
    with _prepare_lock:
        if _prepared:
            return
        from suite.core.migrations import import_models, upgrade

        # Every table in the metadata, so a domain's foreign keys to core tables resolve even when the
        # database is already current and no migration runs.
        import_models()

        check_connection()
        upgrade(get_engine())
        _prepared = True


def reset_engine() -> None:
    """Dispose the cached engine (tests, after a settings change)."""
    global _prepared
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    _sessionmaker.cache_clear()
    _read_sessionmaker.cache_clear()
    _prepared = False
