"""Shutdown and notifications with real servers on 127.0.0.1: the `DomainSpec.shutdown` hook (sockets closed
1001, the embedded worker stopped gracefully), SIGTERM of `suite chat serve`, and chat events on the core bus."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
import websockets

from .helpers import (
    Server,
    db_rows,
    eventually,
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

pytestmark = pytest.mark.anyio


def rid() -> str:
    return str(uuid.uuid4())


async def until_deltas(ws, request_id: str, n: int = 3) -> list[dict]:  # type: ignore[no-untyped-def]
    seen: list[dict] = []
    while sum(f["type"] == "delta" for f in seen) < n:
        f = await recv_json(ws, 15)
        if f.get("request_id") == request_id:
            seen.append(f)
    return seen


async def closed_code(ws, timeout: float = 10.0) -> int | None:  # type: ignore[no-untyped-def]
    """Read until the server closes the socket; its close code."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


# --- the shutdown hook, in-process: 1001 and a graceful worker stop -----------------------------------------


async def test_shutdown_hook_closes_sockets_1001_and_stops_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    from suite.chat import api as chat_api
    from suite.chat import runtime_state
    from suite.core.api import create_app

    fast_env(monkeypatch, shutdown_grace_s=0.2, messages_per_minute=1000)
    scripted_options(monkeypatch, tokens=60, token_delay_s=0.05)
    _, token = make_user()
    app = create_app(["chat"])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    try:
        assert await eventually(lambda: server.started, timeout=30)
        target = type("T", (), {"ws_url": f"ws://127.0.0.1:{port}/api/v1/chat/ws"})()
        ws = await ws_connect(target, token)  # type: ignore[arg-type]
        r = rid()
        await ws.send(json.dumps({"type": "send", "request_id": r, "content": "a long reply"}))
        seen = await until_deltas(ws, r)
        worker = runtime_state.embedded_worker()
        assert worker is not None and worker.active

        await chat_api.shutdown(app)

        assert await closed_code(ws) == 1001
        assert runtime_state.embedded_worker() is None and not worker.active and not worker._tasks
        req, msgs = db_rows(r)
        assistant = next(m for m in msgs if m["role"] == "assistant")
        assert req["state"] == "interrupted" and assistant["status"] == "interrupted"
        assert assistant["content"].startswith(text_of(seen)) and assistant["content"]
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
        runtime_state.reset()
        reset_chat()


