"""Statements on `core_job` and the connections they run on: short transactions of their own, no ORM session.

Job rows are inserted in batches (`insert_jobs`, rows.py's writer) with ON CONFLICT: a consumer may have made
the row first (`job_stub`), and the producer's insert then sets only what it knows better (`job_upsert`). A
consumer saves its jobs' states in batches too (state.py). Both go through `job_writes`: on a SQLite file, on
connections kept for them, each statement compiled once by SQLAlchemy and the values through the column
types' bind processors, which costs a fraction of a Core execution and stores the same values. Elsewhere
(PostgreSQL, tests' bound connection) it is a Core executemany.
"""

from __future__ import annotations

import functools
import operator
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Dialect,
    Engine,
    Executable,
    Insert,
    Table,
    Update,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import OperationalError

from suite.core import db
from suite.core.db import (
    SQLITE_BUSY_TIMEOUT_MS,
    describe_db_error,
    get_engine,
    prepare_database,
    session_scope,
)
from suite.core.errors import DatabaseError
from suite.core.models import Job

T = TypeVar("T")

PENDING_STATES = ("queued", "retrying")
JOB_TABLE = cast(Table, Job.__table__)
MAX_IDLE_KEPT = 8
MAX_IDS_PER_QUERY = 500


@functools.lru_cache(maxsize=64)
def update_stmt(
    from_states: tuple[str, ...],
    keys: tuple[str, ...],
    *,
    start: bool = False,
    unless_cancelled: bool = False,
) -> Update:
    """UPDATE core_job SET <keys> WHERE id = :b_id AND state IN <from_states>, built once per shape.

    `start`: the run's start too (one more attempt; `started_at` stays the first run's, else :b_started;
    the worker running it, :b_worker).
    Parameters are `b_<key>`; no expanding IN, so one statement can save many jobs (executemany).
    """
    cols = JOB_TABLE.c
    stmt = update(JOB_TABLE).where(cols.id == bindparam("b_id"), or_(*(cols.state == s for s in from_states)))
    if unless_cancelled:
        stmt = stmt.where(cols.cancel_requested.is_(False))
    values: dict[str, Any] = {key: bindparam(f"b_{key}", type_=cols[key].type) for key in keys}
    if start:
        values["attempts"] = cols.attempts + 1
        values["started_at"] = func.coalesce(
            cols.started_at, bindparam("b_started", type_=cols.started_at.type)
        )
        values["worker_id"] = bindparam("b_worker", type_=cols.worker_id.type)
    return stmt.values(values)


@contextmanager
def write_connection(*, busy_timeout_ms: int | None = None) -> Iterator[Connection]:
    """A connection in its own transaction for one short write, committed when the block ends: no ORM
    session (or the test's connection under `db.bind_to`). Database errors come out as DatabaseError.

    On SQLite the write lock is waited for as in `when_unlocked`; with `busy_timeout_ms`, by SQLite for at
    most that long instead.
    """
    engine = _engine()
    if engine is None:  # tests: into the test's connection
        with session_scope() as session:
            yield session.connection()
        return
    try:
        with engine.connect() as conn:
            driver = conn.connection.driver_connection if conn.dialect.name == "sqlite" else None
            if driver is None:
                with conn.begin():
                    yield conn
                return
            driver.execute(f"PRAGMA busy_timeout={busy_timeout_ms or 0}")  # before BEGIN, which waits
            try:
                with conn.begin() if busy_timeout_ms else when_unlocked(conn.begin):
                    yield conn
            finally:
                driver.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    except OperationalError as exc:
        raise DatabaseError(describe_db_error(exc)) from exc


