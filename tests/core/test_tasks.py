"""Jobs: Huey from settings, the core_job table fed by Huey hooks, progress, cancel, consumers.

Unit tests run jobs inline (SUITE_JOBS__IMMEDIATE=true, the savepointed `db_session`). Integration tests run
a real `python -m suite worker` subprocess on SqliteHuey and on RedisHuey, sharing a database file with them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from huey import RedisHuey, SqliteHuey
from huey.registry import Message
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from suite.core import config, db, events, tasks
from suite.core.api import create_app
from suite.core.auth import create_token
from suite.core.db import build_engine, session_scope, utcnow
from suite.core.errors import (
    ConfigError,
    Conflict,
    DatabaseError,
    NotFound,
    Unavailable,
    UsageError,
    ValidationFailed,
)
from suite.core.migrations import upgrade
from suite.core.models import Job, User, WebSession
from suite.core.tasks import cancel_job, enqueue, get_huey, list_jobs, progress, state
from suite.core.tasks.notify import unheard

try:
    from . import jobtasks_fixture as fx
except ImportError:
    import jobtasks_fixture as fx  # type: ignore[no-redef]

SECRET = "zz-settings-secret-4242"
LEAKED = ("abc.def-123", "live1234567890", "hunter2", "pw0rd", SECRET)


def _reset() -> None:
    db.reset_engine()
    config.reset_settings()
    tasks.reset()
    events.reset()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def _row(session: Session, owner: User | None = None, **values: Any) -> Job:
    now = utcnow()
    values.setdefault("state", "queued")
    values.setdefault("created_at", now)
    values.setdefault("updated_at", now)
    job = Job(id=str(uuid.uuid4()), name="touch", owner_id=owner.id if owner else None, params={}, **values)
    session.add(job)
    session.flush()
    return job


def _user(session: Session, role: str = "user") -> User:
    user = User(username=f"u{uuid.uuid4().hex[:10]}", password_hash="x", role=role, is_active=True)
    session.add(user)
    session.flush()
    return user


# --- the Huey instance ---------------------------------------------------------------------------------


def test_sqlite_huey_by_default_on_its_own_file(monkeypatch: pytest.MonkeyPatch, suite_env: Path) -> None:
    monkeypatch.setenv("SUITE_JOBS__IMMEDIATE", "false")
    _reset()
    huey = get_huey()
    assert isinstance(huey, SqliteHuey) and not huey.immediate
    assert huey.storage.filename == str(suite_env / "jobs.db")
    assert get_huey() is huey  # cached per process
    assert fx.add.key in huey.job_tasks and tasks.purge_task.key in huey.job_tasks
    tasks.reset()
    assert get_huey() is not huey


def test_redis_huey_when_redis_url_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_REDIS_URL", "redis://127.0.0.1:1/3")
    monkeypatch.setenv("SUITE_JOBS__IMMEDIATE", "false")
    _reset()
    huey = get_huey()  # connects lazily: nothing listens on port 1
    assert isinstance(huey, RedisHuey) and huey.results is False


# --- enqueue and the job table (inline) ----------------------------------------------------------------


def test_enqueue_records_and_runs_job(any_db_session: Session) -> None:
    user = _user(any_db_session)
    job = enqueue(fx.add, owner_id=user.id, a=2, b=3)
    assert (job.state, job.result, job.attempts, job.max_retries) == ("done", 5, 1, 0)
    assert (job.name, job.domain, job.owner_id, job.params) == ("add", "core", user.id, {"a": 2, "b": 3})
    assert job.started_at is not None and job.finished_at is not None and job.started_at <= job.finished_at
    assert job.error is None and job.cancel_requested is False

    named = enqueue(fx.named, params={"shown": "to users"})
    assert (named.name, named.domain, named.params) == ("renamed", "catalog", {"shown": "to users"})
    assert named.result == {"job_id": named.id}  # the job id is the first argument
    assert enqueue(fx.add, domain="recs", a=0, b=0).domain == "recs"


def test_enqueue_with_callers_session(db_session: Session) -> None:
    job = enqueue(fx.add, session=db_session, a=1, b=1)
    assert job in db_session and job.state == "done" and job.result == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key": SecretStr("s3cr3t-value")},
        {"options": {"nested": [SecretStr("s3cr3t-value")]}},
        {"api_key": "s3cr3t-value"},
        {"jira_token": "s3cr3t-value"},
        {"params": {"password": "hunter2"}},
    ],
)
def test_enqueue_refuses_secrets_and_writes_nothing(db_session: Session, kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="stored in plain form"):
        enqueue(fx.touch, **{"path": "/nonexistent", **kwargs})
    assert _count(db_session) == 0


def test_enqueue_refuses_unpicklable_arguments(db_session: Session) -> None:
    with pytest.raises(UsageError, match="cannot be serialized"):
        enqueue(fx.touch, path=lambda: "no")
    assert _count(db_session) == 0


def test_enqueue_needs_a_declared_task(db_session: Session) -> None:
    with pytest.raises(TypeError, match="not declared"):
        enqueue(print)  # type: ignore[arg-type]


def test_redis_down_enqueue_fails_clearly_and_leaves_no_row(
    db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{_free_port()}/0"
    monkeypatch.setenv("SUITE_REDIS_URL", url)
    monkeypatch.setenv("SUITE_JOBS__IMMEDIATE", "false")
    _reset()
    with pytest.raises(Unavailable) as exc:
        enqueue(fx.add, a=1, b=2)
    assert exc.value.status_code == 503
    assert f"job not queued: Redis at redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]} does not answer" in str(
        exc.value
    )
    assert "hunter2" not in str(exc.value)
    assert _count(db_session) == 0


def test_job_that_raises_is_retried_then_failed(any_db_session: Session) -> None:
    job = enqueue(fx.boom, message="disk full")
    assert (job.state, job.attempts, job.max_retries) == ("failed", 3, 2)
    assert job.error == "RuntimeError: disk full" and job.finished_at is not None


def test_job_retried_until_it_succeeds(db_session: Session, tmp_path: Path) -> None:
    job = enqueue(fx.flaky, counter=str(tmp_path / "count"))
    assert (job.state, job.attempts, job.result, job.error) == ("done", 2, 2, None)


def test_error_text_has_secrets_redacted(db_session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__TEST__API_KEY", SECRET)
    _reset()
    job = enqueue(fx.leaky)
    assert job.state == "failed" and job.error is not None
    assert job.error.startswith("RuntimeError: upstream said no: key=***")
    for leaked in LEAKED:
        assert leaked not in job.error
    assert "Bearer ***" in job.error and "sk-***" in job.error and "password=***" in job.error
    assert "postgresql://app:***@db/app" in job.error


def test_redact_patterns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__X__API_KEY", SECRET)
    _reset()
    text = (
        f'{{"password": "p@ss word", "api_key": "k1"}} token=abc&x=1 Authorization: bearer eyJ.x.y {SECRET} '
        "st_AbCdEf123456 sk-proj-abcdef redis://:pw@h:6379/0"
    )
    out = tasks.redact(text)
    for leaked in ("p@ss word", "k1", "abc&", "eyJ.x.y", SECRET, "AbCdEf123456", "proj-abcdef", ":pw@"):
        assert leaked not in out, out
    assert "x=1" in out and "redis://:***@h:6379/0" in out


def test_progress_saved_published_and_cancel_stops_the_task(any_db_session: Session) -> None:
    async def run() -> tuple[Job, list[events.Event]]:
        async with events.subscribe("jobs.*") as sub:
            job = enqueue(fx.self_cancel)  # inline, in this loop's thread
            seen = []
            while len(seen) < 5:
                seen.append(await asyncio.wait_for(sub.get(), 5))
            return job, seen

    job, seen = asyncio.run(run())
    assert job.state == "cancelled" and job.result is None and job.finished_at is not None
    assert (job.progress_done, job.progress_total, job.message) == (3, 3, "last")
    assert [(e.type, e.data.get("state") or e.data.get("done")) for e in seen] == [
        ("job.status", "queued"),
        ("job.status", "running"),
        ("job.progress", 1),
        ("job.progress", 3),
        ("job.status", "cancelled"),
    ]
    assert all(e.topic == f"jobs.{job.id}" and e.data["job_id"] == job.id for e in seen)
    assert seen[2].data == {"job_id": job.id, "done": 1, "total": 3, "message": "first"}


def test_failure_after_a_cancel_request_is_not_retried(any_db_session: Session) -> None:
    job = enqueue(fx.cancelled_then_fails)
    assert (job.state, job.attempts, job.error) == ("cancelled", 1, "RuntimeError: failed after the cancel")


def test_progress_is_throttled_but_final_report_always_saved(any_db_session: Session) -> None:
    job = _row(any_db_session, state="running")
    report = tasks.ProgressReporter(job.id, interval=3600)
    report(1, 10, "one")
    report(5, 10, "five")  # within the interval: skipped
    any_db_session.expire_all()
    assert (any_db_session.get(Job, job.id).progress_done, job.message) == (1, "one")  # type: ignore[union-attr]
    report(10, 10, "all")
    any_db_session.expire_all()
    row = any_db_session.get(Job, job.id)
    assert row is not None and (row.progress_done, row.progress_total, row.message) == (10, 10, "all")


def test_progress_of_unknown_job_is_harmless(db_session: Session) -> None:
    progress("no-such-job")(1, 2, "x")  # nothing to save, no cancel


# --- cancel, list, get (service) -----------------------------------------------------------------------


def test_cancel_queued_job_revokes_it_so_it_never_runs(any_db_session: Session, tmp_path: Path) -> None:
    user = _user(any_db_session)
    marker = tmp_path / "ran"
    job = _row(any_db_session, user)
    cancelled = cancel_job(any_db_session, job_id=job.id, user=user)
    assert (cancelled.state, cancelled.cancel_requested) == ("cancelled", True)
    # The worker's view: the message arrives anyway (revoked, or it raced the revoke): the task never runs.
    huey = get_huey()
    message = huey.job_tasks[fx.touch.key].task_class((job.id,), {"path": str(marker)}, id=job.id)
    assert huey.is_revoked(message)
    huey.restore_by_id(job.id)
    huey.execute(message)
    assert not marker.exists()
    any_db_session.expire_all()
    row = any_db_session.get(Job, job.id)
    assert row is not None and (row.state, row.attempts, row.started_at) == ("cancelled", 0, None)


def test_cancel_waiting_retry_and_running_jobs(any_db_session: Session) -> None:
    user = _user(any_db_session)
    retrying = _row(any_db_session, user, state="retrying", attempts=1)
    assert cancel_job(any_db_session, job_id=retrying.id, user=user).state == "cancelled"
    running = _row(any_db_session, user, state="running", attempts=1)
    job = cancel_job(any_db_session, job_id=running.id, user=user)
    assert (job.state, job.cancel_requested) == ("running", True)
    # A second request while it winds down changes nothing.
    assert cancel_job(any_db_session, job_id=running.id, user=user).cancel_requested is True


@pytest.mark.parametrize("state", ["done", "failed", "cancelled", "interrupted"])
def test_cancel_finished_job_conflicts(any_db_session: Session, state: str) -> None:
    user = _user(any_db_session)
    job = _row(any_db_session, user, state=state)
    with pytest.raises(Conflict, match=f"already {state}") as exc:
        cancel_job(any_db_session, job_id=job.id, user=user)
    assert exc.value.status_code == 409


def test_jobs_are_owner_scoped(any_db_session: Session) -> None:
    alice, bob, admin = _user(any_db_session), _user(any_db_session), _user(any_db_session, role="admin")
    job = _row(any_db_session, alice)
    with pytest.raises(NotFound):
        cancel_job(any_db_session, job_id=job.id, user=bob)
    with pytest.raises(NotFound):
        tasks.get_job(any_db_session, job_id=job.id, user=bob)
    assert tasks.get_job(any_db_session, job_id=job.id, user=admin) is job
    assert list_jobs(any_db_session, user=bob) == []
    assert list_jobs(any_db_session, user=alice) == [job] == list_jobs(any_db_session, user=admin)
    assert cancel_job(any_db_session, job_id=job.id, user=admin).state == "cancelled"


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (201, 0), (10, -1)])
def test_list_jobs_validates_paging(db_session: Session, limit: int, offset: int) -> None:
    with pytest.raises(ValidationFailed):
        list_jobs(db_session, user=None, limit=limit, offset=offset)


# --- worker-side edge cases ----------------------------------------------------------------------------


def test_unknown_task_is_marked_failed(any_db_session: Session) -> None:
    job = _row(any_db_session)
    huey = get_huey()
    data = huey.serializer.serialize(Message(id=job.id, name="gone.module.task", args=(job.id,), kwargs={}))
    with pytest.raises(Exception, match="not found in TaskRegistry"):
        huey.deserialize_task(data)
    any_db_session.expire_all()
    row = any_db_session.get(Job, job.id)
    assert row is not None and row.state == "failed"
    assert (
        row.error == "task gone.module.task is unknown to this worker (is its module in jobs.task_modules?)"
    )


def test_purge_task_removes_old_finished_jobs_and_expired_sessions(any_db_session: Session) -> None:
    user = _user(any_db_session)
    old = utcnow() - timedelta(days=40)
    gone = _row(any_db_session, state="done", finished_at=old)
    kept = [
        _row(any_db_session, state="failed", finished_at=utcnow() - timedelta(days=2)),
        _row(any_db_session, state="running", updated_at=old),
        _row(any_db_session, state="queued", updated_at=old),
    ]
    for expires in (utcnow() - timedelta(hours=1), utcnow() + timedelta(hours=1)):
        any_db_session.add(
            WebSession(
                id=uuid.uuid4().hex, user_id=user.id, csrf_token="c", expires_at=expires, last_seen_at=old
            )
        )
    any_db_session.flush()
    job = enqueue(tasks.purge_task, keep_days=30)
    assert (job.state, job.result) == ("done", {"jobs": 1, "sessions": 1})
    remaining = set(any_db_session.scalars(select(Job.id)))
    assert gone.id not in remaining and remaining == {job.id, *(k.id for k in kept)}
    assert any_db_session.scalar(select(func.count()).select_from(WebSession)) == 1


def test_consumer_refuses_immediate_mode() -> None:
    with pytest.raises(ConfigError, match=r"jobs.immediate is true"):
        tasks.run_consumer(workers=1)
    tasks.start_embedded_consumer().stop()  # nothing to consume: a no-op


def test_unimportable_task_module_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_JOBS__IMMEDIATE", "false")
    monkeypatch.setenv("SUITE_JOBS__TASK_MODULES", '["no_such_tasks_module"]')
    _reset()
    with pytest.raises(ConfigError, match=r"jobs\.task_modules: cannot import 'no_such_tasks_module'"):
        tasks.run_consumer(workers=1)


# --- integration: real consumers -----------------------------------------------------------------------


def _import_root() -> str:
    """The sys.path entry from which the fixture module imports under its current name."""
    root = Path(fx.__file__).resolve().parent
    for _ in fx.__name__.split(".")[1:]:
        root = root.parent
    return str(root)


def _wait(predicate: Any, what: str, timeout: float = 30.0, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n--- worker log ---\n{tail}")
        time.sleep(0.02)


class Worker:
    """A `python -m suite worker` subprocess plus the settings this test process needs to share its queue."""

    def __init__(self, data: Path, backend: str, redis_url: str | None) -> None:
        self.data = data
        self.backend = backend
        self.log = data / "worker.log"
        self.settings = {
            "SUITE_DATA_DIR": str(data),
            "SUITE_ENV": "test",
            "SUITE_JOBS__IMMEDIATE": "false",
            "SUITE_JOBS__TASK_MODULES": json.dumps([fx.__name__]),
            "SUITE_LLM__PROVIDERS__TEST__API_KEY": SECRET,
            "SUITE_LOG_LEVEL": "INFO",
        }
        if redis_url:
            self.settings["SUITE_REDIS_URL"] = redis_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, workers: int = 2) -> None:
        data = self.data
        data.mkdir(parents=True, exist_ok=True)
        engine = build_engine(f"sqlite:///{data / 'suite.db'}")
        upgrade(engine)  # before the worker starts: two processes must not migrate the same file at once
        engine.dispose()
        keep = {"SUITE_REQUIRE_SERVICES", "SUITE_TEST_POSTGRES_URL"}
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_") or k in keep}
        env.update(self.settings)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_import_root(), env.get("PYTHONPATH")]))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "suite", "worker", "--workers", str(workers)],
                env=env,
                cwd=data,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this test process at the worker's database and queue."""
        for key, value in self.settings.items():
            monkeypatch.setenv(key, value)
        _reset()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"worker ignored {signal.Signals(sig).name}:\n{self.log.read_text()[-3000:]}"
            )

    def job(self, job_id: str) -> Job:
        with session_scope() as session:  # get_job: writes the rows this process queued first
            return tasks.get_job(session, job_id=job_id)

    def wait_state(self, job_id: str, *states: str, timeout: float = 30) -> Job:
        def reached() -> Job | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"the worker exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}"
                )
            job = self.job(job_id)
            return job if job.state in states else None

        return _wait(reached, f"{job_id} in {states}", timeout, self.log)


