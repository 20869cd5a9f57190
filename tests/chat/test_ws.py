"""The WebSocket protocol and REST against a real `suite chat serve` (memory broker, scripted provider)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import websockets

from .helpers import Server, db_rows, make_user, recv_json, reply, reset_chat, text_of, ws_connect

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class Ctx:
    server: Server
    alice: str
    bob: str


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    """One server for the module (its own data dir), users alice and bob."""
    mp = pytest.MonkeyPatch()
    data = tmp_path_factory.mktemp("ws") / "data"
    for key in [k for k in __import__("os").environ if k.startswith("SUITE_")]:
        if key not in ("SUITE_REQUIRE_SERVICES", "SUITE_TEST_POSTGRES_URL"):
            mp.delenv(key)
    mp.setenv("SUITE_DATA_DIR", str(data))
    mp.setenv("SUITE_ENV", "test")
    from .conftest import FAST

    for key, value in {
        **FAST,
        "messages_per_minute": 1000,
        "auth_timeout_s": 1.0,
        "send_timeout_s": 1.0,
        "outbound_max_bytes": 262144,
        "max_tokens": 4096,
        "context_tokens": 65536,
    }.items():
        mp.setenv(f"SUITE_CHAT__{key.upper()}", json.dumps(value))
    mp.setenv("SUITE_CHAT__DEFAULT_MODEL", "scripted")
    mp.setenv("SUITE_LLM__PROVIDERS__SCRIPTED__KIND", "scripted")
    mp.setenv("SUITE_LLM__PROVIDERS__SCRIPTED__OPTIONS", json.dumps({"tokens": 12}))
    mp.setenv("SUITE_LLM__PROVIDERS__SLOW__KIND", "scripted")
    mp.setenv("SUITE_LLM__PROVIDERS__SLOW__OPTIONS", json.dumps({"tokens": 60, "token_delay_s": 0.03}))
    mp.setenv("SUITE_LLM__PROVIDERS__ECHO__KIND", "scripted")
    mp.setenv("SUITE_LLM__PROVIDERS__ECHO__OPTIONS", json.dumps({"mode": "echo"}))
    mp.setenv("SUITE_LLM__PROVIDERS__FLOOD__KIND", "scripted")
    mp.setenv("SUITE_LLM__PROVIDERS__FLOOD__OPTIONS", json.dumps({"tokens": 4000, "reply": " " + "x" * 2000}))
    reset_chat()
    c = Ctx()
    _, c.alice = make_user("alice")
    _, c.bob = make_user("bob")
    c.server = Server(data.parent / "server.log").start()
    yield c
    c.server.stop()
    mp.undo()
    reset_chat()


@pytest.fixture(autouse=True)
def shared_env(ctx: Ctx) -> None:
    """These tests read the module server's database (not the per-test data dir)."""
    import os

    os.environ["SUITE_DATA_DIR"] = str(ctx.server.log.parent / "data")
    reset_chat()


def rid() -> str:
    return str(uuid.uuid4())


async def test_hello_send_stream_done(ctx: Ctx) -> None:
    ws = await ws_connect(ctx.server, ctx.alice)
    r = rid()
    await ws.send(json.dumps({"type": "send", "request_id": r, "conversation_id": None, "content": "hi"}))
    frames = await reply(ws, r)
    ack = frames[0]
    assert ack["type"] == "ack", frames and ack["duplicate"] is False and ack["conversation_id"]
    rest = frames[1:]
    assert [f["seq"] for f in rest] == list(range(1, len(rest) + 1))
    assert (
        rest[0] == {"type": "status", "request_id": r, "seq": 1, "state": "queued", "position": 1}
        or rest[0]["state"] == "queued"
    )
    done = rest[-1]
    assert (
        done["type"] == "done" and done["finish_reason"] == "stop" and done["message_id"] == ack["message_id"]
    )
    assert set(done["timings"]) == {"queue_ms", "ttft_ms", "total_ms"}
    req, msgs = db_rows(r)
    assert req["state"] == "done"
    assert [m["content"] for m in msgs if m["role"] == "assistant"] == [text_of(frames)]
    await ws.send(json.dumps({"type": "ping", "ts": 42}))
    assert await recv_json(ws) == {"type": "pong", "ts": 42}
    await ws.close()


