"""Jobs: end-to-end no-op jobs/s and idle pickup latency, SqliteHuey and RedisHuey, ours against raw Huey.

For each backend two consumers run in turn, each a subprocess with one worker thread and the same polling
settings (max delay 0.1 s, Redis blocking reads): raw Huey (no jobs table), and `python -m suite worker`
(core_job rows written by enqueue and the Huey hooks, job.status events). This process is the producer. They
take turns for ROUNDS rounds (raw, ours, raw, ours...), each round on fresh files and an empty Redis; the
figures are medians over the rounds (each round's are kept), so a burst of load from elsewhere on the machine
moves one round, not the comparison.

- jobs/s: N no-op jobs queued back to back, then one that stamps a file; the clock stops when the file
  appears (one worker thread: FIFO, so all N ran). Enqueue cost per job is reported too. Ours also reports
  `saved_jobs_per_s`, the clock stopped when the last job's row says `done` (a consumer saves job states in
  batches, so rows can trail the tasks by up to its write interval).
- pickup latency: after the consumer has idled (its polling delay at the maximum), the time from calling
  enqueue to the task starting (a wall-clock stamp written by the task). SqliteHuey polls, so a pickup waits
  for the next poll (0 to 0.1 s): the idle time has a random part, and the figure is a median.

- split costs (diagnostics, `split_costs`): with the consumer stopped (SIGSTOP, at a moment it holds no SQLite
  write lock, which would stall the producer), N more jobs are queued, then
  it drains them: CPU and wall ms per job of the producer alone (`producer_*`) and of the consumer alone
  (`consumer_*`, from /proc), and redis-server's CPU in each phase (`redis_cpu_*`, from INFO cpu).

overhead = raw jobs/s / our jobs/s - 1 (target under 0.2); overhead_saved uses saved_jobs_per_s. Redis: a
redis-server is started on a free port unless SUITE_BENCH_REDIS_URL names one (its database is flushed).
`python benchmarks/bench_jobs.py` prints the JSON result; SUITE_BENCH_QUICK=1 runs fewer jobs, one round;
SUITE_BENCH_BACKENDS=redis (or sqlite) runs one backend.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from suite.core.tasks import enqueue, get_huey, task

HERE = Path(__file__).resolve().parent
MODULE = "bench_jobs"  # the name both producer and consumers import this file under
QUICK = os.environ.get("SUITE_BENCH_QUICK") == "1"
JOBS = 300 if QUICK else 2000
ROUNDS = 1 if QUICK else 3  # raw and ours take turns; figures are medians over the rounds
PICKUPS = 6 if QUICK else 8
IDLE_S = 0.3  # idle time before each pickup (plus a random part, so enqueues do not lock onto the poll phase)
BACKENDS = os.environ.get("SUITE_BENCH_BACKENDS", "sqlite,redis").split(",")  # a subset while tuning
MAX_DELAY = 0.1  # both consumers (ours: jobs.max_polling_delay's default)


def _noop(job_id: str) -> None:
    return None


def _stamp(job_id: str, *, path: str) -> None:
    Path(path).write_text(repr(time.time()))


noop = task(name="bench_noop")(_noop)
stamp = task(name="bench_stamp")(_stamp)


# --- raw Huey ------------------------------------------------------------------------------------------


def raw_huey(backend: str, data: Path, redis_url: str | None) -> Any:
    from huey import RedisHuey, SqliteHuey

    if backend == "redis":
        huey = RedisHuey("raw", url=redis_url, results=False)
    else:
        huey = SqliteHuey("raw", filename=str(data / "raw-queue.db"), results=False)
    return huey, huey.task(name="raw_noop")(_noop), huey.task(name="raw_stamp")(_stamp)


def raw_consumer(backend: str, data: str, redis_url: str | None) -> None:
    """Child process: raw Huey's consumer with the same settings as ours."""
    from huey.consumer import Consumer

    huey, _, _ = raw_huey(backend, Path(data), redis_url)
    Consumer(huey, workers=1, worker_type="thread", initial_delay=MAX_DELAY, max_delay=MAX_DELAY).run()


