"""Background work on Huey: SqliteHuey by default, RedisHuey when a Redis URL is set; the core_job table.

A domain declares a task with `@task(...)` (its first argument is the job id), starts it with `enqueue(...)`,
and reports progress through `progress(job_id)`. Job status lives in `core_job`, fed by Huey hooks and signals
(Huey's result store deletes on read, so it is off). States: queued -> running -> done | failed | cancelled |
interrupted, with retrying between attempts. Task arguments are stored in plain form: never pass a secret.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import queue
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

from huey import RedisHuey, SqliteHuey
from huey import signals as S
from huey.consumer import Consumer
from huey.exceptions import CancelExecution, HueyException
from pydantic import SecretStr
from sqlalchemy import (
    CursorResult,
    Insert,
    Select,
    Table,
    Update,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, make_transient_to_detached

from suite.core import events
from suite.core.config import get_settings, iter_leaves
from suite.core.db import SQLITE_BUSY_TIMEOUT_MS, session_scope, utcnow
from suite.core.errors import (
    ConfigError,
    Conflict,
    NotFound,
    SuiteError,
    Unavailable,
    UsageError,
    ValidationFailed,
)
from suite.core.models import FINISHED_JOB_STATES, Job, User

log = logging.getLogger("suite.jobs")

HUEY_NAME = "suite"
PROGRESS_INTERVAL_S = 0.2  # progress rows and events at most this often (plus the final report)
PROGRESS_LOCK_WAIT_MS = 100  # SQLite: skip a progress write rather than stall the task on a locked database
SHUTDOWN_TIMEOUT_S = 10.0  # a stopping consumer waits this long for running jobs, then marks them interrupted
ERROR_MAX_CHARS = 4000
PENDING_STATES = ("queued", "retrying")
JOB_TABLE = cast(Table, Job.__table__)
SECRET_KEY_RE = re.compile(r"(?i)^(.*[_-])?(password|passwd|secret|api[_-]?key|token|pat|private[_-]?key)$")


class JobCancelled(CancelExecution):
    """Raised by a progress report once cancellation was requested; the job ends as cancelled."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry=False)


class JobInterrupted(CancelExecution):
    """Raised by a progress report while the consumer is stopping; the job ends as interrupted."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry=False)


class Progress(Protocol):
    """What a service takes to report progress: `progress(done, total, message)`."""

    def __call__(self, done: int, total: int | None = None, message: str | None = None) -> None: ...


# --- tasks and the Huey instance -----------------------------------------------------------------------


class JobTask:
    """A task declared with `@task`: `enqueue(it, ...)` runs it in the background; calling it runs inline."""

    def __init__(self, func: Callable[..., Any], *, name: str, domain: str, retries: int, retry_delay: float):
        self.func = func
        self.name = name
        self.domain = domain
        self.retries = retries
        self.retry_delay = retry_delay
        self.key = f"{func.__module__}.{name}"  # Huey's registry key
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def enqueue(self, **kwargs: Any) -> Job:
        return enqueue(self, **kwargs)

    def __repr__(self) -> str:
        return f"<JobTask {self.key}>"


_tasks: dict[str, JobTask] = {}
_huey: JobsHuey | None = None
_lock = threading.RLock()


def task(
    *, retries: int = 0, retry_delay: float = 0, name: str | None = None, domain: str = "core"
) -> Callable[[Callable[..., Any]], JobTask]:
    """Declare a background task whose first positional argument is the job id."""
    if retries < 0 or retry_delay < 0:
        raise ValueError("retries and retry_delay must be >= 0")

    def decorate(func: Callable[..., Any]) -> JobTask:
        job_task = JobTask(
            func, name=name or func.__name__, domain=domain, retries=retries, retry_delay=retry_delay
        )
        with _lock:
            _tasks[job_task.key] = job_task
            if _huey is not None:
                _huey.register(job_task)
        return job_task

    return decorate


class JobsHuey:
    """Our additions to Huey: the task registry, a stopping flag, our hooks, unknown tasks marked failed."""

    job_tasks: dict[str, Any]
    stopping: threading.Event

    def setup_jobs(self) -> None:
        self.job_tasks = {}
        self.stopping = threading.Event()
        huey = cast(Any, self)
        huey.pre_execute("suite.jobs")(_on_pre_execute)
        huey.post_execute("suite.jobs")(_on_post_execute)
        huey.signal(S.SIGNAL_INTERRUPTED)(_on_interrupted)
        huey.signal(S.SIGNAL_REVOKED)(_on_revoked)
        huey.signal(S.SIGNAL_EXPIRED)(_on_expired)

    def register(self, job_task: JobTask) -> None:
        huey = cast(Any, self)
        old = self.job_tasks.pop(job_task.key, None)
        if old is not None:  # re-declared (a reloaded module): the newest wins
            old.unregister()
        self.job_tasks[job_task.key] = huey.task(
            retries=job_task.retries, retry_delay=job_task.retry_delay, name=job_task.name, suite_job=True
        )(job_task.func)

    def deserialize_task(self, data: bytes) -> Any:
        huey = cast(Any, self)
        message = huey.serializer.deserialize(data)
        try:
            return huey._registry.create_task(message)
        except HueyException:
            _transition(
                message.id,
                ("queued", "retrying", "running"),
                "failed",
                error=f"task {message.name} is unknown to this worker (is its module in jobs.task_modules?)",
                finished_at=utcnow(),
            )
            raise


class SqliteJobsHuey(JobsHuey, SqliteHuey):
    pass


class RedisJobsHuey(JobsHuey, RedisHuey):
    pass


def get_huey() -> Any:
    """The process's Huey: SqliteHuey on `huey_path` by default, RedisHuey when `redis_url` is set."""
    global _huey
    if _huey is not None:
        return _huey
    with _lock:
        if _huey is None:
            _huey = _build_huey()
            for job_task in _tasks.values():
                _huey.register(job_task)
        return _huey


