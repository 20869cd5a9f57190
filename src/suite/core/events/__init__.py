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
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import cached_property
from types import TracebackType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from suite.core.config import get_settings
from suite.core.errors import SuiteError, Unavailable, ValidationFailed

log = logging.getLogger("suite.events")

CHANNEL_PREFIX = "suite:events:"
MAX_TOPIC_LENGTH = 200
#: Frame types of the WebSocket protocol; events may not use them, so clients can tell the two apart.
RESERVED_TYPES = frozenset({"auth", "subscribe", "subscribed", "error"})
READY_TIMEOUT_S = 5.0

_SEGMENT = r"[A-Za-z0-9_:-]+"
TOPIC_RE = re.compile(rf"{_SEGMENT}(\.{_SEGMENT})*")  # used with fullmatch
PATTERN_RE = re.compile(rf"\*|{_SEGMENT}(\.{_SEGMENT})*\.\*")
TYPE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


class SlowConsumer(SuiteError):
    """The subscriber's queue overflowed; it was dropped and receives nothing more."""

    code = "slow_consumer"
    status_code = 503


class Event(BaseModel):
    """One event. `data` must be plain JSON (no NaN, no datetimes): it crosses processes, reaches browsers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    topic: str
    type: str
    data: dict[str, Any] = Field(default_factory=dict)
    ts: float = Field(default_factory=time.time, description="publish time, seconds since the epoch")

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        check_topic(value)
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if not TYPE_RE.fullmatch(value):
            raise ValueError("type must be 1-100 characters of letters, digits and . _ : -")
        if value in RESERVED_TYPES:
            raise ValueError(f"type {value!r} is reserved for the WebSocket protocol")
        return value

    @field_validator("data")
    @classmethod
    def _data(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"data is not JSON-serialisable: {exc}") from None
        return value

    @cached_property
    def json_text(self) -> str:
        """The JSON form sent to Redis and WebSocket clients (computed once per event)."""
        return self.model_dump_json()


def check_topic(topic: str, *, pattern: bool = False) -> None:
    """Raise ValueError unless `topic` is a valid topic (or, with `pattern`, a topic or `prefix.*` / `*`)."""
    if not topic:
        raise ValueError("topic must not be empty")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise ValueError(f"topic longer than {MAX_TOPIC_LENGTH} characters")
    if TOPIC_RE.fullmatch(topic) or (pattern and PATTERN_RE.fullmatch(topic)):
        return
    allowed = "dotted segments of letters, digits and _ : -" + (
        ", optionally ending in .*" if pattern else ""
    )
    raise ValueError(f"invalid topic {topic!r}: {allowed}")


def is_pattern(topic: str) -> bool:
    return topic.endswith("*")


def topic_matches(pattern: str, topic: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic


def job_topic(job_id: str) -> str:
    return f"jobs.{job_id}"


def user_topic(user_id: int) -> str:
    return f"user.{user_id}"


def make_event(topic: str, type: str, data: dict[str, Any] | None = None) -> Event:
    """A validated event, or ValidationFailed naming the problem."""
    try:
        return Event(topic=topic, type=type, data=data if data is not None else {})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "event"
        raise ValidationFailed(f"invalid event {where}: {err['msg'].removeprefix('Value error, ')}") from None


_CLOSED = object()  # queue sentinel: the subscription ended


class Subscription:
    """Events of one topic (or `prefix.*` pattern) for one consumer, bound to the event loop that created it.

    Use it as `async with` (which waits until the bus listens, so nothing published afterwards is missed) and
    iterate. Iteration ends when the subscription or the bus closes, and raises `SlowConsumer` once the
    queue of `maxsize` undelivered events overflowed.
    """

    def __init__(self, bus: LocalBus, topic: str, maxsize: int, loop: asyncio.AbstractEventLoop) -> None:
        self.topic = topic
        self.maxsize = maxsize
        self.loop = loop
        self.dropped = False
        self.closed = False
        self._bus = bus
        self._queue: asyncio.Queue[Any] = asyncio.Queue()  # bounded by hand so the sentinel always fits
        self._pending = 0
        self._ended = asyncio.Event()

    # Called in `loop` only.
    def _put(self, event: Event) -> None:
        if self.closed:
            return
        if self._pending >= self.maxsize:
            self.dropped = True
            log.info("subscriber of %s dropped: %d events undelivered", self.topic, self._pending)
            self._end()
            return
        self._pending += 1
        self._queue.put_nowait(event)

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._remove(self)
            self._queue.put_nowait(_CLOSED)
            self._ended.set()

    def close(self) -> None:
        """Stop receiving. Safe from any thread."""
        if _running_loop() is self.loop:
            self._end()
        else:
            self._bus._remove(self)
            try:
                self.loop.call_soon_threadsafe(self._end)
            except RuntimeError:  # loop already closed
                self.closed = True

    async def wait_ready(self) -> None:
        await self._bus.wait_ready()

    async def wait_closed(self) -> bool:
        """Wait until the subscription ends; True when it ended because the consumer was too slow."""
        await self._ended.wait()
        return self.dropped

    async def get(self) -> Event:
        """The next event; StopAsyncIteration when closed, SlowConsumer when dropped."""
        if self.dropped:
            raise self._slow()
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # later calls end too
            raise self._slow() if self.dropped else StopAsyncIteration
        self._pending -= 1
        event: Event = item
        return event

    def qsize(self) -> int:
        return self._pending

    def _slow(self) -> SlowConsumer:
        return SlowConsumer(f"subscriber of {self.topic} fell {self.maxsize} events behind and was dropped")

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await self.get()

    async def __aenter__(self) -> Subscription:
        try:
            await self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class LocalBus:
    """In-process fan-out: publishers in any thread, subscribers in any event loop.

    Each event crosses into a subscriber's loop with one `call_soon_threadsafe` per loop (not per subscriber),
    or is delivered directly when published from that loop.
    """

    def __init__(self, *, queue_size: int) -> None:
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._exact: dict[str, set[Subscription]] = defaultdict(set)
        self._patterns: dict[str, set[Subscription]] = defaultdict(set)
        self._closed = False

    # --- publishing --------------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        self._fanout(event)

    async def apublish(self, event: Event) -> None:
        self._fanout(event)

    def _fanout(self, event: Event) -> None:
        with self._lock:
            targets = list(self._exact.get(event.topic, ()))
            for pattern, matching in self._patterns.items():
                if topic_matches(pattern, event.topic):
                    targets.extend(matching)
        if not targets:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[Subscription]] = defaultdict(list)
        for sub in targets:
            by_loop[sub.loop].append(sub)
        here = _running_loop()
        for loop, subs in by_loop.items():
            if loop is here:
                _deliver(subs, event)
                continue
            try:
                loop.call_soon_threadsafe(_deliver, subs, event)
            except RuntimeError:  # that loop is closed: its subscribers are gone
                for sub in subs:
                    self._remove(sub)

    # --- subscribing -------------------------------------------------------------------------------

    def subscribe(self, topic: str) -> Subscription:
        try:
            check_topic(topic, pattern=True)
        except ValueError as exc:
            raise ValidationFailed(str(exc)) from None
        loop = _running_loop()
        if loop is None:
            raise RuntimeError("subscribe() needs a running event loop")
        sub = Subscription(self, topic, self.queue_size, loop)
        with self._lock:
            if self._closed:
                raise Unavailable("the event bus is closed")
            (self._patterns if is_pattern(topic) else self._exact)[topic].add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            table = self._patterns if is_pattern(sub.topic) else self._exact
            subs = table.get(sub.topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del table[sub.topic]

    async def wait_ready(self) -> None:
        return None

    def subscriber_count(self, topic: str | None = None) -> int:
        """Live subscriptions to exactly `topic` (a topic or pattern), or to anything when None."""
        with self._lock:
            if topic is not None:
                return len((self._patterns if is_pattern(topic) else self._exact).get(topic, ()))
            return sum(len(s) for s in self._exact.values()) + sum(len(s) for s in self._patterns.values())

    # --- shutdown ----------------------------------------------------------------------------------

    def close(self) -> None:
        """End every subscription; later subscribe() calls fail."""
        with self._lock:
            self._closed = True
            subs = [s for table in (self._exact, self._patterns) for group in table.values() for s in group]
        for sub in subs:
            sub.close()

    async def aclose(self) -> None:
        self.close()


def _deliver(subs: list[Subscription], event: Event) -> None:
    for sub in subs:
        sub._put(event)


class RedisBus(LocalBus):
    """Redis pub/sub: one publisher client, and one listener thread per process that psubscribes to every
    event channel and fans out to this process's subscribers. Events published here also come back through
    Redis, so every process sees one order.
    """

    def __init__(self, *, url: str, queue_size: int) -> None:
        import redis

        super().__init__(queue_size=queue_size)
        self.url = url
        self._client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._listener_lock = threading.Lock()

    @property
    def where(self) -> str:
        from suite.core.db import safe_url

        return f"redis {safe_url(self.url)}"

    def publish(self, event: Event) -> None:
        import redis

        try:
            self._client.publish(CHANNEL_PREFIX + event.topic, event.json_text)
        except redis.RedisError as exc:
            raise Unavailable(f"{self.where}: cannot publish event to {event.topic}: {exc}") from exc

    async def apublish(self, event: Event) -> None:
        await asyncio.to_thread(self.publish, event)

    def subscribe(self, topic: str) -> Subscription:
        sub = super().subscribe(topic)
        self._start_listener()
        return sub

    async def wait_ready(self) -> None:
        if self._ready.is_set():
            return
        if not await asyncio.to_thread(self._ready.wait, READY_TIMEOUT_S):
            raise Unavailable(f"{self.where}: not connected, cannot subscribe to events")

    def _start_listener(self) -> None:
        with self._listener_lock:
            if self._listener is None and not self._stop.is_set():
                self._listener = threading.Thread(target=self._listen, name="suite-events-redis", daemon=True)
                self._listener.start()

    def _listen(self) -> None:
        import redis

        backoff = 0.1
        while not self._stop.is_set():
            # No socket timeout: get_message() has its own timeout, and health checks catch a dead peer.
            client = redis.Redis.from_url(self.url, socket_connect_timeout=2, health_check_interval=30)
            pubsub = client.pubsub()
            try:
                pubsub.psubscribe(CHANNEL_PREFIX + "*")
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        self._ready.set()
                        backoff = 0.1
                    elif message["type"] == "pmessage":
                        self._received(message["data"])
            except Exception as exc:  # keep listening whatever happened; a dead listener would be silent
                if not isinstance(exc, redis.RedisError):
                    log.exception("%s: event listener failed; restarting", self.where)
                elif self._ready.is_set():
                    log.warning("%s: event listener lost its connection (%s); reconnecting", self.where, exc)
                self._ready.clear()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                try:
                    pubsub.close()
                    client.close()
                except redis.RedisError:
                    pass
        self._ready.clear()

    def _received(self, raw: bytes) -> None:
        try:
            event = Event.model_validate_json(raw)
        except ValidationError as exc:
            log.warning("ignoring malformed event from %s: %s", self.where, exc.errors()[0]["msg"])
            return
        self._fanout(event)

    def close(self) -> None:
        self._stop.set()
        super().close()
        self._client.close()

    async def aclose(self) -> None:
        self.close()
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            await asyncio.to_thread(listener.join, 2.0)


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
    """Publish events made with `make_event`, in order."""
    bus = get_bus()
    for event in batch:
        bus.publish(event)


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