def _redis_url(request: pytest.FixtureRequest, db_index: int) -> str:
    server = request.getfixturevalue("redis_server")
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    return f"redis://127.0.0.1:{server.port}/{db_index}"


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def shared_worker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """One consumer (2 threads) per backend for this module's integration tests."""
    backend = request.param
    redis_url = _redis_url(request, 0) if backend == "redis" else None
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    worker = Worker(tmp_path_factory.mktemp(f"jobs-{backend}"), backend, redis_url)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def live(shared_worker: Worker, monkeypatch: pytest.MonkeyPatch) -> Worker:
    shared_worker.use(monkeypatch)
    return shared_worker


@pytest.fixture
def api(live: Worker) -> TestClient:
    return TestClient(create_app(domains=[]))


def _caller(role: str = "user") -> tuple[User, dict[str, str]]:
    with session_scope() as session:
        user = _user(session, role)
        token, plain = create_token(session, user=user, name="test")
        # Marked used, so auth writes nothing on the next requests: on SQLite a request's write after its
        # first read can fail while the worker writes (db.py begins transactions DEFERRED).
        token.last_used_at = utcnow()
    return user, {"Authorization": f"Bearer {plain}"}


def test_worker_runs_job_to_done(live: Worker) -> None:
    job = enqueue(fx.add, a=20, b=22)
    assert job.state == "queued" and job.attempts == 0
    done = live.wait_state(job.id, "done", "failed")
    assert (done.state, done.result, done.attempts, done.error) == ("done", 42, 1, None)
    assert done.started_at is not None and done.finished_at is not None


