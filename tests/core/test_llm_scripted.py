"""The scripted provider (deterministic, labelled) and the helpers every provider shares."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from suite.core.errors import ConfigError
from suite.core.llm import ChatChunk, ProviderError, ProviderRateLimited, ProviderTimeout
from suite.core.llm.base import StopMatcher, normalise_messages
from suite.core.llm.scripted import ScriptedProvider

HELLO = [{"role": "user", "content": "Tell me something"}]


async def chunks_of(provider: ScriptedProvider, messages: Any = HELLO, **kwargs: Any) -> list[ChatChunk]:
    return [chunk async for chunk in provider.stream_chat(messages, **kwargs)]


def test_fixed_reply_streams_words_then_final_chunk() -> None:
    provider = ScriptedProvider(reply="Paris is the capital.")
    chunks = asyncio.run(chunks_of(provider))
    assert [c.delta for c in chunks[:-1]] == ["Paris", " is", " the", " capital."]
    final = chunks[-1]
    assert final.finish_reason == "stop" and final.usage is not None
    assert final.usage.completion_tokens == 4 and final.usage.prompt_tokens > 0
    assert final.model == "scripted-fixed"


def test_scripted_is_labelled_as_such() -> None:
    info = ScriptedProvider("bench", mode="echo").info()
    assert info.scripted and info.kind == "scripted" and info.name == "bench"
    assert "scripted" in info.model and "not a real model" in info.label
    reply = ScriptedProvider().complete_sync(HELLO)
    assert "scripted" in reply.model


def test_echo_mode_and_token_count() -> None:
    echo = ScriptedProvider(mode="echo")
    assert echo.complete_sync([{"role": "system", "content": "x"}, *HELLO]).text == "Tell me something"
    many = ScriptedProvider(reply="a b", tokens=7)
    reply = many.complete_sync(HELLO)
    assert reply.text == "a b a b a b a" and reply.usage.completion_tokens == 7


def test_max_tokens_gives_length_and_stop_strings_cut() -> None:
    provider = ScriptedProvider(reply="one two three four")
    reply = provider.complete_sync(HELLO, max_tokens=2)
    assert reply.text == "one two" and reply.finish_reason == "length"
    cut = provider.complete_sync(HELLO, stop=["thr"])
    assert cut.text == "one two " and cut.finish_reason == "stop"


def test_fail_times_then_success() -> None:
    provider = ScriptedProvider(fail_times=2, fail_kind="rate_limited", retry_after_s=0.5)
    for _ in range(2):
        with pytest.raises(ProviderRateLimited) as exc:
            provider.complete_sync(HELLO)
        assert exc.value.retry_after == 0.5
    assert provider.complete_sync(HELLO).finish_reason == "stop"
    assert provider.requests == 3


@pytest.mark.parametrize(
    "kind, code",
    [
        ("provider_error", "provider_error"),
        ("provider_timeout", "provider_timeout"),
        ("provider_unavailable", "provider_unavailable"),
    ],
)
def test_fail_kinds(kind: str, code: str) -> None:
    with pytest.raises(ProviderError) as exc:
        ScriptedProvider(fail_times=1, fail_kind=kind).complete_sync(HELLO)
    assert exc.value.code == code


def test_stall_after_with_timeout() -> None:
    provider = ScriptedProvider(reply="a b c d", stall_after=2, stall_s=0.05)

    async def go() -> tuple[list[str], BaseException | None]:
        got: list[str] = []
        try:
            async for chunk in provider.stream_chat(HELLO):
                got.append(chunk.delta)
        except ProviderTimeout as exc:
            return got, exc
        return got, None

    got, error = asyncio.run(go())
    assert got == ["a", " b"] and isinstance(error, ProviderTimeout)


def test_stall_forever_until_the_caller_gives_up() -> None:
    provider = ScriptedProvider(reply="a b c d", stall_after=1)

    async def go() -> list[str]:
        got: list[str] = []
        stream = provider.stream_chat(HELLO)
        got.append((await anext(stream)).delta)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(stream), 0.05)
        return got

    assert asyncio.run(go()) == ["a"]
    assert provider.cancelled == 1


def test_aclose_counts_as_cancelled() -> None:
    provider = ScriptedProvider(reply="a b c d e f", token_delay_s=0.001, ttft_s=0.001)

    async def go() -> None:
        stream = provider.stream_chat(HELLO)
        await anext(stream)
        await stream.aclose()

    asyncio.run(go())
    assert provider.cancelled == 1


def test_embeddings_are_deterministic_unit_vectors() -> None:
    provider = ScriptedProvider(embed_dim=16)
    a, b, a2 = provider.embed_sync(["alpha", "beta", "alpha"])
    assert a == a2 and a != b and len(a) == 16
    assert math.isclose(sum(v * v for v in a), 1.0, rel_tol=1e-9)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"llm.providers.scripted.options.nope"):
        ScriptedProvider(nope=1)
    with pytest.raises(ConfigError, match=r"options.mode"):
        ScriptedProvider(mode="parrot")


def test_messages_are_validated() -> None:
    with pytest.raises(ValueError, match="empty"):
        normalise_messages([])
    with pytest.raises(ValueError, match=r"messages\[0\].role"):
        normalise_messages([{"role": "wizard", "content": "x"}])
    with pytest.raises(ValueError, match="max_tokens"):
        ScriptedProvider().complete_sync(HELLO, max_tokens=0)


def test_sync_helpers_refuse_a_running_loop() -> None:
    provider = ScriptedProvider()

    async def go() -> None:
        with pytest.raises(RuntimeError, match="await instead"):
            provider.complete_sync(HELLO)

    asyncio.run(go())


def test_sync_stream_iterates_and_closes() -> None:
    provider = ScriptedProvider(reply="a b c")
    assert [c.delta for c in provider.stream_chat_sync(HELLO)][:3] == ["a", " b", " c"]
    stream = provider.stream_chat_sync(HELLO)
    next(stream)
    stream.close()
    assert provider.cancelled == 1


@pytest.mark.parametrize(
    "deltas, stops, expected",
    [
        (["Hello wor", "ld, bye"], ["world"], "Hello "),
        (["ab", "c<|", "im_end|>tail"], ["<|im_end|>"], "abc"),
        (["<", "x"], ["<|im_end|>"], "<x"),
        (["no stops here"], [], "no stops here"),
        (["keep <|im", "_start"], ["<|im_end|>"], "keep <|im_start"),
    ],
)
def test_stop_matcher(deltas: list[str], stops: list[str], expected: str) -> None:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(d) for d in deltas) + matcher.flush()
    assert out == expected