async def test_shutdown_grace_lets_a_short_reply_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process worker: a reply that ends within the grace period is stored complete, not interrupted."""
    from suite.chat import runtime_state
    from suite.chat.runtime_state import get_runtime

    fast_env(monkeypatch, shutdown_grace_s=10.0, messages_per_minute=1000)
    scripted_options(monkeypatch, tokens=20, token_delay_s=0.05)
    user_id, _ = make_user()
    try:
        await runtime_state.start(worker=True)
        runtime = get_runtime()
        sub = await runtime.send(user_id=user_id, client_request_id="g1", content="finish me")
        frames = runtime.frames(request_id=sub.request_id, client_request_id="g1")
        seen = [await anext(frames) for _ in range(4)]  # queued, generating, first deltas
        assert any(f["type"] == "delta" for f in seen)
        started = time.monotonic()
        await runtime_state.stop()
        assert time.monotonic() - started < 8
        req, msgs = db_rows("g1")
        assert req["state"] == "done"
        assert [m["status"] for m in msgs if m["role"] == "assistant"] == ["complete"]
    finally:
        runtime_state.reset()
        reset_chat()


# --- SIGTERM of a real `suite chat serve` --------------------------------------------------------------------


@pytest.mark.slow
async def test_sigterm_mid_reply(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fast_env(monkeypatch, shutdown_grace_s=0.2, messages_per_minute=1000)
    scripted_options(monkeypatch, tokens=100, token_delay_s=0.05)
    monkeypatch.setenv("SUITE_LOG_LEVEL", "INFO")
    _, token = make_user()
    server = Server(tmp_path / "server.log").start()
    try:
        ws = await ws_connect(server, token)
        r = rid()
        await ws.send(json.dumps({"type": "send", "request_id": r, "content": "stop me"}))
        seen = await until_deltas(ws, r)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        # the server's stopping hook closes chat sockets with 1001 before uvicorn would close them with 1012
        assert await closed_code(ws) == 1001
        assert server.proc.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        log = server.text()
        assert "chat: shut down" in log, log[-2000:]
        req, msgs = db_rows(r)  # marked by the shutdown itself, not by the next start
        assistant = next(m for m in msgs if m["role"] == "assistant")
        assert req["state"] == "interrupted" and assistant["status"] == "interrupted"
        assert assistant["content"].startswith(text_of(seen))
    finally:
        server.stop()


# --- notifications on the core event bus ---------------------------------------------------------------------


async def events_socket(server: Server, token: str, user_id: int):  # type: ignore[no-untyped-def]
    url = f"ws://127.0.0.1:{server.port}/api/v1/events/ws?topic=user.{user_id}"
    ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"})
    first = await recv_json(ws)
    assert first == {"type": "subscribed", "topic": f"user.{user_id}"}, first
    return ws


async def collect_events(ws, until, timeout: float = 10.0) -> list[dict]:  # type: ignore[no-untyped-def]
    got: list[dict] = []
    async with asyncio.timeout(timeout):
        while not until(got):
            got.append(await recv_json(ws))
    return got


async def test_request_and_conversation_events(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fast_env(monkeypatch, messages_per_minute=1000)
    scripted_options(monkeypatch, tokens=12)
    alice_id, alice = make_user("alice")
    bob_id, bob = make_user("bob")
    server = Server(tmp_path / "server.log").start()
    try:
        events = await events_socket(server, alice, alice_id)
        bob_events = await events_socket(server, bob, bob_id)
        chat = await ws_connect(server, alice)
        r = rid()
        await chat.send(json.dumps({"type": "send", "request_id": r, "content": "hello events"}))
        frames = await reply(chat, r)
        conv_id = frames[0]["conversation_id"]

        def states(got: list[dict]) -> list[str]:
            return [e["data"]["state"] for e in got if e["type"] == "chat.request"]

        got = await collect_events(events, lambda g: "done" in states(g))
        assert states(got) == ["queued", "generating", "done"]
        assert all(e["topic"] == f"user.{alice_id}" for e in got)
        request_events = [e["data"] for e in got if e["type"] == "chat.request"]
        assert all(d["request_id"] == r and d["conversation_id"] == conv_id for d in request_events)
        conv_events = [e["data"] for e in got if e["type"] == "chat.conversation"]
        assert conv_events[0] == {"conversation_id": conv_id, "action": "created", "title": "hello events"}
        # no token text on the bus: deltas stay in the reply stream
        assert not any("delta" in json.dumps(e) for e in got)

        headers = {"Authorization": f"Bearer {alice}"}
        api = f"{server.url}/api/v1/chat/conversations/{conv_id}"
        assert httpx.patch(api, json={"title": "renamed"}, headers=headers).status_code == 200
        got = await collect_events(events, lambda g: any(e["data"].get("title") == "renamed" for e in g))
        assert got[-1]["data"] == {"conversation_id": conv_id, "action": "updated", "title": "renamed"}
        assert httpx.delete(api, headers=headers).status_code == 204
        got = await collect_events(events, lambda g: any(e["data"].get("action") == "deleted" for e in g))
        assert got[-1]["type"] == "chat.conversation" and got[-1]["data"]["conversation_id"] == conv_id

        # another user hears nothing of it
        with pytest.raises(TimeoutError):
            await recv_json(bob_events, 0.5)
        for ws in (events, bob_events, chat):
            await ws.close()
    finally:
        server.stop()


async def test_cancelled_and_failed_requests_are_announced(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process (memory broker): cancel and a provider error reach `user.<id>` subscribers."""
    from suite.chat import runtime_state
    from suite.chat.runtime_state import get_runtime
    from suite.core import events

    fast_env(monkeypatch, messages_per_minute=1000)
    scripted_options(monkeypatch, tokens=200, token_delay_s=0.02)
    scripted_options(monkeypatch, "broken", fail_times=100, fail_kind="provider_error")
    user_id, _ = make_user()
    try:
        await runtime_state.start(worker=True)
        runtime = get_runtime()
        async with events.subscribe(events.user_topic(user_id)) as sub:
            first = await runtime.send(user_id=user_id, client_request_id="c1", content="stop")
            cancelled = False
            async for f in runtime.frames(request_id=first.request_id, client_request_id="c1"):
                if f["type"] == "delta" and not cancelled:
                    cancelled = True
                    await runtime.cancel(user_id=user_id, client_request_id="c1")
                if f["type"] in ("done", "error"):
                    break
            second = await runtime.send(user_id=user_id, client_request_id="c2", content="x", model="broken")
            async for f in runtime.frames(request_id=second.request_id, client_request_id="c2"):
                if f["type"] in ("done", "error"):
                    break
            seen: dict[str, list[str]] = {}
            async with asyncio.timeout(10):
                async for event in sub:
                    if event.type == "chat.request":
                        seen.setdefault(event.data["request_id"], []).append(event.data["state"])
                    if seen.get("c2", [""])[-1] == "error":
                        break
        assert seen["c1"] == ["queued", "generating", "cancelled"]
        assert seen["c2"][0] == "queued" and seen["c2"][-1] == "error"
    finally:
        await runtime_state.stop(grace_s=0)
        runtime_state.reset()
        reset_chat()
