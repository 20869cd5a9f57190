"""The worker side: load a request as a `Job`, trim its context, save partial text, finish it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from suite.chat.db import readonly
from suite.chat.models import FINISHED_STATES, ChatRequest, Message
from suite.chat.service.common import (
    _CONV,
    _FINISH_MSG,
    _FINISH_REQ,
    _FIRST_TOKEN,
    _MARK_STARTED,
    _REQ,
    _RESET_REPLY,
    _SAVE_PARTIAL,
    _TOUCH_CONV,
    settings,
)
from suite.chat.service.conversations import branch_turns
from suite.chat.text import message_tokens
from suite.core.db import utcnow

# --- worker side ---------------------------------------------------------------------------------------------


@dataclass
class Job:
    request_id: str
    kind: str
    state: str
    user_id: int
    conversation_id: str | None
    assistant_message_id: str | None
    model: str
    params: dict[str, Any]
    messages: list[dict[str, str]]
    trimmed: int
    prompt_estimate: int
    enqueued_at: datetime
    client_request_id: str = ""


def encode_job(job: Job) -> str:
    """The job as JSON for a queue entry (its first delivery starts without reading SQL)."""
    data = asdict(job)
    data["enqueued_at"] = job.enqueued_at.isoformat()
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def decode_job(text: str) -> Job:
    data = json.loads(text)
    data["enqueued_at"] = datetime.fromisoformat(data["enqueued_at"])
    return Job(**data)


def context_of(system_prompt: str | None, turns: Iterable[Any]) -> list[dict[str, str]]:
    """The provider's messages: the system prompt (the conversation's, else the configured one), then the
    branch's turns (rows with role, content, status) minus empty failed replies."""
    system = system_prompt or settings().system_prompt
    out = [{"role": "system", "content": system}] if system else []
    out += [
        {"role": m.role, "content": m.content}
        for m in turns
        if m.role in ("user", "assistant", "system")
        and not (m.role == "assistant" and m.status in ("error",) and not m.content)
    ]
    return out


def make_job(
    *,
    request_id: str,
    kind: str,
    state: str,
    user_id: int,
    conversation_id: str | None,
    assistant_message_id: str | None,
    model: str,
    params: dict[str, Any] | None,
    context: list[dict[str, str]],
    enqueued_at: datetime,
    client_request_id: str,
) -> Job:
    """A job from a request's fields and its untrimmed context: max_tokens capped, context trimmed to fit."""
    chat = settings()
    params = dict(params or {})
    max_tokens = min(int(params.get("max_tokens") or chat.max_tokens), chat.max_tokens)
    messages, trimmed = trim_context(context, budget=chat.context_tokens - max_tokens)
    return Job(
        request_id=request_id,
        kind=kind,
        state=state,
        user_id=user_id,
        conversation_id=conversation_id,
        assistant_message_id=assistant_message_id,
        model=model,
        params={**params, "max_tokens": max_tokens},
        messages=messages,
        trimmed=trimmed,
        prompt_estimate=sum(message_tokens(m) for m in messages),
        enqueued_at=enqueued_at,
        client_request_id=client_request_id,
    )


@lru_cache(maxsize=1)
def _job_query() -> Any:
    """The request's columns a job needs and its conversation's system prompt, one row (Core, no ORM objects:
    this read is on the first token's path)."""
    return (
        select(
            _REQ.c.id,
            _REQ.c.kind,
            _REQ.c.state,
            _REQ.c.user_id,
            _REQ.c.conversation_id,
            _REQ.c.assistant_message_id,
            _REQ.c.user_message_id,
            _REQ.c.model,
            _REQ.c.params,
            _REQ.c.enqueued_at,
            _REQ.c.client_request_id,
            _CONV.c.system_prompt,
        )
        .select_from(_REQ.outerjoin(_CONV, _CONV.c.id == _REQ.c.conversation_id))
        .where(_REQ.c.id == bindparam("rid"))
    )


def trim_context(messages: list[dict[str, str]], *, budget: int) -> tuple[list[dict[str, str]], int]:
    """System messages plus the newest turns that fit `budget` tokens; returns (kept, dropped count)."""
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    used = sum(message_tokens(m) for m in system)
    kept: list[dict[str, str]] = []
    for m in reversed(rest):
        cost = message_tokens(m)
        if used + cost > budget and kept:
            break
        used += cost
        kept.append(m)
    kept.reverse()
    return system + kept, len(rest) - len(kept)