def when_unlocked(
    begin: Callable[[], T],
    timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    *,
    delay: float = 0.0001,
    max_delay: float = 0.002,
) -> T:
    """`begin()` (a BEGIN IMMEDIATE on a connection whose busy timeout is 0), retried every 0.1-2 ms (`delay`,
    doubling up to `max_delay`) while another writer holds SQLite's lock, for as long as the usual busy
    timeout (or `timeout_ms`). SQLite's own busy handler sleeps 1 ms, then 2, 5, 10...: long next to the
    short transactions of job rows."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            return begin()
        except (sqlite3.OperationalError, OperationalError) as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, max_delay)


def execute(stmt: Update, params: dict[str, Any]) -> bool:
    """One statement in its own short transaction; True when it changed one row."""
    with write_connection() as conn:
        return cast(CursorResult[Any], conn.execute(stmt, params)).rowcount == 1


def insert_job(row: dict[str, Any]) -> None:
    """Insert one job row (every column but `result`) in its own committed transaction."""
    insert_jobs([row])


def insert_jobs(rows: list[dict[str, Any]]) -> None:
    """Insert job rows (every column but `result`) in one committed transaction: `job_upsert`, so a row a
    consumer made first keeps its state."""
    with job_writes() as writes:
        writes.executemany(job_upsert(writes.dialect), rows)


class JobWrites:
    """One short write transaction on job rows: Core statements, each with many rows at once."""

    dialect: Dialect

    def executemany(self, stmt: Executable, rows: list[dict[str, Any]]) -> int:
        """Run `stmt` once per row (bind names as keys); the rows it changed."""
        raise NotImplementedError

    def states(self, ids: list[str]) -> dict[str, str]:
        """The states of the rows of `ids` that exist."""
        raise NotImplementedError


class _CoreWrites(JobWrites):
    def __init__(self, conn: Connection) -> None:
        self.conn, self.dialect = conn, conn.dialect

    def executemany(self, stmt: Executable, rows: list[dict[str, Any]]) -> int:
        result = cast(CursorResult[Any], self.conn.execute(stmt, rows))
        return result.rowcount if len(rows) == 1 or self.dialect.supports_sane_multi_rowcount else -1

    def states(self, ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(ids), MAX_IDS_PER_QUERY):
            stmt = select(JOB_TABLE.c.id, JOB_TABLE.c.state).where(
                JOB_TABLE.c.id.in_(ids[i : i + MAX_IDS_PER_QUERY])
            )
            found.update({row.id: row.state for row in self.conn.execute(stmt)})
        return found


class _SqliteWrites(JobWrites):
    """On a connection of `_kept`: statements compiled once (`_compiled`), values through the column types'
    bind processors, as a Core execution would, for a fraction of its cost."""

    def __init__(self, raw: sqlite3.Connection, dialect: Dialect) -> None:
        self.raw, self.dialect = raw, dialect

    def executemany(self, stmt: Executable, rows: list[dict[str, Any]]) -> int:
        compiled = _compiled(stmt, self.dialect)
        args = compiled.args(rows)
        try:
            if len(args) == 1:
                cursor = self.raw.execute(compiled.sql, args[0])
            else:
                cursor = self.raw.executemany(compiled.sql, args)
        except sqlite3.Error as exc:
            raise OperationalError(compiled.sql, args[:1], exc) from exc
        return cursor.rowcount

    def states(self, ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(ids), MAX_IDS_PER_QUERY):
            chunk = ids[i : i + MAX_IDS_PER_QUERY]
            sql = f"SELECT id, state FROM {JOB_TABLE.name} WHERE id IN ({','.join('?' * len(chunk))})"
            found.update(self.raw.execute(sql, chunk).fetchall())
        return found


@contextmanager
def job_writes(*, busy_timeout_ms: int | None = None) -> Iterator[JobWrites]:
    """A short write transaction for job rows, committed when the block ends. On a SQLite file, on a kept
    connection (`_kept`), the write lock waited for as in `when_unlocked` (at most `busy_timeout_ms` when
    given); elsewhere `write_connection`. Database errors come out as DatabaseError."""
    engine = _engine()
    path = None if engine is None else _sqlite_file(engine)
    if engine is None or path is None:
        with write_connection(busy_timeout_ms=busy_timeout_ms) as conn:
            yield _CoreWrites(conn)
        return
    raw = _kept.take(engine, path)
    try:
        try:
            when_unlocked(lambda: raw.execute("BEGIN IMMEDIATE"), busy_timeout_ms or SQLITE_BUSY_TIMEOUT_MS)
        except sqlite3.Error as exc:
            raise OperationalError("BEGIN IMMEDIATE", (), exc) from exc
        try:
            yield _SqliteWrites(raw, engine.dialect)
        except BaseException:
            raw.execute("ROLLBACK")
            raise
        try:
            raw.execute("COMMIT")
        except sqlite3.Error as exc:
            raise OperationalError("COMMIT", (), exc) from exc
    except OperationalError as exc:
        raw.close()
        raise DatabaseError(describe_db_error(exc)) from exc
    except BaseException:
        raw.close()
        raise
    _kept.give(engine, raw)


Processor = Callable[[Any], Any]


class _Compiled:
    """A statement compiled for SQLite once, and how a row (a dict by bind name) becomes its parameters: the
    row's values, the statement's own constants (literals such as `state = 'queued'`), each through its
    type's bind processor as a Core execution would."""

    def __init__(self, stmt: Executable, dialect: Dialect) -> None:
        compiled = cast(Any, stmt).compile(dialect=dialect)
        names: list[str] = list(compiled.positiontup or [])
        self.sql: str = compiled.string
        self._constants: dict[str, Any] = {}
        processors: list[tuple[int, Processor, Any]] = []
        for i, name in enumerate(names):
            param = compiled.binds[name]
            process = _fast(param.type.dialect_impl(dialect).bind_processor(dialect))
            if not param.required:
                value = param.effective_value
                self._constants[name] = value if process is None else process(value)
            elif process is not None:
                processors.append((i, process, process(None)))
        self._processors = tuple(processors)
        get = operator.itemgetter(*names) if names else (lambda row: ())
        self._get: Callable[[dict[str, Any]], Any] = (lambda row: (get(row),)) if len(names) == 1 else get

    def args(self, rows: list[dict[str, Any]]) -> list[Any]:
        get, constants = self._get, self._constants
        if constants:
            rows = [{**row, **constants} for row in rows]
        if not self._processors:
            return [get(row) for row in rows]
        args = []
        for row in rows:
            values = list(get(row))
            for i, process, none in self._processors:
                value = values[i]
                values[i] = none if value is None else process(value)
            args.append(values)
        return args


