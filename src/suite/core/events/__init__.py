"""Event bus: typed events by topic, in-process by default, Redis pub/sub when `redis_url` is set.

`publish()` is sync and safe from any thread or process (Huey worker threads, a `suite worker` process);
`apublish()` is for async code. `subscribe()` gives an async iterator with a bounded queue: a subscriber that
falls behind is dropped (`SlowConsumer`), never blocking the publisher or the other subscribers.

Topics are dotted names (`jobs.<id>`, `user.<id>`, `imagegen.models`); a subscription may end in `.*` to
receive every topic under a prefix (`jobs.*`), or be `*` for all. Delivery is at most once: events published
while nobody listens, or while Redis is unreachable, are gone.

    async with events.subscribe(events.job_topic(job_id)) as sub:
        async for event in sub:
            ...

Modules: `base` (the Event model, topics), `local` (subscriptions and the in-process bus), `redis_bus` (Redis
pub/sub). Everything public is importable from here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from suite.core.config import get_settings
from suite.core.events.base import (
    CHANNEL_PREFIX,
    MAX_TOPIC_LENGTH,
    PATTERN_RE,
    RESERVED_TYPES,
    TOPIC_RE,
    TYPE_RE,
    Event,
    SlowConsumer,
    check_topic,
    is_pattern,
    job_topic,
    make_event,
    topic_matches,
    user_topic,
)
from suite.core.events.local import LocalBus, Subscription
from suite.core.events.redis_bus import READY_TIMEOUT_S, RedisBus, redis_channel

__all__ = [
    "CHANNEL_PREFIX",
    "MAX_TOPIC_LENGTH",
    "PATTERN_RE",
    "READY_TIMEOUT_S",
    "RESERVED_TYPES",
    "TOPIC_RE",
    "TYPE_RE",
    "Event",
    "EventBus",
    "LocalBus",
    "RedisBus",
    "SlowConsumer",
    "Subscription",
    "aclose",
    "apublish",
    "check_topic",
    "get_bus",
    "is_pattern",
    "job_topic",
    "make_event",
    "progress",
    "publish",
    "publish_many",
    "redis_channel",
    "reset",
    "subscribe",
    "topic_matches",
    "user_topic",
]

EventBus = LocalBus  # the type callers annotate with; RedisBus is a LocalBus

_bus: LocalBus | None = None
_bus_lock = threading.Lock()


def get_bus() -> LocalBus:
    """The process's bus, created on first use from settings: Redis when `redis_url` is set."""
    global _bus
    bus = _bus
    if bus is None:
        with _bus_lock:
            if _bus is None:
                settings = get_settings()
                size = settings.events.client_queue_size
                _bus = (
                    RedisBus(url=settings.redis_url, queue_size=size)
                    if settings.redis_url
                    else LocalBus(queue_size=size)
                )
            bus = _bus
    return bus


def publish(topic: str, type: str, data: dict[str, Any] | None = None) -> Event:
    """Publish from any thread (sync). ValidationFailed for a bad shape, Unavailable when Redis is down."""
    event = make_event(topic, type, data)
    get_bus().publish(event)
    return event


def publish_many(batch: Iterable[Event]) -> None:
    """Publish events made with `make_event`, in order and at once (one round trip to Redis)."""
    get_bus().publish_many(batch)


async def apublish(topic: str, type: str, data: dict[str, Any] | None = None) -> Event:
    """Publish from async code without blocking the event loop."""
    event = make_event(topic, type, data)
    await get_bus().apublish(event)
    return event


def subscribe(topic: str) -> Subscription:
    """Subscribe the running event loop to a topic or `prefix.*` pattern; use with `async with`."""
    return get_bus().subscribe(topic)


def progress(job_id: str) -> Callable[..., None]:
    """The job's progress reporter `(done, total=None, message=None)` (DESIGN.md's task example).

    One mechanism: it is `suite.core.tasks.progress`, which records progress in `core_job`, publishes
    `job.progress` on this bus and raises `JobCancelled` once a cancel was requested.
    """
    from suite.core.tasks import progress as job_progress

    return job_progress(job_id)


def reset() -> None:
    """Close and forget the bus (tests, after a settings change)."""
    global _bus
    with _bus_lock:
        bus, _bus = _bus, None
    if bus is not None:
        bus.close()


async def aclose() -> None:
    """Close the bus at server shutdown: subscribers end, the Redis listener stops."""
    global _bus
    with _bus_lock:
        bus, _bus = _bus, None
    if bus is not None:
        await bus.aclose()


def _forget_in_child() -> None:
    # A forked worker must not share the parent's subscriptions, listener thread or Redis sockets.
    global _bus, _bus_lock
    _bus = None
    _bus_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
