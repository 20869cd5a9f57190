"""Redis streams broker: a consumer group on `<prefix>req`, per-reply streams `<prefix>reply:<id>`.

Written for Redis >= 6.2 (no 8.x keywords): XAUTOCLAIM replies with 2 or 3 elements are both accepted, claimed
ids whose entry was trimmed are acked away, NOGROUP (a restart without persistence) recreates the group.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from suite.chat.broker.base import BrokerUnavailable, Entry, Frame, ReplyRead
from suite.chat.settings import ChatSettings

log = logging.getLogger("suite.chat.broker")
T = TypeVar("T")
GROUP = "workers"

# seq = INCR of a counter key; the entry id is "<seq>-0" so XREAD from "<after_seq>-0" returns seq > after_seq.
# One call appends every frame of a flush and answers whether a cancel was requested, so the worker makes one
# round trip per flush. KEYS: stream, seq counter, cancel flag. ARGV: maxlen, ttl, create, then type/data pairs.
APPEND_LUA = """
if ARGV[3] == '0' and redis.call('EXISTS', KEYS[2]) == 0 then return {-1, 0} end
local n = (#ARGV - 3) / 2
local seq = redis.call('INCRBY', KEYS[2], n) - n
for i = 4, #ARGV, 2 do
  seq = seq + 1
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], seq .. '-0', 'type', ARGV[i], 'data', ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {seq, redis.call('EXISTS', KEYS[3])}
"""
# A request's `status{queued}` frame (opening its reply stream) and its queue entry, in one call: a pipeline
# holding a script costs a SCRIPT EXISTS round trip first. KEYS: reply stream, seq counter, request stream.
# ARGV: reply maxlen, ttl, status data, request maxlen, then the entry's field/value pairs.
SUBMIT_LUA = """
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], seq .. '-0', 'type', 'status', 'data', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Lock, then (only when locked) count a rate-limit hit; over the limit release the lock. Returns -1 busy,
# 0 locked but over the limit (released), 1 locked. KEYS: lock, rate counter. ARGV: holder, ttl_ms, limit, ttl_s.
LOCK_AND_RATE_LUA = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -1 end
local n = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if n > tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[1])
  return 0