# --- one measurement -----------------------------------------------------------------------------------


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{path} never appeared: see the consumer's log beside it")
        time.sleep(0.0005)
    return float(path.read_text())


class Side:
    """One consumer (ours or raw) on one backend, and the producer calls for it."""

    def __init__(self, kind: str, backend: str, data: Path, redis_url: str | None) -> None:
        self.kind, self.backend, self.data, self.redis_url = kind, backend, data, redis_url
        data.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_")}
        self.env.update(
            SUITE_DATA_DIR=str(data),
            SUITE_ENV="test",
            SUITE_JOBS__IMMEDIATE="false",
            SUITE_JOBS__MAX_POLLING_DELAY=str(MAX_DELAY),
            SUITE_JOBS__TASK_MODULES=json.dumps([MODULE]),
            SUITE_LOG_LEVEL="WARNING",
            PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        )
        if redis_url:
            self.env["SUITE_REDIS_URL"] = redis_url
        self.proc: subprocess.Popen[bytes] | None = None
        self._counter = 0
        self.ours = _this_module()  # our tasks as the worker imports them

    @contextlib.contextmanager
    def running(self) -> Iterator[Side]:
        old = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)
        self._reset()
        if self.kind == "ours":
            from suite.core.db import prepare_database

            prepare_database()  # before the worker starts, so two processes never migrate at once
            cmd = [sys.executable, "-m", "suite", "worker", "--workers", "1"]
        else:
            self.huey, self.noop, self.stamp = self.ours.raw_huey(self.backend, self.data, self.redis_url)
            args = f"{self.backend!r}, {str(self.data)!r}, {self.redis_url!r}"
            cmd = [sys.executable, "-c", f"import {MODULE}; {MODULE}.raw_consumer({args})"]
        log = (self.data / f"{self.kind}-consumer.log").open("wb")
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=self.data, stdout=log, stderr=subprocess.STDOUT)
        try:
            self.pickup()  # warm-up: the consumer is up and has run one job
            yield self
        finally:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            log.close()
            self._reset()
            os.environ.clear()
            os.environ.update(old)

    def _reset(self) -> None:
        from suite.core import config, db, events, tasks

        db.reset_engine()
        config.reset_settings()
        tasks.reset()
        events.reset()

    def enqueue_noop(self) -> None:
        if self.kind == "ours":
            enqueue(self.ours.noop)
        else:
            self.noop("raw")

    def enqueue_stamp(self, path: Path) -> str | None:
        """Queue a job that stamps `path`; ours: its job id."""
        if self.kind == "ours":
            return str(enqueue(self.ours.stamp, path=str(path)).id)
        self.stamp("raw", path=str(path))
        return None

    def sqlite_files(self) -> list[str]:
        """The SQLite files the consumer writes: its queue (SqliteHuey), ours also the database."""
        files = []
        if self.backend == "sqlite":
            huey = self.huey if self.kind == "raw" else get_huey()
            files.append(huey.storage.filename)
        if self.kind == "ours":
            from suite.core.db import get_engine

            files.append(str(get_engine().url.database))
        return files

    def _stamp_path(self) -> Path:
        self._counter += 1
        return self.data / f"stamp-{self.kind}-{self._counter}"

    def pickup(self) -> float:
        """Seconds from enqueue to the task starting."""
        path = self._stamp_path()
        t0 = time.time()
        self.enqueue_stamp(path)
        assert self.proc is not None
        return _wait_file(path, self.proc) - t0

    def throughput(self, n: int) -> dict[str, float]:
        path = self._stamp_path()
        t0 = time.perf_counter()
        for _ in range(n):
            self.enqueue_noop()
        queued = time.perf_counter()
        job_id = self.enqueue_stamp(path)
        assert self.proc is not None
        _wait_file(path, self.proc)
        elapsed = time.perf_counter() - t0
        result = {"jobs_per_s": round((n + 1) / elapsed, 1), "enqueue_ms": round((queued - t0) / n * 1000, 3)}
        if job_id is not None:
            self._wait_saved(job_id)
            result["saved_jobs_per_s"] = round((n + 1) / (time.perf_counter() - t0), 1)
        return result

    def _wait_saved(self, job_id: str) -> None:
        """Until the job's row says done (FIFO and one writer: every earlier job's row is saved too). Read
        outside a transaction: db.py's transactions take SQLite's write lock, which would slow the writer."""
        from suite.core.db import get_engine

        deadline = time.monotonic() + 10
        raw = get_engine().raw_connection()
        try:
            cursor = raw.cursor()
            while True:
                cursor.execute("SELECT state FROM core_job WHERE id = ?", (job_id,))
                if cursor.fetchone() == ("done",):
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"job {job_id} not saved as done")
                time.sleep(0.0005)
        finally:
            raw.close()

    def check_done(self, expected: int) -> None:
        """Ours: every job ended as done (the last one's row is written just after its task ran)."""
        if self.kind != "ours":
            return
        from sqlalchemy import func, select

        from suite.core.db import session_scope
        from suite.core.models import Job

        deadline = time.monotonic() + 10
        while True:
            with session_scope() as session:
                done = session.scalar(select(func.count()).select_from(Job).where(Job.state == "done"))
            if done == expected:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{done} jobs done, expected {expected}")
            time.sleep(0.01)


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_cpu(url: str | None) -> float:
    if not url:
        return 0.0
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    finally:
        client.close()


