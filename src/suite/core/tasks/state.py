"""Job state changes: Huey's hooks and signals write `core_job` rows and publish `job.status` events.

In a consumer, the start and end of each run go to one background writer (`writer`) that saves every change
reported within `WRITE_INTERVAL_S` in one transaction, and at once when asked: before a progress report, a
retry, and when the consumer stops. Then it publishes the jobs' `job.status` events and releases their claims
(queue.py). A job that starts and ends within one batch is written once, `started_at` included, and its events
go from `queued` straight to its final state. Readers in the consumer's process see changes not saved yet
(`overlay`); other processes see them within the interval. Inline runs (`jobs.immediate`) are written at once.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from huey.exceptions import CancelExecution
from sqlalchemy import Update
from sqlalchemy.orm.attributes import set_committed_value

from suite.core.db import utcnow
from suite.core.models import Job
from suite.core.tasks import workers
from suite.core.tasks.notify import publish_status, publish_statuses, sender
from suite.core.tasks.queue import built_huey, get_huey, is_job
from suite.core.tasks.redact import error_text, json_safe
from suite.core.tasks.rows import create_missing, ensure_rows, rows
from suite.core.tasks.sql import PENDING_STATES, execute, job_writes, update_stmt

log = logging.getLogger("suite.jobs")

WRITE_INTERVAL_S = 0.01  # a consumer saves its jobs' starts and ends this often, in one transaction


class JobCancelled(CancelExecution):
    """Raised by a progress report once cancellation was requested; the job ends as cancelled."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry=False)


class JobInterrupted(CancelExecution):
    """Raised by a progress report while the consumer is stopping; the job ends as interrupted."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry=False)


def transition(
    job_id: str, from_states: Iterable[str], to_state: str, *, unless_cancelled: bool = False, **values: Any
) -> bool:
    """Move a job to `to_state` now if it is in one of `from_states`; publish job.status when it moved."""
    values.update(state=to_state, updated_at=utcnow())
    keys = tuple(sorted(values))
    stmt = update_stmt(tuple(from_states), keys, unless_cancelled=unless_cancelled)
    moved = execute(stmt, {"b_id": job_id, **{f"b_{key}": values[key] for key in keys}})
    if moved:
        publish_status(job_id, to_state)
    return moved


# --- the writer ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Final:
    """How a run ended: the state, the states it may end from, the columns to set, whether to release the
    job's claim (or revoke) once saved."""

    state: str
    from_states: tuple[str, ...]
    values: dict[str, Any]
    release: bool = False


@dataclass(slots=True)
class Change:
    """What is still to be saved of one job: its run's start, its end (the first one reported wins), or both."""

    started_at: datetime | None = None
    final: Final | None = None
    worker_id: str | None = None  # the consumer that started it
    meta: bytes = b""  # the job's row as its message carried it (rows.py): made if still missing

    def then(self, newer: Change) -> None:
        if self.started_at is None:
            self.started_at, self.worker_id = newer.started_at, newer.worker_id
        self.final = self.final or newer.final
        self.meta = self.meta or newer.meta

    def apply_to(self, job: Job) -> None:
        """Show this change on a loaded row as if it were saved (the row's session does not write it)."""
        if self.started_at is not None and job.state in PENDING_STATES:
            for key, value in (
                ("state", "running"),
                ("attempts", job.attempts + 1),
                ("started_at", job.started_at or self.started_at),
                ("updated_at", self.started_at),
            ):
                set_committed_value(job, key, value)
        if self.final is not None and job.state in self.final.from_states:
            set_committed_value(job, "state", self.final.state)
            for key, value in self.final.values.items():
                set_committed_value(job, key, value)


