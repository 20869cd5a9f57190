"""The `openai` provider against a real OpenAI-protocol server on 127.0.0.1 (llm_fake_server)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from llm_fake_server import FakeOpenAI, ServerThread, Step, wait_for

from suite.core.config import LLMProviderSettings
from suite.core.llm import (
    ChatChunk,
    NotSupported,
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from suite.core.llm.openai import OpenAIProvider, parse_retry_after, safe_url

API_KEY = "sk-test-do-not-leak-4f9a"
MESSAGES = [{"role": "user", "content": "one two three four five"}]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeOpenAI, ServerThread]]:
    app = FakeOpenAI()
    thread = ServerThread(app).start()
    yield app, thread
    thread.stop()


@pytest.fixture
def upstream(server: tuple[FakeOpenAI, ServerThread]) -> FakeOpenAI:
    app, _ = server
    app.reset()
    return app


@pytest.fixture
def base_url(server: tuple[FakeOpenAI, ServerThread]) -> str:
    return server[1].base_url


def make(base_url: str, **overrides: Any) -> OpenAIProvider:
    config = {
        "kind": "openai",
        "base_url": base_url,
        "model": "fake-model",
        "api_key": API_KEY,
        "max_retries": 2,
        "backoff_s": 0.0,
        "timeout_s": 5.0,
        "connect_timeout_s": 2.0,
        **overrides,
    }
    return OpenAIProvider("fake", LLMProviderSettings.model_validate(config))


async def collect(provider: OpenAIProvider, **kwargs: Any) -> tuple[list[ChatChunk], BaseException | None]:
    """Every chunk the stream gave before it ended or failed, and the error if it failed."""
    chunks: list[ChatChunk] = []
    try:
        async for chunk in provider.stream_chat(kwargs.pop("messages", MESSAGES), **kwargs):
            chunks.append(chunk)
    except ProviderError as exc:
        return chunks, exc
    finally:
        await provider.aclose()
    return chunks, None


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(c.delta for c in chunks)


# --- the happy paths --------------------------------------------------------------------------------------


def test_stream_yields_deltas_then_one_final_chunk(upstream: FakeOpenAI, base_url: str) -> None:
    chunks, error = asyncio.run(collect(make(base_url), max_tokens=50, temperature=0.2, seed=7, stop=["zzz"]))
    assert error is None
    assert text_of(chunks) == MESSAGES[0]["content"]  # the fake echoes the user's words
    *deltas, final = chunks
    assert all(c.delta and not c.done for c in deltas)
    assert final.finish_reason == "stop" and final.delta == ""
    assert final.usage is not None and final.usage.completion_tokens == 5 and not final.usage.estimated
    assert final.model == "fake-model"
    (record,) = upstream.requests
    assert record.headers["authorization"] == f"Bearer {API_KEY}"
    assert record.body["stream"] is True and record.body["stream_options"] == {"include_usage": True}
    assert record.body["max_tokens"] == 50 and record.body["seed"] == 7 and record.body["stop"] == ["zzz"]
    assert wait_for(lambda: record.outcome == "completed")


def test_streams_reuse_one_keep_alive_connection(upstream: FakeOpenAI, base_url: str) -> None:
    """After `[DONE]` the rest of the body is read, so the next stream skips a TCP connect (B4: time to first
    token). Closing with the chunked terminator unread dropped the connection every time."""

    async def go() -> None:
        provider = make(base_url)
        try:
            for _ in range(3):
                assert text_of([c async for c in provider.stream_chat(MESSAGES)]) == MESSAGES[0]["content"]
        finally:
            await provider.aclose()

    asyncio.run(go())
    peers = [r.peer for r in upstream.requests]
    assert len(peers) == 3 and None not in peers
    assert len(set(peers)) == 1, peers
    assert wait_for(lambda: all(r.outcome == "completed" for r in upstream.requests))


def test_complete_non_streaming(upstream: FakeOpenAI, base_url: str) -> None:
    async def go() -> Any:
        provider = make(base_url)
        try:
            return await provider.complete(MESSAGES, max_tokens=3)
        finally:
            await provider.aclose()

    reply = asyncio.run(go())
    assert reply.text == "one two three"
    assert reply.finish_reason == "length"
    assert reply.usage.completion_tokens == 3 and reply.usage.prompt_tokens == 5
    assert reply.model == "fake-model" and reply.provider == "fake"
    assert upstream.requests[0].body["stream"] is False


def test_headers_from_config_and_one_client_per_loop(upstream: FakeOpenAI, base_url: str) -> None:
    provider = make(base_url, headers={"X-Gateway": "suite"})

    async def go() -> None:
        first = provider.client()
        await provider.complete(MESSAGES)
        await provider.complete(MESSAGES)
        assert provider.client() is first
        await provider.aclose()

    asyncio.run(go())
    assert [r.headers["x-gateway"] for r in upstream.requests] == ["suite", "suite"]


def test_embeddings_and_check(upstream: FakeOpenAI, base_url: str) -> None:
    provider = make(base_url)

    async def go() -> Any:
        try:
            return await provider.embed(["a", "bbb"]), await provider.check()
        finally:
            await provider.aclose()

    vectors, check = asyncio.run(go())
    assert [v[0] for v in vectors] == [1.0, 3.0]
    assert check.ok and "fake-model" in check.detail


def test_embeddings_404_is_not_supported(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(kind="status", status=404))
    with pytest.raises(NotSupported) as exc:
        make(base_url).embed_sync(["a"])
    assert exc.value.code == "not_supported"


def test_sync_wrappers(upstream: FakeOpenAI, base_url: str) -> None:
    provider = make(base_url)
    assert provider.complete_sync(MESSAGES).text == MESSAGES[0]["content"]
    chunks = list(provider.stream_chat_sync(MESSAGES))
    assert text_of(chunks) == MESSAGES[0]["content"] and chunks[-1].done
    assert provider.check_sync().ok
    provider.close_sync()


# --- retries ------------------------------------------------------------------------------------------------


def test_429_with_retry_after_then_success(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(*[Step(kind="status", status=429, headers={"Retry-After": "0"})] * 2)
    chunks, error = asyncio.run(collect(make(base_url)))
    assert error is None and chunks[-1].finish_reason == "stop"
    assert [r.step for r in upstream.requests] == ["status", "status", "ok"]


def test_429_exhausted_is_rate_limited_with_retry_after(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(*[Step(kind="status", status=429, headers={"Retry-After": "0"})] * 3)
    _, error = asyncio.run(collect(make(base_url, max_retries=2)))
    assert isinstance(error, ProviderRateLimited)
    assert error.code == "rate_limited" and error.retry_after == 0.0
    assert error.to_dict()["error"]["details"]["retry_after"] == 0.0
    assert len(upstream.requests) == 3


def test_retry_after_longer_than_allowed_fails_at_once(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(kind="status", status=429, headers={"Retry-After": "120"}))
    provider = make(base_url, options={"max_retry_wait_s": 5})
    _, error = asyncio.run(collect(provider))
    assert isinstance(error, ProviderRateLimited) and error.retry_after == 120.0
    assert len(upstream.requests) == 1


def test_500_then_success_non_streaming(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(kind="status", status=500), Step(kind="status", status=503))
    reply = make(base_url).complete_sync(MESSAGES)
    assert reply.text == MESSAGES[0]["content"]
    assert len(upstream.requests) == 3


def test_500_exhausted_is_a_clear_error(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.default = Step(kind="status", status=500, body='{"error": {"message": "upstream exploded"}}')
    _, error = asyncio.run(collect(make(base_url, max_retries=1)))
    assert isinstance(error, ProviderError) and error.code == "provider_error"
    assert error.status == 500 and "500" in error.message and "upstream exploded" in error.message
    assert "\n" not in error.message
    assert len(upstream.requests) == 2


def test_backoff_waits_between_retries(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(kind="status", status=502))
    provider = make(base_url, backoff_s=0.01)
    chunks, error = asyncio.run(collect(provider))
    assert error is None and chunks[-1].done and len(upstream.requests) == 2


def test_client_errors_are_not_retried(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(kind="status", status=400, body='{"error": {"message": "bad temperature"}}'))
    _, error = asyncio.run(collect(make(base_url)))
    assert isinstance(error, ProviderError) and "bad temperature" in error.message
    assert len(upstream.requests) == 1


def test_auth_failure_names_the_setting_not_the_key(
    upstream: FakeOpenAI, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.plan(Step(kind="status", status=503), Step(kind="status", status=401))
    provider = make(base_url)
    _, error = asyncio.run(collect(provider))
    assert isinstance(error, ProviderAuthFailed) and error.code == "provider_auth_failed"
    assert "llm.providers.fake.api_key" in error.message
    shown = [error.message, str(error.to_dict()), repr(provider), str(provider.info().to_dict()), caplog.text]
    assert all(API_KEY not in text for text in shown)


def test_connection_refused_is_retried_then_unavailable() -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = make(f"http://127.0.0.1:{port}/v1", max_retries=1)
    _, error = asyncio.run(collect(provider))
    assert isinstance(error, ProviderUnavailable) and error.code == "provider_unavailable"
    assert f"127.0.0.1:{port}" in error.message
    check = provider.check_sync()
    assert not check.ok and check.code == "provider_unavailable"


# --- broken streams ---------------------------------------------------------------------------------------


def test_invalid_json_in_stream(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(kind="invalid_json", after=1))
    chunks, error = asyncio.run(collect(make(base_url)))
    assert isinstance(error, ProviderBadResponse) and error.code == "provider_bad_response"
    assert "invalid JSON" in error.message
    assert text_of(chunks) == "one"
    assert len(upstream.requests) == 1


def test_invalid_json_non_streaming(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(kind="invalid_json"))
    with pytest.raises(ProviderBadResponse, match="invalid JSON"):
        make(base_url).complete_sync(MESSAGES)
    assert len(upstream.requests) == 1


def test_close_mid_stream_is_not_retried_after_the_first_token(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(kind="close_mid", after=2))
    chunks, error = asyncio.run(collect(make(base_url)))
    assert isinstance(error, ProviderError) and error.code == "provider_error"
    assert "after 2 tokens" in error.message
    assert text_of(chunks) == "one two"  # what was sent stays sent; nothing duplicated
    assert len(upstream.requests) == 1


def test_close_before_the_first_token_is_retried(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(kind="close_mid", after=0))
    chunks, error = asyncio.run(collect(make(base_url)))
    assert error is None and text_of(chunks) == MESSAGES[0]["content"]
    assert [r.step for r in upstream.requests] == ["close_mid", "ok"]


def test_stream_without_done_is_an_error(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(kind="no_done", after=3))
    chunks, error = asyncio.run(collect(make(base_url)))
    assert isinstance(error, ProviderError) and "ended before the reply finished" in error.message
    assert text_of(chunks) == "one two three"


def test_error_event_in_stream(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(kind="error_event", after=1))
    _, error = asyncio.run(collect(make(base_url)))
    assert isinstance(error, ProviderError) and "the model crashed" in error.message


def test_stall_mid_stream_times_out_and_hangs_up(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(kind="stall_mid", after=2, stall_s=60))
    chunks, error = asyncio.run(collect(make(base_url, timeout_s=1.0)))
    assert isinstance(error, ProviderTimeout) and error.code == "provider_timeout"
    assert "after 2 tokens" in error.message
    assert text_of(chunks) == "one two"
    assert len(upstream.requests) == 1
    assert wait_for(lambda: upstream.requests[0].outcome == "disconnected")


# --- cancellation -----------------------------------------------------------------------------------------


def test_aclose_closes_the_upstream_response(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(reply=" ".join(["word"] * 400), token_delay_s=0.02))
    provider = make(base_url)

    async def go() -> list[str]:
        got: list[str] = []
        stream = provider.stream_chat(MESSAGES)
        async for chunk in stream:
            got.append(chunk.delta)
            if len(got) == 2:
                break
        await stream.aclose()
        await provider.aclose()
        return got

    assert asyncio.run(go()) == ["word", " word"]
    assert wait_for(lambda: upstream.requests[0].outcome == "disconnected")


def test_closing_a_sync_stream_closes_the_upstream(upstream: FakeOpenAI, base_url: str) -> None:
    upstream.plan(Step(reply=" ".join(["word"] * 400), token_delay_s=0.02))
    provider = make(base_url)
    stream = provider.stream_chat_sync(MESSAGES)
    assert next(stream).delta == "word"
    stream.close()
    assert wait_for(lambda: upstream.requests[0].outcome == "disconnected")
    provider.close_sync()


# --- pieces ------------------------------------------------------------------------------------------------


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert parse_retry_after(httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None


def test_safe_url_drops_credentials_and_bad_config() -> None:
    assert safe_url("https://user:pw@api.example.com:8443/v1?key=x") == "https://api.example.com:8443/v1"
    from suite.core.errors import ConfigError

    with pytest.raises(ConfigError, match="base_url"):
        make("ftp://example.com")
    with pytest.raises(ConfigError, match=r"options\.nope"):
        make("http://127.0.0.1:9/v1", options={"nope": 1})
