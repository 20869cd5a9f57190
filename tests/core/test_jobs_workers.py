"""Consumers' housekeeping: heartbeats, jobs of a lost (SIGKILLed) worker, the scheduled purge.

Integration tests run real `python -m suite worker` subprocesses on SqliteHuey and RedisHuey.
"""

from __future__ import annotations

import signal
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from huey import crontab
from sqlalchemy import select
from sqlalchemy.orm import Session

from suite.core import config, tasks
from suite.core.db import session_scope, utcnow
from suite.core.errors import ConfigError
from suite.core.models import Job, JobWorker
from suite.core.tasks import enqueue, workers

try:
    from . import jobtasks_fixture as fx
    from .test_tasks import Worker, _redis_url, _reset, _row, _wait
except ImportError:
    import jobtasks_fixture as fx  # type: ignore[no-redef]
    from test_tasks import Worker, _redis_url, _reset, _row, _wait  # type: ignore[no-redef]

BEAT = {"SUITE_JOBS__HEARTBEAT_S": "0.2", "SUITE_JOBS__WORKER_TIMEOUT_S": "1.5"}


def _worker_row(session: Session, *, beat_ago_s: float) -> JobWorker:
    row = JobWorker(
        id=workers.new_worker_id(), hostname="h", pid=1, heartbeat_at=utcnow() - timedelta(seconds=beat_ago_s)
    )
    session.add(row)
    session.flush()
    return row


def _workers() -> set[str]:
    with session_scope() as session:
        return set(session.scalars(select(JobWorker.id)))


# --- the reaper and the heartbeat ---------------------------------------------------------------------


def test_reap_fails_running_jobs_of_lost_workers_only(any_db_session: Session) -> None:
    alive = _worker_row(any_db_session, beat_ago_s=1)
    lost = _worker_row(any_db_session, beat_ago_s=120)
    of_lost = _row(any_db_session, state="running", worker_id=lost.id)
    of_alive = _row(any_db_session, state="running", worker_id=alive.id)
    of_gone = _row(any_db_session, state="running", worker_id="gone:1:abc")  # its row deleted before
    inline = _row(any_db_session, state="running")  # inline runs have no worker
    finished = _row(any_db_session, state="done", worker_id=lost.id)
    queued = _row(any_db_session, state="queued")

    failed = workers.reap(timeout_s=60)

    assert sorted(failed) == sorted([of_lost.id, of_gone.id])
    any_db_session.expire_all()
    rows = {job.id: job for job in any_db_session.scalars(select(Job))}
    for job in (of_lost, of_gone):
        assert (rows[job.id].state, rows[job.id].error) == ("failed", workers.WORKER_LOST)
        assert rows[job.id].finished_at is not None
    for job, state in ((of_alive, "running"), (inline, "running"), (finished, "done"), (queued, "queued")):
        assert (rows[job.id].state, rows[job.id].error) == (state, None)
    assert set(any_db_session.scalars(select(JobWorker.id))) == {alive.id}
    assert workers.reap(timeout_s=60) == []  # nothing twice


def test_heartbeat_registers_renews_and_comes_back_after_being_taken_for_lost(
    any_db_session: Session,
) -> None:
    heartbeat = workers.Heartbeat()
    heartbeat._register()
    row = any_db_session.get(JobWorker, heartbeat.worker_id)
    assert row is not None and row.pid > 0
    first = row.heartbeat_at
    any_db_session.execute(
        JobWorker.__table__.update().values(heartbeat_at=first - timedelta(seconds=30))  # type: ignore[attr-defined]
    )
    heartbeat.beat()
    any_db_session.expire_all()
    assert any_db_session.get(JobWorker, heartbeat.worker_id).heartbeat_at >= first  # type: ignore[union-attr]
    any_db_session.execute(JobWorker.__table__.delete())  # type: ignore[attr-defined]
    heartbeat.beat()  # reaped by another worker while alive: it says so again
    any_db_session.expire_all()
    assert any_db_session.get(JobWorker, heartbeat.worker_id) is not None
    heartbeat.stop()
    any_db_session.expire_all()
    assert any_db_session.get(JobWorker, heartbeat.worker_id) is None


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (
            {"SUITE_JOBS__HEARTBEAT_S": "10", "SUITE_JOBS__WORKER_TIMEOUT_S": "15"},
            "at least twice heartbeat_s",
        ),
        ({"SUITE_JOBS__HEARTBEAT_S": "0"}, "jobs.heartbeat_s"),
        ({"SUITE_JOBS__PURGE_SCHEDULE": "daily"}, "jobs.purge_schedule"),
        ({"SUITE_JOBS__PURGE_SCHEDULE": "0 24 * * *"}, "hour must be within 0-23"),
        ({"SUITE_JOBS__PURGE_SCHEDULE": "* * * *"}, "jobs.purge_schedule"),
        ({"SUITE_JOBS__KEEP_DAYS": "-1"}, "jobs.keep_days"),
    ],
)
def test_bad_jobs_settings_are_config_errors(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, str], problem: str
) -> None:
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    config.reset_settings()
    with pytest.raises(ConfigError, match=problem):
        config.get_settings()


