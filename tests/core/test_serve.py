"""`suite serve` as a user runs it: a real process on a free port, then health, docs, pages and bad setups."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import free_port

START_TIMEOUT_S = 90  # generous: a cold machine imports FastAPI and migrates a fresh database first


@dataclass
class Served:
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def stop(proc: subprocess.Popen[bytes]) -> int:
    """Ctrl-C the process group (the reloader and its child too); kill it if it hangs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


@contextmanager
def suite_serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "suite", "serve", "--port", str(port), "--no-worker", *args]
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    served = Served(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"suite serve exited with {proc.returncode}:\n{served.output()}")
            try:
                if httpx.get(served.base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"suite serve did not answer within {START_TIMEOUT_S} s:\n{served.output()}")
            time.sleep(0.1)
        yield served
    finally:
        stop(proc)


def test_serve_answers_health_docs_and_pages(tmp_path: Path, suite_env: Path) -> None:
    with suite_serve(tmp_path) as served, httpx.Client(base_url=served.base, timeout=10) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["database"] == {"ok": True}
        docs = http.get("/docs")
        assert docs.status_code == 200 and "swagger-ui" in docs.text
        assert "/healthz" in http.get("/openapi.json").json()["paths"]
        home = http.get("/")
        assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
        assert http.get("/static/htmx.min.js").status_code == 200
        assert http.get("/healthz?token=hunter2&topic=jobs").status_code == 200
        assert (suite_env / "suite.db").exists()  # serve created the database by itself
        code = stop(served.proc)
    assert code in (0, 130), served.output()  # Ctrl-C is a clean stop
    out = served.output()
    assert "/healthz?token=***&topic=***" in out  # the access log keeps the names, not the values
    assert "hunter2" not in out


def test_serve_starts_with_redis_down_and_readyz_names_it(tmp_path: Path) -> None:
    env = {"SUITE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with suite_serve(tmp_path, env=env) as served:
        r = httpx.get(served.base + "/readyz", timeout=10)
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "not_ready" and "redis" in error["message"]
    assert error["details"]["checks"]["redis"]["ok"] is False
    assert error["details"]["checks"]["database"] == {"ok": True}


def test_serve_starts_with_the_database_down_and_readyz_names_it(tmp_path: Path) -> None:
    env = {"SUITE_DATABASE_URL": f"postgresql://suite:hunter2@127.0.0.1:{free_port()}/suite"}
    with suite_serve(tmp_path, env=env) as served:
        r = httpx.get(served.base + "/readyz", timeout=10)
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["message"].startswith("not ready: database")  # a domain may depend on it too
    assert "cannot connect to database" in error["details"]["checks"]["database"]["error"]
    assert "database not ready: cannot connect" in served.output()
    assert "hunter2" not in served.output() + r.text


def test_serve_with_reload_uses_the_factory(tmp_path: Path) -> None:
    with suite_serve(tmp_path, "--reload") as served:
        assert httpx.get(served.base + "/readyz", timeout=10).status_code == 200
    assert "reloader" in served.output().lower()


def test_serve_on_a_busy_port_fails_in_one_go(run_cli) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("serve", "--port", str(port), "--no-worker", timeout=90)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_serve_bad_port_is_usage_error(run_cli) -> None:  # type: ignore[no-untyped-def]
    proc = run_cli("serve", "--port", "70000")
    assert proc.returncode == 2
    assert "--port" in proc.stderr


def test_db_current_with_unreachable_postgres_exits_1(run_cli) -> None:  # type: ignore[no-untyped-def]
    url = f"postgresql://suite:hunter2@127.0.0.1:{free_port()}/suite"
    proc = run_cli("db", "current", env={"SUITE_DATABASE_URL": url})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot connect to database postgresql://suite:***@127.0.0.1:")
    assert "hunter2" not in proc.stderr + proc.stdout


def test_query_values_are_redacted_from_log_lines() -> None:
    from suite.core.server import redact_query

    assert redact_query("/api/v1/events/ws?token=abc&topic=jobs") == "/api/v1/events/ws?token=***&topic=***"
    assert (
        redact_query('127.0.0.1:5 - "GET /a?x=1 HTTP/1.1" 200') == '127.0.0.1:5 - "GET /a?x=*** HTTP/1.1" 200'
    )
    assert redact_query("/plain/path") == "/plain/path"


def test_a_dependency_that_is_down_is_logged_in_one_line_once() -> None:
    import logging

    import redis

    from suite.core.server import QuietConnectionErrors

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(QuietConnectionErrors())
    logger = logging.getLogger("test.quiet")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(3):  # a consumer polling a stopped Redis
            try:
                raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
            except redis.ConnectionError:
                logger.exception("Error reading from queue")
        try:
            raise ValueError("a real bug")
        except ValueError:
            logger.exception("task failed")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == [
        "Error reading from queue: ConnectionError: Error 111 connecting to 127.0.0.1:1. Connection refused.",
        "task failed",
    ]
    assert (
        records[0].exc_info is None and records[1].exc_info is not None
    )  # other errors keep their traceback


def test_sigterm_closes_open_websockets_with_1001_before_uvicorn_does(
    tmp_path: Path, suite_env: Path
) -> None:
    """uvicorn closes open WebSockets with 1012 before the lifespan shutdown runs the domains' hooks; the
    server's stopping hooks run first, so a chat client sees 1001 (going away: reconnect elsewhere, resume)."""
    import asyncio
    import json

    import websockets

    from suite.core.auth import create_token, create_user
    from suite.core.db import session_scope

    async def until_closed(ws: websockets.ClientConnection) -> int | None:
        try:
            async with asyncio.timeout(20):
                while True:
                    await ws.recv()
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None

    with suite_serve(tmp_path) as served:
        with session_scope() as session:  # the server created the database
            user = create_user(session, username="ws-user", password="correct horse battery")
            _, token = create_token(session, user=user, name="t")

        async def go() -> int | None:
            url = served.base.replace("http://", "ws://") + "/api/v1/chat/ws"
            async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
                os.killpg(served.proc.pid, signal.SIGTERM)
                return await until_closed(ws)

        assert asyncio.run(go()) == 1001, served.output()
        assert served.proc.wait(20) in (0, -signal.SIGTERM), served.output()
