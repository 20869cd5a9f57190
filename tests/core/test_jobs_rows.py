"""Queued rows written behind the queue (tasks/rows.py): a consumer that gets there first makes the row, the
producer's late insert never moves it back, the producing process reads its own writes, and no job is lost
when the producer dies before its batch is written."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from suite.core import config, db, events, tasks
from suite.core.db import session_scope, utcnow
from suite.core.errors import Unavailable
from suite.core.models import Job, User
from suite.core.tasks import cancel_job, count_jobs, enqueue, get_job, list_jobs, state
from suite.core.tasks.claims import split_claim, with_claim
from suite.core.tasks.jobs import new_job_id
from suite.core.tasks.rows import meta, queued_row, row_from_meta, rows
from suite.core.tasks.sql import (
    PENDING_STATES,
    insert_jobs,
    job_upsert,
    job_writes,
    update_stmt,
    write_connection,
)

try:
    from . import jobtasks_fixture as fx
    from .test_tasks import Worker, _free_port, _import_root, _redis_url, _wait
except ImportError:
    import jobtasks_fixture as fx  # type: ignore[no-redef]
    from test_tasks import Worker, _free_port, _import_root, _redis_url, _wait  # type: ignore[no-redef]


_DEADLINE = 20.0  # safety net for waits that end at once


def _reset() -> None:
    db.reset_engine()
    config.reset_settings()
    tasks.reset()
    events.reset()


def _user(session: Session) -> User:
    user = User(username=f"u{uuid.uuid4().hex[:10]}", password_hash="x", role="user", is_active=True)
    session.add(user)
    session.flush()
    return user


def _queued(owner_id: int | None = None, **params: Any) -> dict[str, Any]:
    return queued_row(str(uuid.uuid4()), "catalog", "add", owner_id, 2, params, utcnow())


def _done(at: Any) -> state.Change:
    values = {"result": 3, "error": None, "finished_at": at, "updated_at": at}
    return state.Change(started_at=at, final=state.Final("done", ("running",), values))


# --- the message carries the row ---------------------------------------------------------------------


def test_meta_round_trips_through_the_message() -> None:
    row = _queued(7, a=1, text="x\x00y é")
    data = with_claim(row["id"], b"\x80pickle", meta(row))
    job_id, carried, message = split_claim(data)
    assert (job_id, message) == (row["id"], b"\x80pickle")
    assert row_from_meta(row["id"], carried) == row
    assert split_claim(with_claim(row["id"], b"\x80pickle")) == (row["id"], b"", b"\x80pickle")
    assert split_claim(b"\x80pickle") == (None, b"", b"\x80pickle")


# --- a consumer first, the producer's insert late (SQLite and PostgreSQL) ----------------------------


def test_consumer_finishing_before_the_queued_row_exists_makes_the_row(any_db_session: Session) -> None:
    owner = _user(any_db_session)
    row = _queued(owner.id, a=1)
    change = _done(utcnow())
    change.meta = meta(row)
    assert state._save({row["id"]: change}) == [(row["id"], "done")]
    job = any_db_session.get(Job, row["id"])
    assert job is not None
    assert (job.state, job.attempts, job.result, job.owner_id, job.params) == (
        "done",
        1,
        3,
        owner.id,
        {"a": 1},
    )
    assert (job.domain, job.name, job.max_retries, job.created_at) == ("catalog", "add", 2, row["created_at"])
    assert job.started_at is not None and job.finished_at is not None


def test_consumer_without_the_row_or_its_meta_writes_nothing(any_db_session: Session) -> None:
    job_id = str(uuid.uuid4())
    assert state._save({job_id: _done(utcnow())}) == []
    assert any_db_session.get(Job, job_id) is None


def test_late_queued_insert_never_moves_a_row_back(any_db_session: Session) -> None:
    owner = _user(any_db_session)
    row = _queued(None)
    change = _done(utcnow())
    change.meta = meta(row)  # the message carried no owner and no params; the producer's row has them
    state._save({row["id"]: change})
    late = dict(row, owner_id=owner.id, params={"b": 2}, created_at=row["created_at"] - timedelta(seconds=1))
    insert_jobs([late])
    any_db_session.expire_all()
    job = any_db_session.get(Job, row["id"])
    assert job is not None
    assert (job.state, job.attempts, job.result) == ("done", 1, 3)  # never back to queued
    assert job.started_at is not None and job.finished_at is not None
    assert (job.owner_id, job.params, job.created_at) == (owner.id, {"b": 2}, late["created_at"])


def test_a_running_row_keeps_its_state_under_the_late_insert(any_db_session: Session) -> None:
    row = _queued(None)
    start = state.Change(started_at=utcnow(), worker_id="w1", meta=meta(row))
    assert state._save({row["id"]: start}) == [(row["id"], "running")]
    insert_jobs([row])
    any_db_session.expire_all()
    job = any_db_session.get(Job, row["id"])
    assert job is not None and (job.state, job.attempts, job.worker_id) == ("running", 1, "w1")


def test_an_owner_that_is_gone_leaves_the_row_ownerless(any_db_session: Session) -> None:
    row = _queued(2_000_000_000)
    insert_jobs([row])  # the foreign key would refuse it, and with it the whole batch
    job = any_db_session.get(Job, row["id"])
    assert job is not None and job.owner_id is None and job.state == "queued"


# --- the producing process ---------------------------------------------------------------------------


def _behind(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, backend: str) -> None:
    """A real engine (no test connection), jobs queued for a consumer, the writer's timer off."""
    monkeypatch.setenv("SUITE_JOBS__IMMEDIATE", "false")
    if backend == "redis":
        import redis

        url = _redis_url(request, 3)
        redis.Redis.from_url(url).flushdb()
        monkeypatch.setenv("SUITE_REDIS_URL", url)
    _reset()
    monkeypatch.setattr(rows, "interval", 3600.0)


