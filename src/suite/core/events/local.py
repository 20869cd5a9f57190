"""The in-process bus: subscriptions with bounded queues, fan-out from any thread to any event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from suite.core.errors import Unavailable, ValidationFailed
from suite.core.events.base import Event, SlowConsumer, check_topic, is_pattern, topic_matches

log = logging.getLogger("suite.events")

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

    def publish_many(self, events: Iterable[Event]) -> None:
        """Publish events in order (on Redis in one round trip)."""
        for event in events:
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