@readonly
def load_job(session: Session, *, request_id: str) -> Job | None:
    """The request and its context (trimmed to the budget), read only. None when it is gone."""
    req = session.execute(_job_query(), {"rid": request_id}).first()
    if req is None:
        return None
    if req.kind == "api" and "messages" in (req.params or {}):
        context = [dict(m) for m in req.params["messages"]]
    else:
        context = context_of(req.system_prompt, branch_turns(session, leaf_id=req.user_message_id))
    return make_job(
        request_id=req.id,
        kind=req.kind,
        state=req.state,
        user_id=req.user_id,
        conversation_id=req.conversation_id,
        assistant_message_id=req.assistant_message_id,
        model=req.model,
        params=req.params,
        context=context,
        enqueued_at=req.enqueued_at,
        client_request_id=req.client_request_id,
    )


def mark_started(
    session: Session, *, request_id: str, worker: str, attempt: int, started_at: datetime | None = None
) -> None:
    """The worker's start bookkeeping (state `generating`, delivery count, an emptied reply for a new attempt).

    The worker queues it without waiting (it is off the first-token path); the chat-db thread runs it before
    the partial and final writes queued after it. A finished request is left alone."""
    session.execute(
        _MARK_STARTED,
        {"rid": request_id, "attempt": attempt, "worker": worker, "now": started_at or utcnow()},
    )
    if attempt > 1:
        session.execute(_RESET_REPLY, {"rid": request_id, "attempt": attempt})


def start_job(session: Session, *, request_id: str, worker: str, attempt: int) -> Job | None:
    """`load_job` then `mark_started` in one transaction (kept for callers that want both at once)."""
    job = load_job(session, request_id=request_id)
    if job is not None and job.state not in FINISHED_STATES:
        mark_started(session, request_id=request_id, worker=worker, attempt=attempt)
        session.expire_all()
        job.state = "generating"
    return job


def save_partial(
    session: Session,
    *,
    request_id: str,
    message_id: str | None,
    content: str,
    first_token_at: datetime | None,
) -> None:
    if message_id:
        session.execute(_SAVE_PARTIAL, {"mid": message_id, "content": content})
    if first_token_at is not None:
        session.execute(_FIRST_TOKEN, {"rid": request_id, "at": first_token_at})


def finish_job(
    session: Session,
    *,
    request_id: str,
    state: str,
    content: str,
    finish_reason: str | None,
    usage: dict[str, int],
    runtime: str | None = None,
    first_token_at: datetime | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    job: Job | None = None,
) -> None:
    """The final assistant row (overwritten, never inserted twice) and the request's end state.

    Three UPDATEs by primary key; `job` (the worker's) saves reading the request first."""
    if job is None:
        job = load_job(session, request_id=request_id)
        if job is None:
            return
    now = utcnow()
    tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
    common = {"now": now, "tokens_in": tokens_in, "tokens_out": tokens_out, "error_code": error_code}
    if job.kind == "api" and not settings().store_api_requests:
        params = {k: v for k, v in job.params.items() if k != "messages"}
        session.execute(update(_REQ).where(_REQ.c.id == request_id).values(params=params))
    session.execute(
        _FINISH_REQ,
        {
            **common,
            "rid": request_id,
            "state": state,
            "first_token_at": first_token_at,
            "error_message": error_message or None,
        },
    )
    if job.assistant_message_id:
        session.execute(
            _FINISH_MSG,
            {
                **common,
                "mid": job.assistant_message_id,
                "content": content,
                "status": {"done": "complete", "cancelled": "cancelled"}.get(state, "error"),
                "finish_reason": finish_reason,
                "runtime": runtime,
            },
        )
    if job.conversation_id:
        session.execute(_TOUCH_CONV, {"cid": job.conversation_id, "now": now})


@readonly
def done_frame(session: Session, *, request_id: str) -> dict[str, Any] | None:
    """The terminal frame of a finished request, rebuilt from SQL (resume past an expired buffer)."""
    req = session.get(ChatRequest, request_id)
    if req is None or req.state not in FINISHED_STATES:
        return None
    msg = session.get(Message, req.assistant_message_id) if req.assistant_message_id else None
    if req.state in ("done", "cancelled"):
        return {
            "type": "done",
            "message_id": req.assistant_message_id,
            "finish_reason": (msg.finish_reason if msg else None)
            or ("cancelled" if req.state == "cancelled" else "stop"),
            "usage": {"prompt_tokens": req.tokens_in or 0, "completion_tokens": req.tokens_out or 0},
            "context_trimmed": False,
            "trimmed_messages": 0,
            "timings": request_timings(req),
            "text": msg.content if msg else "",
        }
    return {
        "type": "error",
        "code": req.error_code or "provider_error",
        "message": req.error_message or req.state,
        "text": msg.content if msg else "",
    }


def request_timings(req: ChatRequest) -> dict[str, float | None]:
    def ms(a: datetime | None, b: datetime | None) -> float | None:
        return round((b - a).total_seconds() * 1000, 1) if a and b else None

    return {
        "queue_ms": ms(req.enqueued_at, req.started_at),
        "ttft_ms": ms(req.started_at, req.first_token_at),
        "total_ms": ms(req.enqueued_at, req.finished_at),
    }
