"""Limits against a real `suite chat serve`: the WebSocket `rate_limited` frame, `/v1` tokens per minute and
concurrent requests per key (429 + Retry-After in OpenAI's error shape), and nothing half-written."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator

import httpx
import pytest

from .helpers import Server, make_user, recv_json, reply, reset_chat, ws_connect

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class Ctx:
    server: Server
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    mp = pytest.MonkeyPatch()
    data = tmp_path_factory.mktemp("limits") / "data"
    for key in [k for k in os.environ if k.startswith("SUITE_")]:
        if key not in ("SUITE_REQUIRE_SERVICES", "SUITE_TEST_POSTGRES_URL"):
            mp.delenv(key)
    mp.setenv("SUITE_DATA_DIR", str(data))
    mp.setenv("SUITE_ENV", "test")
    from .conftest import FAST

    for key, value in {**FAST, "messages_per_minute": 3}.items():
        mp.setenv(f"SUITE_CHAT__{key.upper()}", json.dumps(value))
    mp.setenv("SUITE_CHAT__API_LIMITS__RPM", "1000")
    mp.setenv("SUITE_CHAT__API_LIMITS__TPM", "20")
    mp.setenv("SUITE_CHAT__API_LIMITS__MAX_CONCURRENT", "1")
    mp.setenv("SUITE_CHAT__DEFAULT_MODEL", "scripted")
    mp.setenv("SUITE_LLM__PROVIDERS__SCRIPTED__KIND", "scripted")
    mp.setenv("SUITE_LLM__PROVIDERS__SCRIPTED__OPTIONS", json.dumps({"tokens": 12}))
    mp.setenv("SUITE_LLM__PROVIDERS__SLOW__KIND", "scripted")
    mp.setenv("SUITE_LLM__PROVIDERS__SLOW__OPTIONS", json.dumps({"tokens": 8, "token_delay_s": 0.25}))
    reset_chat()
    c = Ctx()
    c.tokens = {name: make_user(name)[1] for name in ("ws", "tpm", "conc")}
    c.server = Server(data.parent / "server.log").start()
    yield c
    c.server.stop()
    mp.undo()
    reset_chat()


@pytest.fixture(autouse=True)
def shared_env(ctx: Ctx) -> None:
    os.environ["SUITE_DATA_DIR"] = str(ctx.server.log.parent / "data")
    reset_chat()


def fresh_minute(needed_s: float = 10.0) -> None:
    """Limits count per clock minute (fixed window): start where the window will not roll over mid-test."""
    import time

    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.05)


def requests_of(username: str) -> list[tuple[str, str]]:
    from sqlalchemy import select

    from suite.chat.models import ChatRequest
    from suite.core.db import session_scope
    from suite.core.models import User

    with session_scope() as s:
        uid = s.scalar(select(User.id).where(User.username == username))
        return [
            (r.client_request_id, r.state)
            for r in s.scalars(select(ChatRequest).where(ChatRequest.user_id == uid))
        ]


async def test_ws_rate_limited_frame(ctx: Ctx) -> None:
    fresh_minute()
    ws = await ws_connect(ctx.server, ctx.tokens["ws"])
    sent = []
    for i in range(3):
        r = str(uuid.uuid4())
        sent.append(r)
        await ws.send(json.dumps({"type": "send", "request_id": r, "content": f"message {i}"}))
        assert (await reply(ws, r))[-1]["type"] == "done"
    over = str(uuid.uuid4())
    await ws.send(json.dumps({"type": "send", "request_id": over, "content": "one too many"}))
    frame = await recv_json(ws)
    assert frame["type"] == "error" and frame["code"] == "rate_limited" and frame["request_id"] == over
    assert 0 < frame["retry_after"] <= 60 and "3 messages a minute" in frame["message"]
    # the socket stays open, and the refused message left no row behind
    await ws.send(json.dumps({"type": "ping", "ts": 7}))
    assert await recv_json(ws) == {"type": "pong", "ts": 7}
    assert sorted(requests_of("ws")) == sorted((r, "done") for r in sent)
    # REST shares the same per-user budget: 429 with Retry-After
    headers = {"Authorization": f"Bearer {ctx.tokens['ws']}"}
    conv = httpx.post(f"{ctx.server.url}/api/v1/chat/conversations", json={}, headers=headers).json()
    r = httpx.post(
        f"{ctx.server.url}/api/v1/chat/conversations/{conv['id']}/messages",
        json={"request_id": str(uuid.uuid4()), "content": "rest too"},
        headers=headers,
    )
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 61
    await ws.close()


def completion(ctx: Ctx, token: str, **body: object) -> httpx.Response:
    payload = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], **body}
    return httpx.post(
        f"{ctx.server.url}/v1/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
    )


def test_v1_tokens_per_minute(ctx: Ctx) -> None:
    token = ctx.tokens["tpm"]
    fresh_minute()
    assert completion(ctx, token).json()["usage"]["completion_tokens"] == 12  # 12 of 20
    assert completion(ctx, token).status_code == 200  # under the limit when it starts (24 after)
    over = completion(ctx, token)
    assert over.status_code == 429, over.text
    err = over.json()["error"]
    assert (
        err["code"] == "rate_limit_exceeded"
        and err["type"] == "tokens"
        and "20 tokens per minute" in err["message"]
    )
    assert 1 <= int(over.headers["Retry-After"]) <= 61
    assert len(requests_of("tpm")) == 2  # the refused one was never stored


async def test_v1_concurrent_requests(ctx: Ctx) -> None:
    token = ctx.tokens["conc"]
    fresh_minute()
    headers = {"Authorization": f"Bearer {token}"}
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "slowly"}]}
    async with httpx.AsyncClient(base_url=ctx.server.url, headers=headers, timeout=20) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body) as first:
            assert first.status_code == 200
            lines = first.aiter_lines()
            assert (await anext(lines)).startswith("data: ")  # the first one is running
            second = await client.post("/v1/chat/completions", json={**body, "stream": False})
            assert second.status_code == 429
            err = second.json()["error"]
            assert err["code"] == "rate_limit_exceeded" and "1 concurrent" in err["message"]
            assert second.headers["Retry-After"] == "1"
            rest = [line async for line in lines]
            assert rest[-2] == "data: [DONE]" or "data: [DONE]" in rest
        # the slot is released when the first ends
        for _ in range(50):
            third = await client.post("/v1/chat/completions", json={**body, "stream": False})
            if third.status_code != 429:
                break
            await asyncio.sleep(0.1)
        assert third.status_code == 200, third.text