@dataclass
class StateWriter:
    """Saves the starts and ends of runs in batches (see the module docstring)."""

    interval: float = WRITE_INTERVAL_S
    _changes: dict[str, Change] = field(default_factory=dict)
    _saving: dict[str, Change] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _flush_lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self, job_id: str, at: datetime, worker_id: str | None = None, meta: bytes = b"") -> None:
        with self._cond:
            change = self._change(job_id)
            if change.started_at is None:
                change.started_at, change.worker_id = at, worker_id
            change.meta = change.meta or meta

    def finish(self, job_id: str, final: Final) -> None:
        with self._cond:
            change = self._change(job_id)
            change.final = change.final or final

    def _change(self, job_id: str) -> Change:  # under self._cond
        if not self._changes:  # the first change of a batch: wake the thread (it waits for this only)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="suite-job-states", daemon=True)
                self._thread.start()
            self._cond.notify()
        return self._changes.setdefault(job_id, Change())

    def has_start(self, job_id: str) -> bool:
        """Whether the start of the job's run is still to be saved."""
        with self._cond:
            return any(c[job_id].started_at is not None for c in (self._changes, self._saving) if job_id in c)

    def overlay(self, jobs: Iterable[Job]) -> None:
        """Show on loaded rows what this process has reported of them but not saved yet."""
        with self._cond:
            if not self._changes and not self._saving:
                return
            found = [
                (job, [replace(c[job.id]) for c in (self._saving, self._changes) if job.id in c])
                for job in jobs
            ]
        for job, changes in found:
            for change in changes:
                change.apply_to(job)

    def flush(self, *, busy_timeout_ms: int | None = None) -> bool:
        """Save what was reported so far, now; False when the database refused (it is tried again later).

        `busy_timeout_ms`: on SQLite, wait at most this long for the write lock (else the usual timeout)."""
        with self._flush_lock:
            with self._cond:
                changes, self._changes = self._changes, {}
                self._saving = changes
                self._cond.notify()  # a thread gathering this batch need not wait any longer
            if not changes:
                return True
            try:
                moved = _save(changes, busy_timeout_ms)
            except Exception:
                log.warning("%d job state changes not saved yet; retrying", len(changes), exc_info=True)
                with self._cond:
                    for job_id, newer in self._changes.items():
                        if job_id in changes:
                            changes[job_id].then(newer)
                        else:
                            changes[job_id] = newer
                    self._changes, self._saving = changes, {}
                return False
            with self._cond:
                self._saving = {}
            publish_statuses(moved)
            released = [job_id for job_id, c in changes.items() if c.final is not None and c.final.release]
            if released:
                try:
                    get_huey().release_claims(released)
                except Exception:
                    log.warning("claims of %d finished jobs not released", len(released), exc_info=True)
            return True

    def clear(self) -> None:
        """Drop what is not saved (after a failed flush when the settings change: tests)."""
        with self._cond:
            self._changes = {}

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                while not self._changes:
                    self._cond.wait()
                # Let the changes of other jobs join this transaction (a flush from elsewhere ends the wait).
                batch = self._changes
                deadline = time.monotonic() + self.interval + backoff
                while self._changes is batch and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            backoff = 0.0 if self.flush() else min(max(backoff * 2, 0.05), 2.0)


@functools.lru_cache(maxsize=64)
def _shape(
    from_states: tuple[str, ...], keys: tuple[str, ...], start: bool
) -> tuple[Update, tuple[str, ...]]:
    """The UPDATE that saves a change with these columns (`keys`, in the change's order), and its
    parameters' names for them."""
    return update_stmt(from_states, tuple(sorted(keys)), start=start), tuple(f"b_{key}" for key in keys)


def _save(changes: dict[str, Change], busy_timeout_ms: int | None = None) -> list[tuple[str, str]]:
    """Write the changes in one transaction: (job id, state) of the rows that moved. Rows not written yet
    by their producer are made first from what their messages carried (rows.py)."""
    groups: dict[Update, list[dict[str, Any]]] = {}
    written: list[tuple[str, str]] = []
    for job_id, change in changes.items():
        final, start = change.final, change.started_at
        if final is None:
            stmt, names = _shape(PENDING_STATES, ("state", "updated_at"), True)
            params = dict(zip(names, ("running", start), strict=True))
        else:
            from_states = PENDING_STATES if start is not None else final.from_states
            stmt, names = _shape(from_states, ("state", *final.values), start is not None)
            params = dict(zip(names, (final.state, *final.values.values()), strict=True))
        params["b_id"] = job_id
        if start is not None:
            params["b_started"], params["b_worker"] = start, change.worker_id
        groups.setdefault(stmt, []).append(params)
        written.append((job_id, final.state if final is not None else "running"))
    with job_writes(busy_timeout_ms=busy_timeout_ms) as writes:
        count = sum(writes.executemany(stmt, rows) for stmt, rows in groups.items())
        if count == len(written):
            return written
        now = writes.states([job_id for job_id, _ in written])
        missing = {job_id for job_id, c in changes.items() if job_id not in now and c.meta}
        if missing:
            create_missing(writes, ((job_id, changes[job_id].meta) for job_id in missing))
            for stmt, rows in groups.items():
                again = [params for params in rows if params["b_id"] in missing]
                if again:
                    writes.executemany(stmt, again)
            now.update(writes.states(sorted(missing)))
    return [(job_id, state) for job_id, state in written if now.get(job_id) == state]


