"""The Redis bus: events cross processes through Redis pub/sub (channels `suite:events:<topic>`)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable

from pydantic import ValidationError

from suite.core.errors import Unavailable
from suite.core.events.base import CHANNEL_PREFIX, Event
from suite.core.events.local import LocalBus, Subscription

log = logging.getLogger("suite.events")

READY_TIMEOUT_S = 5.0


def redis_channel(topic: str) -> str:
    """The Redis channel of a topic."""
    return CHANNEL_PREFIX + topic


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
            self._client.publish(redis_channel(event.topic), event.json_text)
        except redis.RedisError as exc:
            raise Unavailable(f"{self.where}: cannot publish event to {event.topic}: {exc}") from exc

    def publish_many(self, events: Iterable[Event]) -> None:
        import redis

        pipe = self._client.pipeline(transaction=False)
        for event in events:
            pipe.publish(redis_channel(event.topic), event.json_text)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise Unavailable(f"{self.where}: cannot publish events: {exc}") from exc

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