def _stop_unlocked(side: Side) -> None:
    """SIGSTOP the consumer at a moment it holds no SQLite write lock: stopped holding one (a dequeue, a batch
    of job states), it would make the producer's writes fail after the busy timeout."""
    assert side.proc is not None
    files = side.sqlite_files()
    for _ in range(200):
        side.proc.send_signal(signal.SIGSTOP)
        while Path(f"/proc/{side.proc.pid}/stat").read_text().rpartition(")")[2].split()[0] != "T":
            time.sleep(0.0005)
        if all(_unlocked(f) for f in files):
            return
        side.proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    raise RuntimeError("the consumer always held a write lock when stopped")


def _unlocked(path: str) -> bool:
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def split_costs(side: Side, n: int) -> dict[str, float]:
    """Producer and consumer apart: the consumer stopped (SIGSTOP) while n jobs are queued, then let go to
    drain them. CPU per job (ms) of this process while it queues, of the consumer while it drains, and of
    redis-server in each phase; wall per job of each phase."""
    assert side.proc is not None
    path = side._stamp_path()
    _stop_unlocked(side)
    try:
        r0, c0, w0 = _redis_cpu(side.redis_url), time.process_time(), time.perf_counter()
        for _ in range(n):
            side.enqueue_noop()
        side.enqueue_stamp(path)
        w1, c1, r1 = time.perf_counter(), time.process_time(), _redis_cpu(side.redis_url)
        k0 = _proc_cpu(side.proc.pid)
    finally:
        side.proc.send_signal(signal.SIGCONT)
    _wait_file(path, side.proc)
    w2, k1, r2 = time.perf_counter(), _proc_cpu(side.proc.pid), _redis_cpu(side.redis_url)
    per = 1000 / (n + 1)
    result = {
        "producer_cpu_ms": round((c1 - c0) * per, 4),
        "producer_wall_ms": round((w1 - w0) * per, 4),
        "consumer_cpu_ms": round((k1 - k0) * per, 4),
        "consumer_wall_ms": round((w2 - w1) * per, 4),
    }
    if side.redis_url:
        result["redis_cpu_enqueue_ms"] = round((r1 - r0) * per, 4)
        result["redis_cpu_drain_ms"] = round((r2 - r1) * per, 4)
    return result