def _build_huey() -> JobsHuey:
    settings = get_settings()
    immediate = settings.jobs.immediate
    huey: JobsHuey
    if settings.redis_url:
        import redis

        pool = redis.ConnectionPool.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=10)
        huey = RedisJobsHuey(
            HUEY_NAME, results=False, immediate=immediate, connection_pool=pool, read_timeout=1
        )
    else:
        path = settings.huey_path
        if not immediate:
            path.parent.mkdir(parents=True, exist_ok=True)
        huey = SqliteJobsHuey(HUEY_NAME, results=False, immediate=immediate, filename=str(path))
    huey.setup_jobs()
    return huey


def reset() -> None:
    """Forget the cached Huey (tests, after a settings change). Declared tasks stay declared."""
    global _huey
    _sender.flush()
    with _lock:
        if _huey is not None:
            _huey.stopping.set()
            try:
                cast(Any, _huey).storage.close()
            except Exception:
                pass
        _huey = None


# --- enqueue -------------------------------------------------------------------------------------------


def enqueue(
    task_fn: JobTask,
    *,
    owner_id: int | None = None,
    params: dict[str, Any] | None = None,
    domain: str | None = None,
    session: Session | None = None,
    **kwargs: Any,
) -> Job:
    """Record a queued job, commit it, then queue the task with Huey task id == job id.

    `kwargs` go to the task after the job id; `params` (default: kwargs) is what users see. Neither may hold a
    secret. Pass the caller's `session` to write the row in it (it is committed). When the queue does not
    answer the row is removed and `Unavailable` names the queue (Redis or the SQLite file).
    """
    if not isinstance(task_fn, JobTask):
        raise TypeError(f"{task_fn!r} is not declared with suite.core.tasks.task")
    check_no_secrets(kwargs, "task arguments")
    shown = check_no_secrets(kwargs if params is None else params, "job params")
    huey = get_huey()
    job_id = str(uuid.uuid4())
    message = huey.job_tasks[task_fn.key].task_class((job_id,), kwargs, id=job_id)
    try:
        huey.serialize_task(message)
    except Exception as exc:
        raise UsageError(f"arguments of task {task_fn.name} cannot be serialized: {exc}") from exc
    now = utcnow()
    row = {
        "id": job_id,
        "domain": domain or task_fn.domain,
        "name": task_fn.name,
        "owner_id": owner_id,
        "state": "queued",
        "attempts": 0,
        "max_retries": task_fn.retries,
        "progress_done": 0,
        "progress_total": None,
        "message": None,
        "error": None,
        "params": shown,
        "cancel_requested": False,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "updated_at": now,
    }
    job = Job(**row, result=None)  # result: left out of the insert so it is SQL NULL, not JSON null
    if session is None:
        _execute(_insert_stmt(), row)
        make_transient_to_detached(job)  # as if loaded by a session that has closed
    else:
        session.add(job)
        session.commit()
    _publish_status(job_id, "queued", wait=True)  # sent before a worker can say "running"
    try:
        huey.enqueue(message)
    except Exception as exc:
        _forget(job, session)
        raise Unavailable(f"job not queued: {_queue_name()} does not answer ({exc})") from exc
    if huey.immediate:  # it ran inline: return the row as it ended
        if session is not None:
            session.refresh(job)
        else:
            with session_scope() as own:
                job = own.get(Job, job_id) or job
    return job


