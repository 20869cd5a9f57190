"""Catalog fixtures: a seeded SQLite template per xdist worker (copied into each test's data dir), a real
uvicorn server on 127.0.0.1, users with tokens, and data-set helpers. No mocks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_port, reset_caches, skip_or_fail

TEMPLATE_LIMIT = 300
RECBOLE_WHEEL_ENV = "SUITE_TEST_RECBOLE_WHEEL"


def wikidata_available() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("bokeh-sampledata")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="session")
def need_wikidata() -> None:
    if not wikidata_available():
        skip_or_fail("bokeh-sampledata==2026.1 is not installed (pip install 'suite[catalog-data]')")


def suite_cmd(*args: str, data_dir: Path, timeout: float = 300, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    full = {
        k: v for k, v in os.environ.items() if not k.startswith("SUITE_") or k == "SUITE_REQUIRE_SERVICES"
    }
    full.update({"SUITE_DATA_DIR": str(data_dir), "SUITE_ENV": "test", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "suite", *args], capture_output=True, text=True, timeout=timeout, env=full
    )


@pytest.fixture(scope="session")
def catalog_template(tmp_path_factory: pytest.TempPathFactory, need_wikidata: None) -> Path:
    """A database seeded with the first 300 Wikidata films (once per xdist worker)."""
    folder = tmp_path_factory.mktemp("catalog-template")
    result = suite_cmd("catalog", "seed", "--limit", str(TEMPLATE_LIMIT), "--json", data_dir=folder)
    assert result.returncode == 0, result.stderr
    return folder / "suite.db"


@pytest.fixture
def catalog_db(catalog_template: Path, suite_env: Path) -> Path:
    """This test's data dir with a copy of the seeded database."""
    suite_env.mkdir(parents=True, exist_ok=True)
    shutil.copy(catalog_template, suite_env / "suite.db")
    reset_caches()
    return suite_env


@dataclass
class Server:
    url: str
    server: Any
    thread: threading.Thread

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


def start_server(app: Any) -> Server:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return Server(f"http://127.0.0.1:{port}", server, thread)


def cookie_login(server: Server, username: str, password: str) -> tuple[httpx.Client, str]:
    """A client logged in with a session cookie, and the session's CSRF token.

    Core's login answers before its transaction commits (its request session ends after the response), so
    the cookie is used only once the session shows up in /api/v1/auth/me.
    """
    client = server.client()
    r = client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while client.get("/api/v1/auth/me").status_code != 200:
        assert time.monotonic() < deadline, "the login session never became visible"
        time.sleep(0.02)
    return client, str(r.json()["csrf_token"])


def stop_server(server: Server) -> None:
    server.server.should_exit = True
    server.thread.join(10)


@pytest.fixture
def catalog_server(catalog_db: Path) -> Iterator[Server]:
    from suite.core.api import create_app

    srv = start_server(create_app(["catalog"]))
    yield srv
    stop_server(srv)


@pytest.fixture
def users(catalog_db: Path) -> dict[str, dict[str, Any]]:
    """admin, editor, alice and bob (role user), each with an API token; plus a read-only scoped token."""
    from suite.core import auth
    from suite.core.db import session_scope

    out: dict[str, dict[str, Any]] = {}
    with session_scope() as session:
        for name, role in (("admin", "admin"), ("editor", "editor"), ("alice", "user"), ("bob", "user")):
            user = auth.create_user(session, username=name, password="correct horse 1", role=role)
            _, token = auth.create_token(session, user=user, name="test")
            out[name] = {"id": user.id, "token": token, "password": "correct horse 1"}
        alice = auth.get_user(session, username="alice")
        _, ro = auth.create_token(session, user=alice, name="ro", scopes=["catalog:read"])
        out["alice"]["read_only_token"] = ro
    return out


def recbole_wheel() -> Path | None:
    candidates = [os.environ.get(RECBOLE_WHEEL_ENV, ""), "/tmp/recbole/recbole-1.2.1-py3-none-any.whl"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def table_counts(db: Path) -> dict[str, int]:
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'catalog_%'"
            )
            if not r[0].endswith(("_data", "_idx", "_docsize", "_config", "_content"))
            and r[0] not in ("catalog_movie_fts", "catalog_person_fts", "catalog_title_trigram")
        ]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


def db_digest(db: Path) -> str:
    """The database's bytes (main file, WAL and shm) after this process has let go of it."""
    import hashlib

    reset_caches()

    h = hashlib.sha256()
    for p in sorted(db.parent.glob(db.name + "*")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str) -> CliResult:
    """`suite ...` in this process (fast; the test's environment and data dir)."""
    import contextlib
    import io

    from suite.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    reset_caches()
    return CliResult(code, out.getvalue(), err.getvalue())
