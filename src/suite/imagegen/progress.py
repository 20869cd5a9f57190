"""Worker events to asyncio consumers: SSE streams, blocked A1111 calls and Socket.IO rooms.

The worker calls listeners on its own thread; this hub hands each event to the event loop with
`call_soon_threadsafe`, so a slow client never blocks generation (each queue is bounded and drops
progress before it drops a terminal status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from suite.imagegen.models import FINISHED

log = logging.getLogger("suite.imagegen.progress")
QUEUE_SIZE = 256


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queues: dict[str, set[asyncio.Queue[tuple[str, dict[str, Any]]]]] = {}
        self.global_queues: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = set()
        self.status_only: set[asyncio.Queue[Any]] = set()  # listeners that wait for a status, not progress
        self.unsubscribe: Any = None

    def attach(self, worker: Any) -> None:
        if self.unsubscribe is None:
            self.unsubscribe = worker.subscribe(self.on_event)

    def on_event(self, event: str, data: dict[str, Any]) -> None:  # worker thread
        if self.loop.is_closed() or not self._wanted(event, data.get("job_id")):
            return  # nobody listens: no wake-up of the event loop
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._dispatch, event, data)

    def _wanted(self, event: str, job_id: str | None) -> bool:
        """Whether a listener takes this event (read on the worker thread: a listener added meanwhile
        checks the job's handle after registering, so a terminal status is never lost)."""
        if self.global_queues:
            return True
        group = self.queues.get(job_id) if job_id else None
        if not group:
            return False
        return event == "job.status" or any(q not in self.status_only for q in list(group))

    def _dispatch(self, event: str, data: dict[str, Any]) -> None:  # event loop
        targets = set(self.global_queues)
        job_id = data.get("job_id")
        if job_id:
            targets |= self.queues.get(job_id, set())
        for q in targets:
            if event != "job.status" and q in self.status_only:
                continue
            if q.full():
                if event != "job.status":
                    continue  # drop progress for a slow client; never a terminal status
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait((event, data))

    def listen(
        self, job_id: str | None, *, status_only: bool = False
    ) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        q: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(QUEUE_SIZE)
        if status_only:
            self.status_only.add(q)
        if job_id is None:
            self.global_queues.add(q)
        else:
            self.queues.setdefault(job_id, set()).add(q)
        return q

    def forget(self, job_id: str | None, q: asyncio.Queue[Any]) -> None:
        self.status_only.discard(q)
        if job_id is None:
            self.global_queues.discard(q)
            return
        group = self.queues.get(job_id)
        if group is not None:
            group.discard(q)
            if not group:
                self.queues.pop(job_id, None)


_hubs: dict[int, Hub] = {}


def hub_for(worker: Any) -> Hub:
    """The hub of the running event loop, attached to `worker`."""
    loop = asyncio.get_running_loop()
    key = id(loop)
    hub = _hubs.get(key)
    if hub is None or hub.loop is not loop:
        hub = Hub(loop)
        _hubs[key] = hub
    hub.attach(worker)
    return hub


def reset() -> None:
    for hub in _hubs.values():
        if hub.unsubscribe is not None:
            hub.unsubscribe()
    _hubs.clear()


async def wait_finished(worker: Any, job_id: str, timeout: float | None = None) -> str:
    """Wait until the job reaches a terminal status; returns it."""
    hub = hub_for(worker)
    q = hub.listen(job_id, status_only=True)
    try:
        handle = worker.handle(job_id)
        if handle is not None and handle.done.is_set():
            return str(handle.status)
        async with asyncio.timeout(timeout):
            while True:
                event, data = await q.get()
                if event == "job.status" and data.get("status") in FINISHED:
                    return str(data["status"])
    finally:
        hub.forget(job_id, q)
