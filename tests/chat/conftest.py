"""Chat fixtures: brokers (memory and a real redis-server), fast intervals, users and tokens."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

FAST = {
    "heartbeat_s": 0.2,
    "janitor_s": 0.2,
    "min_idle_ms": 800,
    "claim_block_ms": 200,
    "reply_timeout_s": 3.0,
    "chunk_timeout_s": 2.0,
    "retry_backoff_s": 0.05,
    "persist_every_s": 0.2,
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chat_settings(**overrides):  # type: ignore[no-untyped-def]
    from suite.chat.settings import ChatSettings

    return ChatSettings(**{**FAST, "redis_prefix": f"t{uuid.uuid4().hex[:8]}:", **overrides})


@pytest.fixture(params=["memory", "redis"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def broker(broker_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[object]:
    """The same contract against the in-process broker and a real redis-server."""
    settings = chat_settings()
    if broker_kind == "memory":
        from suite.chat.broker.memory import MemoryBroker

        b: object = MemoryBroker(settings)
    else:
        url = request.getfixturevalue("redis_url")
        from suite.chat.broker.redis import RedisBroker

        b = RedisBroker(url, settings)
    await b.start()  # type: ignore[attr-defined]
    yield b
    await b.close()  # type: ignore[attr-defined]


@pytest.fixture
def chat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from .helpers import fast_env, scripted_options

    fast_env(monkeypatch)
    scripted_options(monkeypatch, tokens=12)