def test_worker_retries_then_fails_with_secrets_redacted(live: Worker) -> None:
    job = enqueue(fx.leaky)
    failed = live.wait_state(job.id, "failed", "done")
    assert (failed.state, failed.attempts) == ("failed", 3)
    assert failed.error is not None and failed.error.startswith("RuntimeError: upstream said no: key=***")
    log = live.log.read_text()
    assert "upstream said no" in log  # the worker logged the traceback...
    for leaked in LEAKED:  # ...with the secrets redacted there too
        assert leaked not in failed.error and leaked not in log


def test_worker_retries_until_success(live: Worker) -> None:
    job = enqueue(fx.flaky, counter=str(live.data / f"count-{uuid.uuid4().hex}"))
    done = live.wait_state(job.id, "done", "failed")
    assert (done.state, done.attempts, done.result) == ("done", 2, 2)


def test_cancel_queued_job_never_runs(live: Worker, api: TestClient) -> None:
    user, headers = _caller()
    release = live.data / f"release-{uuid.uuid4().hex}"
    blockers = [enqueue(fx.wait_for, owner_id=user.id, release=str(release)) for _ in range(2)]
    for b in blockers:  # both worker threads busy: the next job stays queued
        live.wait_state(b.id, "running")
    marker = live.data / f"ran-{uuid.uuid4().hex}"
    job = enqueue(fx.touch, owner_id=user.id, path=str(marker))
    assert live.job(job.id).state == "queued"

    resp = api.post(f"/api/v1/jobs/{job.id}/cancel", headers=headers)
    assert resp.status_code == 202 and resp.json()["state"] == "cancelled"

    release.touch()
    for b in blockers:
        live.wait_state(b.id, "done")
    after = enqueue(fx.add, a=1, b=1)  # queued behind the cancelled one
    live.wait_state(after.id, "done")
    _wait(lambda: get_huey().pending_count() == 0, "an empty queue")
    assert not marker.exists()
    row = live.job(job.id)
    assert (row.state, row.attempts, row.started_at) == ("cancelled", 0, None)


