"""Queue storages whose `dequeue` also claims the job it takes (see queue.py's docstring on claims).

A job's queued message carries its job id ahead of Huey's serialized message (`with_claim`), so a storage can
claim the job without unpickling anything: SQLite in the transaction that takes the message off the queue,
Redis in one script with the RPOP (one round trip, as Huey's own BRPOP). Messages without it (Huey's own
tasks) are taken as Huey takes them. After the id comes the job's row as JSON (rows.py `meta`), for a
consumer that runs the job before the producer's row is written.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any, cast

from huey.storage import RedisStorage, SqliteStorage

from suite.core.tasks.sql import when_unlocked

SQLITE_MAX_PARAMS = 500
PATIENT_DELAY_S = 0.001  # a consumer waits for the queue's lock in steps of 1 ms, doubling up to 4 ms
PATIENT_MAX_S = 0.004
CLAIM_MARK = b"\x00job:"  # no pickle (b"\x80...") or zlib (b"x...") message starts so


def revoke_key(job_id: str) -> str:
    return f"r:{job_id}"  # Huey's Task.revoke_id


def with_claim(job_id: str, data: bytes, meta: bytes = b"") -> bytes:
    """`meta`: JSON (a list: "[", never a NUL byte), or empty."""
    return b"".join((CLAIM_MARK, job_id.encode(), b"\x00", meta, b"\x00" if meta else b"", data))


def split_claim(data: bytes) -> tuple[str | None, bytes, bytes]:
    """(job id, meta, Huey's message) of a queued message; the id is None and meta empty when it carries
    none (pickles start with b"\\x80", zlib with b"x", meta with b"[")."""
    if data[:5] != CLAIM_MARK:
        return None, b"", data
    end = data.index(b"\x00", 5)
    job_id = data[5:end].decode()
    if data[end + 1 : end + 2] != b"[":
        return job_id, b"", data[end + 1 :]
    stop = data.index(b"\x00", end + 1)
    return job_id, data[end + 1 : stop], data[stop + 1 :]


class ClaimingStorage:
    """What a claiming storage remembers per thread: the claim its last dequeue made."""

    claim_value = b""  # the serialized claim (queue.CLAIMED)

    def _init_claims(self) -> None:
        self._last = threading.local()

    def _record(self, key: str | None, claimed: bool) -> None:
        self._last.claim = None if key is None else (key, claimed)

    def claimed(self, key: str) -> bool | None:
        """Whether this thread's last dequeue claimed `key` (None: it did not try)."""
        last: tuple[str, bool] | None = getattr(self._last, "claim", None)
        self._last.claim = None
        return last[1] if last is not None and last[0] == key else None


class ClaimingSqliteStorage(ClaimingStorage, SqliteStorage):
    """SqliteHuey's storage: the claim is written in the transaction that deletes the message. Claims to
    release (`release`) are deleted in that transaction too, before it claims (each write to the queue file
    costs an fsync), or in their own one when the queue is empty."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_claims()
        self._releases: list[str] = []
        self._releases_lock = threading.Lock()

    # SQLite's busy handler sleeps 1 ms, then 2, 5, 10... however soon the lock is free, and a producer and a
    # consumer of the queue each take it for every message: the connection has no busy timeout, and waits
    # for the lock in steps of 0.1-2 ms instead (`when_unlocked`), up to Huey's timeout, for writes and for
    # reads (which in WAL mode meet a lock only while another connection recovers or closes the file). The
    # queue's own statements (enqueue, dequeue) run on the connection directly, as Huey's `db` would.

    def _create_connection(self) -> Any:
        conn = super()._create_connection()
        conn.execute("pragma busy_timeout=0")
        return conn

    @property
    def _timeout_ms(self) -> int:
        return int(self._timeout * 1000)

    def _begin(self, conn: sqlite3.Connection, *, patient: bool = False) -> None:
        """Begin a write transaction (Huey's `begin exclusive`). `patient`: a consumer's, which lets producers
        go first (a busy lock means messages are being queued: the consumer takes them once they are)."""
        try:
            conn.execute(self.begin_sql)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
        begin = functools.partial(conn.execute, self.begin_sql)
        if patient:
            when_unlocked(begin, self._timeout_ms, delay=PATIENT_DELAY_S, max_delay=PATIENT_MAX_S)
        else:
            when_unlocked(begin, self._timeout_ms)

    def _read(self, conn: sqlite3.Connection, query: str, params: Any) -> list[Any]:
        try:
            return conn.execute(query, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
        return when_unlocked(lambda: conn.execute(query, params).fetchall(), self._timeout_ms)

    @contextlib.contextmanager
    def db(self, commit: bool = False, close: bool = False) -> Iterator[Any]:
        """Huey's `db`, its write transaction begun by `_begin`."""
        with self.lock:
            conn = self.conn
            cursor = conn.cursor()
            try:
                if commit:
                    self._begin(conn)
                yield cursor
            except Exception:
                if commit:
                    conn.rollback()
                raise
            else:
                if commit:
                    conn.commit()
            finally:
                cursor.close()
                if close:
                    conn.close()
                    self._conn = None

    def sql(self, query: str, params: Any = None, commit: bool = False, results: bool = False) -> Any:
        if commit:
            return super().sql(query, params, commit, results)
        with self.lock:
            found = self._read(self.conn, query, params or ())
        return found if results else None

    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        with self.lock:
            conn = self.conn
            self._begin(conn)
            try:
                conn.execute(
                    "insert into task (queue, data, priority) values (?, ?, ?)",
                    (self.name, self.to_blob(data), priority or 0),
                )
            except Exception:
                conn.rollback()
                raise
            conn.commit()

    def release(self, keys: list[str]) -> None:
        with self._releases_lock:
            self._releases.extend(keys)

    def flush_releases(self) -> None:
        """Delete the claims released so far, now."""
        if not self._releases:
            return
        with self.lock:
            conn = self.conn
            self._begin(conn, patient=True)
            try:
                self._delete_released(conn)
            except Exception:
                conn.rollback()
                raise
            conn.commit()

    def _delete_released(self, conn: sqlite3.Connection) -> None:
        if not self._releases:
            return
        with self._releases_lock:
            keys, self._releases = self._releases, []
        for i in range(0, len(keys), SQLITE_MAX_PARAMS):
            chunk = keys[i : i + SQLITE_MAX_PARAMS]
            marks = ",".join("?" * len(chunk))
            conn.execute(f"delete from kv where queue = ? and key in ({marks})", [self.name, *chunk])

    def dequeue(self) -> bytes | None:
        self._record(None, False)
        with self.lock:
            conn = self.conn
            # A quick check without the lock, as Huey's (a consumer polls an empty queue).
            waiting = bool(self._read(conn, "select 1 from task where queue = ? limit 1", (self.name,)))
            if waiting:
                self._begin(conn, patient=True)
                try:
                    data = self._take(conn)
                except Exception:
                    conn.rollback()
                    raise
                conn.commit()
                return data
        self.flush_releases()
        return None

    def _take(self, conn: sqlite3.Connection) -> bytes | None:
        """In the write transaction: the released claims deleted, the next message taken, its job claimed."""
        self._delete_released(conn)
        row = conn.execute(
            "select id, data from task where queue = ? order by priority desc, id limit 1", (self.name,)
        ).fetchone()
        if row is None:
            return None
        tid, data = row
        if conn.execute("delete from task where id = ?", (tid,)).rowcount != 1:
            return None
        job_id = split_claim(data)[0]
        if job_id is not None:
            key = revoke_key(job_id)
            inserted = conn.execute(
                "insert or ignore into kv (queue, key, value) values (?, ?, ?)",
                (self.name, key, self.to_blob(self.claim_value)),
            ).rowcount
            self._record(key, inserted == 1)
        return cast(bytes, data)

    def close(self) -> None:
        try:
            self.flush_releases()
        finally:
            super().close()


# KEYS: queue, results hash; ARGV: the claim value, CLAIM_MARK. Takes the next message (RPOP) and claims its
# job (HSETNX of its revoke key) when it names one. Returns nil (the queue is empty), or
# {message, claimed (1, 0, or -1: no job), messages left}.
DEQUEUE_LUA = """
local data = redis.call('RPOP', KEYS[1])
if not data then return false end
local claimed = -1
local n = string.len(ARGV[2])
if string.sub(data, 1, n) == ARGV[2] then
  local e = string.find(data, string.sub(ARGV[2], 1, 1), n + 1, true)
  if e then
    claimed = redis.call('HSETNX', KEYS[2], 'r:' .. string.sub(data, n + 1, e - 1), ARGV[1])
  end
end
return {data, claimed, redis.call('LLEN', KEYS[1])}
"""

# KEYS: queue, results hash; ARGV: the claim value, the revoke key. Returns {claimed, messages left}.
CLAIM_LUA = """
return {redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[1]), redis.call('LLEN', KEYS[1])}
"""

# KEYS: queue; ARGV: channel, event, message. The event is published first, so no worker can report before it.
ENQUEUE_LUA = """
redis.call('PUBLISH', ARGV[1], ARGV[2])
return redis.call('LPUSH', KEYS[1], ARGV[3])
"""


class ClaimingRedisStorage(ClaimingStorage, RedisStorage):
    """RedisHuey's storage. While messages wait, one script takes the next and claims its job (one round trip);
    when the queue ran empty, a blocking read (BRPOP) waits for the next, then the script claims it (two, as
    Huey's BRPOP and revoke check)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_claims()
        self._dequeue_script = self.conn.register_script(DEQUEUE_LUA)
        self._claim_script = self.conn.register_script(CLAIM_LUA)
        self._enqueue_script = self.conn.register_script(ENQUEUE_LUA)

    def enqueue_after(self, channel: str, event: str, data: bytes) -> None:
        """Publish `event` on `channel`, then queue `data`: one command."""
        self._enqueue_script(keys=[self.queue_key], args=[channel, event, data])

    def dequeue(self) -> bytes | None:
        self._record(None, False)
        keys = [self.queue_key, self.result_key]
        found = None
        if getattr(self._last, "waiting", True):  # messages were left: take one without blocking
            found = self._dequeue_script(keys=keys, args=[self.claim_value, CLAIM_MARK])
        if found:
            data, claimed, left = found
            if claimed >= 0:
                self._record(revoke_key(cast(str, split_claim(data)[0])), bool(claimed))
        else:
            data = super().dequeue()
            job_id = None if data is None else split_claim(data)[0]
            left = 0
            if job_id is not None:
                key = revoke_key(job_id)
                claimed, left = self._claim_script(keys=keys, args=[self.claim_value, key])
                self._record(key, bool(claimed))
        self._last.waiting = bool(left)
        return cast(bytes | None, data)