async def test_auth_first_frame_and_failures(ctx: Ctx) -> None:
    ws = await ws_connect(ctx.server)
    await ws.send(json.dumps({"type": "auth", "token": ctx.alice}))
    assert (await recv_json(ws))["type"] == "hello"
    await ws.close()
    for headers in ({}, {"Authorization": "Bearer st_nope"}):
        async with websockets.connect(ctx.server.ws_url, additional_headers=headers) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await recv_json(ws, 5)
            assert closed.value.rcvd.code == 4401
    # a token in the query string is ignored, and never logged
    async with websockets.connect(ctx.server.ws_url + f"?token={ctx.alice}") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_json(ws, 5)
        assert closed.value.rcvd.code == 4401
    await asyncio.sleep(0.2)
    assert ctx.alice not in ctx.server.text()


async def test_expired_token(ctx: Ctx) -> None:
    _, token = make_user("carol", expires_in=1.5)
    ws = await ws_connect(ctx.server, token)
    await asyncio.sleep(1.6)
    await ws.send(json.dumps({"type": "ping"}))
    err = await recv_json(ws)
    assert err["type"] == "error" and err["code"] == "expired"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await recv_json(ws)
    assert closed.value.rcvd.code == 4401
    async with websockets.connect(
        ctx.server.ws_url, additional_headers={"Authorization": f"Bearer {token}"}
    ) as w2:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_json(w2, 5)
        assert closed.value.rcvd.code == 4401
    r = httpx.get(ctx.server.url + "/api/v1/chat/conversations", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


async def test_foreign_origin_refused(ctx: Ctx) -> None:
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(
            ctx.server.ws_url,
            origin="https://evil.example",
            additional_headers={"Authorization": f"Bearer {ctx.alice}"},
        )
    assert err.value.response.status_code == 403
    ws = await websockets.connect(
        ctx.server.ws_url, origin=ctx.server.url, additional_headers={"Authorization": f"Bearer {ctx.alice}"}
    )
    assert (await recv_json(ws))["type"] == "hello"
    await ws.close()


async def test_no_cross_user_reads(ctx: Ctx) -> None:
    a = await ws_connect(ctx.server, ctx.alice)
    r = rid()
    await a.send(json.dumps({"type": "send", "request_id": r, "content": "secret"}))
    frames = await reply(a, r)
    conv = frames[0]["conversation_id"]
    b = await ws_connect(ctx.server, ctx.bob)
    await b.send(json.dumps({"type": "resume", "request_id": r, "after_seq": 0}))
    err = await recv_json(b)
    assert err["type"] == "error" and err["code"] == "not_found"
    await b.send(json.dumps({"type": "send", "request_id": rid(), "conversation_id": conv, "content": "x"}))
    assert (await recv_json(b))["code"] == "not_found"
    headers = {"Authorization": f"Bearer {ctx.bob}"}
    for path in (
        f"/conversations/{conv}",
        f"/conversations/{conv}/messages",
        f"/requests/{r}",
        f"/conversations/{conv}/export",
    ):
        assert httpx.get(ctx.server.url + "/api/v1/chat" + path, headers=headers).status_code == 404
    await a.close()
    await b.close()


async def test_bad_frames(ctx: Ctx) -> None:
    ws = await ws_connect(ctx.server, ctx.alice)
    cases = [
        ("not json", "bad_frame"),
        ("[1, 2]", "bad_frame"),
        ('{"no": "type"}', "bad_frame"),
        ('{"type": "send", "request_id": 5, "content": "x"}', "bad_frame"),
        ('{"type": "send", "request_id": "a"}', "bad_frame"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "send", "request_id": "n", "content": "nul \\u0000"}', "bad_frame"),
        ('{"type": "send", "request_id": "s", "content": "lone \\ud800"}', "bad_frame"),
    ]
    for raw, code in cases:
        await ws.send(raw)
        err = await recv_json(ws)
        assert err["type"] == "error" and err["code"] == code, (raw, err)
        await ws.send(json.dumps({"type": "ping"}))  # a good frame resets the count; still open
        assert (await recv_json(ws))["type"] == "pong"
    for _ in range(9):
        await ws.send("garbage")
        assert (await recv_json(ws))["code"] == "bad_frame"
    await ws.send("garbage")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await recv_json(ws)
    assert closed.value.rcvd.code == 1008


async def test_binary_and_oversize(ctx: Ctx) -> None:
    ws = await ws_connect(ctx.server, ctx.alice)
    await ws.send(json.dumps({"type": "send", "request_id": rid(), "content": "x" * 16_001}))
    err = await recv_json(ws)
    assert err["code"] == "too_large"
    await ws.send(b"\x00\x01binary")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await recv_json(ws)
    assert closed.value.rcvd.code == 1003
    ws = await ws_connect(ctx.server, ctx.alice)
    await ws.send(json.dumps({"type": "send", "request_id": rid(), "content": "y" * (2 * 1024 * 1024)}))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await recv_json(ws)
    assert closed.value.rcvd.code == 1009
    r = httpx.post(
        ctx.server.url + "/api/v1/chat/conversations",
        headers={"Authorization": f"Bearer {ctx.alice}", "Content-Type": "application/json"},
        content=b'{"title": "' + b"z" * (10 * 1024 * 1024) + b'"}',
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


async def test_unicode_round_trip(ctx: Ctx) -> None:
    text = "emoji 👋🏽 CJK 世界 combining e\u0301 ok"
    ws = await ws_connect(ctx.server, ctx.alice)
    r = rid()
    await ws.send(json.dumps({"type": "send", "request_id": r, "content": text, "model": "echo"}))
    frames = await reply(ws, r)
    assert text_of(frames) == text
    conv = frames[0]["conversation_id"]
    headers = {"Authorization": f"Bearer {ctx.alice}"}
    md = httpx.get(ctx.server.url + f"/api/v1/chat/conversations/{conv}/export?format=md", headers=headers)
    assert md.status_code == 200 and md.text.count(text) == 3  # title, question, echo
    assert "attachment" in md.headers["content-disposition"]
    js = httpx.get(ctx.server.url + f"/api/v1/chat/conversations/{conv}/export", headers=headers).json()
    assert [m["content"] for m in js["messages"]] == [text, text]
    await ws.close()


async def test_same_request_id_twice(ctx: Ctx) -> None:
    ws = await ws_connect(ctx.server, ctx.alice)
    r = rid()
    frame = json.dumps({"type": "send", "request_id": r, "content": "once"})
    await ws.send(frame)
    first = await reply(ws, r)
    await ws.close()
    ws = await ws_connect(ctx.server, ctx.alice)  # after a reconnect
    await ws.send(frame)
    second = await reply(ws, r)
    assert second[0]["duplicate"] is True and second[0]["message_id"] == first[0]["message_id"]
    assert text_of(second) == text_of(first)
    await ws.send(json.dumps({"type": "send", "request_id": r, "content": "different"}))
    assert (await recv_json(ws))["code"] == "conflict"
    req, msgs = db_rows(r)
    assert len(msgs) == 2 and req["deliveries"] == 1
    await ws.close()


async def test_two_tabs_one_conversation(ctx: Ctx) -> None:
    a = await ws_connect(ctx.server, ctx.alice)
    b = await ws_connect(ctx.server, ctx.alice)
    r0 = rid()
    await a.send(json.dumps({"type": "send", "request_id": r0, "content": "start"}))
    conv = (await reply(a, r0))[0]["conversation_id"]
    r1, r2 = rid(), rid()
    await asyncio.gather(
        a.send(
            json.dumps(
                {
                    "type": "send",
                    "request_id": r1,
                    "conversation_id": conv,
                    "content": "tab a",
                    "model": "slow",
                }
            )
        ),
        b.send(
            json.dumps(
                {
                    "type": "send",
                    "request_id": r2,
                    "conversation_id": conv,
                    "content": "tab b",
                    "model": "slow",
                }
            )
        ),
    )
    fa, fb = await asyncio.gather(reply(a, r1), reply(b, r2))
    outcomes = sorted(
        [fa[-1]["type"] + ":" + fa[-1].get("code", ""), fb[-1]["type"] + ":" + fb[-1].get("code", "")]
    )
    assert outcomes == ["done:", "error:busy"]
    headers = {"Authorization": f"Bearer {ctx.alice}"}
    msgs = httpx.get(ctx.server.url + f"/api/v1/chat/conversations/{conv}/messages", headers=headers).json()
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    await a.close()
    await b.close()


async def test_cancel_after_three_deltas(ctx: Ctx) -> None:
    ws = await ws_connect(ctx.server, ctx.alice)
    r = rid()

    async def on_frame(f: dict, frames: list[dict]) -> None:
        if f["type"] == "delta" and sum(x["type"] == "delta" for x in frames) == 3:
            await ws.send(json.dumps({"type": "cancel", "request_id": r}))

    await ws.send(json.dumps({"type": "send", "request_id": r, "content": "go", "model": "slow"}))
    frames = await reply(ws, r, on_frame=on_frame)
    assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "cancelled"
    assert sum(f["type"] == "delta" for f in frames) <= 5
    req, msgs = db_rows(r)
    reply_row = next(m for m in msgs if m["role"] == "assistant")
    assert req["state"] == "cancelled" and reply_row["status"] == "cancelled"
    assert reply_row["content"] == text_of(frames)
    r2 = httpx.post(
        ctx.server.url + f"/api/v1/chat/requests/{r}/cancel", headers={"Authorization": f"Bearer {ctx.alice}"}
    )
    assert r2.status_code == 409
    await ws.close()


async def test_disconnect_mid_stream_then_resume(ctx: Ctx) -> None:
    ws = await ws_connect(ctx.server, ctx.alice)
    r = rid()
    await ws.send(json.dumps({"type": "send", "request_id": r, "content": "go", "model": "slow"}))
    seen = []
    while len([f for f in seen if f["type"] == "delta"]) < 3:
        seen.append(await recv_json(ws))
    last_seq = max(f.get("seq", 0) for f in seen)
    await ws.close()  # the phone drops its socket
    deadline = time.monotonic() + 15
    while db_rows(r)[0]["state"] != "done" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    req, msgs = db_rows(r)
    stored = next(m for m in msgs if m["role"] == "assistant")
    assert req["state"] == "done" and stored["status"] == "complete"
    ws = await ws_connect(ctx.server, ctx.alice)
    await ws.send(json.dumps({"type": "resume", "request_id": r, "after_seq": last_seq}))
    rest = await reply(ws, r)
    assert rest[0]["seq"] == last_seq + 1
    assert text_of([f for f in seen if f.get("request_id") == r] + rest) == stored["content"]
    await ws.close()


async def test_rest_flow_and_sse(ctx: Ctx) -> None:
    headers = {"Authorization": f"Bearer {ctx.alice}"}
    api = ctx.server.url + "/api/v1/chat"
    conv = httpx.post(
        api + "/conversations", json={"title": "rest", "system_prompt": "Be terse."}, headers=headers
    )
    assert conv.status_code == 201
    cid = conv.json()["id"]
    r = rid()
    body = {"request_id": r, "content": "hello over REST", "model": "slow"}
    first = httpx.post(api + f"/conversations/{cid}/messages", json=body, headers=headers)
    assert first.status_code == 202
    again = httpx.post(api + f"/conversations/{cid}/messages", json=body, headers=headers)
    assert again.status_code == 200 and again.json()["message_id"] == first.json()["message_id"]
    clash = httpx.post(
        api + f"/conversations/{cid}/messages", json={**body, "content": "other"}, headers=headers
    )
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "conflict"
    busy = httpx.post(
        api + f"/conversations/{cid}/messages", json={"request_id": rid(), "content": "x"}, headers=headers
    )
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "busy"
    assert httpx.delete(api + f"/conversations/{cid}", headers=headers).status_code == 409
    events = []
    with httpx.stream("GET", api + f"/requests/{r}/events", headers=headers, timeout=20) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 4:
                    break
    last_id = events[-1]["seq"]
    with httpx.stream(
        "GET", api + f"/requests/{r}/events", headers={**headers, "Last-Event-ID": str(last_id)}, timeout=20
    ) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "done"
    state = httpx.get(api + f"/requests/{r}", headers=headers).json()
    assert state["state"] == "done" and state["usage"]["completion_tokens"] == 60
    too_long = httpx.post(
        api + f"/conversations/{cid}/messages",
        json={"request_id": rid(), "content": "x" * 16_001},
        headers=headers,
    )
    assert too_long.status_code == 413
    assert httpx.delete(api + f"/conversations/{cid}", headers=headers).status_code == 204
    assert httpx.get(api + f"/conversations/{cid}", headers=headers).status_code == 404


async def test_slow_consumer_dropped_others_unaffected(ctx: Ctx) -> None:
    """A client that never reads is closed 4408; its reply still completes; another socket keeps its pace."""
    import socket as socketlib

    from websockets.asyncio.client import connect

    def small_buffer_socket() -> socketlib.socket:
        s = socketlib.socket()
        s.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", ctx.server.port))
        return s

    lazy = await connect(
        ctx.server.ws_url,
        sock=small_buffer_socket(),
        max_queue=1,
        max_size=None,
        additional_headers={"Authorization": f"Bearer {ctx.alice}"},
    )
    await recv_json(lazy)
    r = rid()
    await lazy.send(json.dumps({"type": "send", "request_id": r, "content": "flood", "model": "flood"}))
    lazy.transport.pause_reading()  # never read again
    other = await ws_connect(ctx.server, ctx.bob)
    started = time.monotonic()
    r2 = rid()
    await other.send(json.dumps({"type": "send", "request_id": r2, "content": "hi"}))
    frames = await reply(other, r2)
    assert frames[-1]["type"] == "done" and time.monotonic() - started < 5
    deadline = time.monotonic() + 30
    while db_rows(r)[0]["state"] not in ("done", "error") and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert db_rows(r)[0]["state"] == "done"
    lazy.transport.resume_reading()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await recv_json(lazy, 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
