"""The process's Huey and the task registry: `@task`, SqliteHuey by default, RedisHuey when a Redis URL is set.

Claims. A job must never run once `cancel_job` has said it is cancelled, and never be marked cancelled while it
runs. Both sides write Huey's revoke key of the job (`r:<id>`) only if it is absent, so exactly one of them
wins: a worker claims the job before running it, and holds the claim until the job's final state is saved,
which lets state.py save the start of a run later, with its end, in one batch. On RedisHuey the claim is one
HSETNX in place of Huey's read of the revoke key; on SqliteHuey it is made in the transaction that takes the
message off the queue (a write to the SQLite queue file costs an fsync; this one was made anyway). Inline runs
(`jobs.immediate`) claim nothing: their start is written at once, only while the row is still queued.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from huey import RedisHuey, SqliteHuey
from huey import signals as S
from huey.exceptions import HueyException

from suite.core import events
from suite.core.config import get_settings
from suite.core.tasks.claims import (
    ClaimingRedisStorage,
    ClaimingSqliteStorage,
    ClaimingStorage,
    revoke_key,
    split_claim,
    with_claim,
)
from suite.core.tasks.notify import queued_event, queued_json, unheard

if TYPE_CHECKING:
    from suite.core.models import Job

HUEY_NAME = "suite"
CLAIMED = (datetime(1970, 1, 1), False)  # a worker runs it; Huey reads it as a revoke that has expired
REVOKED = (None, False)  # what Huey's revoke_by_id writes: revoked for good


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
        from suite.core.tasks.jobs import enqueue

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


def is_job(task: Any) -> bool:
    """Whether a Huey task is one of ours (declared with `@task`)."""
    return bool(getattr(task, "suite_job", False))


class JobsHuey:
    """Our additions to Huey: the task registry, a stopping flag, our hooks, claims, unknown tasks failed."""

    job_tasks: dict[str, Any]
    stopping: threading.Event
    #: Workers claim jobs in the queue (see the module docstring); else the start is written at once.
    claims_in_queue = False
    _claims: set[str]

    def setup_jobs(self) -> None:
        from suite.core.tasks import state

        self.job_tasks = {}
        self.stopping = threading.Event()
        self._claims = set()
        self._claims_lock = threading.Lock()
        huey = cast(Any, self)
        huey.pre_execute("suite.jobs")(state.on_pre_execute)
        huey.post_execute("suite.jobs")(state.on_post_execute)
        huey.signal(S.SIGNAL_INTERRUPTED)(state.on_interrupted)
        huey.signal(S.SIGNAL_REVOKED)(state.on_revoked)
        huey.signal(S.SIGNAL_EXPIRED)(state.on_expired)
        if isinstance(huey.storage, ClaimingStorage):  # not inline (Huey's memory storage)
            huey.storage.claim_value = huey.serializer.serialize(CLAIMED)

    def register(self, job_task: JobTask) -> None:
        huey = cast(Any, self)
        old = self.job_tasks.pop(job_task.key, None)
        if old is not None:  # re-declared (a reloaded module): the newest wins
            old.unregister()
        self.job_tasks[job_task.key] = huey.task(
            retries=job_task.retries, retry_delay=job_task.retry_delay, name=job_task.name, suite_job=True
        )(job_task.func)

    def serialize_task(self, task: Any) -> bytes:
        """Huey's message; a job's carries its id and row (`suite_meta`) ahead for the storage to claim it
        and a consumer to make its row (claims.py)."""
        data = cast(bytes, cast(Any, super()).serialize_task(task))
        if self.claims_in_queue and is_job(task):
            return with_claim(task.id, data, getattr(task, "suite_meta", b""))
        return data

    def deserialize_task(self, data: bytes) -> Any:
        huey = cast(Any, self)
        _, meta, data = split_claim(data)
        message = huey.serializer.deserialize(data)
        try:
            task = huey._registry.create_task(message)
        except HueyException:
            from suite.core.tasks import state

            state.unknown_task(message.id, message.name, meta)
            raise
        if meta:
            task.suite_meta = meta
        return task

    # --- enqueue -----------------------------------------------------------------------------------

    def enqueue_job(self, message: Any, data: bytes) -> None:
        """Publish the job's `queued` event, then queue its serialized message (`data`)."""
        huey = cast(Any, self)
        try:
            bus = events.get_bus()
            if not unheard(bus):
                bus.publish(queued_event(message.id))
        except Exception:  # an event bus problem never stops a job
            pass
        if huey.immediate:
            huey.enqueue(message)
        else:  # as Huey's enqueue, without serializing it again
            huey._emit(S.SIGNAL_ENQUEUED, message)
            huey.storage.enqueue(data, message.priority)

    # --- claims ------------------------------------------------------------------------------------

    @property
    def claims_jobs(self) -> bool:
        """Whether workers claim jobs in the queue (not inline)."""
        return self.claims_in_queue and not cast(Any, self).immediate

    def is_revoked(self, task: Any, timestamp: Any = None, peek: bool = True) -> bool:
        if peek or not self.claims_jobs or not is_job(task):
            return bool(cast(Any, super()).is_revoked(task, timestamp, peek))
        # A worker is about to run it: claim it with the key cancel_job revokes with.
        claimed = self._claimed_when_dequeued(task.revoke_id)
        if claimed is None:
            claimed = bool(cast(Any, self).put_if_empty(task.revoke_id, CLAIMED))
        if claimed:
            with self._claims_lock:
                self._claims.add(task.revoke_id)
        return not claimed

    def _claimed_when_dequeued(self, key: str) -> bool | None:
        """Whether this thread's last dequeue claimed `key` (None: it did not try)."""
        storage = cast(Any, self).storage
        return storage.claimed(key) if isinstance(storage, ClaimingStorage) else None

    def delete(self, key: str) -> bool:
        if key in self._claims:  # Huey ends a run so; the claim is held until the job's state is saved
            return False
        return bool(cast(Any, super()).delete(key))

    def release_claims(self, job_ids: Iterable[str]) -> None:
        """Forget the claims (or revokes) of jobs whose run is over and saved."""
        keys = [revoke_key(job_id) for job_id in job_ids]
        if not keys:
            return
        with self._claims_lock:
            self._claims.difference_update(keys)
        self._delete_keys(keys)

    def _delete_keys(self, keys: list[str]) -> None:
        storage = cast(Any, self).storage
        for key in keys:
            storage.delete_data(key)

    def flush_releases(self) -> None:
        """Delete released claims that wait for the next dequeue (SQLite), now."""

    def revoke_unclaimed(self, job_id: str) -> bool:
        """Revoke a job unless a worker has claimed it: True when it will not run (again)."""
        return bool(cast(Any, self).put_if_empty(revoke_key(job_id), REVOKED))

    def revoke_all(self, task_class: Any, revoke_until: Any = None, revoke_once: bool = False) -> None:
        raise NotImplementedError("jobs are cancelled one by one: use suite.core.tasks.cancel_job")


