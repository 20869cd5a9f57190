"""Test tasks, imported by the tests and by `suite worker` subprocesses (SUITE_JOBS__TASK_MODULES)."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import update

from suite.core.config import get_settings
from suite.core.db import session_scope
from suite.core.models import Job
from suite.core.tasks import progress, task


@task()
def add(job_id: str, a: int, b: int) -> int:
    return a + b


@task(retries=2)
def boom(job_id: str, *, message: str) -> None:
    raise RuntimeError(message)


@task(retries=2)
def leaky(job_id: str) -> None:
    """Fails with secrets in its message, the way a real HTTP client error can."""
    key = get_settings().llm.providers["test"].api_key
    assert key is not None
    raise RuntimeError(
        f"upstream said no: key={key.get_secret_value()} Authorization: Bearer abc.def-123 "
        f"sk-live1234567890 password=hunter2 postgresql://app:pw0rd@db/app"
    )


@task(retries=1)
def flaky(job_id: str, *, counter: str) -> int:
    """Fails on its first attempt, succeeds on the second."""
    path = Path(counter)
    seen = int(path.read_text()) if path.exists() else 0
    path.write_text(str(seen + 1))
    if seen == 0:
        raise ConnectionError("first attempt fails")
    return seen + 1


@task()
def touch(job_id: str, *, path: str) -> str:
    Path(path).write_text(job_id)
    return job_id


@task()
def wait_for(job_id: str, *, release: str, started: str | None = None, limit_s: float = 30.0) -> int:
    """Reports progress every 20 ms until the `release` file exists (cancel stops it at a report)."""
    report = progress(job_id)
    if started:
        Path(started).write_text(job_id)
    deadline = time.monotonic() + limit_s
    step = 0
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        step += 1
        report(step, None, f"step {step}")
        time.sleep(0.02)
    return step


@task()
def sleeper(job_id: str, *, release: str, limit_s: float = 30.0) -> str:
    """Never reports progress: a stopping consumer can only mark it interrupted."""
    deadline = time.monotonic() + limit_s
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"


@task()
def self_cancel(job_id: str) -> str:
    """Asks for its own cancellation between two reports, as a user's cancel would."""
    report = progress(job_id)
    report(1, 3, "first")
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    report(3, 3, "last")
    return "not reached"


@task(name="renamed", domain="catalog")
def named(job_id: str) -> dict[str, str]:
    return {"job_id": job_id}


@task(retries=2)
def cancelled_then_fails(job_id: str) -> None:
    """A cancel arrives while it runs, then it fails: it must not be retried."""
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    raise RuntimeError("failed after the cancel")


@task()
def cancel_inside_transaction(job_id: str) -> str:
    """Asks for its own cancellation, then reports progress while its own write transaction holds SQLite's
    lock (as a task that hands its session and `progress` to a service does): the report must not wait out
    the lock, and must still see the cancel."""
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    report = progress(job_id)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(message="inside the transaction"))
        report(1, 2, "inside")
    return "not reached"
