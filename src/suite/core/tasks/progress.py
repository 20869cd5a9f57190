"""Progress reports of a running job: saved (throttled), published as `job.progress`, and the point where a
cancel (or a stopping consumer) stops the task."""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from sqlalchemy import select, update

from suite.core.db import new_session, utcnow
from suite.core.errors import DatabaseError, SuiteError
from suite.core.models import Job
from suite.core.tasks.notify import publish
from suite.core.tasks.queue import get_huey
from suite.core.tasks.redact import ERROR_MAX_CHARS
from suite.core.tasks.sql import write_connection
from suite.core.tasks.state import JobCancelled, JobInterrupted, writer

log = logging.getLogger("suite.jobs")

PROGRESS_INTERVAL_S = 0.2  # progress rows and events at most this often (plus the final report)
PROGRESS_LOCK_WAIT_MS = 100  # SQLite: skip a progress write rather than stall the task on a locked database


class Progress(Protocol):
    """What a service takes to report progress: `progress(done, total, message)`."""

    def __call__(self, done: int, total: int | None = None, message: str | None = None) -> None: ...


class ProgressReporter:
    """`report(done, total=None, message=None)`: saves progress (throttled), publishes job.progress, and
    raises JobCancelled once cancel was requested (JobInterrupted while the consumer stops)."""

    def __init__(self, job_id: str, *, interval: float = PROGRESS_INTERVAL_S) -> None:
        self.job_id = job_id
        self.interval = interval
        self._last = float("-inf")

    def __call__(self, done: int, total: int | None = None, message: str | None = None) -> None:
        huey = get_huey()
        if huey.stopping.is_set():
            raise JobInterrupted(f"job {self.job_id} interrupted: the worker is stopping")
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - self._last < self.interval:
            return
        self._last = now
        if writer.has_start(self.job_id):  # the row says `running` before it takes progress
            writer.flush(busy_timeout_ms=PROGRESS_LOCK_WAIT_MS)
        cancel = self._save(done, total, message)
        publish(
            self.job_id,
            "job.progress",
            {"job_id": self.job_id, "done": done, "total": total, "message": message},
        )
        if cancel:
            raise JobCancelled(f"job {self.job_id} cancelled")

    def _save(self, done: int, total: int | None, message: str | None) -> bool:
        """Save the report; whether a cancel was requested. On SQLite a report waits at most
        PROGRESS_LOCK_WAIT_MS for the write lock (the task's own transaction may hold it), else is skipped."""
        values: dict[str, Any] = {"progress_done": done, "updated_at": utcnow()}
        if total is not None:
            values["progress_total"] = total
        if message is not None:
            values["message"] = message[:ERROR_MAX_CHARS]
        stmt = (
            update(Job)
            .where(Job.id == self.job_id, Job.state == "running")
            .values(**values)
            .returning(Job.cancel_requested)
        )
        try:
            with write_connection(busy_timeout_ms=PROGRESS_LOCK_WAIT_MS) as conn:
                cancel = conn.scalar(stmt)  # write first: no read snapshot to go stale
            if cancel is not None:
                return bool(cancel)
        except DatabaseError as exc:
            log.debug("job %s: progress not saved: %s", self.job_id, exc.message)
        try:  # not saved (or not running): still honour a cancel
            with new_session(read_only=True) as session:
                return bool(session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))
        except SuiteError as exc:
            log.warning("job %s: progress not saved: %s", self.job_id, exc.message)
            return False


def progress(job_id: str) -> ProgressReporter:
    """The progress reporter of a job, for the task to hand to its service."""
    return ProgressReporter(job_id)
