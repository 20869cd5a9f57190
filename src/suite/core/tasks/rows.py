"""Rows of queued jobs, written behind the queue: the producer's batching writer, and rows made by consumers.

`enqueue` (no session, not inline) queues the message first, then hands the job's row to `rows`, which writes
what has gathered within FLUSH_INTERVAL_S (or MAX_BATCH rows) in one transaction (sql.insert_jobs). So:

- the producing process reads its own writes: `get_job`, `list_jobs`, `count_jobs` and `cancel_job` flush
  first, as do `tasks.flush()`, `tasks.reset()`, a stopping consumer and the interpreter's exit; other
  processes see a new row within FLUSH_INTERVAL_S (`enqueue(..., flush=True)` writes it before returning);
  a consumer in the producing process writes a job's row before running it, waiting for it if it took the
  message before `enqueue` handed the row over (`expect`);
- a consumer may run a job before its row is written: the message carries the row (`meta`, claims.py), and
  the consumer's state writer inserts it as queued when missing (`create_missing`, ON CONFLICT DO NOTHING)
  before saving the run's start and end. The producer's late insert sets only what it knows better
  (sql.PRODUCER_KEYS), never the state, so a row never moves back;
- a producer killed before its batch was written loses no job: the consumer makes the row when it runs it.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from suite.core.tasks.sql import JobWrites, bound, insert_jobs, job_stub, job_writes

log = logging.getLogger("suite.jobs")

FLUSH_INTERVAL_S = 0.01  # a producer writes its queued rows this often, in one transaction: one costs ~0.2 ms
# besides its rows, which came to ~12 µs a job at 5 ms for a busy producer (state.py's writer waits as long)
MAX_BATCH = 500
EXPECT_TIMEOUT_S = 1.0  # a consumer waits at most this long for the row of a job its process is queueing


_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder (json.dumps makes one per call)


def meta(row: dict[str, Any]) -> bytes:
    """What a consumer needs to make the row of a job (claims.py carries it ahead of the message)."""
    fields = [row["domain"], row["name"], row["owner_id"], row["max_retries"], row["created_at"].isoformat()]
    return _encode([*fields, row["params"]]).encode()


def row_from_meta(job_id: str, data: bytes) -> dict[str, Any]:
    """The queued row of a job, as its producer wrote it."""
    domain, name, owner_id, max_retries, created, params = json.loads(data)
    created_at = datetime.fromisoformat(created)
    return queued_row(job_id, domain, name, owner_id, max_retries, params, created_at)


def queued_row(
    job_id: str,
    domain: str,
    name: str,
    owner_id: int | None,
    max_retries: int,
    params: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    return {
        "id": job_id,
        "domain": domain,
        "name": name,
        "owner_id": owner_id,
        "state": "queued",
        "attempts": 0,
        "max_retries": max_retries,
        "progress_done": 0,
        "progress_total": None,
        "message": None,
        "error": None,
        "params": params,
        "cancel_requested": False,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "updated_at": now,
        "worker_id": None,
    }


def create_missing(writes: JobWrites, jobs: Iterable[tuple[str, bytes]]) -> None:
    """Insert the queued rows of (job id, meta) that do not exist yet, in the transaction of `writes`."""
    made = [row_from_meta(job_id, data) for job_id, data in jobs]
    if made:
        writes.executemany(job_stub(writes.dialect), made)


def ensure_rows(jobs: Iterable[tuple[str, bytes]]) -> None:
    """`create_missing` in its own short transaction."""
    jobs = [(job_id, data) for job_id, data in jobs if data]
    if jobs:
        with job_writes() as writes:
            create_missing(writes, jobs)


class RowWriter:
    """Writes queued rows in batches from a background thread; `flush()` writes what was added, now."""

    def __init__(self, interval: float = FLUSH_INTERVAL_S, max_rows: int = MAX_BATCH) -> None:
        self.interval = interval
        self.max_rows = max_rows
        self._rows: list[dict[str, Any]] = []
        self._ids: set[str] = set()  # of the rows not written yet
        self._expected: set[str] = set()  # jobs being queued, their rows not added yet
        self._waiting = 0  # threads waiting for an expected row
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # the writer's thread waits on this one
        self._added = threading.Condition(lock)  # `flush_job` on this one
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._at_exit = False

    def expect(self, job_id: str) -> None:
        """Announce the row of a job about to be queued (`add` follows, or `unexpect`): a consumer of this
        process that takes its message first waits for it in `flush_job`."""
        self._expected.add(job_id)

    def unexpect(self, job_id: str) -> None:
        """The job announced was not queued: its row will not come."""
        self._arrived(job_id)

    def add(self, row: dict[str, Any]) -> None:
        if bound():  # a test's connection is used by its own thread only: written now
            insert_jobs([row])
            self._arrived(row["id"])
            return
        with self._cond:
            self._rows.append(row)
            self._ids.add(row["id"])
            self._arrived(row["id"])
            if len(self._rows) == 1:  # the first of a batch: wake the thread (it waits for this only)
                if self._thread is None or not self._thread.is_alive():
                    self._start()
                self._cond.notify()
            elif len(self._rows) >= self.max_rows:
                self._cond.notify()

    def _arrived(self, job_id: str) -> None:
        self._expected.discard(job_id)
        if self._waiting:
            with self._added:
                self._added.notify_all()

    def _start(self) -> None:  # under self._cond
        if not self._at_exit:
            atexit.register(self.flush)
            self._at_exit = True
        self._thread = threading.Thread(target=self._run, name="suite-job-rows", daemon=True)
        self._thread.start()

    def pending(self) -> int:
        with self._cond:
            return len(self._rows)

    def flush_job(self, job_id: str) -> None:
        """Write the job's row now if this process queued it and has not written it yet (a consumer in the
        producer's process, about to run it: its task may read or write its own row). A row still on its way
        (the message was queued a moment ago, `expect`) is waited for, up to a second."""
        if job_id in self._expected:
            with self._added:
                self._waiting += 1
                try:
                    self._added.wait_for(lambda: job_id not in self._expected, timeout=EXPECT_TIMEOUT_S)
                finally:
                    self._waiting -= 1
        if job_id in self._ids:
            self.flush()

    def flush(self) -> bool:
        """Write every row added so far (False when the database refused: they are kept and tried again)."""
        if not self._rows and not self._flush_lock.locked():  # nothing added, nothing being written
            return True
        with self._flush_lock:
            with self._cond:
                rows, self._rows = self._rows, []
            if not rows:
                return True
            try:
                insert_jobs(rows)
            except Exception:
                log.warning("%d queued job rows not written yet; retrying", len(rows), exc_info=True)
                with self._cond:
                    self._rows[:0] = rows
                return False
            with self._cond:
                self._ids.difference_update(row["id"] for row in rows)
            return True

    def clear(self) -> None:
        """Drop what is not written (tests, after the settings changed)."""
        with self._cond:
            self._rows = []
            self._ids = set()
            self._expected = set()

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                while not self._rows:
                    self._cond.wait()
                deadline = time.monotonic() + self.interval + backoff
                while len(self._rows) < self.max_rows and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            backoff = 0.0 if self.flush() else min(max(backoff * 2, 0.05), 2.0)


rows = RowWriter()
