"""Shared fixtures: settings on a temp data dir, databases (SQLite per xdist worker with a savepoint per test,
PostgreSQL from SUITE_TEST_POSTGRES_URL), a real redis-server on a free port, Huey immediate mode.

Tests that need Redis or PostgreSQL skip when absent, and fail instead when SUITE_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE_SERVICES = os.environ.get("SUITE_REQUIRE_SERVICES") == "1"
POSTGRES_URL = os.environ.get("SUITE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def skip_or_fail(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (SUITE_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "gw0")


def reset_caches() -> None:
    from suite.core import config, db

    db.reset_engine()
    config.reset_settings()
    web_auth = sys.modules.get("suite.core.web_auth")
    if web_auth is not None:
        web_auth.reset_rate_limits()
    for name in ("suite.core.tasks", "suite.core.events", "suite.core.llm", "suite.core.web"):
        module = sys.modules.get(name)
        reset = getattr(module, "reset", None)
        if callable(reset):
            reset()


@pytest.fixture(autouse=True)
def suite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test: its own data dir and working directory, no stray SUITE_* settings, test env, immediate jobs."""
    for key in list(os.environ):
        if key.startswith("SUITE_") and not key.startswith("SUITE_TEST_") and key != "SUITE_REQUIRE_SERVICES":
            monkeypatch.delenv(key)
    data = tmp_path / "data"
    monkeypatch.setenv("SUITE_DATA_DIR", str(data))
    monkeypatch.setenv("SUITE_ENV", "test")
    monkeypatch.setenv("SUITE_JOBS__IMMEDIATE", "true")
    monkeypatch.setenv("SUITE_JOBS__PURGE_SCHEDULE", "off")  # no purge job queued by a consumer mid-test
    monkeypatch.setenv("SUITE_LLM__LOCAL__THREADS", "1")
    monkeypatch.chdir(tmp_path)
    reset_caches()
    yield data
    reset_caches()


# --- databases -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One migrated SQLite file per xdist worker."""
    from suite.core.db import build_engine
    from suite.core.migrations import upgrade

    path = tmp_path_factory.mktemp(f"db-{worker_id()}") / "suite.db"
    engine = build_engine(f"sqlite:///{path}")
    upgrade(engine)
    yield engine
    engine.dispose()


def _postgres_admin():  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import OperationalError

    from suite.core.db import build_engine

    engine = build_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        engine.dispose()
        skip_or_fail(f"PostgreSQL not reachable at {POSTGRES_URL}: {str(exc.orig).strip().splitlines()[0]}")
    return engine


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this xdist worker, dropped afterwards."""
    from sqlalchemy import make_url, text

    admin = _postgres_admin()
    name = f"suite_test_{worker_id()}_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: str):  # type: ignore[no-untyped-def]
    from suite.core.db import build_engine
    from suite.core.migrations import upgrade

    engine = build_engine(postgres_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _savepoint_session(engine):  # type: ignore[no-untyped-def]
    from sqlalchemy.orm import Session

    from suite.core.db import bind_to

    connection = engine.connect()
    transaction = connection.begin()
    with bind_to(connection):
        session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield session
        finally:
            session.close()
            transaction.rollback()
            connection.close()


@pytest.fixture
def db_session(sqlite_engine):  # type: ignore[no-untyped-def]
    """A session on the worker's SQLite database inside a transaction rolled back after the test.

    Every session the code opens meanwhile (session_scope, SessionDep) joins the same transaction.
    """
    yield from _savepoint_session(sqlite_engine)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_session(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """The same test on SQLite and PostgreSQL."""
    engine = request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "postgres_engine")
    yield from _savepoint_session(engine)


# --- redis ---------------------------------------------------------------------------------------------


class RedisServer:
    def __init__(self, port: int, workdir: Path, *extra: str) -> None:
        self.port = port
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += list(self.extra) or ["--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free port for this xdist worker."""
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty Redis database, set as SUITE_REDIS_URL for this test."""
    import redis

    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    monkeypatch.setenv("SUITE_REDIS_URL", redis_server.url)
    reset_caches()
    yield redis_server.url


# --- browser -------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SUITE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def artifacts_dir() -> Path:
    """Where page screenshots are kept (SUITE_TEST_ARTIFACTS, default ./test-artifacts in the repo)."""
    path = Path(os.environ.get("SUITE_TEST_ARTIFACTS", "test-artifacts"))
    path = path if path.is_absolute() else REPO_ROOT / path
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    """Debian's chromium driven by Playwright (never a browser a tool downloads itself)."""
    if not Path(CHROMIUM).exists():
        skip_or_fail(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("the playwright package is not installed (pip install playwright)")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def run_cli():  # type: ignore[no-untyped-def]
    """Run `suite ...` in a subprocess with the test's environment; returns CompletedProcess."""

    def run(*args: str, input: str | None = None, timeout: float = 120, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "suite", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            env=full_env,
        )

    return run
