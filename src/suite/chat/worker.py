"""The chat worker: claims requests from the broker, streams the provider's reply into the per-reply stream,
stores it in SQL, then acks. A janitor reclaims entries of dead workers, heartbeats keep long replies,
and a request delivered more than `max_deliveries` times goes to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from suite.chat import notify, service
from suite.chat.broker.base import Broker, BrokerUnavailable, Entry, Frame
from suite.chat.db import drain_db, readonly, run_db, submit_db
from suite.chat.llm import Failure, classify, get_provider, runtime_of
from suite.chat.models import FINISHED_STATES
from suite.chat.runtime import take_job, worker_started, worker_stopped
from suite.chat.settings import ChatSettings
from suite.core.db import utcnow

log = logging.getLogger("suite.chat.worker")
CANCEL_POLL_S = 0.5  # while the provider is silent, a cancel is noticed within this long


class _Failed(Exception):
    def __init__(self, failure: Failure, *, after_first_token: bool) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.after_first_token = after_first_token


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


class ChatWorker:
    def __init__(
        self,
        broker: Broker,
        *,
        settings: ChatSettings | None = None,
        name: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        if settings is None:
            from suite.core.config import get_settings

            settings = get_settings().chat
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
        self._hooks: dict[str, Any] = {}  # request id -> the start bookkeeping, run after its first write
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
            if not await self.broker.inflight_acquire(rid, self.name, self._inflight_ttl_ms()):
                log.info("worker %s: %s is held by another live worker", self.name, rid)
                return
            self.active[entry.id] = entry
            try:
                job = await self._load(rid)
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

    async def _load(self, rid: str) -> service.Job | None:
        """The job's context: handed over by the runtime of this process (read in the same transaction that
        created the request), else one read."""
        prepared = take_job(rid)
        if prepared is not None:
            try:
                job = await prepared
            except Exception:
                job = None
            if job is not None:
                return job
        return await run_db(service.load_job, request_id=rid)

    def _first_write_done(self, rid: str) -> None:
        hook = self._hooks.pop(rid, None)
        if hook is not None:
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

    async def _generate(self, entry: Entry, job: service.Job) -> None:
        async with self._slot(job.model):
            await self._generate_now(entry, job)

    async def _generate_now(self, entry: Entry, job: service.Job) -> None:
        rid = job.request_id
        s = self.s
        attempt = entry.deliveries
        started = time.monotonic()
        queue_ms = max(0.0, (utcnow() - job.enqueued_at).total_seconds() * 1000)
        # The start bookkeeping is queued after the first write (the status frame, or it with the first token), not
        # awaited: the first token neither waits for a transaction nor competes with one for the interpreter, and
        # the chat-db thread still runs it before this request's partial and final writes (FIFO).
        started_at = utcnow()

        def bookkeeping() -> None:
            notify.request_state(
                job.user_id,
                request_id=job.client_request_id,
                conversation_id=job.conversation_id,
                state="generating",
            )
            self._background(
                submit_db(
                    service.mark_started,
                    request_id=rid,
                    worker=self.name,
                    attempt=attempt,
                    started_at=started_at,
                )
            )

        self._hooks[rid] = bookkeeping
        initial = [("reset", Frame.encode({"attempt": attempt}))] if attempt > 1 else []
        initial.append(("status", Frame.encode({"state": "generating", "attempt": attempt})))
        params = job.params
        parts: list[str] = []
        finish_reason = "stop"
        usage: dict[str, int] = {}
        runtime = None
        first_token_at = None
        ttft_ms = None
        state = "done"
        failure: Failure | None = None
        retries = 0
        while state != "cancelled":
            try:
                provider = get_provider(job.model)
                runtime = runtime_of(provider)
                self.runtime = runtime
                out = await self._stream(rid, job, provider, params, parts, started, initial)
                finish_reason, usage, first_token_at, ttft_ms, cancelled = out
                if cancelled:
                    state, finish_reason = "cancelled", "cancelled"
                break
            except _Failed as exc:
                f = exc.failure
                if not exc.after_first_token and f.retryable and retries < s.provider_retries:
                    retries += 1
                    delay = s.retry_backoff_s * 2 ** (retries - 1) * (0.75 + random.random() / 2)
                    if f.retry_after:
                        delay = max(delay, f.retry_after)
                    initial.append(
                        (
                            "status",
                            Frame.encode(
                                {"state": "retrying", "attempt": retries, "retry_after": round(delay, 3)}
                            ),
                        )
                    )
                    _, cancelled_now = await self.broker.reply_extend(rid, initial, create=False)
                    self._first_write_done(rid)
                    initial.clear()
                    if cancelled_now:
                        state, finish_reason = "cancelled", "cancelled"
                        break
                    await asyncio.sleep(delay)
                    continue
                failure, state = f, "error"
                break
            except Exception as exc:
                f2 = classify(exc)
                if f2 is None:
                    raise
                failure, state = f2, "error"
                break
        text = "".join(parts)
        usage = {
            "prompt_tokens": int(usage.get("prompt_tokens") or job.prompt_estimate),
            "completion_tokens": int(usage.get("completion_tokens") or len(parts)),
        }
        self._first_write_done(rid)  # nothing was written (cancelled at once, failed): the bookkeeping now
        await run_db(
            service.finish_job,
            request_id=rid,
            state=state,
            content=text,
            finish_reason=None if failure else finish_reason,
            usage=usage,
            runtime=runtime,
            first_token_at=first_token_at,
            error_code=failure.code if failure else None,
            error_message=failure.message if failure else None,
            job=job,
        )
        total_ms = (time.monotonic() - started) * 1000
        notify.request_state(
            job.user_id, request_id=job.client_request_id, conversation_id=job.conversation_id, state=state
        )
        if job.conversation_id:
            notify.conversation(job.user_id, conversation_id=job.conversation_id, action="updated")
        if job.conversation_id:  # before the last frame: a client that sends on `done` must not meet `busy`
            await self.broker.lock_release(f"conv:{job.conversation_id}", rid)
        if failure is not None:
            self.stats.errors += 1
            data: dict[str, Any] = {"code": failure.code, "message": failure.message}
            if failure.retry_after:
                data["retry_after"] = failure.retry_after
            await self.broker.reply_append(rid, "error", data, create=False)
        else:
            if state == "cancelled":
                self.stats.cancelled += 1
            else:
                self.stats.replies += 1
            self.stats.tokens += usage["completion_tokens"]
            if ttft_ms is not None:
                self.stats.ttft_ms.append(ttft_ms)
            await self.broker.reply_append(
                rid,
                "done",
                create=False,
                data={
                    "message_id": job.assistant_message_id,
                    "finish_reason": finish_reason,
                    "usage": usage,
                    "context_trimmed": job.trimmed > 0,
                    "trimmed_messages": job.trimmed,
                    "model": job.model,
                    "timings": {
                        "queue_ms": round(queue_ms, 2),
                        "ttft_ms": None if ttft_ms is None else round(ttft_ms, 2),
                        "total_ms": round(queue_ms + total_ms, 2),
                    },
                },
            )

    async def _stream(
        self,
        rid: str,
        job: service.Job,
        provider: Any,
        params: dict[str, Any],
        parts: list[str],
        started: float,
        initial: list[tuple[str, str]],
    ) -> tuple[str, dict[str, int], Any, float | None, bool]:
        """Pump the provider into a buffer (so waits can time out without breaking the generator) and write
        delta frames of at most `coalesce_tokens` tokens, at least every `coalesce_ms`, the first token at
        once. Every token already available is taken before a write, and one `reply_extend` call writes all
        the frames that are ready (one Redis round trip per flush, which also answers "cancelled?").
        `initial` frames (status, reset) travel with the first write."""
        s = self.s
        kwargs = {
            k: params[k]
            for k in ("max_tokens", "temperature", "top_p", "stop", "seed")
            if params.get(k) is not None
        }
        items: deque[tuple[str, Any]] = deque()
        ready = asyncio.Event()
        pump = asyncio.create_task(_pump(provider.stream_chat(job.messages, **kwargs), items, ready))
        coalesce_s = s.coalesce_ms / 1000
        per_frame = s.coalesce_tokens
        out: list[tuple[str, str]] = initial[:]  # taken: the caller must not write them again
        initial.clear()
        buf: list[str] = []
        last_flush = last_item = last_persist = time.monotonic()
        persist: asyncio.Future[Any] | None = None
        first_token_at = None
        ttft_ms = None
        finish_reason = "stop"
        usage: dict[str, int] = {}
        cancelled = False
        first_timeout = max(s.chunk_timeout_s, 120.0)
        urgent = bool(out)  # the status frame goes out now unless a token is ready to travel with it

        def cut() -> None:
            nonlocal buf
            if buf:
                out.append(("delta", Frame.encode({"text": "".join(buf)})))
                buf = []

        try:
            await asyncio.sleep(0)  # let the provider start: a token ready now goes with the status frame
            ended = False
            while True:
                while items:
                    kind, item = items.popleft()
                    last_item = time.monotonic()
                    if kind == "error":
                        cut()
                        failure = classify(item)
                        if failure is None:
                            raise item
                        raise _Failed(failure, after_first_token=first_token_at is not None)
                    if kind == "end":
                        ended = True
                        break
                    delta = item.delta
                    if delta:
                        parts.append(delta)
                        buf.append(delta)
                        if len(buf) >= per_frame:
                            cut()
                        if first_token_at is None:
                            first_token_at = utcnow()
                            ttft_ms = (time.monotonic() - started) * 1000
                            urgent = True
                    if item.finish_reason:
                        finish_reason = str(item.finish_reason)
                        if item.usage is not None:
                            usage = {
                                "prompt_tokens": item.usage.prompt_tokens,
                                "completion_tokens": item.usage.completion_tokens,
                            }
                    if delta and ttft_ms is not None and len(parts) == 1:
                        break  # the first token goes out alone, at once; the rest in the next write
                if ended:
                    break
                now = time.monotonic()
                if buf and (urgent or now - last_flush >= coalesce_s):
                    cut()
                if out:
                    frames, out = out, []
                    urgent = False
                    last_flush = now
                    _, cancelled = await self.broker.reply_extend(rid, frames, create=False)
                    self._first_write_done(rid)
                    if cancelled:
                        break
                    if (
                        job.assistant_message_id
                        and now - last_persist >= s.persist_every_s
                        and (persist is None or persist.done())
                    ):
                        last_persist = now
                        persist = submit_db(
                            service.save_partial,
                            request_id=rid,
                            message_id=job.assistant_message_id,
                            content="".join(parts),
                            first_token_at=first_token_at,
                        )
                        self._background(persist)
                    continue
                # nothing to write: wait for the provider
                limit = s.chunk_timeout_s if first_token_at else first_timeout
                silent = now - last_item
                if buf:
                    wait = max(0.0, coalesce_s - (now - last_flush))
                else:
                    wait = min(limit - silent, CANCEL_POLL_S)
                if not items:
                    ready.clear()
                    try:
                        async with asyncio.timeout(max(wait, 0.0)):
                            await ready.wait()
                    except TimeoutError:
                        pass
                if items or buf:
                    continue
                if time.monotonic() - last_item >= limit:
                    raise _Failed(
                        Failure("provider_timeout", f"no token from the provider for {limit:g} s", False),
                        after_first_token=first_token_at is not None,
                    )
                if await self.broker.is_cancelled(rid):
                    cancelled = True
                    break
            cut()
            if out:
                frames, out = out, []
                await self.broker.reply_extend(rid, frames, create=False)
        except _Failed:
            # what was streamed stays consistent with what is stored: write the tokens taken so far
            cut()
            if out:
                with contextlib.suppress(Exception):
                    await self.broker.reply_extend(rid, out, create=False)
            raise
        finally:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
        return finish_reason, usage, first_token_at, ttft_ms, cancelled


async def _pump(stream: Any, items: deque[tuple[str, Any]], ready: asyncio.Event) -> None:
    try:
        async for chunk in stream:
            items.append(("chunk", chunk))
            ready.set()
        items.append(("end", None))
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        items.append(("error", exc))
    finally:
        ready.set()
        close = getattr(stream, "aclose", None)
        if close is not None:
            with contextlib.suppress(BaseException):
                await close()


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