@functools.lru_cache(maxsize=64)
def _compiled(stmt: Executable, dialect: Dialect) -> _Compiled:
    return _Compiled(stmt, dialect)


_SAMPLES = (datetime(2024, 5, 6, 7, 8, 9, 123456), datetime(2024, 5, 6, 7, 8, 9))


def _fast(process: Processor | None) -> Processor | None:
    """SQLite's DateTime processor (a %-format of seven fields) as `isoformat`, where it gives the same text."""
    try:
        same = process is not None and all(process(d) == d.isoformat(" ", "microseconds") for d in _SAMPLES)
    except Exception:
        same = False
    if not same or process is None:
        return process
    slow = process

    def fast(value: Any) -> Any:
        if value.__class__ is datetime and value.tzinfo is None:
            return value.isoformat(" ", "microseconds")
        return slow(value)

    return fast


def _sqlite_file(engine: Engine) -> str | None:
    """The file of a SQLite engine (None: not SQLite, or a memory or URI database)."""
    database = engine.url.database
    if (
        engine.dialect.name != "sqlite"
        or not database
        or database == ":memory:"
        or database.startswith("file:")
    ):
        return None
    return database


class _Kept:
    """SQLite connections kept for writes of job rows, beside the engine's pool: busy timeout 0 for good (the
    lock is waited for by `when_unlocked`), so a batch is BEGIN, its statements, COMMIT and nothing else."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def take(self, engine: Engine, path: str) -> sqlite3.Connection:
        with self._lock:
            if self._engine is not engine:  # a new engine (settings changed): the old file's go
                for old in self._idle:
                    old.close()
                self._idle, self._engine = [], engine
            if self._idle:
                return self._idle.pop()
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        for pragma in ("foreign_keys=ON", "synchronous=NORMAL", "busy_timeout=0"):  # db.py's, but the timeout
            conn.execute(f"PRAGMA {pragma}")
        return conn

    def give(self, engine: Engine, conn: sqlite3.Connection) -> None:
        with self._lock:
            if self._engine is engine and len(self._idle) < MAX_IDLE_KEPT:
                self._idle.append(conn)
                return
        conn.close()


_kept = _Kept()


def bound() -> bool:
    """Whether writes go into a test's connection (`db.bind_to`)."""
    return db._override is not None


def _engine() -> Engine | None:
    """The process's engine, or None under `db.bind_to` (tests: writes go into the test's connection)."""
    prepare_database()
    return None if db._override is not None else get_engine()  # _override: db.bind_to's connection


# What the producer of a job knows better than a consumer that made its row first (never its state).
PRODUCER_KEYS = ("domain", "name", "owner_id", "max_retries", "params", "created_at")


def _row_insert(dialect: Dialect) -> Any:
    """INSERT of every column but `result` (left out: SQL NULL, not JSON null), in the dialect's own form
    (ON CONFLICT). An owner that no longer exists is left out (NULL), so one such row never blocks a batch."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect_insert: Callable[[Table], Any]
    if dialect.name == "postgresql":
        dialect_insert = postgresql.insert
    elif dialect.name == "sqlite":
        dialect_insert = sqlite.insert
    else:
        raise DatabaseError(f"job rows need SQLite or PostgreSQL, not {dialect.name}")
    from suite.core.models import User

    values: dict[str, Any] = {
        c.name: bindparam(c.name, type_=c.type) for c in JOB_TABLE.c if c.name != "result"
    }
    owner = bindparam("owner_id", type_=JOB_TABLE.c.owner_id.type)
    values["owner_id"] = select(User.id).where(User.id == owner).scalar_subquery()
    return dialect_insert(JOB_TABLE).values(values)


@functools.lru_cache(maxsize=4)
def job_upsert(dialect: Dialect) -> Insert:
    """The producer's insert: a row that exists (a consumer made it) gets PRODUCER_KEYS only."""
    stmt = _row_insert(dialect)
    return cast(
        Insert,
        stmt.on_conflict_do_update(
            index_elements=[JOB_TABLE.c.id], set_={k: stmt.excluded[k] for k in PRODUCER_KEYS}
        ),
    )


@functools.lru_cache(maxsize=4)
def job_stub(dialect: Dialect) -> Insert:
    """A consumer's insert of a queued row it found missing: nothing when the row exists."""
    return cast(Insert, _row_insert(dialect).on_conflict_do_nothing(index_elements=[JOB_TABLE.c.id]))