class SqliteJobsHuey(JobsHuey, SqliteHuey):
    claims_in_queue = True
    storage_class = ClaimingSqliteStorage

    def _delete_keys(self, keys: list[str]) -> None:
        storage = cast(Any, self).storage
        if isinstance(storage, ClaimingSqliteStorage):
            storage.release(keys)  # deleted with the next dequeue's write: no fsync of its own
        else:
            super()._delete_keys(keys)

    def flush_releases(self) -> None:
        storage = cast(Any, self).storage
        if isinstance(storage, ClaimingSqliteStorage):
            storage.flush_releases()


class RedisJobsHuey(JobsHuey, RedisHuey):
    claims_in_queue = True
    storage_class = ClaimingRedisStorage
    redis_url = ""

    def enqueue_job(self, message: Any, data: bytes) -> None:
        """One round trip: the `queued` event and the message in one script, the event first."""
        huey = cast(Any, self)
        bus = events.get_bus()
        if huey.immediate or not isinstance(bus, events.RedisBus) or bus.url != self.redis_url:
            super().enqueue_job(message, data)
            return
        huey._emit(S.SIGNAL_ENQUEUED, message)
        topic = events.job_topic(message.id)
        huey.storage.enqueue_after(events.redis_channel(topic), queued_json(message.id), data)

    def _delete_keys(self, keys: list[str]) -> None:
        storage = cast(Any, self).storage
        storage.conn.hdel(storage.result_key, *keys)


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
        huey.redis_url = settings.redis_url
    else:
        path = settings.huey_path
        if not immediate:
            path.parent.mkdir(parents=True, exist_ok=True)
        huey = SqliteJobsHuey(HUEY_NAME, results=False, immediate=immediate, filename=str(path))
    huey.setup_jobs()
    if not immediate:
        from suite.core.tasks.workers import schedule_purge

        schedule_purge(huey)
    return huey


def built_huey() -> Any | None:
    """The process's Huey if it was built, else None (never builds one, never reads settings)."""
    return _huey


def forget_huey() -> None:
    """Close and forget the cached Huey. Declared tasks stay declared."""
    global _huey
    with _lock:
        if _huey is not None:
            _huey.stopping.set()
            try:
                cast(Any, _huey).storage.close()
            except Exception:
                pass
        _huey = None


def queue_name() -> str:
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
