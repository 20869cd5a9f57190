"""The OpenAI-compatible /v1 against a real server: raw HTTP and the `openai` SDK, per-key limits."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import pytest

from .helpers import Server, make_user, reset_chat


class Ctx:
    server: Server
    token: str
    limited: str
    url: str


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    mp = pytest.MonkeyPatch()
    data = tmp_path_factory.mktemp("v1") / "data"
    for key in [k for k in os.environ if k.startswith("SUITE_")]:
        if key not in ("SUITE_REQUIRE_SERVICES", "SUITE_TEST_POSTGRES_URL"):
            mp.delenv(key)
    mp.setenv("SUITE_DATA_DIR", str(data))
    mp.setenv("SUITE_ENV", "test")
    from .conftest import FAST

    for key, value in {**FAST, "max_tokens": 32}.items():
        mp.setenv(f"SUITE_CHAT__{key.upper()}", json.dumps(value))
    mp.setenv("SUITE_CHAT__DEFAULT_MODEL", "scripted")
    mp.setenv("SUITE_LLM__PROVIDERS__SCRIPTED__KIND", "scripted")
    mp.setenv("SUITE_LLM__PROVIDERS__SCRIPTED__OPTIONS", json.dumps({"tokens": 12}))
    mp.setenv("SUITE_LLM__PROVIDERS__LONG__KIND", "scripted")
    mp.setenv("SUITE_LLM__PROVIDERS__LONG__OPTIONS", json.dumps({"tokens": 500}))
    mp.setenv("SUITE_LLM__PROVIDERS__ECHO__KIND", "scripted")
    mp.setenv("SUITE_LLM__PROVIDERS__ECHO__OPTIONS", json.dumps({"mode": "echo"}))
    reset_chat()
    c = Ctx()
    _, c.token = make_user("api")
    _, c.limited = make_user("limited")
    from suite.chat.models import KeyLimit
    from suite.core.auth import hash_token
    from suite.core.db import session_scope
    from suite.core.models import ApiToken

    with session_scope() as s:
        token = s.query(ApiToken).filter_by(token_hash=hash_token(c.limited)).one()
        s.add(KeyLimit(api_token_id=token.id, requests_per_minute=2))
    c.server = Server(data.parent / "server.log").start()
    c.url = c.server.url + "/v1"
    yield c
    c.server.stop()
    mp.undo()
    reset_chat()


def post(ctx: Ctx, body: dict, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token or ctx.token}"}
    return httpx.post(ctx.url + "/chat/completions", json=body, headers=headers, timeout=20)


def test_non_streaming(ctx: Ctx) -> None:
    r = post(ctx, {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["role"] == "assistant" and body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 12


def test_streaming_sse(ctx: Ctx) -> None:
    body = {
        "model": "scripted",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = []
    with httpx.stream(
        "POST",
        ctx.url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {ctx.token}"},
        timeout=20,
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(line[6:])
    assert chunks[-1] == "[DONE]"
    parsed = [json.loads(c) for c in chunks[:-1]]
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert parsed[-2]["choices"][0]["finish_reason"] == "stop"
    assert parsed[-1]["choices"] == [] and parsed[-1]["usage"]["completion_tokens"] == 12


def test_models_and_auth(ctx: Ctx) -> None:
    r = httpx.get(ctx.url + "/models", headers={"Authorization": f"Bearer {ctx.token}"})
    assert r.status_code == 200 and r.json()["object"] == "list"
    assert {"id": "scripted", "object": "model", "owned_by": "suite"}.items() <= r.json()["data"][0].items()
    for headers in ({}, {"Authorization": "Bearer st_wrong"}):
        r = httpx.post(
            ctx.url + "/chat/completions", json={"model": "scripted", "messages": []}, headers=headers
        )
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "scripted", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
        (
            {
                "model": "scripted",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function"}],
            },
            400,
            "tools",
        ),
        (
            {"model": "scripted", "messages": [{"role": "user", "content": "x"}], "logprobs": True},
            400,
            "logprobs",
        ),
        ({"model": "scripted", "messages": []}, 400, "messages"),
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        (
            {"model": "scripted", "messages": [{"role": "user", "content": "nul\x00"}]},
            400,
            "messages[0].content",
        ),
    ],
)
def test_bad_requests(ctx: Ctx, body: dict, status: int, param: str) -> None:
    r = post(ctx, body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    if status == 404:
        assert r.json()["error"]["code"] == "model_not_found"


def test_lone_surrogate_and_unicode(ctx: Ctx) -> None:
    raw = b'{"model": "scripted", "messages": [{"role": "user", "content": "bad \\ud800"}]}'
    r = httpx.post(
        ctx.url + "/chat/completions",
        content=raw,
        headers={"Authorization": f"Bearer {ctx.token}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    text = "emoji 👋🏽 CJK 世界 e\u0301"
    r = post(ctx, {"model": "echo", "messages": [{"role": "user", "content": text}]})
    assert r.json()["choices"][0]["message"]["content"] == text


def test_max_tokens_capped(ctx: Ctx) -> None:
    r = post(ctx, {"model": "long", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000})
    assert r.status_code == 200
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 32


def test_rate_limit_per_key(ctx: Ctx) -> None:
    body = {"model": "scripted", "messages": [{"role": "user", "content": "x"}]}
    codes = [post(ctx, body, ctx.limited).status_code for _ in range(2)]
    assert codes == [200, 200]
    r = post(ctx, body, ctx.limited)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert post(ctx, body).status_code == 200  # another key is unaffected


def test_openai_sdk(ctx: Ctx) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=ctx.url, api_key=ctx.token)
    out = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content and out.usage.completion_tokens == 12
    stream = client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == out.choices[0].message.content
    assert next(m.id for m in client.models.list()) == "scripted"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=ctx.url, api_key="st_bad").models.list()