end
return 1
"""
ACQUIRE_INFLIGHT_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def _unavailable(exc: Exception) -> BrokerUnavailable:
    return BrokerUnavailable(f"redis broker unavailable: {exc}")


class RedisBroker:
    kind = "redis"
    shared = True

    def __init__(self, url: str, settings: ChatSettings, *, client: Any = None) -> None:
        """`client` replaces the pool built from `url` (the unit tier passes a fakeredis client)."""
        self.url = url
        self.settings = settings
        p = settings.redis_prefix
        self.req_key = f"{p}req"
        self.dead_key = f"{p}req:dead"
        self.prefix = p
        factory: Any = aioredis.Redis.from_url  # types-redis has redis 4's stubs, not redis 8's signatures
        self.client: Any = client or factory(
            url,
            decode_responses=True,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            socket_connect_timeout=2,
        )
        self._append = self.client.register_script(APPEND_LUA)
        self._submit = self.client.register_script(SUBMIT_LUA)
        self._release = self.client.register_script(RELEASE_LUA)
        self._inflight = self.client.register_script(ACQUIRE_INFLIGHT_LUA)
        self._lock_and_rate = self.client.register_script(LOCK_AND_RATE_LUA)
        self._cursor = "0-0"
        self.reclaimed = 0
        self.dead_lettered = 0

    # --- plumbing -------------------------------------------------------------------------------------
    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def _group_call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run a consumer-group command; on NOGROUP (Redis lost its data) recreate the group and retry."""
        try:
            return await self._call(fn)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning(
                "consumer group %s on %s missing (Redis restarted without persistence?): recreating",
                GROUP,
                self.req_key,
            )
            await self.ensure_group()
            return await self._call(fn)

    async def ensure_group(self) -> None:
        try:
            await self._call(lambda: self.client.xgroup_create(self.req_key, GROUP, id="0", mkstream=True))
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def start(self) -> None:
        await self.ensure_group()

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> dict[str, Any]:
        await self._call(self.client.ping)
        groups = (
            await self._call(lambda: self.client.xinfo_groups(self.req_key))
            if await self._call(lambda: self.client.exists(self.req_key))
            else []
        )
        has_group = any(g.get("name") == GROUP for g in groups)
        return {"ok": has_group, "kind": self.kind, "group": has_group}

    # --- queue ----------------------------------------------------------------------------------------
    async def submit(
        self, request_id: str, fields: dict[str, str], *, status: dict[str, Any] | None = None
    ) -> str:
        data = {**fields, "request_id": request_id}
        if status is None:
            return await self._call(
                lambda: self.client.xadd(
                    self.req_key, data, maxlen=self.settings.request_maxlen, approximate=True
                )
            )

        reply = self.reply_key(request_id)
        keys = [reply, reply + ":seq", self.req_key]
        args: list[Any] = [
            self.settings.max_tokens + 100,
            self.settings.reply_ttl_s,
            Frame.encode(status),
            self.settings.request_maxlen,
        ]
        for name, value in data.items():
            args += [name, value]
        entry_id = await self._call(lambda: self._submit(keys=keys, args=args))
        return str(entry_id)

    async def queue_lag(self) -> int | None:
        try:
            groups = await self._call(lambda: self.client.xinfo_groups(self.req_key))
        except ResponseError:
            return None
        for g in groups:
            if g.get("name") == GROUP and g.get("lag") is not None:
                return int(g["lag"])
        return None

    async def _deliveries(self, ids: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for entry_id in ids:
            rows = await self._group_call(
                functools.partial(
                    self.client.xpending_range, self.req_key, GROUP, min=entry_id, max=entry_id, count=1
                )
            )
            if rows:
                out[entry_id] = int(rows[0]["times_delivered"])
        return out

    def _entries(
        self, rows: list[Any], deliveries: dict[str, int] | None = None
    ) -> tuple[list[Entry], list[str]]:
        entries, trimmed = [], []
        for entry_id, fields in rows:
            if not fields:  # claimed or read from the PEL after the entry was trimmed
                trimmed.append(entry_id)
                continue
            n = (deliveries or {}).get(entry_id, 1)
            entries.append(Entry(entry_id, fields.get("request_id", ""), dict(fields), n))
        return entries, trimmed

    async def claim(self, consumer: str, *, count: int = 1, block_ms: int = 5000) -> list[Entry]:
        result = await self._group_call(
            lambda: self.client.xreadgroup(GROUP, consumer, {self.req_key: ">"}, count=count, block=block_ms)
        )
        rows = result[0][1] if result else []
        entries, _ = self._entries(rows)
        for e in entries:
            e.fresh = True  # read with ">": never delivered before
        return entries

    async def recover(self, consumer: str) -> list[Entry]:
        """Our own PEL (a restart with the same consumer name): read it before new entries."""
        result = await self._group_call(
            lambda: self.client.xreadgroup(GROUP, consumer, {self.req_key: "0"}, count=100)
        )
        rows = result[0][1] if result else []
        entries, trimmed = self._entries(rows)
        if trimmed:
            await self._group_call(lambda: self.client.xack(self.req_key, GROUP, *trimmed))
        counts = await self._deliveries([e.id for e in entries])
        for e in entries:
            e.deliveries = counts.get(e.id, e.deliveries)
        return entries

    async def ack(self, entry: Entry) -> None:
        await self._group_call(lambda: self.client.xack(self.req_key, GROUP, entry.id))

    async def heartbeat(self, consumer: str, entry_ids: list[str]) -> list[str]:
        if not entry_ids:
            return []
        # JUSTID: resets the idle time and leaves the delivery count alone.
        claimed = await self._group_call(
            lambda: self.client.xclaim(self.req_key, GROUP, consumer, 0, entry_ids, justid=True)
        )
        return [str(c) for c in claimed]

    async def reclaim(self, consumer: str, *, count: int = 10) -> list[Entry]:
        reply = await self._group_call(
            lambda: self.client.xautoclaim(
                self.req_key, GROUP, consumer, self.settings.min_idle_ms, start_id=self._cursor, count=count
            )
        )
        # redis-py parses to [cursor, entries] (6.2) or [cursor, entries, deleted_ids] (7.0+)
        cursor, rows = reply[0], reply[1]
        self._cursor = cursor if cursor and cursor != "0-0" else "0-0"
        entries, trimmed = self._entries(rows)
        if trimmed:
            await self._group_call(lambda: self.client.xack(self.req_key, GROUP, *trimmed))
        counts = await self._deliveries([e.id for e in entries])
        for e in entries:
            e.deliveries = counts.get(e.id, 2)
        self.reclaimed += len(entries)
        return entries

    async def dead_letter(self, entry: Entry, error: str) -> None:
        fields = {
            **{k: v for k, v in entry.fields.items() if k != "job"},  # the context stays in SQL
            "entry_id": entry.id,
            "error": error[:2000],
            "deliveries": str(entry.deliveries),
            "failed_at": str(int(time.time() * 1000)),
        }
        await self._call(
            lambda: self.client.xadd(
                self.dead_key, fields, maxlen=self.settings.dead_maxlen, approximate=True
            )
        )
        await self.ack(entry)
        self.dead_lettered += 1

    async def dead_letters(self, *, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self._call(lambda: self.client.xrevrange(self.dead_key, count=limit))
        return [{**fields, "dead_id": entry_id} for entry_id, fields in reversed(rows)]

    async def remove_dead(self, request_id: str) -> dict[str, str] | None:
        rows = await self._call(lambda: self.client.xrange(self.dead_key))
        for entry_id, fields in rows:
            if fields.get("request_id") == request_id:
                await self._call(functools.partial(self.client.xdel, self.dead_key, entry_id))
                return dict(fields)
        return None

    async def pending(self) -> dict[str, Any]:
        async def run() -> Any:
            pipe = self.client.pipeline(transaction=False)
            pipe.xlen(self.req_key)
            pipe.xlen(self.dead_key)
            return await pipe.execute()

        length, dead = await self._call(run)
        try:
            summary = await self._call(lambda: self.client.xpending(self.req_key, GROUP))
        except ResponseError:
            summary = {"pending": 0, "consumers": []}
        consumers = {c["name"]: int(c["pending"]) for c in summary.get("consumers") or []}
        return {
            "length": length,
            "queued": await self.queue_lag(),
            "pending": int(summary.get("pending") or 0),
            "consumers": consumers,
            "dead": dead,
            "reclaimed": self.reclaimed,
        }

    # --- replies --------------------------------------------------------------------------------------
    def reply_key(self, request_id: str) -> str:
        return f"{self.prefix}reply:{request_id}"

    def _append_args(
        self, request_id: str, frames: list[tuple[str, str]], *, create: bool
    ) -> tuple[list[str], list[Any]]:
        key = self.reply_key(request_id)
        keys = [key, key + ":seq", f"{self.prefix}cancel:{request_id}"]
        args: list[Any] = [self.settings.max_tokens + 100, self.settings.reply_ttl_s, int(create)]
        for type, raw in frames:
            args += [type, raw]
        return keys, args

    async def reply_append(
        self, request_id: str, type: str, data: dict[str, Any], *, create: bool = True
    ) -> int:
        """Append a frame; with `create=False` (the worker) a vanished stream (Redis lost its data) is an
        error rather than a new stream whose seq would restart at 1 under a client that already read further."""
        seq, _ = await self.reply_extend(request_id, [(type, Frame.encode(data))], create=create)
        return seq

    async def reply_extend(
        self, request_id: str, frames: list[tuple[str, str]], *, create: bool = True
    ) -> tuple[int, bool]:
        keys, args = self._append_args(request_id, frames, create=create)
        seq, cancelled = await self._call(lambda: self._append(keys=keys, args=args))
        if int(seq) < 0:
            raise BrokerUnavailable(
                f"the reply stream of {request_id} is gone (Redis restarted without persistence?)"
            )
        return int(seq), bool(cancelled)

    async def reply_read(self, request_id: str, after_seq: int, *, block_ms: int = 0) -> ReplyRead:
        key = self.reply_key(request_id)
        result = await self._call(
            lambda: self.client.xread({key: f"{after_seq}-0"}, count=1000, block=block_ms or None)
        )
        rows = result[0][1] if result else []
        if not rows:
            exists = bool(await self._call(lambda: self.client.exists(key)))
            return ReplyRead([], exists=exists, last_seq=after_seq)
        frames = [
            Frame(int(entry_id.partition("-")[0]), fields.get("type", ""), raw=fields.get("data") or "{}")
            for entry_id, fields in rows
        ]
        return ReplyRead(frames, exists=True, gap=frames[0].seq > after_seq + 1, last_seq=frames[-1].seq)

    async def reply_last_seq(self, request_id: str) -> int | None:
        value = await self._call(lambda: self.client.get(self.reply_key(request_id) + ":seq"))
        return int(value) if value is not None else None

    # --- control --------------------------------------------------------------------------------------
    async def cancel(self, request_id: str) -> None:
        await self._call(lambda: self.client.set(f"{self.prefix}cancel:{request_id}", "1", ex=600))

    async def is_cancelled(self, request_id: str) -> bool:
        return bool(await self._call(lambda: self.client.exists(f"{self.prefix}cancel:{request_id}")))

    async def inflight_acquire(self, request_id: str, worker: str, ttl_ms: int) -> bool:
        key = f"{self.prefix}inflight:{request_id}"
        return bool(await self._call(lambda: self._inflight(keys=[key], args=[worker, ttl_ms])))

    async def inflight_release(self, request_id: str, worker: str) -> None:
        key = f"{self.prefix}inflight:{request_id}"
        await self._call(lambda: self._release(keys=[key], args=[worker]))

    async def lock_acquire(self, name: str, holder: str, ttl_ms: int) -> bool:
        key = f"{self.prefix}lock:{name}"
        return bool(await self._call(lambda: self.client.set(key, holder, nx=True, px=ttl_ms)))

    async def lock_release(self, name: str, holder: str) -> bool:
        key = f"{self.prefix}lock:{name}"
        return bool(await self._call(lambda: self._release(keys=[key], args=[holder])))

    async def lock_and_rate(
        self, name: str, holder: str, ttl_ms: int, *, rate_key: str, limit: int, window_s: int = 60
    ) -> tuple[bool, float | None]:
        full, left = self._window(rate_key, window_s)
        keys = [f"{self.prefix}lock:{name}", full]
        args = [holder, ttl_ms, limit, window_s + 1]
        result = int(await self._call(lambda: self._lock_and_rate(keys=keys, args=args)))
        if result < 0:
            return False, None
        return True, (max(left, 0.001) if result == 0 else None)

    async def lock_holder(self, name: str) -> str | None:
        return await self._call(lambda: self.client.get(f"{self.prefix}lock:{name}"))

    def _window(self, key: str, window_s: int) -> tuple[str, float]:
        index = int(time.time() // window_s)
        return f"{self.prefix}rl:{key}:{index}", (index + 1) * window_s - time.time()

    async def rate_hit(self, key: str, *, limit: int, window_s: int = 60, amount: int = 1) -> float | None:
        full, left = self._window(key, window_s)

        async def run() -> Any:
            pipe = self.client.pipeline(transaction=True)
            pipe.incrby(full, amount)
            pipe.expire(full, window_s + 1)
            return await pipe.execute()

        value, _ = await self._call(run)
        return max(left, 0.001) if int(value) > limit else None

    async def rate_peek(self, key: str, *, window_s: int = 60) -> int:
        full, _ = self._window(key, window_s)
        value = await self._call(lambda: self.client.get(full))
        return int(value or 0)

    async def counter_add(self, key: str, delta: int, *, ttl_s: int = 600) -> int:
        full = f"{self.prefix}n:{key}"

        async def run() -> Any:
            pipe = self.client.pipeline(transaction=True)
            pipe.incrby(full, delta)
            pipe.expire(full, ttl_s)
            return await pipe.execute()

        value, _ = await self._call(run)
        return int(value)

    # --- presence -------------------------------------------------------------------------------------
    async def worker_beat(self, name: str, info: dict[str, Any], ttl_s: int) -> None:
        payload = json.dumps({**info, "name": name})
        await self._call(lambda: self.client.set(f"{self.prefix}worker:{name}", payload, ex=ttl_s))

    async def worker_gone(self, name: str) -> None:
        await self._call(lambda: self.client.delete(f"{self.prefix}worker:{name}"))

    async def live_workers(self) -> list[dict[str, Any]]:
        async def scan() -> list[str]:
            return [k async for k in self.client.scan_iter(match=f"{self.prefix}worker:*", count=100)]

        keys = await self._call(scan)
        if not keys:
            return []
        values = await self._call(lambda: self.client.mget(keys))
        return [json.loads(v) for v in values if v]

    async def server_info(self) -> dict[str, Any]:
        info = await self._call(lambda: self.client.info())
        config = {}
        try:
            config = await self._call(lambda: self.client.config_get("maxmemory-policy"))
        except ResponseError:
            pass
        return {
            "redis_version": info.get("redis_version"),
            "maxmemory_policy": config.get("maxmemory-policy", info.get("maxmemory_policy")),
            "aof_enabled": bool(info.get("aof_enabled")),
        }


__all__ = ["RedisBroker", "RedisError"]
