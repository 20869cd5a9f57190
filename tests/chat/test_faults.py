"""Faults with real processes on 127.0.0.1: workers killed, servers killed, Redis restarted or down."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from .helpers import (
    OwnRedis,
    Proc,
    Server,
    db_rows,
    fast_env,
    free_port,
    make_user,
    recv_json,
    reply,
    reset_chat,
    scripted_options,
    text_of,
    ws_connect,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def rid() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def slow_env(monkeypatch: pytest.MonkeyPatch) -> str:
    fast_env(monkeypatch, messages_per_minute=1000)
    scripted_options(monkeypatch, tokens=40, token_delay_s=0.05)
    _, token = make_user()
    return token


@pytest.fixture
def procs(tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[Proc | OwnRedis] = []

    def add(p):  # type: ignore[no-untyped-def]
        started.append(p)
        return p.start()

    yield add
    for p in reversed(started):
        p.kill()
        if isinstance(p, Proc):
            p.stop()


def use_redis(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("SUITE_REDIS_URL", url)
    reset_chat()


async def until_deltas(ws, request_id: str, n: int = 3) -> list[dict]:  # type: ignore[no-untyped-def]
    seen: list[dict] = []
    while sum(f["type"] == "delta" for f in seen) < n:
        f = await recv_json(ws, 15)
        if f.get("request_id") == request_id:
            seen.append(f)
    return seen


async def test_worker_killed_mid_reply(
    slow_env: str, redis_url: str, monkeypatch, procs, tmp_path: Path
) -> None:
    use_redis(monkeypatch, redis_url)
    server = procs(Server(tmp_path / "server.log", worker=False))
    workers = {n: procs(Proc(["worker", "--name", n], tmp_path / f"{n}.log")) for n in ("w1", "w2")}
    ws = await ws_connect(server, slow_env)
    r = rid()
    await ws.send(json.dumps({"type": "send", "request_id": r, "content": "long one"}))
    seen = await until_deltas(ws, r)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    (pending,) = client.xpending_range("chat:req", "workers", min="-", max="+", count=10)
    workers[pending["consumer"]].kill()  # kill -9 the worker holding it
    rest = await reply(ws, r, timeout=30)
    frames = seen + rest
    resets = [f for f in frames if f["type"] == "reset"]
    assert resets and resets[0]["attempt"] == 2
    assert frames[-1]["type"] == "done"
    req, msgs = db_rows(r)
    assistant = [m for m in msgs if m["role"] == "assistant"]
    assert req["state"] == "done" and req["deliveries"] == 2
    assert len(assistant) == 1 and assistant[0]["status"] == "complete"
    assert assistant[0]["content"] == text_of(frames)
    for _ in range(50):
        if client.xpending("chat:req", "workers")["pending"] == 0:
            break
        await asyncio.sleep(0.1)
    assert client.xpending("chat:req", "workers")["pending"] == 0
    await ws.close()


async def test_server_killed_client_resumes_on_another(
    slow_env: str, redis_url: str, monkeypatch, procs, tmp_path: Path
) -> None:
    use_redis(monkeypatch, redis_url)
    a = procs(Server(tmp_path / "a.log", worker=False))
    b = procs(Server(tmp_path / "b.log", worker=False))
    worker = procs(Proc(["worker", "--name", "only"], tmp_path / "w.log"))
    ws = await ws_connect(a, slow_env)
    r = rid()
    await ws.send(json.dumps({"type": "send", "request_id": r, "content": "resume me"}))
    seen = await until_deltas(ws, r)
    a.kill()  # SIGKILL server A mid-stream
    last = max(f["seq"] for f in seen if "seq" in f)
    ws2 = await ws_connect(b, slow_env)
    await ws2.send(json.dumps({"type": "resume", "request_id": r, "after_seq": last}))
    rest = await reply(ws2, r, timeout=30)
    assert rest[0]["seq"] == last + 1  # no gap, no duplicate
    seqs = [f["seq"] for f in seen + rest if "seq" in f]
    assert seqs == list(range(1, len(seqs) + 1))
    req, msgs = db_rows(r)
    stored = next(m for m in msgs if m["role"] == "assistant")
    assert text_of(seen + rest) == stored["content"] and req["deliveries"] == 1
    assert "reclaimed" not in worker.text()
    await ws2.close()


async def test_redis_restart_without_persistence(slow_env: str, monkeypatch, procs, tmp_path: Path) -> None:
    own = procs(OwnRedis(tmp_path / "redis"))
    use_redis(monkeypatch, own.url)
    server = procs(Server(tmp_path / "server.log"))
    ws = await ws_connect(server, slow_env)
    r = rid()
    await ws.send(json.dumps({"type": "send", "request_id": r, "content": "x"}))
    await until_deltas(ws, r)
    own.kill()
    own.start()  # empty: the stream, the group and the reply are gone
    started = time.monotonic()
    rest = await reply(ws, r, timeout=20)
    assert rest[-1]["type"] == "error" and rest[-1]["code"] == "broker_unavailable"
    assert time.monotonic() - started < 3.0 + 6  # reply_timeout_s + a read cycle
    r2 = rid()
    await ws.send(json.dumps({"type": "send", "request_id": r2, "content": "after"}))
    frames = await reply(ws, r2, timeout=30)
    assert frames[-1]["type"] == "done"  # NOGROUP caught, group recreated
    assert "recreating" in server.text()
    await ws.close()


async def test_redis_restart_with_aof(slow_env: str, monkeypatch, procs, tmp_path: Path) -> None:
    own = procs(OwnRedis(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always", "--save", ""))
    use_redis(monkeypatch, own.url)
    server = procs(Server(tmp_path / "server.log"))
    ws = await ws_connect(server, slow_env)
    r = rid()
    await ws.send(json.dumps({"type": "send", "request_id": r, "content": "x"}))
    seen = await until_deltas(ws, r)
    own.stop()
    await asyncio.sleep(0.3)
    own.start()
    rest = await reply(ws, r, timeout=30)
    frames = seen + rest
    assert frames[-1]["type"] == "done", frames[-3:]
    req, msgs = db_rows(r)
    assistant = [m for m in msgs if m["role"] == "assistant"]
    assert req["state"] == "done" and len(assistant) == 1
    assert assistant[0]["content"] == text_of(frames)
    client = redis.Redis.from_url(own.url, decode_responses=True)
    for _ in range(50):
        if client.xpending("chat:req", "workers")["pending"] == 0:
            break
        await asyncio.sleep(0.1)
    assert client.xpending("chat:req", "workers")["pending"] == 0
    await ws.close()


async def test_redis_down_at_start(slow_env: str, monkeypatch, procs, tmp_path: Path) -> None:
    use_redis(monkeypatch, f"redis://127.0.0.1:{free_port()}/0")
    server = procs(Server(tmp_path / "server.log"))
    assert httpx.get(server.url + "/healthz").status_code == 200
    ready = httpx.get(server.url + "/readyz", timeout=20)
    assert ready.status_code == 503 and "chat_broker" in ready.text
    ws = await ws_connect(server, slow_env)
    r = rid()
    await ws.send(json.dumps({"type": "send", "request_id": r, "content": "x"}))
    err = await recv_json(ws)
    assert err["type"] == "error" and err["code"] == "broker_unavailable"
    headers = {"Authorization": f"Bearer {slow_env}"}
    conv = httpx.post(server.url + "/api/v1/chat/conversations", json={}, headers=headers).json()["id"]
    resp = httpx.post(
        server.url + f"/api/v1/chat/conversations/{conv}/messages",
        json={"request_id": rid(), "content": "x"},
        headers=headers,
    )
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "broker_unavailable"
    await ws.close()


async def test_memory_broker_restart(slow_env: str, procs, tmp_path: Path) -> None:
    port = free_port()
    server = procs(Server(tmp_path / "server.log", port=port))
    ws = await ws_connect(server, slow_env)
    r = rid()
    await ws.send(json.dumps({"type": "send", "request_id": r, "content": "x"}))
    seen = await until_deltas(ws, r, 8)
    await asyncio.sleep(0.3)  # a partial save (persist_every_s 0.2)
    server.kill()
    server = procs(Server(tmp_path / "server2.log", port=port))
    req, msgs = db_rows(r)
    reply_row = next(m for m in msgs if m["role"] == "assistant")
    assert req["state"] == "interrupted" and reply_row["status"] == "interrupted"
    assert reply_row["content"] and reply_row["content"].startswith(text_of(seen))
    ws = await ws_connect(server, slow_env)
    await ws.send(json.dumps({"type": "resume", "request_id": r, "after_seq": 0}))
    frames = await reply(ws, r)
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "interrupted"
    r2 = rid()
    message_id = seen[0]["message_id"] if seen[0]["type"] == "ack" else None
    ack = next(f for f in seen if f["type"] == "ack") if message_id is None else seen[0]
    await ws.send(json.dumps({"type": "regenerate", "request_id": r2, "message_id": ack["message_id"]}))
    regen = await reply(ws, r2, timeout=30)
    assert regen[-1]["type"] == "done"
    await ws.close()


async def test_readyz_names_missing_workers(
    slow_env: str, redis_url: str, monkeypatch, procs, tmp_path: Path
) -> None:
    use_redis(monkeypatch, redis_url)
    server = procs(Server(tmp_path / "server.log", worker=False))
    ready = httpx.get(server.url + "/readyz", timeout=20)
    assert ready.status_code == 503 and "chat_workers" in ready.text and "chat_broker" not in ready.text
    procs(Proc(["worker"], tmp_path / "w.log"))
    for _ in range(100):
        ready = httpx.get(server.url + "/readyz", timeout=20)
        if ready.status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert ready.status_code == 200, ready.text


def test_worker_without_redis_exits_2(slow_env: str, run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("chat", "worker")
    assert result.returncode == 2 and "in-process broker lives in `suite chat serve`" in result.stderr


assert shutil  # used by helpers through OwnRedis


async def test_cancel_reaches_an_upstream_openai_server(
    slow_env: str, monkeypatch, procs, tmp_path: Path
) -> None:
    """chat -> openai provider -> our own /v1 (scripted, slow): cancel closes the upstream stream, and the
    upstream stops decoding (its request ends cancelled)."""
    import os

    from .helpers import suite_env

    own_data = os.environ["SUITE_DATA_DIR"]
    up_data = str(tmp_path / "upstream")
    monkeypatch.setenv("SUITE_DATA_DIR", up_data)
    reset_chat()
    _, up_token = make_user("gateway")
    upstream = procs(Server(tmp_path / "up.log", env=suite_env(SUITE_DATA_DIR=up_data)))
    monkeypatch.setenv("SUITE_DATA_DIR", own_data)
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__UP__KIND", "openai")
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__UP__BASE_URL", upstream.url + "/v1")
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__UP__API_KEY", up_token)
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__UP__MODEL", "scripted")
    reset_chat()
    server = procs(Server(tmp_path / "down.log"))
    ws = await ws_connect(server, slow_env)
    r = rid()
    await ws.send(json.dumps({"type": "send", "request_id": r, "content": "x", "model": "up"}))
    await until_deltas(ws, r)
    await ws.send(json.dumps({"type": "cancel", "request_id": r}))
    rest = await reply(ws, r, timeout=20)
    assert rest[-1]["type"] == "done" and rest[-1]["finish_reason"] == "cancelled"
    for _ in range(100):
        if "client disconnected mid-stream" in upstream.text():
            break
        await asyncio.sleep(0.1)
    assert "client disconnected mid-stream" in upstream.text()
    monkeypatch.setenv("SUITE_DATA_DIR", up_data)
    reset_chat()
    from sqlalchemy import select

    from suite.chat.models import ChatRequest
    from suite.core.db import session_scope

    for _ in range(100):
        with session_scope() as s:
            states = s.scalars(select(ChatRequest.state)).all()
        if states == ["cancelled"]:
            break
        await asyncio.sleep(0.1)
    assert states == ["cancelled"]
    await ws.close()
