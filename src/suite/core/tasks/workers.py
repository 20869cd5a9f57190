"""Consumers' housekeeping: heartbeats, the reaper of jobs whose worker was lost, the scheduled purge.

Each consumer (`suite worker`, the one `suite serve` embeds) has a `core_worker` row whose `heartbeat_at` it
renews every `jobs.heartbeat_s`; a run's start saves the worker's id on the job. A worker whose heartbeat is
older than `jobs.worker_timeout_s` is lost (killed, its machine gone): every live consumer, at each of its
heartbeats, deletes such rows and fails the jobs they left `running` with the error "worker lost" (their
task arguments are not kept, so they cannot be queued again). A consumer that stops deletes its own row once
its jobs' states are saved.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, insert, select, update

from suite.core.config import get_settings
from suite.core.db import utcnow
from suite.core.models import Job, JobWorker
from suite.core.tasks.notify import publish_status
from suite.core.tasks.queue import get_huey
from suite.core.tasks.sql import write_connection

log = logging.getLogger("suite.jobs")

WORKER_LOST = "worker lost"
PURGE_TASK_NAME = "scheduled_purge"

_current: str | None = None  # this process's worker id while a consumer runs


def current_id() -> str | None:
    """The id of this process's running consumer (None: no consumer, or inline runs)."""
    return _current


def new_worker_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Heartbeat:
    """A consumer's `core_worker` row, renewed from a thread; the reaper runs after each renewal."""

    def __init__(self) -> None:
        settings = get_settings().jobs
        self.interval = settings.heartbeat_s
        self.timeout = settings.worker_timeout_s
        self.worker_id = new_worker_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Register the worker (before it runs any job), reap, then beat from a thread."""
        global _current
        self._register()
        _current = self.worker_id
        self._reap()
        self._thread = threading.Thread(target=self._run, name="suite-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and delete the row (call once the jobs' states are saved)."""
        global _current
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if _current == self.worker_id:
            _current = None
        try:
            with write_connection() as conn:
                conn.execute(delete(JobWorker).where(JobWorker.id == self.worker_id))
        except Exception:
            log.warning("worker %s: its row was not deleted", self.worker_id, exc_info=True)

    def _register(self) -> None:
        now = utcnow()
        with write_connection() as conn:
            conn.execute(
                insert(JobWorker).values(
                    id=self.worker_id,
                    hostname=socket.gethostname()[:255],
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                )
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:
                log.warning("worker %s: heartbeat not saved", self.worker_id, exc_info=True)
                continue
            self._reap()

    def beat(self) -> None:
        """Renew the heartbeat; a row deleted meanwhile (this worker was taken for lost) is made again."""
        stmt = update(JobWorker).where(JobWorker.id == self.worker_id).values(heartbeat_at=utcnow())
        with write_connection() as conn:
            renewed = cast(CursorResult[Any], conn.execute(stmt)).rowcount
        if not renewed:
            log.warning("worker %s: was taken for lost; registering again", self.worker_id)
            self._register()

    def _reap(self) -> None:
        try:
            lost = reap(timeout_s=self.timeout)
        except Exception:
            log.warning("lost workers' jobs not reaped", exc_info=True)
            return
        if lost:
            log.warning("%d job(s) of lost workers failed: %s", len(lost), ", ".join(lost))


def reap(*, timeout_s: float) -> list[str]:
    """Delete workers with no heartbeat for `timeout_s`; fail the jobs left running by workers that have no
    row (those, and any deleted before). The ids of the jobs failed."""
    now = utcnow()
    cutoff = now - timedelta(seconds=timeout_s)
    with write_connection() as conn:
        conn.execute(delete(JobWorker).where(JobWorker.heartbeat_at < cutoff))
        stmt = (
            update(Job)
            .where(
                Job.state == "running",
                Job.worker_id.is_not(None),
                Job.worker_id.not_in(select(JobWorker.id)),
            )
            .values(state="failed", error=WORKER_LOST, finished_at=now, updated_at=now)
            .returning(Job.id)
        )
        failed = list(conn.scalars(stmt))
    for job_id in failed:
        publish_status(job_id, "failed")
    if failed:
        try:
            get_huey().release_claims(failed)
        except Exception:
            log.warning("claims of %d lost jobs not released", len(failed), exc_info=True)
    return failed


# --- the scheduled purge -------------------------------------------------------------------------------


def schedule_purge(huey: Any) -> None:
    """Make `jobs.purge_schedule` a periodic task of `huey`: it queues the purge job (`core.purge`) with
    `jobs.keep_days`. Consumers check periodic tasks when they start and then every minute (UTC)."""
    from huey import crontab

    schedule = get_settings().jobs.purge_schedule
    if schedule == "off":
        return
    minute, hour, day, month, weekday = schedule.split()
    when = crontab(minute=minute, hour=hour, day=day, month=month, day_of_week=weekday)
    huey.periodic_task(when, name=PURGE_TASK_NAME)(queue_purge)


def queue_purge() -> str:
    """Queue the purge job with the configured retention; its job id."""
    from suite.core.tasks import purge_task
    from suite.core.tasks.jobs import enqueue

    return str(enqueue(purge_task, keep_days=get_settings().jobs.keep_days).id)
