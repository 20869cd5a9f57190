"""The chat worker: claims requests from the broker, streams the provider's reply into the per-reply stream
(generation.py), stores it in SQL, then acks. A janitor reclaims entries of dead workers, heartbeats keep long replies,
and a request delivered more than `max_deliveries` times goes to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from suite.chat import notify, service
from suite.chat.broker.base import Broker, BrokerUnavailable, Entry
from suite.chat.db import drain_db, readonly, run_db
from suite.chat.generation import Generation
from suite.chat.llm import get_provider
from suite.chat.models import FINISHED_STATES
from suite.chat.runtime import take_job, worker_started, worker_stopped
from suite.chat.settings import ChatSettings, chat_settings

log = logging.getLogger("suite.chat.worker")


@dataclass
class WorkerStats:
    replies: int = 0
    cancelled: int = 0
    errors: int = 0
    crashes: int = 0
    dead: int = 0
    reclaimed: int = 0
    tokens: int = 0
    ttft_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        ttft = sorted(self.ttft_ms[-1000:])
        p = (lambda q: round(ttft[min(len(ttft) - 1, int(q * len(ttft)))], 2)) if ttft else (lambda q: None)
        return {
            "replies": self.replies,
            "cancelled": self.cancelled,
            "errors": self.errors,
            "crashes": self.crashes,
            "dead": self.dead,
            "reclaimed": self.reclaimed,
            "tokens": self.tokens,
            "ttft_ms_p50": p(0.5),
            "ttft_ms_p95": p(0.95),
        }


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ChatWorker(Generation):
    def __init__(
        self,
        broker: Broker,
        *,
        settings: ChatSettings | None = None,
        name: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        if settings is None:
            settings = chat_settings()
        self.broker = broker
        self.s = settings
        self.name = name or default_name()
        self.concurrency = concurrency or settings.concurrency
        self.active: dict[str, Entry] = {}
        self.stats = WorkerStats()
        self.started_at = time.time()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self._stopping = False
        self._writes: set[asyncio.Future[Any]] = set()
        # request id -> what runs after its first write (start bookkeeping, the in-flight mark)
        self._hooks: dict[str, list[Any]] = {}
        self._local_slot: asyncio.Semaphore | None = None
        self.runtime: str | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        worker_started()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name=f"chat-claim-{self.name}"),
            asyncio.create_task(self._beat_loop(), name=f"chat-beat-{self.name}"),
            asyncio.create_task(self._janitor_loop(), name=f"chat-janitor-{self.name}"),
        ]

    async def stop(self, *, interrupt: bool = False, grace_s: float = 0.0) -> None:
        """Stop claiming (and the janitor and heartbeats); give replies in progress `grace_s` to finish, then
        cancel the rest (their entries stay pending for another worker, or with `interrupt` (the in-process
        broker) they end `interrupted`, partial text kept)."""
        self._stopping = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if grace_s > 0 and self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        active = list(self.active.values())
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if interrupt:
            for entry in active:
                with contextlib.suppress(Exception):
                    req = await run_db(
                        service.fail_request,
                        request_id=entry.request_id,
                        state="interrupted",
                        code="interrupted",
                        message="the server stopped while this reply was generated",
                    )
                    _notify_failed(req)
                    await self.broker.reply_append(
                        entry.request_id, "error", {"code": "interrupted", "message": "the server stopped"}
                    )
        with contextlib.suppress(Exception):
            await self.broker.worker_gone(self.name)
        if self._writes:  # queued partial writes and start bookkeeping: let them land
            await asyncio.gather(*list(self._writes), return_exceptions=True)
        with contextlib.suppress(Exception):
            await drain_db()
        if self._loops:
            worker_stopped()
            self._loops = []

    async def run_forever(self) -> None:
        await self.start()
        try:
            await asyncio.gather(*self._loops)
        finally:
            await self.stop()

    def _spawn(self, entry: Entry, *, slot: bool) -> None:
        task = asyncio.create_task(self._run_entry(entry, slot=slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_entry(self, entry: Entry, *, slot: bool) -> None:
        try:
            await self.handle(entry)
        finally:
            if slot:
                self._slots.release()

    # --- loops --------------------------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        backoff = 0.1
        recovered = False
        while not self._stopping:
            await self._slots.acquire()
            try:
                if not recovered:
                    await self.broker.start()
                    for entry in await self.broker.recover(self.name):  # type: ignore[attr-defined]
                        self._spawn(entry, slot=False)
                    recovered = True
                entries = await self.broker.claim(self.name, count=1, block_ms=self.s.claim_block_ms)
                backoff = 0.1
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except Exception as exc:
                self._slots.release()
                log.warning("worker %s: claim failed (%s); retrying in %.1f s", self.name, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if not entries:
                self._slots.release()
                continue
            self._spawn(entries[0], slot=True)
            for extra in entries[1:]:
                self._spawn(extra, slot=False)

    def _inflight_ttl_ms(self) -> int:
        # Shorter than min_idle: a dead worker's claim on a request expires before the janitor reclaims it.
        return max(int(self.s.heartbeat_s * 2000), int(self.s.min_idle_ms * 0.5), 100)

    async def _beat_loop(self) -> None:
        ttl = max(1, math.ceil(self.s.heartbeat_s * 3))
        while not self._stopping:
            try:
                entries = list(self.active.values())
                if entries:
                    await self.broker.heartbeat(self.name, [e.id for e in entries])
                    for e in entries:
                        await self.broker.inflight_acquire(e.request_id, self.name, self._inflight_ttl_ms())
                await self.broker.worker_beat(self.name, self.info(), ttl)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("worker %s: heartbeat failed: %s", self.name, exc)
            await asyncio.sleep(self.s.heartbeat_s)

    async def _janitor_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.s.janitor_s)
            try:
                for entry in await self.broker.reclaim(self.name, count=10):
                    if entry.id in self.active:
                        continue
                    self.stats.reclaimed += 1
                    log.info(
                        "worker %s reclaimed %s (delivery %d)", self.name, entry.request_id, entry.deliveries
                    )
                    self._spawn(entry, slot=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("worker %s: janitor failed: %s", self.name, exc)

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": self.started_at,
            "inflight": len(self.active),
            "concurrency": self.concurrency,
            "runtime": self.runtime,
            "broker": self.broker.kind,
        }

    # --- one delivery -------------------------------------------------------------------------------------
    async def handle(self, entry: Entry) -> None:
        rid = entry.request_id
        try:
            if entry.deliveries > self.s.max_deliveries:
                await self._dead_letter(entry)
                return
            held: list[asyncio.Future[bool]] = []
            if not entry.fresh:
                if not await self.broker.inflight_acquire(rid, self.name, self._inflight_ttl_ms()):
                    log.info("worker %s: %s is held by another live worker", self.name, rid)
                    return
            else:
                # A new entry's first delivery is this worker's alone (only a reclaim, long after, could
                # compete): it is marked held after the first write, off the first token's path.
                def hold() -> None:
                    acquire = self.broker.inflight_acquire(rid, self.name, self._inflight_ttl_ms())
                    held.append(asyncio.ensure_future(acquire))

                self._hooks[rid] = [hold]
            self.active[entry.id] = entry
            try:
                job = await self._load(rid, entry)
                if job is None:  # the conversation was deleted
                    await self.broker.ack(entry)
                    return
                if job.state in FINISHED_STATES:
                    await self._reemit(job)
                else:
                    await self._generate(entry, job)
                await self.broker.ack(entry)
            finally:
                self.active.pop(entry.id, None)
                self._hooks.pop(rid, None)
                with contextlib.suppress(Exception):
                    for future in held:
                        await future
                    await self.broker.inflight_release(rid, self.name)
        except asyncio.CancelledError:
            raise
        except BrokerUnavailable as exc:
            log.warning("worker %s: broker unavailable while handling %s: %s", self.name, rid, exc)
        except Exception as exc:
            # A crash (bad request data, a bug): not acked, so it is redelivered and finally dead-lettered.
            self.stats.crashes += 1
            log.exception("worker %s: request %s failed on delivery %d", self.name, rid, entry.deliveries)
            with contextlib.suppress(Exception):
                await run_db(_note_error, request_id=rid, message=f"{type(exc).__name__}: {exc}")

    async def _load(self, rid: str, entry: Entry) -> service.Job | None:
        """The job's context: handed over by the runtime of this process, or carried by a new entry's first
        delivery (both read in the transaction that created the request), else one read (a redelivery reads SQL:
        the request may have finished meanwhile)."""
        prepared = take_job(rid)
        if prepared is not None and entry.fresh:
            return prepared
        carried = entry.fields.get("job") if entry.fresh else None
        if carried:
            try:
                return service.decode_job(carried)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("worker %s: %s carries an unreadable job (%s); reading it", self.name, rid, exc)
        return await run_db(service.load_job, request_id=rid)

    def _first_write_done(self, rid: str) -> None:
        for hook in self._hooks.pop(rid, ()):
            hook()

    def _background(self, future: asyncio.Future[Any]) -> None:
        self._writes.add(future)
        future.add_done_callback(self._writes.discard)

    async def _dead_letter(self, entry: Entry) -> None:
        rid = entry.request_id
        req_error = await run_db(_last_error, request_id=rid)
        error = req_error or f"failed on {entry.deliveries - 1} deliveries"
        req = await run_db(
            service.fail_request, request_id=rid, state="dead", code="provider_error", message=error
        )
        _notify_failed(req)
        await self.broker.reply_append(
            rid, "error", {"code": "provider_error", "message": f"the request failed repeatedly: {error}"}
        )
        await self.broker.dead_letter(entry, error)
        self.stats.dead += 1
        if req is not None and req.conversation_id:
            await self.broker.lock_release(f"conv:{req.conversation_id}", rid)
        log.error("worker %s: request %s dead-lettered after %d deliveries", self.name, rid, entry.deliveries)

    async def _reemit(self, job: service.Job) -> None:
        """A redelivery of a finished request: make sure its reply stream ends with the terminal frame."""
        frame = await run_db(service.done_frame, request_id=job.request_id)
        read = await self.broker.reply_read(job.request_id, 0)
        if frame and not any(f.type in ("done", "error") for f in read.frames):
            frame.pop("text", None)
            await self.broker.reply_append(job.request_id, frame.pop("type"), frame)
        if job.conversation_id:
            await self.broker.lock_release(f"conv:{job.conversation_id}", job.request_id)

    def _slot(self, model: str) -> Any:
        """Requests for the in-process `local` model run one at a time (one model per process, serialised by its
        engine anyway): the others stay `queued`, which is the truth, and their wait counts as queue time."""
        try:
            kind = getattr(get_provider(model), "kind", None)
        except Exception:
            kind = None
        if kind != "local":
            return contextlib.nullcontext()
        if self._local_slot is None:
            self._local_slot = asyncio.Semaphore(1)
        return self._local_slot


def _notify_failed(req: Any) -> None:
    if req is not None:
        notify.request_state(
            req.user_id,
            request_id=req.client_request_id,
            conversation_id=req.conversation_id,
            state=req.state,
        )


def _note_error(session: Any, *, request_id: str, message: str) -> None:
    from suite.chat.models import ChatRequest

    req = session.get(ChatRequest, request_id)
    if req is not None:
        req.error_message = message[:2000]


@readonly
def _last_error(session: Any, *, request_id: str) -> str | None:
    from suite.chat.models import ChatRequest

    req = session.get(ChatRequest, request_id)
    return req.error_message if req is not None else None