def test_cancel_running_job_stops_at_next_progress(live: Worker, api: TestClient) -> None:
    user, headers = _caller()
    job = enqueue(fx.wait_for, owner_id=user.id, release=str(live.data / "never"))
    _wait(lambda: live.job(job.id).progress_done >= 2, "progress reports", log=live.log)

    resp = api.post(f"/api/v1/jobs/{job.id}/cancel", headers=headers)
    assert resp.status_code == 202
    assert resp.json()["state"] == "running" and resp.json()["cancel_requested"] is True

    row = live.wait_state(job.id, "cancelled", "done", "failed")
    assert (row.state, row.attempts, row.result, row.error) == ("cancelled", 1, None, None)
    assert row.finished_at is not None and row.message is not None and row.message.startswith("step ")


def test_cancel_finished_is_409_and_foreign_is_404(live: Worker, api: TestClient) -> None:
    alice, alice_headers = _caller()
    _, bob_headers = _caller()
    job = enqueue(fx.add, owner_id=alice.id, a=1, b=2)
    live.wait_state(job.id, "done")

    resp = api.post(f"/api/v1/jobs/{job.id}/cancel", headers=alice_headers)
    assert resp.status_code == 409
    assert resp.json() == {"error": {"code": "conflict", "message": f"job {job.id} already done"}}
    for method, path in (("GET", ""), ("POST", "/cancel")):
        resp = api.request(method, f"/api/v1/jobs/{job.id}{path}", headers=bob_headers)
        assert resp.status_code == 404
        assert resp.json()["error"] == {"code": "not_found", "message": f"job {job.id} not found"}
    assert api.get(f"/api/v1/jobs/{job.id}", headers=alice_headers).json()["result"] == 3