@functools.cache
def _insert_stmt() -> Insert:
    return insert(JOB_TABLE)


def check_no_secrets(values: dict[str, Any], what: str) -> dict[str, Any]:
    """`values` as JSON-safe data; UsageError when a value is a SecretStr or a key names a secret."""

    def walk(value: Any, path: str) -> None:
        if isinstance(value, SecretStr):
            raise UsageError(
                f"{what} are stored in plain form: {path} is a secret; pass an id and read it inside"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and SECRET_KEY_RE.match(key) and item not in (None, ""):
                    raise UsageError(f"{what} are stored in plain form: {key!r} looks like a secret")
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list | tuple | set):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(values, "")
    return cast(dict[str, Any], _json_safe(values))


def _json_safe(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return repr(value)


def _forget(job: Job, session: Session | None) -> None:
    try:
        if session is not None:
            session.delete(job)
            session.commit()
        else:
            with session_scope() as own:
                own.execute(delete(Job).where(Job.id == job.id))
    except Exception:
        log.exception("job %s: could not remove the row of a job that was not queued", job.id)


def _queue_name() -> str:
    settings = get_settings()
    if settings.redis_url:
        return f"Redis at {safe_redis_url(settings.redis_url)}"
    return f"the SQLite job queue {settings.huey_path}"


def safe_redis_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


# --- redaction -----------------------------------------------------------------------------------------

_REDACTIONS = (
    (re.compile(r"(?i)\bBearer\s+[^\s,;'\"]+"), "Bearer ***"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{4,}"), "sk-***"),
    (re.compile(r"\bst_[A-Za-z0-9_\-]{6,}"), "st_***"),
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|secret|api[_-]?key|token|access[_-]?token)"
            r"([\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&'\"}]+)"
        ),
        r"\1\2***",
    ),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]*:)([^\s@/]+)@"), r"\1***@"),
)


def _settings_secrets() -> list[str]:
    try:
        leaves = iter_leaves(get_settings())
    except Exception:
        return []
    values = [v.get_secret_value() for _, v in leaves if isinstance(v, SecretStr)]
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def redact(text: str) -> str:
    """`text` without secrets: settings' SecretStr values, bearer tokens, `sk-...` keys, `password=...`."""
    for secret in _settings_secrets():
        text = text.replace(secret, "***")
    for pattern, repl in _REDACTIONS:
        text = pattern.sub(repl, text)
    return text


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = redact(text)
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 1] + "…"


