"""The async side every entry point shares (WebSocket, REST, SSE, /v1): submit, cancel, and tail a reply.

Send order, three steps on the critical path: the conversation lock and the rate limit (one broker round trip),
the rows (one chat-db transaction, which also catches a duplicate by the unique key and builds the worker's job
from what it wrote), then `status{queued}` and the enqueue (one broker round trip, one Lua call). Only
when the lock is taken does a duplicate check run first (a resend while the original runs). Frames carry the
client's request id; Redis keys use the server's, so one user's client id can never reach another user's reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from suite.chat import notify, service
from suite.chat.broker.base import Broker, BrokerUnavailable, Frame
from suite.chat.db import readonly, run_db
from suite.chat.llm import ModelNotFound, is_known_model
from suite.chat.models import FINISHED_STATES, ChatRequest, new_id
from suite.chat.settings import ChatSettings
from suite.chat.text import check_text
from suite.core.errors import Conflict, NotFound, RateLimited, TooLarge

TERMINAL = ("done", "error")
PREPARED_MAX = 512
JOB_IN_ENTRY_MAX = 16_384  # characters of context a queue entry carries; a longer job is read by the worker

# --- the hand-over to a worker ------------------------------------------------------------------------------
# `send` builds the job (the context the provider gets) in the transaction that creates the request, so no
# worker reads it again before the first token: a worker of this process (always with the in-process broker;
# `serve` with Redis and an embedded worker) takes it from here (the oldest are dropped past PREPARED_MAX), one
# of another process from the Redis entry, which carries it as JSON up to JOB_IN_ENTRY_MAX characters. Only a
# new entry's first delivery uses either; a redelivery reads SQL (the request may have finished meanwhile).
_local_workers = 0
_prepared: OrderedDict[str, service.Job] = OrderedDict()


def worker_started() -> None:
    global _local_workers
    _local_workers += 1


def worker_stopped() -> None:
    global _local_workers
    _local_workers = max(0, _local_workers - 1)
    if not _local_workers:
        _prepared.clear()


def offer_job(request_id: str, job: service.Job) -> None:
    _prepared[request_id] = job
    while len(_prepared) > PREPARED_MAX:
        _prepared.popitem(last=False)


def take_job(request_id: str) -> service.Job | None:
    return _prepared.pop(request_id, None)


@readonly
def _precheck(
    session: Any, *, user_id: int, client_request_id: str, fingerprint: str, conversation_id: str | None
) -> service.Submitted | None:
    dup = service.check_duplicate(
        session, user_id=user_id, client_request_id=client_request_id, fingerprint=fingerprint
    )
    if dup is None and conversation_id:
        service.get_conversation(session, user_id=user_id, conversation_id=conversation_id)
    return dup


@readonly
def _state_of(session: Any, *, request_id: str) -> str | None:
    req = session.get(ChatRequest, request_id)
    return req.state if req else None


class ChatRuntime:
    def __init__(self, broker: Broker, settings: ChatSettings) -> None:
        self.broker = broker
        self.s = settings

    # --- submit ---------------------------------------------------------------------------------------
    def _check_content(self, content: str) -> None:
        check_text(content)
        if len(content) > self.s.max_message_chars:
            raise TooLarge(f"message has {len(content)} characters; the limit is {self.s.max_message_chars}")

    def _check_model(self, model: str | None) -> None:
        if model and not is_known_model(model):
            raise ModelNotFound(f"model {model!r} not found")

    def _rate_limited(self, retry: float) -> RateLimited:
        return RateLimited(
            f"more than {self.s.messages_per_minute} messages a minute; retry in {retry:.0f} s",
            retry_after=retry,
        )

    async def _rate(self, user_id: int) -> None:
        retry = await self.broker.rate_hit(f"user:{user_id}", limit=self.s.messages_per_minute)
        if retry is not None:
            raise self._rate_limited(retry)

    async def _try_lock(self, conversation_id: str, request_id: str) -> bool:
        return bool(
            await self.broker.lock_acquire(f"conv:{conversation_id}", request_id, self.s.conv_lock_ms)
        )

    async def _lock(self, conversation_id: str, request_id: str) -> None:
        name = f"conv:{conversation_id}"
        if await self._try_lock(conversation_id, request_id):
            return
        holder = await self.broker.lock_holder(name)
        if holder:
            state = await run_db(_state_of, request_id=holder)
            if state in FINISHED_STATES:  # a stale lock (its holder ended without releasing it)
                await self.broker.lock_release(name, holder)
                if await self.broker.lock_acquire(name, request_id, self.s.conv_lock_ms):
                    return
        raise service.Busy("another reply is being generated in this conversation")

    async def send(
        self,
        *,
        user_id: int,
        client_request_id: str,
        content: str,
        conversation_id: str | None = None,
        parent_id: str | None = None,
        model: str | None = None,
        system_prompt: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> service.Submitted:
        self._check_content(content)
        fingerprint = service.send_fingerprint(
            kind="send", content=content, conversation_id=conversation_id, parent_id=parent_id
        )
        self._check_model(model)
        cap = min(max_tokens or self.s.max_tokens, self.s.max_tokens)
        service.check_budget(
            content=content, system_prompt=system_prompt or self.s.system_prompt, max_tokens=cap
        )
        # Fast path: lock, then one transaction that also catches a duplicate (unique key) and a foreign
        # conversation. The duplicate check runs first only when the lock is taken (a resend while it runs).
        conv_id = conversation_id or new_id()
        rid = new_id()
        locked, retry = await self.broker.lock_and_rate(
            f"conv:{conv_id}",
            rid,
            self.s.conv_lock_ms,
            rate_key=f"user:{user_id}",
            limit=self.s.messages_per_minute,
        )
        if locked and retry is not None:
            raise self._rate_limited(retry)
        if not locked:
            dup = await run_db(
                _precheck,
                user_id=user_id,
                client_request_id=client_request_id,
                fingerprint=fingerprint,
                conversation_id=conversation_id,
            )
            if dup is not None:
                return dup
            await self._lock(conv_id, rid)
        try:
            if not locked:
                await self._rate(user_id)
            # The job is built in the creating transaction: a worker of this process takes it from here, one
            # of another process from the queue entry; neither reads it again before the first token.
            carry = self.broker.shared
            sub: service.Submitted = await run_db(
                service.create_send,
                request_id=rid,
                user_id=user_id,
                client_request_id=client_request_id,
                fingerprint=fingerprint,
                conversation_id=conv_id,
                new_conversation=conversation_id is None,
                content=content,
                parent_id=parent_id,
                model=model,
                system_prompt=system_prompt,
                params={"max_tokens": cap, "temperature": temperature},
                with_job=bool(_local_workers) or carry,
            )
            job_text = None
            if sub.job is not None and not sub.duplicate:
                if _local_workers:
                    offer_job(rid, sub.job)
                if carry:
                    job_text = _job_text(sub.job)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.broker.lock_release(f"conv:{conv_id}", rid)
            raise
        if sub.duplicate:
            await self.broker.lock_release(f"conv:{conv_id}", rid)
            return sub
        await self._enqueue(sub, user_id=user_id, kind="send", job_text=job_text)
        if conversation_id is None:
            notify.conversation(
                user_id, conversation_id=conv_id, action="created", title=service.title_from(content)
            )
        else:
            notify.conversation(user_id, conversation_id=conv_id, action="updated")
        return sub

    async def regenerate(
        self,
        *,
        user_id: int,
        client_request_id: str,
        message_id: str,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> service.Submitted:
        check_text(message_id)
        fingerprint = service.send_fingerprint(
            kind="regenerate", content=None, conversation_id=None, parent_id=None, message_id=message_id
        )
        dup = await run_db(
            _precheck,
            user_id=user_id,
            client_request_id=client_request_id,
            fingerprint=fingerprint,
            conversation_id=None,
        )
        if dup is not None:
            return dup
        self._check_model(model)
        msg = await run_db(_message_conversation, user_id=user_id, message_id=message_id)
        await self._rate(user_id)
        rid = new_id()
        await self._lock(msg, rid)
        try:
            sub = await run_db(
                service.create_regenerate,
                request_id=rid,
                user_id=user_id,
                client_request_id=client_request_id,
                fingerprint=fingerprint,
                message_id=message_id,
                model=model,
                params={
                    "max_tokens": min(max_tokens or self.s.max_tokens, self.s.max_tokens),
                    "temperature": temperature,
                },
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self.broker.lock_release(f"conv:{msg}", rid)
            raise
        if sub.duplicate:
            await self.broker.lock_release(f"conv:{msg}", rid)
            return sub
        await self._enqueue(sub, user_id=user_id, kind="regenerate")
        notify.conversation(user_id, conversation_id=msg, action="updated")
        return sub

    async def submit_api(
        self,
        *,
        user_id: int,
        api_token_id: int | None,
        model: str,
        messages: list[dict[str, str]],
        params: dict[str, Any],
    ) -> service.Submitted:
        rid = new_id()
        sub = await run_db(
            service.create_api_request,
            request_id=rid,
            user_id=user_id,
            api_token_id=api_token_id,
            model=model,
            messages=messages,
            params=params,
        )
        await self._enqueue(sub, user_id=user_id, kind="api")
        if sub.conversation_id:
            notify.conversation(user_id, conversation_id=sub.conversation_id, action="created")
        return sub

    async def _enqueue(
        self, sub: service.Submitted, *, user_id: int, kind: str, job_text: str | None = None
    ) -> None:
        try:
            position = None
            pending = getattr(self.broker, "_queue", None)
            if pending is not None:
                position = len(pending) + 1
            fields = {
                "user_id": str(user_id),
                "conversation_id": sub.conversation_id or "",
                "model": sub.model,
                "enqueued_at": str(time.time()),
            }
            if job_text is not None:
                fields["job"] = job_text
            await self.broker.submit(sub.request_id, fields, status={"state": "queued", "position": position})
            notify.request_state(
                user_id,
                request_id=sub.client_request_id,
                conversation_id=sub.conversation_id,
                state="queued",
                kind=kind,
            )
        except BrokerUnavailable as exc:
            await run_db(
                service.fail_request,
                request_id=sub.request_id,
                state="error",
                code="broker_unavailable",
                message=exc.message,
            )
            notify.request_state(
                user_id, request_id=sub.client_request_id, conversation_id=sub.conversation_id, state="error"
            )
            if sub.conversation_id:
                with contextlib.suppress(Exception):
                    await self.broker.lock_release(f"conv:{sub.conversation_id}", sub.request_id)
            raise

    # --- control --------------------------------------------------------------------------------------
    async def find(self, *, user_id: int, client_request_id: str) -> dict[str, Any]:
        return await run_db(_request_row, user_id=user_id, client_request_id=client_request_id)

    async def cancel(self, *, user_id: int, client_request_id: str) -> dict[str, Any]:
        row = await self.find(user_id=user_id, client_request_id=client_request_id)
        if row["state"] in FINISHED_STATES:
            raise Conflict(f"request {client_request_id} already finished ({row['state']})")
        await self.broker.cancel(row["id"])
        return row

    # --- tail -----------------------------------------------------------------------------------------
    async def frames(
        self, *, request_id: str, client_request_id: str, after_seq: int = 0
    ) -> AsyncIterator[dict[str, Any]]:
        """The reply's frames as dicts (see `reply_frames`)."""
        async for frame in self.reply_frames(request_id=request_id, after_seq=after_seq):
            yield frame.to_message(client_request_id)

    async def wire_frames(
        self, *, request_id: str, client_request_id: str, after_seq: int = 0
    ) -> AsyncIterator[tuple[Frame, str]]:
        """The reply's frames with their JSON text as a client gets it, encoded once by the writer."""
        rid_json = json.dumps(client_request_id, ensure_ascii=False)
        async for frame in self.reply_frames(request_id=request_id, after_seq=after_seq):
            yield frame, frame.wire(rid_json)

    async def reply_frames(self, *, request_id: str, after_seq: int = 0) -> AsyncIterator[Frame]:
        """The reply's frames after `after_seq`, then the live tail until `done` or `error`.

        Past an expired or trimmed buffer: `reset`, the stored text as one `delta`, and `done` from SQL.
        A stream that vanished (Redis lost it) with the request unfinished: `error{broker_unavailable}` after
        `reply_timeout_s`."""
        seq = after_seq
        read = await self.broker.reply_read(request_id, seq)
        if not read.exists or read.gap:
            stored = await run_db(service.done_frame, request_id=request_id)
            if stored is not None:
                text = stored.pop("text", "")
                kind = stored.pop("type")
                base = max(seq, read.frames[-1].seq if read.frames else 0)
                yield Frame(base + 1, "reset", {"attempt": 0})
                if text:
                    yield Frame(base + 2, "delta", {"text": text})
                yield Frame(base + 3, kind, stored)
                return
        idle_since = time.monotonic()
        block_ms = int(min(5000, max(50, self.s.reply_timeout_s * 1000 / 4)))
        while True:
            for frame in read.frames:
                seq = frame.seq
                yield frame
                if frame.type in TERMINAL:
                    return
            if read.frames:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= self.s.reply_timeout_s:
                last = await self.broker.reply_last_seq(request_id)
                if last is None or last < seq:
                    state = await run_db(_state_of, request_id=request_id)
                    if state is not None and state not in FINISHED_STATES:
                        req = await run_db(
                            service.fail_request,
                            request_id=request_id,
                            state="error",
                            code="broker_unavailable",
                            message="the reply stream was lost (the broker restarted?)",
                        )
                        if req is not None:
                            notify.request_state(
                                req.user_id,
                                request_id=req.client_request_id,
                                conversation_id=req.conversation_id,
                                state=req.state,
                            )
                    stored = await run_db(service.done_frame, request_id=request_id)
                    if stored is not None and stored.get("type") == "done":
                        stored.pop("text", None)
                        stored.pop("type")
                        yield Frame(seq + 1, "done", stored)
                        return
                    yield Frame(
                        seq + 1,
                        "error",
                        {
                            "code": "broker_unavailable",
                            "message": "the reply stream was lost; the request can be sent again",
                        },
                    )
                    return
                idle_since = time.monotonic()
            try:
                read = await self.broker.reply_read(request_id, seq, block_ms=block_ms)
            except BrokerUnavailable:
                read = type(read)([], exists=True, last_seq=seq)
                await asyncio.sleep(0.2)