@pytest.mark.parametrize("shared_worker", ["redis"], indirect=True)  # without Redis, events stay in-process
def test_events_from_the_worker_reach_this_process(live: Worker) -> None:
    release = live.data / f"release-{uuid.uuid4().hex}"

    async def run() -> list[events.Event]:
        async with events.subscribe("jobs.*") as sub:
            job = await asyncio.to_thread(enqueue, fx.wait_for, release=str(release))
            seen: list[events.Event] = []
            while not seen or seen[-1].data.get("state") != "done":
                event = await asyncio.wait_for(sub.get(), 30)
                if event.data["job_id"] == job.id:
                    seen.append(event)
                    if event.type == "job.progress":
                        release.touch()
            return seen

    seen = asyncio.run(run())
    states = [e.data["state"] for e in seen if e.type == "job.status"]
    assert states == ["queued", "running", "done"]
    assert any(e.type == "job.progress" and e.data["done"] >= 1 for e in seen)


@pytest.mark.parametrize(
    ("backend", "sig", "code"), [("sqlite", signal.SIGINT, 130), ("redis", signal.SIGTERM, 0)]
)
def test_stopping_worker_marks_running_job_interrupted(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    sig: int,
    code: int,
) -> None:
    worker = Worker(tmp_path / "w", backend, _redis_url(request, 1) if backend == "redis" else None)
    worker.start(workers=1)
    try:
        worker.use(monkeypatch)
        job = enqueue(fx.wait_for, release=str(tmp_path / "never"))
        _wait(lambda: worker.job(job.id).progress_done >= 1, "the job to run", log=worker.log)
        assert worker.stop(sig) == code
    finally:
        worker.stop(signal.SIGKILL)
    row = worker.job(job.id)
    assert (row.state, row.attempts) == ("interrupted", 1)
    assert row.error == f"job {job.id} interrupted: the worker is stopping" and row.finished_at is not None


def test_embedded_consumer_runs_jobs_and_marks_unfinished_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUITE_JOBS__IMMEDIATE", "false")
    _reset()
    consumer = tasks.start_embedded_consumer(workers=2)
    assert consumer.consumer is not None
    threads = [t for _, t in consumer.consumer.worker_threads]
    release = tmp_path / "release"
    try:
        done = enqueue(fx.add, a=3, b=4)
        _wait(lambda: _job(done.id).state == "done", "an embedded run")
        polite = enqueue(fx.wait_for, release=str(release))
        stubborn = enqueue(fx.sleeper, release=str(release))
        for job in (polite, stubborn):
            _wait(lambda j=job: _job(j.id).state == "running", "both jobs running")
        consumer.stop(timeout=0.5)
    finally:
        release.touch()
        consumer.stop()
        for thread in threads:  # the stubborn job ends once released; let it finish before the next test
            thread.join(10)
    assert _job(done.id).result == 7
    first, second = _job(polite.id), _job(stubborn.id)
    assert (first.state, first.error) == (
        "interrupted",
        f"job {polite.id} interrupted: the worker is stopping",
    )
    assert (second.state, second.error) == ("interrupted", "the worker stopped while it ran")


