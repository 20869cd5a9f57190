"""The database layer on SQLite and PostgreSQL: one cached engine, SQLite pragmas, CRUD, rollback, savepoints,
the per-test savepoint recipe, constraint names from the naming convention and table prefixes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from suite.core import db
from suite.core.db import Base, build_engine, get_engine, session_scope
from suite.core.migrations import import_models
from suite.core.models import ApiToken, User
from suite.core.plugins import load_domain_specs


def test_engine_not_created_at_import(suite_env: Path) -> None:
    code = (
        "import json, suite.core.db as db, suite.core.config as c\n"
        "print(json.dumps([db.get_engine.cache_info().currsize, c.get_settings.cache_info().currsize]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(proc.stdout) == [0, 0]  # neither engine nor settings exist after import
    assert not suite_env.exists()  # and nothing was written to the data dir


def test_engine_is_cached_per_process(suite_env: Path) -> None:
    engine = get_engine()
    assert get_engine() is engine
    assert engine.url.database == str(suite_env / "suite.db")
    db.reset_engine()
    assert get_engine() is not engine


def test_sqlite_pragmas_on_a_file_database(tmp_path: Path) -> None:
    engine = build_engine(f"sqlite:///{tmp_path / 'nested' / 'x.db'}")  # parent folders are created
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == db.SQLITE_BUSY_TIMEOUT_MS
        with engine.connect() as other:  # every pooled connection, not just the first
            assert other.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        engine.dispose()
    assert (tmp_path / "nested" / "x.db-wal").exists() or (tmp_path / "nested" / "x.db").exists()


def _user(name: str) -> User:
    return User(username=name, password_hash="not-a-real-hash")


def test_crud(any_db_session: Session) -> None:
    session = any_db_session
    user = _user("crud-alice")
    session.add(user)
    session.flush()
    assert user.id is not None and user.role == "user" and user.is_active is True
    user.email = "alice@example.org"
    session.flush()
    session.expire_all()
    loaded = session.scalar(select(User).where(User.username == "crud-alice"))
    assert loaded is not None and loaded.email == "alice@example.org"
    session.delete(loaded)
    session.flush()
    assert session.scalar(select(User).where(User.username == "crud-alice")) is None


def test_rollback_and_savepoints(any_db_session: Session) -> None:
    session = any_db_session
    session.add(_user("sp-kept"))
    session.flush()
    savepoint = session.begin_nested()
    session.add(_user("sp-dropped"))
    session.flush()
    savepoint.rollback()
    names = set(session.scalars(select(User.username).where(User.username.like("sp-%"))))
    assert names == {"sp-kept"}
    # A constraint failure inside a savepoint leaves the outer transaction usable.
    with pytest.raises(IntegrityError), session.begin_nested():
        session.add(_user("sp-kept"))  # unique username
        session.flush()
    assert session.scalar(select(func.count()).select_from(User).where(User.username == "sp-kept")) == 1


def test_foreign_keys_enforced(any_db_session: Session) -> None:
    session = any_db_session
    with pytest.raises(IntegrityError), session.begin_nested():
        session.add(ApiToken(user_id=987654, name="t", prefix="st_x", token_hash="h" * 64, scopes=[]))
        session.flush()
    # ON DELETE CASCADE works on both databases (SQLite needs foreign_keys=ON for it).
    user = _user("fk-owner")
    session.add(user)
    session.flush()
    session.add(ApiToken(user_id=user.id, name="t", prefix="st_y", token_hash="k" * 64, scopes=["a"]))
    session.flush()
    session.execute(text("DELETE FROM core_user WHERE id = :id"), {"id": user.id})
    assert session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.user_id == user.id)) == 0


@pytest.mark.xdist_group("db-leak-check")
@pytest.mark.parametrize("attempt", [1, 2])
def test_committed_rows_do_not_leak_into_the_next_test(any_db_session: Session, attempt: int) -> None:
    """Both runs start clean and commit the same row (through session_scope, as code under test does, and
    through the fixture's own session); if the savepoint recipe leaked, the second run would find it."""
    session = any_db_session
    assert session.scalar(select(User).where(User.username.in_(["leak-a", "leak-b"]))) is None
    with session_scope() as inner:  # joins the test's transaction through a savepoint
        inner.add(_user("leak-a"))
    session.add(_user("leak-b"))
    session.commit()  # releases the savepoint only: the outer transaction is rolled back after the test
    assert set(session.scalars(select(User.username).where(User.username.like("leak-%")))) == {
        "leak-a",
        "leak-b",
    }


def test_constraint_names_follow_the_convention() -> None:
    import_models()
    for table in Base.metadata.sorted_tables:
        assert table.primary_key.name == f"pk_{table.name}"
        for constraint in table.constraints:
            name = str(constraint.name)
            kind = type(constraint).__name__
            prefix = {"ForeignKeyConstraint": "fk_", "UniqueConstraint": "uq_", "CheckConstraint": "ck_"}.get(
                kind
            )
            if prefix:
                assert name.startswith(f"{prefix}{table.name}_"), (table.name, kind, name)
        for index in table.indexes:
            assert str(index.name).startswith(f"ix_{table.name}_"), (table.name, index.name)


def test_constraint_names_in_a_real_postgres_database(postgres_engine: Engine) -> None:
    inspector = inspect(postgres_engine)
    assert inspector.get_pk_constraint("core_user")["name"] == "pk_core_user"
    assert {fk["name"] for fk in inspector.get_foreign_keys("core_api_token")} == {
        "fk_core_api_token_user_id_core_user"
    }
    assert "uq_core_user_username" in {uq["name"] for uq in inspector.get_unique_constraints("core_user")}


def test_every_table_is_prefixed_by_its_domain() -> None:
    import_models()
    prefixes = {"core", *(spec.name for spec in load_domain_specs())}
    stray = [
        name for name in Base.metadata.tables if name.split("_", 1)[0] not in prefixes or "_" not in name
    ]
    assert stray == []


def test_session_scope_rolls_back_on_error(db_session: Session) -> None:
    with pytest.raises(RuntimeError), session_scope() as session:
        session.add(_user("scope-rolled-back"))
        session.flush()
        raise RuntimeError("boom")
    assert db_session.scalar(select(User).where(User.username == "scope-rolled-back")) is None