def _job_text(job: service.Job) -> str | None:
    """The job as a queue entry carries it (None when too long: the worker reads it)."""
    text = service.encode_job(job)
    return text if len(text) <= JOB_IN_ENTRY_MAX else None


@readonly
def _message_conversation(session: Any, *, user_id: int, message_id: str) -> str:
    return service.get_message(session, user_id=user_id, message_id=message_id).conversation_id


@readonly
def _request_row(session: Any, *, user_id: int, client_request_id: str) -> dict[str, Any]:
    req = service.get_request(session, user_id=user_id, client_request_id=client_request_id)
    return request_dict(req)


def request_dict(req: ChatRequest) -> dict[str, Any]:
    return {
        "id": req.id,
        "request_id": req.client_request_id,
        "conversation_id": req.conversation_id,
        "kind": req.kind,
        "state": req.state,
        "attempts": req.attempt,
        "deliveries": req.deliveries,
        "model": req.model,
        "user_message_id": req.user_message_id,
        "message_id": req.assistant_message_id,
        "error_code": req.error_code,
        "error_message": req.error_message,
        "usage": {"prompt_tokens": req.tokens_in, "completion_tokens": req.tokens_out},
        "timings": service.request_timings(req),
        "enqueued_at": req.enqueued_at,
        "finished_at": req.finished_at,
    }


__all__ = ["ChatRuntime", "NotFound"]
