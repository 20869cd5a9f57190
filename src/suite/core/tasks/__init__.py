"""Background work on Huey: SqliteHuey by default, RedisHuey when a Redis URL is set; the core_job table.

A domain declares a task with `@task(...)` (its first argument is the job id), starts it with `enqueue(...)`,
and reports progress through `progress(job_id)`. Job status lives in `core_job`, fed by Huey hooks and signals
(Huey's result store deletes on read, so it is off). States: queued -> running -> done | failed | cancelled |
interrupted, with retrying between attempts. Task arguments are stored in plain form: never pass a secret.

The modules: `queue` (the Huey instance, `@task`, claims), `claims` (storages that claim as they dequeue),
`jobs` (enqueue, list/get/cancel, purge), `rows` (queued rows written behind the queue), `state` (hooks and signals, the batching state writer), `sql`
(statements and their connections), `notify` (job events), `progress`, `consumer` (`suite worker`, the embedded
one), `workers` (heartbeats, jobs of lost workers, the scheduled purge), `redact` (secrets kept out of
arguments, errors and logs). Everything public is importable from here.
"""

from __future__ import annotations

from suite.core.db import session_scope
from suite.core.tasks.consumer import (
    SHUTDOWN_TIMEOUT_S,
    EmbeddedConsumer,
    JobsConsumer,
    load_task_modules,
    run_consumer,
    start_embedded_consumer,
)
from suite.core.tasks.jobs import cancel_job, count_jobs, enqueue, get_job, list_jobs, purge
from suite.core.tasks.progress import (
    PROGRESS_INTERVAL_S,
    PROGRESS_LOCK_WAIT_MS,
    Progress,
    ProgressReporter,
    progress,
)
from suite.core.tasks.queue import (
    HUEY_NAME,
    JobsHuey,
    JobTask,
    RedisJobsHuey,
    SqliteJobsHuey,
    get_huey,
    queue_name,
    safe_redis_url,
    task,
)
from suite.core.tasks.redact import (
    ERROR_MAX_CHARS,
    SECRET_KEY_RE,
    RedactingFormatter,
    check_no_secrets,
    error_text,
    redact,
)
from suite.core.tasks.sql import JOB_TABLE, PENDING_STATES
from suite.core.tasks.state import WRITE_INTERVAL_S, JobCancelled, JobInterrupted, StateWriter

__all__ = [
    "ERROR_MAX_CHARS",
    "HUEY_NAME",
    "JOB_TABLE",
    "PENDING_STATES",
    "PROGRESS_INTERVAL_S",
    "PROGRESS_LOCK_WAIT_MS",
    "SECRET_KEY_RE",
    "SHUTDOWN_TIMEOUT_S",
    "WRITE_INTERVAL_S",
    "EmbeddedConsumer",
    "JobCancelled",
    "JobInterrupted",
    "JobTask",
    "JobsConsumer",
    "JobsHuey",
    "Progress",
    "ProgressReporter",
    "RedactingFormatter",
    "RedisJobsHuey",
    "SqliteJobsHuey",
    "StateWriter",
    "cancel_job",
    "check_no_secrets",
    "count_jobs",
    "enqueue",
    "error_text",
    "flush",
    "get_huey",
    "get_job",
    "list_jobs",
    "load_task_modules",
    "progress",
    "purge",
    "purge_task",
    "queue_name",
    "redact",
    "reset",
    "run_consumer",
    "safe_redis_url",
    "start_embedded_consumer",
    "task",
]


def flush() -> None:
    """Save and publish every job state change this process has reported so far."""
    from suite.core.tasks import state

    state.flush()


def reset() -> None:
    """Forget the cached Huey (tests, after a settings change), once pending changes are saved. Declared
    tasks stay declared."""
    from suite.core.tasks import queue, state
    from suite.core.tasks.rows import rows

    state.flush()
    state.writer.clear()
    rows.clear()
    queue.forget_huey()


# Declared here so its Huey name stays `suite.core.tasks.purge`.
@task(name="purge", domain="core")
def purge_task(job_id: str, *, keep_days: int = 30) -> dict[str, int]:
    """Housekeeping: old finished jobs and expired web sessions."""
    with session_scope() as session:
        return purge(session, keep_days=keep_days, keep=job_id)