class RedactingFormatter(logging.Formatter):
    """Log lines (tracebacks included) with secrets redacted: a failing task's message can carry one."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


# --- state changes -------------------------------------------------------------------------------------


class _EventSender:
    """Publishes job events from one background thread, in order: a job never waits on the event bus."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, str, dict[str, Any]] | threading.Event] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, topic: str, type_: str, data: dict[str, Any]) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="suite-job-events", daemon=True)
                    self._thread.start()
        self._queue.put((topic, type_, data))

    def flush(self, timeout: float = 2.0) -> None:
        """Wait until what was sent so far is published."""
        if self._thread is not None and self._thread.is_alive():
            done = threading.Event()
            self._queue.put(done)
            done.wait(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                events.publish(*item)
            except Exception:  # an event bus problem never breaks a job
                log.debug("%s %s not published", item[1], item[0], exc_info=True)


_sender = _EventSender()


def _publish(job_id: str, type_: str, data: dict[str, Any], *, wait: bool = False) -> None:
    if not wait:
        _sender.send(events.job_topic(job_id), type_, data)
        return
    try:
        events.publish(events.job_topic(job_id), type_, data)
    except Exception:  # an event bus problem never breaks a job
        log.debug("job %s: %s not published", job_id, type_, exc_info=True)


def _publish_status(job_id: str, state: str, *, wait: bool = False) -> None:
    _publish(job_id, "job.status", {"job_id": job_id, "state": state}, wait=wait)


@functools.lru_cache(maxsize=64)
def _transition_stmt(from_states: tuple[str, ...], keys: tuple[str, ...], unless_cancelled: bool) -> Update:
    # Built once per shape and executed with parameters: a job's hot path skips statement building.
    cols = JOB_TABLE.c
    stmt = update(JOB_TABLE).where(cols.id == bindparam("b_id"), cols.state.in_(from_states))
    if unless_cancelled:
        stmt = stmt.where(cols.cancel_requested.is_(False))
    return stmt.values({key: bindparam(f"b_{key}", type_=cols[key].type) for key in keys})


@functools.cache
def _start_stmt() -> Update:
    cols = JOB_TABLE.c
    return (
        update(JOB_TABLE)
        .where(cols.id == bindparam("b_id"), cols.state.in_(PENDING_STATES), cols.cancel_requested.is_(False))
        .values(
            state="running",
            attempts=cols.attempts + 1,
            started_at=func.coalesce(cols.started_at, bindparam("b_now", type_=cols.started_at.type)),
            updated_at=bindparam("b_now", type_=cols.updated_at.type),
        )
    )


def _execute(stmt: Insert | Update, params: dict[str, Any]) -> bool:
    """One statement in its own short transaction; True when it changed one row.

    On SQLite a writer that finds the database locked sleeps 1 ms, then longer (SQLite's busy handler), which
    workers and producers writing one job row each would hit all the time: these one-statement transactions
    retry at once instead, every 0.1-2 ms, for as long as the usual busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.0001
    while True:
        try:
            with session_scope() as session:
                conn = session.connection()
                if conn.dialect.name != "sqlite":
                    return cast(CursorResult[Any], conn.execute(stmt, params)).rowcount == 1
                conn.exec_driver_sql("PRAGMA busy_timeout=0")
                try:
                    return cast(CursorResult[Any], conn.execute(stmt, params)).rowcount == 1
                finally:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        except SuiteError as exc:  # session_scope's DatabaseError
            locked = isinstance(exc.__cause__, OperationalError) and "database is locked" in str(
                exc.__cause__
            )
            if not locked or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.002)


def _transition(
    job_id: str, from_states: Iterable[str], to_state: str, *, unless_cancelled: bool = False, **values: Any
) -> bool:
    """Move a job to `to_state` if it is in one of `from_states`; publish job.status when it moved."""
    values.update(state=to_state, updated_at=utcnow())
    keys = tuple(sorted(values))
    params = {f"b_{key}": values[key] for key in keys}
    stmt = _transition_stmt(tuple(from_states), keys, unless_cancelled)
    moved = _execute(stmt, {"b_id": job_id, **params})
    if moved:
        _publish_status(job_id, to_state)
    return moved


def _is_job(task: Any) -> bool:
    return bool(getattr(task, "suite_job", False))


def _on_pre_execute(task: Any) -> None:
    if not _is_job(task):
        return
    try:
        started = _execute(_start_stmt(), {"b_id": task.id, "b_now": utcnow()})
        if started:
            _publish_status(task.id, "running")
        else:  # cancel requested while it waited for a retry
            _transition(task.id, PENDING_STATES, "cancelled", finished_at=utcnow())
    except Exception:
        log.exception("job %s: could not record its start; running it anyway", task.id)
        return
    if not started:  # cancelled (or removed) before a worker got to it
        raise CancelExecution(f"job {task.id} is no longer queued", retry=False)


def _on_post_execute(task: Any, value: Any, exc: BaseException | None) -> None:
    if not _is_job(task):
        return
    now = utcnow()
    try:
        if exc is None:
            _transition(task.id, ("running",), "done", result=_json_safe(value), error=None, finished_at=now)
        elif isinstance(exc, JobInterrupted):
            _transition(task.id, ("running",), "interrupted", error=str(exc), finished_at=now)
        elif isinstance(exc, CancelExecution) and not task.retries:
            _transition(task.id, ("running",), "cancelled", finished_at=now)
        elif task.retries:  # Huey queues it again; a cancel asked meanwhile ends it here
            error = error_text(exc)
            if not _transition(task.id, ("running",), "retrying", unless_cancelled=True, error=error):
                _transition(task.id, ("running",), "cancelled", error=error, finished_at=now)
        else:
            _transition(task.id, ("running",), "failed", error=error_text(exc), finished_at=now)
    except Exception:
        log.exception("job %s: could not record its outcome", task.id)


def _on_interrupted(signal: str, task: Any) -> None:
    if _is_job(task):
        _transition(
            task.id,
            ("running",),
            "interrupted",
            error="the worker stopped while it ran",
            finished_at=utcnow(),
        )


def _on_revoked(signal: str, task: Any) -> None:
    if _is_job(task):
        _transition(task.id, PENDING_STATES, "cancelled", cancel_requested=True, finished_at=utcnow())


def _on_expired(signal: str, task: Any) -> None:
    if _is_job(task):
        _transition(
            task.id, PENDING_STATES, "failed", error="expired before a worker ran it", finished_at=utcnow()
        )


# --- progress ------------------------------------------------------------------------------------------


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
        cancel = self._save(done, total, message)
        _publish(
            self.job_id,
            "job.progress",
            {"job_id": self.job_id, "done": done, "total": total, "message": message},
        )
        if cancel:
            raise JobCancelled(f"job {self.job_id} cancelled")

    def _save(self, done: int, total: int | None, message: str | None) -> bool:
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
            with session_scope() as session:
                conn = session.connection()
                sqlite = conn.dialect.name == "sqlite"
                if sqlite:  # the task's own session may hold the write lock: skip rather than stall
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={PROGRESS_LOCK_WAIT_MS}")
                try:
                    return bool(conn.scalar(stmt))  # write first: no read snapshot to go stale
                except OperationalError as exc:
                    log.debug("job %s: progress not saved: %s", self.job_id, exc)
                finally:
                    if sqlite:
                        conn.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                return bool(conn.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))
        except SuiteError as exc:
            log.warning("job %s: progress not saved: %s", self.job_id, exc.message)
            return False


def progress(job_id: str) -> ProgressReporter:
    """The progress reporter of a job, for the task to hand to its service."""
    return ProgressReporter(job_id)


# --- service functions (the jobs API and CLI) ----------------------------------------------------------


def _visible(stmt: Select[Any], user: User | None) -> Select[Any]:
    if user is not None and user.role != "admin":
        stmt = stmt.where(Job.owner_id == user.id)
    return stmt


def get_job(session: Session, *, job_id: str, user: User | None = None) -> Job:
    """A job; NotFound when unknown or owned by someone else (admins and `user=None` see all)."""
    job = session.get(Job, job_id)
    if job is None or (user is not None and user.role != "admin" and job.owner_id != user.id):
        raise NotFound(f"job {job_id} not found")
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
    stmt = _filtered(select(Job), user, state, domain).order_by(Job.created_at.desc(), Job.id.desc())
    return list(session.scalars(stmt.limit(limit).offset(offset)))


def count_jobs(
    session: Session, *, user: User | None, state: str | None = None, domain: str | None = None
) -> int:
    stmt = _filtered(select(func.count()).select_from(Job), user, state, domain)
    return int(session.scalar(stmt) or 0)


def cancel_job(session: Session, *, job_id: str, user: User | None) -> Job:
    """Cancel a job: a queued one at once (it never runs), a running one at its next progress report.

    Conflict when it already finished. The change is flushed; the caller's session commits it.
    """
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
    job = get_job(session, job_id=job_id, user=user)
    for _ in range(3):  # the worker may move it between our read and our write
        if job.state in FINISHED_JOB_STATES:
            raise Conflict(f"job {job_id} already {job.state}")
        if job.state in PENDING_STATES:
            try:
                get_huey().revoke_by_id(job_id)
            except Exception as exc:
                raise Unavailable(f"job not cancelled: {_queue_name()} does not answer ({exc})") from exc
            stmt = (
                update(Job)
                .where(Job.id == job_id, Job.state.in_(PENDING_STATES))
                .values(state="cancelled", cancel_requested=True, finished_at=utcnow(), updated_at=utcnow())
            )
        else:
            stmt = (
                update(Job)
                .where(Job.id == job_id, Job.state == "running")
                .values(cancel_requested=True, updated_at=utcnow())
            )
        result = session.execute(stmt.execution_options(synchronize_session=False))
        moved = cast(CursorResult[Any], result).rowcount
        session.refresh(job)
        if moved:
            if job.state == "cancelled":
                _publish_status(job_id, "cancelled")
            return job
    raise Conflict(f"job {job_id} changed state while being cancelled; try again")


# --- consumer ------------------------------------------------------------------------------------------


def load_task_modules() -> list[str]:
    """Import every module of tasks: this one, each domain's `tasks`, and `jobs.task_modules`."""
    from suite.core.plugins import load_domain_specs

    loaded = [__name__]
    for spec in load_domain_specs():
        if not spec.tasks:
            continue
        module = spec.tasks.partition(":")[0]
        try:
            importlib.import_module(module)
            loaded.append(module)
        except Exception as exc:  # one broken domain does not stop the others' jobs
            print(
                f"warning: tasks of domain {spec.name!r} skipped: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
    for module in get_settings().jobs.task_modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigError(
                f"jobs.task_modules: cannot import {module!r}: {type(exc).__name__}: {exc}"
            ) from exc
        loaded.append(module)
    return loaded


class JobsConsumer(Consumer):
    """Huey's consumer with thread workers: a stop (Ctrl-C, SIGTERM, `.stop()`) lets running jobs end at their
    next progress report, waits up to `shutdown_timeout`, then marks what still runs as interrupted."""

    def __init__(self, huey: Any, *, workers: int, embedded: bool) -> None:
        max_delay = get_settings().jobs.max_polling_delay
        super().__init__(
            huey,
            workers=workers,
            worker_type="thread",
            initial_delay=min(0.1, max_delay),
            max_delay=max_delay,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        self.embedded = embedded

    def stop(self, graceful: bool = False) -> None:
        self.huey.stopping.set()
        super().stop(graceful=True)

    def _set_signal_handlers(self) -> None:
        if not self.embedded:  # embedded: the server owns the signals
            super()._set_signal_handlers()


def _check_consumable() -> Any:
    settings = get_settings()
    if settings.jobs.immediate:
        raise ConfigError("jobs.immediate is true: tasks run inline when queued, there is nothing to consume")
    load_task_modules()
    huey = get_huey()
    huey.stopping.clear()
    return huey


def _setup_logging() -> None:
    level = get_settings().log_level
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("huey", "suite"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = False


def run_consumer(workers: int) -> None:
    """Consume jobs until Ctrl-C or SIGTERM (blocking). Ctrl-C ends in KeyboardInterrupt (exit 130)."""
    import signal

    huey = _check_consumable()
    _setup_logging()
    consumer = JobsConsumer(huey, workers=workers, embedded=False)
    log.info(
        "worker: %d thread(s) on %s, tasks: %s", workers, _queue_name(), ", ".join(sorted(huey.job_tasks))
    )
    consumer.run()
    _sender.flush()
    if consumer._signum == signal.SIGINT:
        raise KeyboardInterrupt


class EmbeddedConsumer:
    """A consumer running in this process's threads (`suite serve`); `.stop()` ends it."""

    def __init__(self, consumer: JobsConsumer | None) -> None:
        self.consumer = consumer

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is None:
            return
        consumer.shutdown_timeout = timeout
        consumer.stop(graceful=True)
        consumer.huey.notify_interrupted_tasks()
        _sender.flush()


def start_embedded_consumer(workers: int | None = None) -> EmbeddedConsumer:
    """Start consuming in background threads; in immediate mode there is nothing to consume."""
    if get_settings().jobs.immediate:
        return EmbeddedConsumer(None)
    huey = _check_consumable()
    consumer = JobsConsumer(huey, workers=workers or get_settings().jobs.workers, embedded=True)
    consumer.start()
    return EmbeddedConsumer(consumer)


# --- core tasks ----------------------------------------------------------------------------------------


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


@task(name="purge", domain="core")
def purge_task(job_id: str, *, keep_days: int = 30) -> dict[str, int]:
    """Housekeeping: old finished jobs and expired web sessions."""
    with session_scope() as session:
        return purge(session, keep_days=keep_days, keep=job_id)
