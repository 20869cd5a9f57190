"""`suite db upgrade | current | revision` in a temp data dir, an unknown revision, idempotent upgrades and
the fresh database that one-shot commands create by themselves."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

import suite
from suite.core.db import get_engine, reset_engine, session_scope
from suite.core.migrations import script_directory, status, upgrade
from suite.core.models import User

VERSIONS = Path(suite.__file__).resolve().parent / "core" / "migrations" / "versions"


def current(run_cli, env: dict[str, str] | None = None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    proc = run_cli("db", "current", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def alembic_rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(row[0] for row in conn.execute("SELECT version_num FROM alembic_version"))


def schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))


def test_upgrade_then_current(run_cli, suite_env: Path) -> None:  # type: ignore[no-untyped-def]
    fresh = current(run_cli)
    assert fresh["current"] == [] and fresh["up_to_date"] is False and fresh["heads"]
    proc = run_cli("db", "upgrade", "--json")
    assert proc.returncode == 0, proc.stderr
    after = json.loads(proc.stdout)
    assert after["up_to_date"] is True and after["heads"] == fresh["heads"]
    # Stamped rows are the leaves: a domain branch that depends on core stands for core's head too.
    assert after["current"] and set(after["current"]) <= set(after["heads"])
    assert all(branch["current"] for branch in after["branches"].values()), after["branches"]
    assert (suite_env / "suite.db").exists()
    assert current(run_cli) == after


def test_upgrade_is_idempotent(run_cli, suite_env: Path) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("db", "upgrade").returncode == 0
    before = schema(suite_env / "suite.db"), alembic_rows(suite_env / "suite.db")
    again = run_cli("db", "upgrade")
    assert again.returncode == 0, again.stderr
    assert (schema(suite_env / "suite.db"), alembic_rows(suite_env / "suite.db")) == before


def test_upgrade_is_idempotent_on_postgres(run_cli, postgres_url: str) -> None:  # type: ignore[no-untyped-def]
    env = {"SUITE_DATABASE_URL": postgres_url}
    for _ in range(2):
        proc = run_cli("db", "upgrade", env=env)
        assert proc.returncode == 0, proc.stderr
    assert current(run_cli, env)["up_to_date"] is True


def test_unknown_revision_is_refused_and_nothing_changes(run_cli, suite_env: Path) -> None:  # type: ignore[no-untyped-def]
    upgrade(get_engine())  # set up in-process; the commands under test run below
    reset_engine()
    path = suite_env / "suite.db"
    with sqlite3.connect(path) as conn:  # as if a newer suite had migrated this database
        conn.execute("DELETE FROM alembic_version")
        conn.execute("INSERT INTO alembic_version (version_num) VALUES ('deadbeefcafe')")
    stamped, tables = alembic_rows(path), schema(path)
    for command in (("db", "current"), ("db", "upgrade")):
        proc = run_cli(*command)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(
            "error: the database is at revision deadbeefcafe, which this version of suite"
        )
    assert alembic_rows(path) == stamped and schema(path) == tables  # nothing half-written


def package_copy(tmp_path: Path) -> Path:
    """A private copy of the `suite` package to write a revision into.

    `suite db revision` writes into the package's own versions folder. Doing that in the real tree while other
    xdist workers migrate their databases would hand them a new head that vanishes when this test cleans up,
    leaving their databases stamped at an unknown revision. The copy runs the very same code.
    """
    root = tmp_path / "pkg"
    shutil.copytree(
        Path(suite.__file__).resolve().parent, root / "suite", ignore=shutil.ignore_patterns("__pycache__")
    )
    return root


def test_revision_lands_in_the_core_versions_folder(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    real_before = sorted(p.name for p in VERSIONS.iterdir())
    root = package_copy(tmp_path)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    versions = root / "suite" / "core" / "migrations" / "versions"
    core_head = script_directory().get_revision("core@head").revision  # the copy has the same scripts
    written: list[Path] = []
    try:
        proc = run_cli("db", "revision", "--domain", "core", "-m", "add widgets", "--empty", env=env)
        assert proc.returncode == 0, proc.stderr
        match = re.search(r"wrote (\S+\.py)", proc.stderr)
        assert match, proc.stderr
        written.append(Path(match[1]))
        new = written[0]
        assert new.parent == versions and new.name.endswith("_add_widgets.py")
        source = new.read_text()
        assert (
            "add widgets" in source and f"down_revision: str | Sequence[str] | None = {core_head!r}" in source
        )
        new_rev = re.search(r"^revision: str = '(\w+)'", source, re.M)
        assert new_rev
        # The new revision is core's head now, and upgrade applies it.
        proc = run_cli("db", "upgrade", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["branches"]["core"] == {"head": new_rev[1], "current": True}
    finally:
        for path in written:
            path.unlink(missing_ok=True)
    assert not list(versions.glob("*_add_widgets.py"))
    assert sorted(p.name for p in VERSIONS.iterdir()) == real_before  # the real tree was never touched


def test_revision_for_an_unknown_domain_is_a_usage_error(run_cli) -> None:  # type: ignore[no-untyped-def]
    proc = run_cli("db", "revision", "--domain", "nope", "-m", "x", "--empty")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown domain 'nope'; known: ")
    assert sorted(p.name for p in VERSIONS.glob("*_x.py")) == []


def test_one_shot_work_creates_a_fresh_database(suite_env: Path) -> None:
    assert not (suite_env / "suite.db").exists()
    with session_scope() as session:  # what every one-shot command and task opens
        assert session.scalar(select(func.count()).select_from(User)) == 0
    assert (suite_env / "suite.db").exists()
    assert status(get_engine())["up_to_date"] is True


@pytest.mark.parametrize("command", [("db", "current"), ("db", "upgrade")])
def test_db_commands_with_a_bad_url_exit_1(run_cli, command: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    proc = run_cli(*command, env={"SUITE_DATABASE_URL": "sqlite:////proc/no/such/dir/suite.db"})
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: ")
