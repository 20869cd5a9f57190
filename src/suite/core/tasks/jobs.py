"""Service functions of jobs: enqueue, and the jobs API and CLI (list, get, cancel, purge)."""

from __future__ import annotations

import functools
import logging
import os
import time
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Select, delete, func, inspect, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, configure_mappers
from sqlalchemy.orm.attributes import instance_state

from suite.core.db import session_scope, utcnow
from suite.core.errors import Conflict, NotFound, Unavailable, UsageError, ValidationFailed
from suite.core.models import FINISHED_JOB_STATES, Job, User
from suite.core.tasks.notify import publish_status
from suite.core.tasks.queue import JobTask, get_huey, queue_name
from suite.core.tasks.redact import check_no_secrets
from suite.core.tasks.rows import meta, queued_row, rows
from suite.core.tasks.sql import PENDING_STATES, insert_job
from suite.core.tasks.state import writer

log = logging.getLogger("suite.jobs")


def enqueue(
    task_fn: JobTask,
    *,
    owner_id: int | None = None,
    params: dict[str, Any] | None = None,
    domain: str | None = None,
    session: Session | None = None,
    flush: bool = False,
    **kwargs: Any,
) -> Job:
    """Queue the task with Huey task id == job id, and record the queued job.

    `kwargs` go to the task after the job id; `params` (default: kwargs) is what users see. Neither may hold a
    secret. When the queue does not answer, `Unavailable` names it (Redis or the SQLite file) and no row is
    left. By default the row is written behind the queue (rows.py): this process reads it at once, others
    within a few ms. `flush=True` writes it before queueing, as does passing the caller's `session` (the row
    is added to it and committed).
    """
    if not isinstance(task_fn, JobTask):
        raise TypeError(f"{task_fn!r} is not declared with suite.core.tasks.task")
    shown = check_no_secrets(kwargs, "task arguments")
    if params is not None:
        shown = check_no_secrets(params, "job params")
    huey = get_huey()
    job_id = new_job_id()
    row = queued_row(
        job_id, domain or task_fn.domain, task_fn.name, owner_id, task_fn.retries, shown, utcnow()
    )
    message = huey.job_tasks[task_fn.key].task_class((job_id,), kwargs, id=job_id)
    message.suite_meta = meta(row)
    try:
        data = huey.serialize_task(message)
    except Exception as exc:
        raise UsageError(f"arguments of task {task_fn.name} cannot be serialized: {exc}") from exc
    if session is None and not flush and not huey.immediate:
        rows.expect(job_id)  # a consumer of this process may take the message before `add`
        try:
            _queue(huey, message, data, job_id)
        except BaseException:
            rows.unexpect(job_id)
            raise
        rows.add(row)
        return _detached(row)
    job: Job
    if session is None:
        insert_job(row)  # result: left out, so it is SQL NULL, not JSON null
        job = _detached(row)
    else:
        job = Job(**row, result=None)
        session.add(job)
        session.commit()
    try:
        _queue(huey, message, data, job_id)
    except Unavailable:
        _forget(job, session)
        raise
    if huey.immediate:  # it ran inline: return the row as it ended
        if session is not None:
            session.refresh(job)
        else:
            with session_scope() as own:
                job = own.get(Job, job_id) or job
    return job


def _queue(huey: Any, message: Any, data: bytes, job_id: str) -> None:
    """Queue the message, its `queued` event first (so no worker can say "running" before it). When the
    queue's answer was lost (a timeout), the message may have arrived anyway: it is revoked, so it never
    runs (a consumer that takes it cancels it, and writes no row: the producer never wrote one)."""
    try:
        huey.enqueue_job(message, data)
    except Exception as exc:
        if isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":  # redis' is no builtin one
            try:
                huey.revoke_unclaimed(job_id)
            except Exception:
                pass
        raise Unavailable(f"job not queued: {queue_name()} does not answer ({exc})") from exc


@functools.cache
def _job_class_manager() -> Any:
    configure_mappers()
    return inspect(Job).class_manager


def _detached(row: dict[str, Any]) -> Job:
    """The job as if loaded by a session that has closed (no attribute events: cheaper than `Job(...)`)."""
    job = _job_class_manager().new_instance()
    job.__dict__.update(row, result=None)  # as a loader fills a row's attributes
    instance_state(job).key = (Job, (row["id"],), None)  # as make_transient_to_detached; nothing is pending
    return job


def new_job_id() -> str:
    """A UUID of version 7 as text: the time in ms, then 74 random bits. Time-ordered, so a new row goes at
    the end of the primary-key index (a random id changes a page of its own in every insert, then in every
    checkpoint), and a job's id and its row's place follow the order jobs were queued in."""
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    raw[6] = raw[6] & 0x0F | 0x70
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _forget(job: Job, session: Session | None) -> None:
    """Remove the row of a job that was not queued."""
    try:
        if session is not None:
            session.delete(job)
            session.commit()
        else:
            with session_scope() as own:
                own.execute(delete(Job).where(Job.id == job.id))
    except Exception:
        log.exception("job %s: could not remove the row of a job that was not queued", job.id)


# --- reading -------------------------------------------------------------------------------------------


def _visible(stmt: Select[Any], user: User | None) -> Select[Any]:
    if user is not None and user.role != "admin":
        stmt = stmt.where(Job.owner_id == user.id)
    return stmt