def _job(job_id: str) -> Job:
    with session_scope() as session:
        return tasks.get_job(session, job_id=job_id)


# --- the state writer, claims and batching -------------------------------------------------------------


def test_writer_saves_a_run_once_and_shows_unsaved_changes(db_session: Session) -> None:
    """Start and end reported together become one write (started_at kept), a lone start says running, a
    second end never replaces the first; until saved, the changes show on loaded rows only."""
    writer = state.StateWriter(interval=3600)  # saved by flush() alone
    both, started, twice = (_row(db_session) for _ in range(3))
    t0 = utcnow()
    writer.start(both.id, t0)
    writer.finish(both.id, _final("done", result={"n": 1}, error=None))
    writer.start(started.id, t0)
    writer.start(twice.id, t0)
    writer.finish(twice.id, _final("interrupted", error="the worker stopped while it ran"))
    writer.finish(twice.id, _final("done", result=None, error=None))

    loaded = db_session.get(Job, both.id)
    assert loaded is not None
    writer.overlay([loaded])
    assert (loaded.state, loaded.attempts, loaded.result, loaded.started_at) == ("done", 1, {"n": 1}, t0)
    assert loaded not in db_session.dirty  # shown, not written by this session
    db_session.expire_all()
    assert {db_session.get(Job, j.id).state for j in (both, started, twice)} == {"queued"}  # type: ignore[union-attr]

    seen = _status_events(writer.flush)
    db_session.expire_all()
    rows = {j.id: db_session.get(Job, j.id) for j in (both, started, twice)}
    done = rows[both.id]
    assert done is not None and (done.state, done.attempts, done.result) == ("done", 1, {"n": 1})
    assert done.started_at == t0 and done.finished_at is not None and t0 <= done.finished_at
    assert (rows[started.id].state, rows[started.id].attempts) == ("running", 1)  # type: ignore[union-attr]
    assert rows[twice.id].state == "interrupted"  # type: ignore[union-attr]
    assert seen == {
        both.id: ["done"],
        started.id: ["running"],
        twice.id: ["interrupted"],
    }  # no "running" first


