"""The in-process broker: the same rules as the Redis broker, with dicts, deques and timers.

It lives in one process (`suite chat serve` runs the worker as tasks beside the server); a restart loses
in-flight replies, never history (the requests are then marked `interrupted` from SQL).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from suite.chat.broker.base import BrokerUnavailable, Entry, Frame, ReplyRead
from suite.chat.settings import ChatSettings


@dataclass
class _Pending:
    consumer: str
    delivered_at: float
    deliveries: int


@dataclass
class _Reply:
    frames: deque[Frame]
    seq: int = 0
    expires_at: float = 0.0
    event: asyncio.Event = field(default_factory=asyncio.Event)


def _now() -> float:
    return time.monotonic()


class MemoryBroker:
    kind = "memory"
    shared = False

    def __init__(self, settings: ChatSettings) -> None:
        self.settings = settings
        self._ids = itertools.count(1)
        self._entries: dict[str, tuple[str, dict[str, str]]] = {}
        self._queue: deque[str] = deque()
        self._pending: dict[str, _Pending] = {}
        self._queued = asyncio.Event()
        self._dead: deque[dict[str, Any]] = deque(maxlen=settings.dead_maxlen)
        self._replies: dict[str, _Reply] = {}
        self._cancelled: dict[str, float] = {}
        self._strings: dict[str, tuple[str, float]] = {}
        self._counters: dict[str, tuple[int, float]] = {}
        self._workers: dict[str, tuple[dict[str, Any], float]] = {}
        self.reclaimed = 0
        self.dead_lettered = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for reply in self._replies.values():
            reply.event.set()

    async def ping(self) -> dict[str, Any]:
        return {"ok": True, "kind": self.kind}

    # --- queue ----------------------------------------------------------------------------------------
    async def submit(
        self, request_id: str, fields: dict[str, str], *, status: dict[str, Any] | None = None
    ) -> str:
        if status is not None:
            await self.reply_extend(request_id, [("status", Frame.encode(status))])
        entry_id = f"{int(time.time() * 1000)}-{next(self._ids)}"
        self._entries[entry_id] = (request_id, {**fields, "request_id": request_id})
        self._queue.append(entry_id)
        while len(self._entries) > self.settings.request_maxlen and self._queue:
            old = self._queue.popleft()
            self._entries.pop(old, None)
        self._queued.set()
        return entry_id

    def _entry(self, entry_id: str) -> Entry | None:
        item = self._entries.get(entry_id)
        pending = self._pending.get(entry_id)
        if item is None:
            return None
        return Entry(entry_id, item[0], dict(item[1]), pending.deliveries if pending else 1)

    async def claim(self, consumer: str, *, count: int = 1, block_ms: int = 5000) -> list[Entry]:
        deadline = _now() + block_ms / 1000
        while True:
            out: list[Entry] = []
            while self._queue and len(out) < count:
                entry_id = self._queue.popleft()
                if entry_id not in self._entries:
                    continue
                self._pending[entry_id] = _Pending(consumer, _now(), 1)
                entry = self._entry(entry_id)
                if entry:
                    entry.fresh = True
                    out.append(entry)
            if out:
                return out
            self._queued.clear()
            remaining = deadline - _now()
            if remaining <= 0:
                return []
            try:
                async with asyncio.timeout(remaining):
                    await self._queued.wait()
            except TimeoutError:
                return []

    async def recover(self, consumer: str) -> list[Entry]:
        """Entries delivered to `consumer` and never acked (a restart with the same name)."""
        out = []
        for entry_id, pending in list(self._pending.items()):
            if pending.consumer == consumer:
                pending.deliveries += 1
                pending.delivered_at = _now()
                entry = self._entry(entry_id)
                if entry:
                    out.append(entry)
        return out

    async def ack(self, entry: Entry) -> None:
        self._pending.pop(entry.id, None)
        self._entries.pop(entry.id, None)

    async def heartbeat(self, consumer: str, entry_ids: list[str]) -> list[str]:
        kept = []
        for entry_id in entry_ids:
            pending = self._pending.get(entry_id)
            if pending is not None:
                pending.consumer = consumer
                pending.delivered_at = _now()
                kept.append(entry_id)
        return kept

    async def reclaim(self, consumer: str, *, count: int = 10) -> list[Entry]:
        min_idle = self.settings.min_idle_ms / 1000
        now = _now()
        out: list[Entry] = []
        for entry_id, pending in list(self._pending.items()):
            if len(out) >= count:
                break
            if now - pending.delivered_at >= min_idle:
                pending.consumer = consumer
                pending.delivered_at = now
                pending.deliveries += 1
                entry = self._entry(entry_id)
                if entry is None:  # trimmed away
                    self._pending.pop(entry_id, None)
                    continue
                self.reclaimed += 1
                out.append(entry)
        self._purge()
        return out

    async def dead_letter(self, entry: Entry, error: str) -> None:
        self._dead.append(
            {
                **{k: v for k, v in entry.fields.items() if k != "job"},  # the context stays in SQL
                "entry_id": entry.id,
                "error": error,
                "deliveries": str(entry.deliveries),
                "failed_at": str(int(time.time() * 1000)),
            }
        )
        self.dead_lettered += 1
        await self.ack(entry)

    async def dead_letters(self, *, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._dead)[-limit:]

    async def remove_dead(self, request_id: str) -> dict[str, str] | None:
        for item in list(self._dead):
            if item.get("request_id") == request_id:
                self._dead.remove(item)
                return item
        return None

    async def pending(self) -> dict[str, Any]:
        consumers: dict[str, int] = {}
        for p in self._pending.values():
            consumers[p.consumer] = consumers.get(p.consumer, 0) + 1
        return {
            "length": len(self._entries),
            "queued": len(self._queue),
            "pending": len(self._pending),
            "consumers": consumers,
            "dead": len(self._dead),
            "reclaimed": self.reclaimed,
        }

    def queue_position(self, entry_id: str) -> int | None:
        try:
            return self._queue.index(entry_id) + 1
        except ValueError:
            return None

    # --- replies --------------------------------------------------------------------------------------
    def _reply(self, request_id: str) -> _Reply | None:
        reply = self._replies.get(request_id)
        if reply is not None and reply.expires_at <= _now():
            self._replies.pop(request_id, None)
            return None
        return reply

    async def reply_append(
        self, request_id: str, type: str, data: dict[str, Any], *, create: bool = True
    ) -> int:
        seq, _ = await self.reply_extend(request_id, [(type, Frame.encode(data))], create=create)
        return seq

    async def reply_extend(
        self, request_id: str, frames: list[tuple[str, str]], *, create: bool = True
    ) -> tuple[int, bool]:
        reply = self._reply(request_id)
        if reply is None:
            if not create:
                raise BrokerUnavailable(f"the reply stream of {request_id} is gone")
            reply = _Reply(deque(maxlen=self.settings.max_tokens + 100))
            self._replies[request_id] = reply
        for type, raw in frames:
            reply.seq += 1
            reply.frames.append(Frame(reply.seq, type, raw=raw))
        reply.expires_at = _now() + self.settings.reply_ttl_s
        if frames:
            event, reply.event = reply.event, asyncio.Event()
            event.set()
        return reply.seq, await self.is_cancelled(request_id)

    async def reply_read(self, request_id: str, after_seq: int, *, block_ms: int = 0) -> ReplyRead:
        deadline = _now() + block_ms / 1000
        while True:
            reply = self._reply(request_id)
            if reply is None:
                return ReplyRead([], exists=False)
            kept = reply.frames
            if kept and kept[-1].seq > after_seq:
                # seqs in the buffer are contiguous: slice from the first one after `after_seq`
                start = max(0, after_seq + 1 - kept[0].seq)
                frames = list(itertools.islice(kept, start, None))
                gap = frames[0].seq > after_seq + 1
                return ReplyRead(frames, exists=True, gap=gap, last_seq=reply.seq)
            if block_ms <= 0:
                return ReplyRead([], exists=True, last_seq=reply.seq)
            remaining = deadline - _now()
            if remaining <= 0:
                return ReplyRead([], exists=True, last_seq=reply.seq)
            try:
                async with asyncio.timeout(remaining):
                    await reply.event.wait()
            except TimeoutError:
                return ReplyRead([], exists=True, last_seq=reply.seq)

    async def reply_last_seq(self, request_id: str) -> int | None:
        reply = self._reply(request_id)
        return reply.seq if reply else None

    def drop_replies(self) -> None:
        """Forget every reply stream (tests: the state a restarted process starts from)."""
        self._replies.clear()

    # --- control --------------------------------------------------------------------------------------
    async def cancel(self, request_id: str) -> None:
        self._cancelled[request_id] = _now() + 600

    async def is_cancelled(self, request_id: str) -> bool:
        expires = self._cancelled.get(request_id)
        return expires is not None and expires > _now()

    def _get(self, key: str) -> str | None:
        item = self._strings.get(key)
        if item is None:
            return None
        if item[1] <= _now():
            self._strings.pop(key, None)
            return None
        return item[0]

    async def inflight_acquire(self, request_id: str, worker: str, ttl_ms: int) -> bool:
        key = f"inflight:{request_id}"
        holder = self._get(key)
        if holder is not None and holder != worker:
            return False
        self._strings[key] = (worker, _now() + ttl_ms / 1000)
        return True

    async def inflight_release(self, request_id: str, worker: str) -> None:
        key = f"inflight:{request_id}"
        if self._get(key) == worker:
            self._strings.pop(key, None)

    async def lock_acquire(self, name: str, holder: str, ttl_ms: int) -> bool:
        key = f"lock:{name}"
        if self._get(key) is not None:
            return False
        self._strings[key] = (holder, _now() + ttl_ms / 1000)
        return True

    async def lock_release(self, name: str, holder: str) -> bool:
        key = f"lock:{name}"
        if self._get(key) == holder:
            self._strings.pop(key, None)
            return True
        return False

    async def lock_and_rate(
        self, name: str, holder: str, ttl_ms: int, *, rate_key: str, limit: int, window_s: int = 60
    ) -> tuple[bool, float | None]:
        if not await self.lock_acquire(name, holder, ttl_ms):
            return False, None
        retry = await self.rate_hit(rate_key, limit=limit, window_s=window_s)
        if retry is not None:
            await self.lock_release(name, holder)
        return True, retry

    async def lock_holder(self, name: str) -> str | None:
        return self._get(f"lock:{name}")

    def _window(self, key: str, window_s: int) -> tuple[str, float]:
        index = int(time.time() // window_s)
        return f"{key}:{index}", (index + 1) * window_s - time.time()

    async def rate_hit(self, key: str, *, limit: int, window_s: int = 60, amount: int = 1) -> float | None:
        full, left = self._window(key, window_s)
        value = await self.counter_add(full, amount, ttl_s=window_s + 1)
        return max(left, 0.001) if value > limit else None

    async def rate_peek(self, key: str, *, window_s: int = 60) -> int:
        full, _ = self._window(key, window_s)
        item = self._counters.get(full)
        return item[0] if item and item[1] > _now() else 0

    async def counter_add(self, key: str, delta: int, *, ttl_s: int = 600) -> int:
        item = self._counters.get(key)
        value = (item[0] if item and item[1] > _now() else 0) + delta
        self._counters[key] = (value, _now() + ttl_s)
        return value

    def _purge(self) -> None:
        now = _now()
        for store in (self._strings, self._counters):
            for key in [k for k, v in store.items() if v[1] <= now]:
                store.pop(key, None)
        for key in [k for k, v in self._cancelled.items() if v <= now]:
            self._cancelled.pop(key, None)
        for key in [k for k, v in self._replies.items() if v.expires_at <= now]:
            self._replies.pop(key, None)

    # --- presence -------------------------------------------------------------------------------------
    async def worker_beat(self, name: str, info: dict[str, Any], ttl_s: int) -> None:
        self._workers[name] = ({**info, "name": name}, _now() + ttl_s)

    async def worker_gone(self, name: str) -> None:
        self._workers.pop(name, None)

    async def live_workers(self) -> list[dict[str, Any]]:
        now = _now()
        return [info for info, expires in self._workers.values() if expires > now]