def _file_rows(job_id: str) -> list[tuple[str]]:
    """The job's row as another process sees it (a connection of its own on the database file)."""
    path = config.get_settings().data_dir / "suite.db"
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT state FROM core_job WHERE id = ?", (job_id,)))


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_producing_process_reads_its_own_writes(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, backend: str
) -> None:
    _behind(monkeypatch, request, backend)
    with session_scope() as session:
        owner = _user(session)
        owner_id = owner.id
    job = enqueue(fx.add, owner_id=owner_id, a=1, b=2)
    assert job.state == "queued" and rows.pending() == 1
    assert _file_rows(job.id) == []  # written behind the queue
    with session_scope() as session:
        assert get_job(session, job_id=job.id).state == "queued"
    assert _file_rows(job.id) == [("queued",)] and rows.pending() == 0

    second = enqueue(fx.add, owner_id=owner_id, a=2, b=2)
    with session_scope() as session:
        assert [j.id for j in list_jobs(session, user=None)][:2] == [second.id, job.id]
    third = enqueue(fx.add, owner_id=owner_id, a=3, b=2)
    with session_scope() as session:
        assert count_jobs(session, user=None) == 3
    fourth = enqueue(fx.add, a=4, b=2)
    with session_scope() as session:  # a cancel of a job queued a moment ago works at once
        cancelled = cancel_job(session, job_id=fourth.id, user=None)
        assert cancelled.state == "cancelled"
    assert _file_rows(third.id) == [("queued",)] and _file_rows(fourth.id) == [("cancelled",)]

    now = enqueue(fx.add, a=5, b=2, flush=True)
    assert _file_rows(now.id) == [("queued",)] and rows.pending() == 0