def test_writer_keeps_what_it_could_not_save(db_session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = state.StateWriter(interval=3600)
    job = _row(db_session)
    writer.start(job.id, utcnow())

    def refuse(*args: Any) -> Any:
        raise DatabaseError("database is locked")

    with monkeypatch.context() as patch:
        patch.setattr(state, "_save", refuse)
        assert writer.flush() is False
    assert writer.has_start(job.id)
    writer.finish(job.id, _final("done", result=1, error=None))  # reported meanwhile: saved with it
    assert writer.flush() is True and not writer.has_start(job.id)
    db_session.expire_all()
    row = db_session.get(Job, job.id)
    assert row is not None and (row.state, row.attempts, row.result) == ("done", 1, 1)


def _final(state_: str, **values: Any) -> state.Final:
    values.setdefault("finished_at", utcnow())
    values.setdefault("updated_at", values["finished_at"])
    return state.Final(state_, ("running",), values)


def _status_events(action: Any) -> dict[str, list[str]]:
    """job.status events published while `action()` runs, by job id."""

    async def run() -> dict[str, list[str]]:
        async with events.subscribe("jobs.*") as sub:
            action()
            tasks.flush()
            await asyncio.to_thread(events.publish, "jobs.end", "test.end")  # after them, as they came
            seen: dict[str, list[str]] = {}
            while (event := await asyncio.wait_for(sub.get(), 10)).topic != "jobs.end":
                if event.type == "job.status":
                    seen.setdefault(event.data["job_id"], []).append(event.data["state"])
            return seen

    return asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_claims_decide_between_a_worker_and_a_cancel(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """A worker and cancel_job both write the job's revoke key only if absent: one of them wins. SqliteHuey
    claims in the transaction that takes the message off the queue, RedisHuey just before the run."""
    huey: Any
    if backend == "redis":
        import redis

        url = _redis_url(request, 2)
        redis.Redis.from_url(url).flushdb()
        huey = tasks.RedisJobsHuey("claims", results=False, url=url)
    else:
        huey = tasks.SqliteJobsHuey("claims", results=False, filename=str(tmp_path / "queue.db"))
    huey.setup_jobs()
    assert huey.claims_jobs
    huey.register(fx.add)
    message_class = huey.job_tasks[fx.add.key].task_class

    run_first = message_class(("run-first",), {"a": 1, "b": 1}, id="run-first")
    assert huey.is_revoked(run_first, peek=False) is False  # claimed
    assert huey.revoke_unclaimed(run_first.id) is False  # too late: it runs
    assert huey.is_revoked(run_first) is False  # a claim is no revoke to a peek
    huey.delete(run_first.revoke_id)  # Huey's end of a run: the claim stays until the state is saved
    assert huey.storage.has_data_for_key(run_first.revoke_id)
    huey.release_claims([run_first.id])
    huey.flush_releases()  # SqliteHuey deletes released claims with its next dequeue's write, or now
    assert not huey.storage.has_data_for_key(run_first.revoke_id)

    # A retry: its claim is released, it is queued again, and a worker claims it anew.
    assert huey.is_revoked(run_first, peek=False) is False
    huey.release_claims([run_first.id])
    huey.enqueue(run_first)
    taken = huey.dequeue()
    assert huey.storage.has_data_for_key(run_first.revoke_id)  # claimed by the dequeue itself
    assert taken.id == run_first.id and huey.is_revoked(taken, peek=False) is False
    huey.release_claims([run_first.id])
    huey.flush_releases()

    cancel_first = message_class(("cancel-first",), {"a": 1, "b": 1}, id="cancel-first")
    assert huey.revoke_unclaimed(cancel_first.id) is True
    assert huey.is_revoked(cancel_first, peek=False) is True  # never runs

    queued, cancelled = (message_class((i,), {"a": 1, "b": 1}, id=i) for i in ("queued", "cancelled"))
    huey.enqueue(queued)
    huey.enqueue(cancelled)
    assert huey.revoke_unclaimed(cancelled.id) is True
    taken = huey.dequeue()  # claimed here, in the same transaction (SQLite) or script (Redis)
    assert huey.storage.has_data_for_key(queued.revoke_id)
    assert taken.id == queued.id and huey.is_revoked(taken, peek=False) is False
    assert huey.revoke_unclaimed(queued.id) is False
    taken = huey.dequeue()
    assert taken.id == cancelled.id and huey.is_revoked(taken, peek=False) is True
    with pytest.raises(NotImplementedError, match="one by one"):
        huey.revoke_all(message_class)


def test_sqlite_queue_waits_out_another_writer_in_short_steps(tmp_path: Path) -> None:
    """The queue's connection has no busy timeout (SQLite's handler sleeps 1 ms, then 2, 5... however soon the
    lock is free): its writes (enqueue, the consumer's dequeue) and reads wait for another connection's write
    lock in steps of their own instead, and go through once it is released."""
    huey = tasks.SqliteJobsHuey("waits", results=False, filename=str(tmp_path / "queue.db"))
    huey.setup_jobs()
    huey.register(fx.add)
    message_class = huey.job_tasks[fx.add.key].task_class
    assert huey.storage.conn.execute("pragma busy_timeout").fetchone() == (0,)
    other = sqlite3.connect(tmp_path / "queue.db", isolation_level=None, check_same_thread=False)
    try:
        for step in ("enqueue", "dequeue"):
            other.execute("BEGIN EXCLUSIVE")  # another process's write in progress
            release = threading.Timer(0.2, lambda: other.execute("ROLLBACK"))
            release.start()
            assert huey.storage.queue_size() == (0 if step == "enqueue" else 1)  # reads go on meanwhile
            if step == "enqueue":
                huey.enqueue(message_class((1,), {"a": 1, "b": 1}, id="waited"))
            else:
                assert huey.dequeue().id == "waited"
            release.join()
        assert huey.storage.queue_size() == 0 and huey.storage.has_data_for_key("r:waited")  # claimed
    finally:
        other.close()
        huey.storage.close()


def test_job_events_are_made_only_for_a_bus_someone_hears() -> None:
    """In-process, job events nobody subscribes to are not even made (notify.unheard); over Redis they are
    always published: subscribers may be in other processes."""

    async def check() -> None:
        bus = events.LocalBus(queue_size=8)
        assert unheard(bus)
        sub = bus.subscribe("jobs.*")
        assert not unheard(bus)
        sub.close()
        assert unheard(bus)
        assert not unheard(events.RedisBus(url="redis://127.0.0.1:1/0", queue_size=8))

    asyncio.run(check())


def test_checking_arguments_leaves_no_garbage_for_the_collector() -> None:
    """`enqueue` checks every task's arguments for secrets: that must leave no reference cycle behind, whose
    collection (a full pass over a busy producer's objects now and then) cost tens of microseconds a job."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            tasks.check_no_secrets({"a": {"b": [1, {"c": (2, 3)}]}, "d": "e"}, "task arguments")
        gc.collect()
        left = [o for o in gc.garbage if "check_no_secrets" in getattr(o, "__qualname__", "")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []


def _embedded(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """Settings for an embedded consumer on SqliteHuey, or RedisHuey (and the Redis event bus)."""
    monkeypatch.setenv("SUITE_JOBS__IMMEDIATE", "false")
    if backend == "redis":
        import redis

        url = _redis_url(request, 2)
        redis.Redis.from_url(url).flushdb()
        monkeypatch.setenv("SUITE_REDIS_URL", url)
    _reset()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_many_concurrent_jobs_end_in_the_right_states(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, backend: str
) -> None:
    _embedded(request, monkeypatch, backend)
    consumer = tasks.start_embedded_consumer(workers=4)
    try:
        added = [enqueue(fx.add, a=i, b=i) for i in range(40)]
        failed = [enqueue(fx.boom, message=f"no {i}") for i in range(4)]
        flaky = [enqueue(fx.flaky, counter=str(tmp_path / f"count-{i}")) for i in range(4)]
        ids = [j.id for j in (*added, *failed, *flaky)]
        _wait(lambda: all(_job(i).state in FINISHED for i in ids), "every job to end")
    finally:
        consumer.stop()
    with session_scope() as session:
        rows = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
    for i, job in enumerate(added):
        row = rows[job.id]
        assert (row.state, row.attempts, row.result, row.error) == ("done", 1, 2 * i, None)
        assert (
            row.started_at is not None and row.finished_at is not None and row.started_at <= row.finished_at
        )
    for job in failed:
        assert (rows[job.id].state, rows[job.id].attempts) == ("failed", 3)
        assert rows[job.id].error == f"RuntimeError: {job.params['message']}"
    for job in flaky:
        assert (rows[job.id].state, rows[job.id].attempts, rows[job.id].result) == ("done", 2, 2)


FINISHED = ("done", "failed", "cancelled", "interrupted")


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_consumer_stop_saves_every_state_and_readers_see_them_before(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, backend: str
) -> None:
    _embedded(request, monkeypatch, backend)
    monkeypatch.setattr(state.writer, "interval", 3600)  # nothing saved by the timer: only by the stop
    consumer = tasks.start_embedded_consumer(workers=2)
    try:
        jobs = [enqueue(fx.touch, path=str(tmp_path / f"ran-{i}")) for i in range(10)]
        _wait(lambda: all((tmp_path / f"ran-{i}").exists() for i in range(10)), "every task to run")
        _wait(lambda: all(_job(j.id).state == "done" for j in jobs), "get_job to show them done")
        with session_scope() as session:  # the rows themselves still wait for the writer
            saved = set(session.scalars(select(Job.state).where(Job.id.in_([j.id for j in jobs]))))
        assert "done" not in saved and saved <= {"queued", "running"}
    finally:
        consumer.stop()
    with session_scope() as session:
        rows = list(session.scalars(select(Job).where(Job.id.in_([j.id for j in jobs]))))
    assert [(r.state, r.attempts, r.result) for r in rows] == [("done", 1, r.id) for r in rows]
    assert all(r.started_at is not None and r.finished_at is not None for r in rows)


def test_cancel_of_a_claimed_job_whose_start_is_not_saved(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """RedisHuey: a job a worker has claimed is never marked cancelled while it runs, even when its row
    still says queued; it is asked to stop and runs to its end."""
    _embedded(request, monkeypatch, "redis")
    monkeypatch.setattr(state.writer, "interval", 3600)
    consumer = tasks.start_embedded_consumer(workers=1)
    release = tmp_path / "release"
    try:
        job = enqueue(fx.sleeper, release=str(release))
        _wait(lambda: _job(job.id).state == "running", "the job to run")
        with session_scope() as session:
            assert session.get(Job, job.id).state == "queued"  # type: ignore[union-attr]
            cancelled = cancel_job(session, job_id=job.id, user=None)
            assert (cancelled.state, cancelled.cancel_requested) == ("running", True)
        release.touch()
    finally:
        release.touch()
        consumer.stop()
    row = _job(job.id)
    assert (row.state, row.result, row.cancel_requested, row.attempts) == ("done", "released", True, 1)


def test_fast_jobs_go_from_queued_to_done_in_events(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RedisHuey: a job that starts and ends within one write batch publishes no `running`."""
    _embedded(request, monkeypatch, "redis")
    monkeypatch.setattr(state.writer, "interval", 3600)
    consumer = tasks.start_embedded_consumer(workers=1)
    try:

        def run_one() -> None:
            job = enqueue(fx.add, a=1, b=2)
            _wait(lambda: _job(job.id).state == "done", "the job to end")
            run_one.job_id = job.id  # type: ignore[attr-defined]

        seen = _status_events(run_one)
    finally:
        consumer.stop()
    assert seen[run_one.job_id] == ["queued", "done"]  # type: ignore[attr-defined]


def test_enqueue_refused_by_the_queue_leaves_nothing(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    _embedded(request, monkeypatch, "redis")
    client = redis.Redis.from_url(_redis_url(request, 2))
    client.set(get_huey().storage.queue_key, "not a list")  # LPUSH answers WRONGTYPE
    with pytest.raises(Unavailable, match=r"job not queued: Redis at .* does not answer"):
        enqueue(fx.add, a=1, b=2)
    with session_scope() as session:
        assert _count(session) == 0
    client.delete(get_huey().storage.queue_key)
    assert enqueue(fx.add, a=1, b=2).state == "queued"


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_progress_inside_the_tasks_own_transaction_still_sees_a_cancel(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    _embedded(request, monkeypatch, backend)
    consumer = tasks.start_embedded_consumer(workers=1)
    try:
        job = enqueue(fx.cancel_inside_transaction)
        _wait(lambda: _job(job.id).state in FINISHED, "the job to end")
    finally:
        consumer.stop()
    row = _job(job.id)
    assert (row.state, row.result, row.message, row.cancel_requested) == ("cancelled", None, None, True)