def get_job(session: Session, *, job_id: str, user: User | None = None) -> Job:
    """A job; NotFound when unknown or owned by someone else (admins and `user=None` see all).

    Changes this process's consumer has not saved yet are shown (state.py's writer), and rows it queued
    (rows.py's writer) are written first."""
    rows.flush()
    job = session.get(Job, job_id)
    if job is None or (user is not None and user.role != "admin" and job.owner_id != user.id):
        raise NotFound(f"job {job_id} not found")
    writer.overlay((job,))
    return job


def _filtered(stmt: Select[Any], user: User | None, state: str | None, domain: str | None) -> Select[Any]:
    stmt = _visible(stmt, user)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    if domain is not None:
        stmt = stmt.where(Job.domain == domain)
    return stmt


def list_jobs(
    session: Session,
    *,
    user: User | None,
    state: str | None = None,
    domain: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Job]:
    """Jobs the user may see, newest first."""
    if not 1 <= limit <= 200:
        raise ValidationFailed("limit must be between 1 and 200")
    if offset < 0:
        raise ValidationFailed("offset must be >= 0")
    rows.flush()
    stmt = _filtered(select(Job), user, state, domain).order_by(Job.created_at.desc(), Job.id.desc())
    return list(session.scalars(stmt.limit(limit).offset(offset)))


def count_jobs(
    session: Session, *, user: User | None, state: str | None = None, domain: str | None = None
) -> int:
    rows.flush()
    stmt = _filtered(select(func.count()).select_from(Job), user, state, domain)
    return int(session.scalar(stmt) or 0)


# --- cancel --------------------------------------------------------------------------------------------


def cancel_job(session: Session, *, job_id: str, user: User | None) -> Job:
    """Cancel a job: a queued one at once (it never runs), a running one at its next progress report.

    Conflict when it already finished. The change is flushed; the caller's session commits it.
    """
    rows.flush()
    session.flush()  # the caller's own changes first: a retry below rolls back
    for attempt in range(5):
        try:
            return _cancel(session, job_id=job_id, user=user)
        except OperationalError as exc:
            # SQLite cannot turn a read transaction whose snapshot went stale into a write; start over.
            if not _stale_sqlite_read(session, exc) or attempt == 4:
                raise
            session.rollback()
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def _stale_sqlite_read(session: Session, exc: OperationalError) -> bool:
    pending = session.new or session.dirty or session.deleted
    return session.get_bind().dialect.name == "sqlite" and "database is locked" in str(exc) and not pending


def _cancel(session: Session, *, job_id: str, user: User | None) -> Job:
    """A pending job is revoked in the queue unless a worker has claimed it (queue.py): then it never runs
    and is cancelled here. Otherwise a worker has it, perhaps with its start not saved yet: it is asked to
    stop at its next progress report."""
    job = get_job(session, job_id=job_id, user=user)
    revoked = False
    for _ in range(3):  # the worker may move it between our read and our write
        if job.state in FINISHED_JOB_STATES:
            if revoked:  # it ended before our revoke: nothing left to revoke
                _restore(job_id)
            raise Conflict(f"job {job_id} already {job.state}")
        if job.state in PENDING_STATES and not revoked:
            try:
                revoked = get_huey().revoke_unclaimed(job_id)
            except Exception as exc:
                raise Unavailable(f"job not cancelled: {queue_name()} does not answer ({exc})") from exc
        if revoked and job.state in PENDING_STATES:
            stmt = (
                update(Job)
                .where(Job.id == job_id, Job.state.in_(PENDING_STATES))
                .values(state="cancelled", cancel_requested=True, finished_at=utcnow(), updated_at=utcnow())
            )
        else:
            stmt = (
                update(Job)
                .where(Job.id == job_id, Job.state.not_in(sorted(FINISHED_JOB_STATES)))
                .values(cancel_requested=True, updated_at=utcnow())
            )
        result = session.execute(stmt.execution_options(synchronize_session=False))
        moved = cast(CursorResult[Any], result).rowcount
        session.refresh(job)
        writer.overlay((job,))
        if moved:
            if job.state == "cancelled":
                publish_status(job_id, "cancelled")
            return job
    raise Conflict(f"job {job_id} changed state while being cancelled; try again")


def _restore(job_id: str) -> None:
    try:
        get_huey().restore_by_id(job_id)
    except Exception:
        log.debug("job %s: revoke not withdrawn", job_id, exc_info=True)


# --- housekeeping --------------------------------------------------------------------------------------


def purge(session: Session, *, keep_days: int = 30, keep: str | None = None) -> dict[str, int]:
    """Delete finished jobs older than `keep_days` and expired web sessions."""
    from suite.core.web_auth import purge_expired_sessions

    if keep_days < 0:
        raise ValidationFailed("keep_days must be >= 0")
    cutoff = utcnow() - timedelta(days=keep_days)
    stmt = delete(Job).where(
        Job.state.in_(sorted(FINISHED_JOB_STATES)), func.coalesce(Job.finished_at, Job.updated_at) < cutoff
    )
    if keep is not None:
        stmt = stmt.where(Job.id != keep)
    jobs = cast(CursorResult[Any], session.execute(stmt)).rowcount
    return {"jobs": jobs, "sessions": purge_expired_sessions(session)}