def measure(kind: str, backend: str, data: Path, redis_url: str | None) -> dict[str, Any]:
    """One round of one side: throughput, then pickup latencies (seconds, under "latencies")."""
    side = Side(kind, backend, data, redis_url)
    with side.running():
        result: dict[str, Any] = side.throughput(JOBS)
        side.check_done(JOBS + 2)  # the warm-up and the final stamp too
        result.update(split_costs(side, JOBS))
        side.check_done(2 * JOBS + 3)
        latencies = []
        rng = random.Random(7)
        for _ in range(PICKUPS):
            time.sleep(IDLE_S + rng.uniform(0, MAX_DELAY))
            latencies.append(side.pickup())
    result["latencies"] = latencies
    return result


def _summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds (each round's figures kept), pickup latencies of all rounds together."""
    keys = [k for k in rounds[0] if k != "latencies"]
    result: dict[str, Any] = {k: round(statistics.median(r[k] for r in rounds), 3) for k in keys}
    result["rounds"] = [{k: r[k] for k in keys} for r in rounds]
    latencies = [x for r in rounds for x in r["latencies"]]
    result["pickup_ms_p50"] = round(statistics.median(latencies) * 1000, 2)
    result["pickup_ms_mean"] = round(statistics.fmean(latencies) * 1000, 2)
    result["pickup_ms_max"] = round(max(latencies) * 1000, 2)
    return result


def compare(backend: str, data: Path, redis_url: str | None) -> dict[str, Any]:
    """Raw and ours in turns (raw, ours, raw, ours...), each round on fresh files and an empty Redis."""
    rounds: dict[str, list[dict[str, Any]]] = {"raw": [], "ours": []}
    for i in range(ROUNDS):
        for kind in ("raw", "ours"):
            if redis_url:
                _flush(redis_url)
            rounds[kind].append(measure(kind, backend, data / f"{backend}-{kind}-{i}", redis_url))
    return _compare(_summarise(rounds["raw"]), _summarise(rounds["ours"]))


# --- redis ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    given = os.environ.get("SUITE_BENCH_REDIS_URL")
    if given:
        yield given
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


# --- the benchmark -------------------------------------------------------------------------------------


def _compare(raw: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    return {
        "raw": raw,
        "ours": ours,
        "overhead": round(raw["jobs_per_s"] / ours["jobs_per_s"] - 1, 3),
        "overhead_saved": round(raw["jobs_per_s"] / ours.get("saved_jobs_per_s", ours["jobs_per_s"]) - 1, 3),
        "pickup_added_ms": round(ours["pickup_ms_p50"] - raw["pickup_ms_p50"], 2),
    }


def run() -> dict[str, Any]:
    load_before = os.getloadavg()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "jobs": JOBS,
        "rounds": ROUNDS,
        "pickups_per_round": PICKUPS,
        "workers": 1,
        "max_polling_delay_s": MAX_DELAY,
    }
    with tempfile.TemporaryDirectory(prefix="suite-bench-jobs-") as tmp:
        data = Path(tmp)
        if "sqlite" in BACKENDS:
            results["sqlite"] = compare("sqlite", data, None)
        if "redis" in BACKENDS:
            with redis_server(data) as url:
                results["redis"] = compare("redis", data, url)
    results["summary"] = {
        f"{backend}_{key}": results[backend][side][key] if side else results[backend][key]
        for backend in BACKENDS
        for key, side in (
            ("jobs_per_s", "ours"),
            ("overhead", None),
            ("overhead_saved", None),
            ("pickup_ms_p50", "ours"),
        )
    }
    results["loadavg_before"] = [round(x, 2) for x in load_before]
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    results["duration_s"] = round(time.perf_counter() - started, 1)
    return results


def _this_module() -> Any:
    """This file under MODULE, the name the consumers import it by (run.py already loads it so)."""
    if __name__ == MODULE:
        return sys.modules[__name__]
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(MODULE)


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