writer = StateWriter()


def flush() -> None:
    """Write the rows this process queued, then save and publish every change reported so far (a consumer
    stopping, tests, `reset`)."""
    rows.flush()
    writer.flush()
    sender.flush()
    huey = built_huey()  # none built: no claims to release (and building one here would read settings)
    try:
        if huey is not None:
            huey.flush_releases()
    except Exception:
        log.warning("released claims not deleted yet", exc_info=True)


# --- hooks and signals ---------------------------------------------------------------------------------


def _end(job_id: str, state: str, from_states: tuple[str, ...] = ("running",), **values: Any) -> None:
    huey = get_huey()
    values["updated_at"] = values.get("finished_at") or utcnow()
    release = bool(values.pop("release", huey.claims_jobs))
    if huey.immediate:
        transition(job_id, from_states, state, **values)
        if release:
            huey.release_claims([job_id])
    else:
        writer.finish(job_id, Final(state, from_states, values, release))


def on_pre_execute(task: Any) -> None:
    if not is_job(task):
        return
    huey = get_huey()
    now = utcnow()
    rows.flush_job(task.id)  # queued by this process: its row exists before its task runs
    if huey.claims_jobs and task.retries >= type(task).default_retries:
        # Claimed in the queue, so no cancel can come first: saved with its end.
        writer.start(task.id, now, workers.current_id(), getattr(task, "suite_meta", b""))
        return
    # Inline runs and retries: record the start now, unless a cancel came first.
    try:
        stmt = update_stmt(PENDING_STATES, ("state", "updated_at"), start=True, unless_cancelled=True)
        started = execute(
            stmt,
            {
                "b_id": task.id,
                "b_state": "running",
                "b_updated_at": now,
                "b_started": now,
                "b_worker": workers.current_id(),
            },
        )
        if started:
            publish_status(task.id, "running")
        else:  # cancel requested while it waited for a retry
            transition(task.id, PENDING_STATES, "cancelled", finished_at=now)
    except Exception:
        log.exception("job %s: could not record its start; running it anyway", task.id)
        return
    if not started:  # cancelled (or removed) before a worker got to it
        if huey.claims_jobs:
            huey.release_claims([task.id])
        raise CancelExecution(f"job {task.id} is no longer queued", retry=False)


def on_post_execute(task: Any, value: Any, exc: BaseException | None) -> None:
    if not is_job(task):
        return
    now = utcnow()
    try:
        if exc is None:
            _end(task.id, "done", result=json_safe(value), error=None, finished_at=now)
        elif isinstance(exc, JobInterrupted):
            _end(task.id, "interrupted", error=str(exc), finished_at=now)
        elif isinstance(exc, CancelExecution) and not task.retries:
            _end(task.id, "cancelled", finished_at=now)
        elif task.retries:
            _retry(task.id, error_text(exc), now)
        else:
            _end(task.id, "failed", error=error_text(exc), finished_at=now)
    except Exception:
        log.exception("job %s: could not record its outcome", task.id)


def _retry(job_id: str, error: str, now: datetime) -> None:
    """Huey queues the job again right after this: its start and this end are saved first, its claim freed;
    a cancel asked meanwhile ends it here."""
    huey = get_huey()
    try:
        if not huey.immediate:
            writer.flush()
        if not transition(job_id, ("running",), "retrying", unless_cancelled=True, error=error):
            transition(job_id, ("running",), "cancelled", error=error, finished_at=now)
    finally:  # whatever was saved, the next attempt must be able to claim it
        if huey.claims_jobs:
            huey.release_claims([job_id])


def on_interrupted(signal: str, task: Any) -> None:
    if is_job(task):
        _end(task.id, "interrupted", error="the worker stopped while it ran", finished_at=utcnow())


def on_revoked(signal: str, task: Any) -> None:
    if is_job(task):  # its message is consumed: the revoke has done its work
        _end(task.id, "cancelled", PENDING_STATES, cancel_requested=True, finished_at=utcnow(), release=True)


def on_expired(signal: str, task: Any) -> None:
    if is_job(task):
        _end(task.id, "failed", PENDING_STATES, error="expired before a worker ran it", finished_at=utcnow())


def unknown_task(job_id: str, name: str, meta: bytes = b"") -> None:
    ensure_rows([(job_id, meta)])
    transition(
        job_id,
        ("queued", "retrying", "running"),
        "failed",
        error=f"task {name} is unknown to this worker (is its module in jobs.task_modules?)",
        finished_at=utcnow(),
    )