def test_redis_down_at_enqueue_leaves_no_row_behind(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    _behind(monkeypatch, request, "sqlite")
    monkeypatch.setenv("SUITE_REDIS_URL", f"redis://127.0.0.1:{_free_port()}/0")
    _reset()
    with pytest.raises(Unavailable, match="job not queued: Redis at"):
        enqueue(fx.add, a=1, b=2)
    assert rows.pending() == 0
    tasks.flush()
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_a_consumer_of_the_producing_process_waits_for_a_row_on_its_way(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """`enqueue` queues the message, then hands the row over: a consumer thread of the same process that takes
    the message in between waits for the row, so the task finds its own row."""
    _behind(monkeypatch, request, "sqlite")
    row, gone = _queued(), _queued()
    rows.expect(row["id"])
    rows.expect(gone["id"])
    ready = {job_id: threading.Event() for job_id in (row["id"], gone["id"])}
    threads = [
        threading.Thread(target=lambda job_id=job_id: (rows.flush_job(job_id), ready[job_id].set()))
        for job_id in ready
    ]
    for thread in threads:
        thread.start()
    assert not ready[row["id"]].wait(0.2)  # waits for the row instead of running without it
    rows.add(row)
    assert ready[row["id"]].wait(_DEADLINE)
    assert _file_rows(row["id"]) == [("queued",)]  # written before the task would run
    rows.unexpect(gone["id"])  # its message was not queued after all: nothing to wait for
    assert ready[gone["id"]].wait(_DEADLINE)
    for thread in threads:
        thread.join()
    assert _file_rows(gone["id"]) == []


def test_job_ids_are_uuid7_in_the_order_jobs_are_queued() -> None:
    first = [new_job_id() for _ in range(50)]
    time.sleep(0.002)
    later = new_job_id()
    assert all(uuid.UUID(job_id).version == 7 and str(uuid.UUID(job_id)) == job_id for job_id in first)
    assert len(set(first)) == 50 and max(first) < later  # rows go at the end of the primary-key index


# --- writes on the kept SQLite connections ------------------------------------------------------------


def _stored(job_id: str) -> tuple[Any, ...]:
    """Every column of the job's row as SQLite holds it (text, with its storage class where it matters)."""
    path = config.get_settings().data_dir / "suite.db"
    with sqlite3.connect(path) as conn:
        found = conn.execute(
            "SELECT domain, name, owner_id, state, attempts, max_retries, progress_done, progress_total,"
            " message, error, params, result, typeof(result), cancel_requested, typeof(cancel_requested),"
            " created_at, started_at, finished_at, updated_at, worker_id FROM core_job WHERE id = ?",
            (job_id,),
        ).fetchone()
    assert found is not None
    return tuple(found)


def test_kept_connections_store_what_a_core_execution_stores(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """On a SQLite file, job rows are written with statements compiled once and the column types' bind
    processors applied by hand (sql.py): the stored values are those of a Core execution, byte for byte."""
    _behind(monkeypatch, request, "sqlite")
    with session_scope() as session:
        owner_id = _user(session).id
    at, now = (
        utcnow().replace(microsecond=0),
        utcnow(),
    )  # isoformat drops zero microseconds: SQLite's must not
    made = [
        queued_row(new_job_id(), "catalog", "add", owner_id, 2, {"title": "Amélie", "n": None, "l": [1]}, at),
        queued_row(new_job_id(), "core", "purge", None, 0, {}, now),
    ]
    results: list[Any] = [None, {"k": 1.5, "s": "é"}]
    stmt = update_stmt(PENDING_STATES, ("error", "finished_at", "result", "state", "updated_at"), start=True)
    pairs = []
    for row, result in zip(made, results, strict=True):
        core, kept = dict(row, id=new_job_id()), dict(row, id=new_job_id())
        with write_connection() as conn:  # Core: the path for PostgreSQL and tests' connections
            conn.execute(job_upsert(conn.dialect), [core])
        insert_jobs([kept])
        for job_id in (core["id"], kept["id"]):
            values = {"b_state": "done", "b_result": result, "b_error": None, "b_finished_at": now}
            values.update(b_updated_at=at, b_started=at, b_worker="w1", b_id=job_id)
            if job_id == core["id"]:
                with write_connection() as conn:
                    assert conn.execute(stmt, [values]).rowcount == 1
            else:
                with job_writes() as writes:
                    assert writes.executemany(stmt, [values]) == 1
        pairs.append((core["id"], kept["id"]))
    for core_id, kept_id in pairs:
        assert _stored(kept_id) == _stored(core_id)
    assert _stored(pairs[0][1])[11:13] == ("null", "text")  # JSON null, as the JSON type writes None


# --- a producer that dies before its batch is written ------------------------------------------------

PRODUCER = """
import os, sys, json
from suite.core.tasks import enqueue
from suite.core.tasks.rows import rows
import {module} as fx
rows.interval = 3600.0
ids = [enqueue(fx.add, owner_id=None, a=20, b=22).id, enqueue(fx.touch, path=sys.argv[2]).id]
print(json.dumps(ids), flush=True)
if sys.argv[1] == "crash":
    os._exit(0)  # no interpreter exit: what was not written is lost with the process
"""


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_producer_killed_before_its_rows_are_written_loses_no_job(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, backend: str
) -> None:
    redis_url = _redis_url(request, 4) if backend == "redis" else None
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    worker = Worker(tmp_path / "w", backend, redis_url)
    worker.start(workers=1)  # migrates the file first
    worker.stop()  # no consumer while the producers run
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_")}
    env.update(worker.settings)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_import_root(), env.get("PYTHONPATH")]))
    code = PRODUCER.format(module=fx.__name__)
    produced: dict[str, list[str]] = {}
    for how in ("crash", "exit"):
        out = subprocess.run(
            [sys.executable, "-c", code, how, str(tmp_path / f"touched-{how}")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        produced[how] = json.loads(out.stdout.strip().splitlines()[-1])
    worker.use(monkeypatch)
    with session_scope() as session:
        states = {j.id: j.state for j in session.scalars(select(Job))}
    assert all(job_id not in states for job_id in produced["crash"])  # lost with the process...
    assert all(states[job_id] == "queued" for job_id in produced["exit"])  # ...written at a normal exit

    worker.start(workers=1)
    try:
        ids = [*produced["crash"], *produced["exit"]]

        def ended() -> bool:
            assert worker.proc is not None and worker.proc.poll() is None, worker.log.read_text()[-3000:]
            with session_scope() as session:
                found = session.scalars(select(Job.state).where(Job.id.in_(ids))).all()
            return len(found) == len(ids) and set(found) <= {"done", "failed"}

        _wait(ended, "every job to end", log=worker.log)
    finally:
        worker.stop()
    with session_scope() as session:
        crashed = [session.get(Job, job_id) for job_id in produced["crash"]]
    add, touch = crashed
    assert add is not None and touch is not None
    assert (add.state, add.result, add.attempts, add.name, add.params) == (
        "done",
        42,
        1,
        "add",
        {"a": 20, "b": 22},
    )
    assert (touch.state, touch.result, touch.domain) == ("done", touch.id, "core")
    assert touch.params == {"path": str(tmp_path / "touched-crash")}
    assert (tmp_path / "touched-crash").read_text() == touch.id
