"""A queued job's in-memory handle and signals, and the forwarder of job events to core's event bus."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("suite.imagegen.worker")
Listener = Callable[[str, dict[str, Any]], None]


@dataclass
class Signals:
    cancel: threading.Event = field(default_factory=threading.Event)
    interrupt: threading.Event = field(default_factory=threading.Event)
    skip: threading.Event = field(default_factory=threading.Event)


@dataclass
class JobHandle:
    id: str
    payload: dict[str, Any]
    owner_user_id: int | None = None
    client_id: str | None = None
    origin: str = "native"
    status: str = "queued"
    step: int = 0
    total: int = 0
    signals: Signals = field(default_factory=Signals)
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] = field(default_factory=dict)
    read: dict[str, Any] | None = None  # the finished job as `service.job_read` shows it (set by the worker)
    created: float = field(default_factory=time.monotonic)
    last_progress: float = 0.0
    started: float | None = None


class BusForwarder:
    """Job events to core's event bus (other processes, WebSocket topics) from a thread of its own, so a slow
    bus (Redis) never delays a generation step. Bounded: progress is dropped before a status is. Skipped
    while an in-process bus has no subscriber."""

    LIMIT = 1000

    def __init__(self) -> None:
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def send(self, event: str, data: dict[str, Any]) -> None:
        if not self._listened():
            return
        with self._cond:
            if len(self._queue) >= self.LIMIT and event in ("job.progress", "job.preview"):
                return
            self._queue.append((event, data))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="imagegen-events", daemon=True)
                self._thread.start()
            self._cond.notify()

    @staticmethod
    def _listened() -> bool:
        """False when the bus is this process's own and nothing subscribes to it: then no thread wakes up
        and nothing is built per event (a Redis bus always publishes: other processes may listen)."""
        from suite.core import events
        from suite.core.events.local import LocalBus

        bus = events.get_bus()
        return type(bus) is not LocalBus or bus.subscriber_count() > 0

    def _run(self) -> None:
        from suite.core import events

        while True:
            with self._cond:
                if not self._queue and not self._cond.wait(timeout=5):
                    self._thread = None
                    return  # idle: the next event starts a new thread
                batch = list(self._queue)
                self._queue.clear()
            for event, data in batch:
                try:
                    events.publish(events.job_topic(data["job_id"]), event, data)
                except Exception as exc:  # the bus being down never stops generation
                    log.debug("imagegen event not published on the bus: %s", exc)

    def flush(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if not self._queue:
                    return
            time.sleep(0.01)
