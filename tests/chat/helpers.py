"""Helpers shared by the chat tests (imported relatively: `from .helpers import ...`)."""

from __future__ import annotations

import sys

import pytest

from .conftest import FAST


def reset_caches() -> None:
    from suite.core import config, db

    db.reset_engine()
    config.reset_settings()
    for name in ("suite.core.tasks", "suite.core.events", "suite.core.llm"):
        module = sys.modules.get(name)
        reset = getattr(module, "reset", None)
        if callable(reset):
            reset()


def fast_env(monkeypatch: pytest.MonkeyPatch, **chat: object) -> None:
    """Chat settings through the environment (so subprocesses see them too) and the scripted provider."""
    import json

    values = {**FAST, **chat}
    for key, value in values.items():
        monkeypatch.setenv(
            f"SUITE_CHAT__{key.upper()}", json.dumps(value) if not isinstance(value, str) else value
        )
    monkeypatch.setenv("SUITE_CHAT__DEFAULT_MODEL", str(chat.get("default_model", "scripted")))
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__SCRIPTED__KIND", "scripted")


def scripted_options(monkeypatch: pytest.MonkeyPatch, name: str = "scripted", **options: object) -> None:
    import json

    monkeypatch.setenv(f"SUITE_LLM__PROVIDERS__{name.upper()}__KIND", "scripted")
    monkeypatch.setenv(f"SUITE_LLM__PROVIDERS__{name.upper()}__OPTIONS", json.dumps(options))
    reset_chat()


def reset_chat() -> None:
    from suite.chat import llm
    from suite.chat.broker import set_broker

    reset_caches()
    llm.reset()
    set_broker(None)


def make_user(username: str = "alice", *, expires_in: float | None = None) -> tuple[int, str]:
    from datetime import timedelta

    from suite.core.auth import create_token, create_user
    from suite.core.db import session_scope

    with session_scope() as session:
        user = create_user(session, username=username, password="correct horse battery")
        _, plain = create_token(
            session, user=user, name="test", expires_in=timedelta(seconds=expires_in) if expires_in else None
        )
        return user.id, plain


async def eventually(check, timeout: float = 5.0, interval: float = 0.02):  # type: ignore[no-untyped-def]
    """Poll an async or sync predicate until it is truthy (acks land just after the `done` frame)."""
    import asyncio
    import inspect
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


# --- real servers and workers in subprocesses ---------------------------------------------------------------

import json as _json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time as _time  # noqa: E402
from pathlib import Path  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def suite_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(extra)
    return env


class Proc:
    """`python -m suite chat <args>` in a subprocess with the test's environment; output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self.env = env or suite_env()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.fh = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "suite", "chat", *self.args],
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "fh", None):
            self.fh.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Server(Proc):
    def __init__(
        self,
        log: Path,
        *,
        port: int | None = None,
        worker: bool | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        args = ["serve", "--port", str(self.port)]
        if worker is not None:
            args.append("--worker" if worker else "--no-worker")
        super().__init__(args, log, env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/chat/ws"

    def start(self, timeout: float = 60) -> Server:
        import httpx

        super().start()
        deadline = _time.monotonic() + timeout
        while _time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            _time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.text()[-3000:]}")


async def ws_connect(server: Server, token: str | None = None, **kw):  # type: ignore[no-untyped-def]
    import websockets

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ws = await websockets.connect(server.ws_url, additional_headers=headers, max_size=None, **kw)
    if token:
        hello = _json.loads(await ws.recv())
        assert hello["type"] == "hello", hello
    return ws


async def recv_json(ws, timeout: float = 10.0) -> dict:  # type: ignore[no-untyped-def]
    import asyncio

    async with asyncio.timeout(timeout):
        return _json.loads(await ws.recv())


async def reply(ws, request_id: str, timeout: float = 20.0, on_frame=None) -> list[dict]:  # type: ignore[no-untyped-def]
    """Frames of one request until done/error (ack included)."""
    import asyncio

    frames = []
    async with asyncio.timeout(timeout):
        while True:
            f = _json.loads(await ws.recv())
            if f.get("request_id") != request_id:
                continue
            frames.append(f)
            if on_frame is not None:
                await on_frame(f, frames)
            if f["type"] in ("done", "error") or (f["type"] == "error"):
                return frames


def text_of(frames: list[dict]) -> str:
    out = ""
    for f in frames:
        if f["type"] == "reset":
            out = ""
        elif f["type"] == "delta":
            out += f["text"]
    return out


def db_rows(request_client_id: str | None = None, *, server_id: str | None = None) -> tuple[dict, list[dict]]:
    from sqlalchemy import select

    from suite.chat.models import ChatRequest, Message
    from suite.core.db import session_scope

    with session_scope() as s:
        q = select(ChatRequest)
        q = (
            q.where(ChatRequest.id == server_id)
            if server_id
            else q.where(ChatRequest.client_request_id == request_client_id)
        )
        req = s.scalar(q)
        msgs = s.scalars(select(Message).where(Message.request_id == req.id)).all()
        return (
            {
                "id": req.id,
                "state": req.state,
                "deliveries": req.deliveries,
                "error_code": req.error_code,
                "attempt": req.attempt,
            },
            [
                {"role": m.role, "content": m.content, "status": m.status, "finish": m.finish_reason}
                for m in msgs
            ],
        )


class OwnRedis:
    """A redis-server of a test's own (restarted under load, with or without persistence)."""

    def __init__(self, workdir: Path, *args: str) -> None:
        import shutil

        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.workdir = workdir
        self.args = list(args) or ["--save", "", "--appendonly", "no"]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = _time.monotonic() + 10
        while _time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                _time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
