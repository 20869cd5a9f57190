"""Job events: `job.status` and `job.progress` on the event bus, published from one background thread so a
job never waits on the bus, what has queued up in one go (one round trip to Redis)."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Any

from suite.core import events

log = logging.getLogger("suite.jobs")


Item = tuple[str, str, dict[str, Any]]  # topic, type, data


def unheard(bus: events.LocalBus) -> bool:
    """Whether nothing published on `bus` can reach anyone: an in-process bus with no subscriber at all.
    (A subscriber added later never sees earlier events anyway; Redis' subscribers may be elsewhere.)"""
    return not isinstance(bus, events.RedisBus) and not bus.subscriber_count()


class _EventSender:
    """Publishes job events from one background thread, in order, what has queued up in one go (one Redis
    round trip): a job never waits on the event bus. Events nobody can hear (`unheard`) are not even made."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[Item] | threading.Event] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, topic: str, type_: str, data: dict[str, Any]) -> None:
        self.send_many([(topic, type_, data)])

    def send_many(self, items: list[Item]) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="suite-job-events", daemon=True)
                    self._thread.start()
        self._queue.put(items)

    def flush(self, timeout: float = 2.0) -> None:
        """Wait until what was sent so far is published."""
        if self._thread is not None and self._thread.is_alive():
            done = threading.Event()
            self._queue.put(done)
            done.wait(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            bus: events.LocalBus | None = None  # read when there is something to publish (settings)
            heard: bool | None = None
            ready: list[events.Event] = []
            for item in batch:
                if isinstance(item, threading.Event):
                    self._publish(bus, ready)
                    ready = []
                    item.set()
                    continue
                if heard is None:
                    try:
                        bus = events.get_bus()
                        heard = not unheard(bus)
                    except Exception:  # an event bus problem never breaks a job
                        log.debug("job events not published", exc_info=True)
                        heard = False
                if heard:
                    for topic, type_, data in item:
                        try:
                            ready.append(events.make_event(topic, type_, data))
                        except Exception:
                            log.debug("%s %s not published", type_, topic, exc_info=True)
            self._publish(bus, ready)

    @staticmethod
    def _publish(bus: events.LocalBus | None, ready: list[events.Event]) -> None:
        if not ready or bus is None:
            return
        try:
            bus.publish_many(ready)
        except Exception:  # an event bus problem never breaks a job
            log.debug("%d job events not published", len(ready), exc_info=True)


sender = _EventSender()


def publish(job_id: str, type_: str, data: dict[str, Any]) -> None:
    sender.send(events.job_topic(job_id), type_, data)


def publish_status(job_id: str, state: str) -> None:
    publish(job_id, "job.status", {"job_id": job_id, "state": state})


def publish_statuses(moved: list[tuple[str, str]]) -> None:
    """The job.status events of (job id, state) pairs, in order, handed over at once."""
    if moved:
        sender.send_many(
            [(events.job_topic(job_id), "job.status", {"job_id": job_id, "state": s}) for job_id, s in moved]
        )


def status_event(job_id: str, state: str) -> events.Event:
    """A job.status event, built without validation: a job id (a UUID) always makes a valid topic."""
    return events.Event.model_construct(
        id=uuid.uuid4().hex,
        topic=events.job_topic(job_id),
        type="job.status",
        data={"job_id": job_id, "state": state},
        ts=time.time(),
    )


def queued_event(job_id: str) -> events.Event:
    """The `queued` job.status of a new job; its id is the job's (one per job)."""
    return events.Event.model_construct(
        id=job_id.replace("-", ""),
        topic=events.job_topic(job_id),
        type="job.status",
        data={"job_id": job_id, "state": "queued"},
        ts=time.time(),
    )


def queued_json(job_id: str) -> str:
    """`queued_event(job_id).json_text`, written directly (job ids are UUIDs: nothing to escape)."""
    return (
        f'{{"id":"{job_id.replace("-", "")}","topic":"jobs.{job_id}","type":"job.status",'
        f'"data":{{"job_id":"{job_id}","state":"queued"}},"ts":{time.time()!r}}}'
    )