# --- a worker killed with SIGKILL ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_jobs_of_a_killed_worker_fail_as_worker_lost(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    redis_url = _redis_url(request, 3) if backend == "redis" else None
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    first = Worker(tmp_path / "w", backend, redis_url)
    first.settings.update(BEAT)
    first.start(workers=1)
    second = Worker(tmp_path / "w", backend, redis_url)  # the same database and queue
    second.settings.update(BEAT)
    try:
        first.use(monkeypatch)
        job = enqueue(fx.sleeper, release=str(tmp_path / "never"))
        running = first.wait_state(job.id, "running")
        assert running.worker_id is not None and running.worker_id in _workers()
        assert first.proc is not None
        pid = first.proc.pid
        assert running.worker_id.split(":")[1] == str(pid)

        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        assert first.job(job.id).state == "running"  # no one is left to notice
        assert running.worker_id in _workers()

        second.start(workers=1)
        lost = second.wait_state(job.id, "failed", "done", "interrupted", timeout=30)
        assert (lost.state, lost.error, lost.attempts) == ("failed", workers.WORKER_LOST, 1)
        assert lost.finished_at is not None
        assert running.worker_id not in _workers()
        # The new worker runs new jobs (and its own row is there while it runs).
        after = enqueue(fx.add, a=1, b=2)
        assert second.wait_state(after.id, "done").result == 3
        assert len(_workers()) == 1
        assert second.stop() == 0
        assert _workers() == set()  # a worker that stops says so
    finally:
        first.stop(signal.SIGKILL)
        second.stop(signal.SIGKILL)


# --- the scheduled purge ------------------------------------------------------------------------------


def test_purge_schedule_is_a_periodic_task_of_the_consumers_huey(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_JOBS__IMMEDIATE", "false")
    monkeypatch.setenv("SUITE_JOBS__PURGE_SCHEDULE", "30 4 * * 1")
    _reset()
    huey = tasks.get_huey()

    def due(when: datetime) -> bool:
        return any(t.name == workers.PURGE_TASK_NAME for t in huey.read_periodic(when))

    monday = datetime(2026, 11, 23, 4, 30)
    expected = crontab(minute="30", hour="4", day_of_week="1")
    for when in (
        monday,
        monday + timedelta(minutes=1),
        monday + timedelta(days=1),
        monday + timedelta(days=7),
    ):
        assert due(when) == expected(when)
    assert due(monday) and not due(monday + timedelta(days=1))

    monkeypatch.setenv("SUITE_JOBS__PURGE_SCHEDULE", "off")
    _reset()
    huey = tasks.get_huey()
    assert not due(monday)


def _finished(session: Session, days_ago: float, state: str = "done") -> Job:
    at = utcnow() - timedelta(days=days_ago)
    return _row(session, state=state, created_at=at, updated_at=at, finished_at=at)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_consumer_purges_old_jobs_on_schedule(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """A consumer checks periodic tasks when it starts: with "* * * * *" the purge runs at once, with
    jobs.keep_days as its retention."""
    redis_url = _redis_url(request, 4) if backend == "redis" else None
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    worker = Worker(tmp_path / "w", backend, redis_url)
    worker.settings.update(SUITE_JOBS__PURGE_SCHEDULE="* * * * *", SUITE_JOBS__KEEP_DAYS="7")
    worker.use(monkeypatch)
    from suite.core.db import prepare_database

    prepare_database()
    with session_scope() as session:
        old = [_finished(session, 8), _finished(session, 30, "failed"), _finished(session, 9, "cancelled")]
        kept = [
            _finished(session, 6),
            _row(session, state="running", created_at=utcnow() - timedelta(days=40)),
            _row(session, state="queued", created_at=utcnow() - timedelta(days=40)),
        ]
        ids: dict[str, Any] = {"old": {j.id for j in old}, "kept": {j.id for j in kept}}
    worker.start(workers=1)
    try:

        def purged() -> Job | None:
            with session_scope() as session:
                return session.scalars(select(Job).where(Job.name == "purge", Job.state == "done")).first()

        job = _wait(purged, "the scheduled purge", log=worker.log)
        assert (job.domain, job.params, job.result) == ("core", {"keep_days": 7}, {"jobs": 3, "sessions": 0})
        with session_scope() as session:
            remaining = set(session.scalars(select(Job.id)))
        assert remaining == ids["kept"] | {job.id}
    finally:
        worker.stop()


def test_queue_purge_queues_the_purge_job_with_the_retention(
    db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUITE_JOBS__KEEP_DAYS", "3")
    config.reset_settings()
    gone, kept = _finished(db_session, 4), _finished(db_session, 2)
    job_id = workers.queue_purge()  # inline here (jobs.immediate)
    job = db_session.get(Job, job_id)
    assert job is not None and (job.name, job.state, job.result) == (
        "purge",
        "done",
        {"jobs": 1, "sessions": 0},
    )
    remaining = set(db_session.scalars(select(Job.id)))
    assert gone.id not in remaining and kept.id in remaining
