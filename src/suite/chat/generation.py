"""Generating one reply: the provider streamed into the per-reply stream with coalesced delta frames, retries
before the first token, cancel, stalls and partial text kept in SQL. A mixin of `ChatWorker` (worker.py), which
owns the loops (claim, heartbeat, janitor) and the bookkeeping these methods use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from suite.chat import notify, service
from suite.chat.broker.base import Broker, Entry, Frame
from suite.chat.db import run_db, submit_db
from suite.chat.llm import Failure, classify, get_provider, runtime_of
from suite.chat.settings import ChatSettings
from suite.core.db import utcnow

if TYPE_CHECKING:
    from suite.chat.worker import WorkerStats

log = logging.getLogger("suite.chat.worker")
CANCEL_POLL_S = 0.5  # while the provider is silent, a cancel is noticed within this long


class _Failed(Exception):
    def __init__(self, failure: Failure, *, after_first_token: bool) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.after_first_token = after_first_token


class Generation:
    """The reply-generating half of `ChatWorker`."""

    broker: Broker
    s: ChatSettings
    name: str
    stats: WorkerStats
    runtime: str | None
    _hooks: dict[str, list[Any]]

    def _slot(self, model: str) -> Any:  # pragma: no cover - defined by ChatWorker
        raise NotImplementedError

    def _first_write_done(self, rid: str) -> None:  # pragma: no cover - defined by ChatWorker
        raise NotImplementedError

    def _background(self, future: asyncio.Future[Any]) -> None:  # pragma: no cover - defined by ChatWorker
        raise NotImplementedError

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

        self._hooks.setdefault(rid, []).append(bookkeeping)
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
        token_written = False

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
                    if first_token_at is not None and not token_written:
                        token_written = True
                        if not self.broker.shared:
                            # In-process readers of the first token go before the rest is taken: one turn of
                            # the loop for the tail to take the frame, one for the socket's sender to write it.
                            await asyncio.sleep(0)
                            await asyncio.sleep(0)
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
