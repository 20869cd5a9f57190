"""The broker interface both brokers implement (and the one contract test suite checks)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from suite.core.errors import Unavailable


class BrokerUnavailable(Unavailable):
    code = "broker_unavailable"


@dataclass
class Entry:
    """One delivery of a request from the queue."""

    id: str
    request_id: str
    fields: dict[str, str]
    deliveries: int = 1
    fresh: bool = False  # a new entry's first delivery (never read before, by anyone)


class Frame:
    """One frame of a reply stream: `seq` rises by 1 across attempts.

    `raw` is the JSON object text of the frame's own fields, encoded once by the writer and stored as is; a
    socket gets `wire(request_id_json)` (string concatenation, no decode and re-encode per reader) and `data`
    decodes it only when someone asks."""

    __slots__ = ("_data", "raw", "seq", "type")

    def __init__(self, seq: int, type: str, data: dict[str, Any] | None = None, *, raw: str | None = None):
        self.seq = seq
        self.type = type
        self._data = data
        self.raw = raw if raw is not None else Frame.encode(data or {})

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = json.loads(self.raw)
        return self._data

    def to_message(self, request_id: str) -> dict[str, Any]:
        return {"type": self.type, "request_id": request_id, "seq": self.seq, **self.data}

    def wire(self, request_id_json: str) -> str:
        """The frame as the client gets it; `request_id_json` is `json.dumps(client_request_id)`."""
        head = f'{{"type":"{self.type}","request_id":{request_id_json},"seq":{self.seq}'
        return head + "}" if len(self.raw) <= 2 else head + "," + self.raw[1:]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frame) and (self.seq, self.type, self.data) == (
            other.seq,
            other.type,
            other.data,
        )

    def __repr__(self) -> str:
        return f"Frame({self.seq}, {self.type!r}, {self.raw})"

    @staticmethod
    def encode(data: dict[str, Any]) -> str:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


@dataclass
class ReplyRead:
    """Frames after a sequence number. `exists` is False when the stream is gone (expired, lost, unknown);
    `gap` is True when entries after `after_seq` were trimmed away."""

    frames: list[Frame]
    exists: bool = True
    gap: bool = False
    last_seq: int = 0


class Broker(Protocol):
    kind: str
    shared: bool  # entries may be claimed by a worker of another process (they carry the job's context)

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> dict[str, Any]: ...

    # request queue (consumer group semantics)
    async def submit(
        self, request_id: str, fields: dict[str, str], *, status: dict[str, Any] | None = None
    ) -> str:
        """Queue a request; with `status`, first append that `status` frame to its reply stream (one round
        trip for both)."""
        ...

    async def claim(self, consumer: str, *, count: int = 1, block_ms: int = 5000) -> list[Entry]: ...
    async def ack(self, entry: Entry) -> None: ...
    async def heartbeat(self, consumer: str, entry_ids: list[str]) -> list[str]: ...
    async def reclaim(self, consumer: str, *, count: int = 10) -> list[Entry]: ...
    async def dead_letter(self, entry: Entry, error: str) -> None: ...
    async def dead_letters(self, *, limit: int = 100) -> list[dict[str, Any]]: ...
    async def remove_dead(self, request_id: str) -> dict[str, str] | None: ...
    async def pending(self) -> dict[str, Any]: ...

    # reply streams
    async def reply_append(
        self, request_id: str, type: str, data: dict[str, Any], *, create: bool = True
    ) -> int: ...
    async def reply_extend(
        self, request_id: str, frames: list[tuple[str, str]], *, create: bool = True
    ) -> tuple[int, bool]:
        """Append `(type, raw JSON)` frames in one round trip; returns (last seq, cancel requested)."""
        ...

    async def reply_read(self, request_id: str, after_seq: int, *, block_ms: int = 0) -> ReplyRead: ...
    async def reply_last_seq(self, request_id: str) -> int | None: ...

    # control
    async def cancel(self, request_id: str) -> None: ...
    async def is_cancelled(self, request_id: str) -> bool: ...
    async def inflight_acquire(self, request_id: str, worker: str, ttl_ms: int) -> bool: ...
    async def inflight_release(self, request_id: str, worker: str) -> None: ...
    async def lock_acquire(self, name: str, holder: str, ttl_ms: int) -> bool: ...
    async def lock_release(self, name: str, holder: str) -> bool: ...
    async def lock_holder(self, name: str) -> str | None: ...
    async def lock_and_rate(
        self, name: str, holder: str, ttl_ms: int, *, rate_key: str, limit: int, window_s: int = 60
    ) -> tuple[bool, float | None]:
        """Take lock `name` and, only when taken, count one hit on `rate_key`; over `limit` the lock is
        released again. Returns (locked, retry_after or None). One round trip for both."""
        ...

    async def rate_hit(
        self, key: str, *, limit: int, window_s: int = 60, amount: int = 1
    ) -> float | None: ...
    async def rate_peek(self, key: str, *, window_s: int = 60) -> int: ...
    async def counter_add(self, key: str, delta: int, *, ttl_s: int = 600) -> int: ...

    # presence
    async def worker_beat(self, name: str, info: dict[str, Any], ttl_s: int) -> None: ...
    async def worker_gone(self, name: str) -> None: ...
    async def live_workers(self) -> list[dict[str, Any]]: ...
