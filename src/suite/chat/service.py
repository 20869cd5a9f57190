"""Conversations, messages and requests in SQL: functions that take the session and keyword-only arguments.

Every lookup is scoped to the user: another user's conversation, message or request is NotFound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, case, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from suite.chat.db import atomic, readonly
from suite.chat.models import FINISHED_STATES, ChatRequest, Conversation, Message, new_id
from suite.chat.text import message_tokens, sha256_of, title_from

__all__ = ["sha256_of", "title_from"]
from suite.core.db import utcnow
from suite.core.errors import Conflict, NotFound, TooLarge, ValidationFailed


def settings():  # type: ignore[no-untyped-def]
    from suite.core.config import get_settings

    return get_settings().chat


# Tables for Core statements on the hot paths (the ORM unit of work costs ~0.3 ms a flush).
_CONV = Conversation.__table__
_REQ = ChatRequest.__table__
_MSG = Message.__table__
_INSERT_CONV = insert(_CONV)
_INSERT_REQ = insert(_REQ)
_INSERT_MSG = insert(_MSG)
_SET_LEAF = (
    update(_CONV)
    .where(_CONV.c.id == bindparam("cid"))
    .values(active_leaf_id=bindparam("leaf"), updated_at=bindparam("now"))
)
_FINISH_REQ = (
    update(_REQ)
    .where(_REQ.c.id == bindparam("rid"))
    .values(
        state=bindparam("state"),
        finished_at=bindparam("now"),
        first_token_at=func.coalesce(_REQ.c.first_token_at, bindparam("first_token_at")),
        tokens_in=bindparam("tokens_in"),
        tokens_out=bindparam("tokens_out"),
        error_code=bindparam("error_code"),
        error_message=bindparam("error_message"),
    )
)
_FINISH_MSG = (
    update(_MSG)
    .where(_MSG.c.id == bindparam("mid"))
    .values(
        content=bindparam("content"),
        status=bindparam("status"),
        finish_reason=bindparam("finish_reason"),
        tokens_in=bindparam("tokens_in"),
        tokens_out=bindparam("tokens_out"),
        runtime=bindparam("runtime"),
        error_code=bindparam("error_code"),
        completed_at=bindparam("now"),
    )
)
_TOUCH_CONV = update(_CONV).where(_CONV.c.id == bindparam("cid")).values(updated_at=bindparam("now"))
_SAVE_PARTIAL = (
    update(_MSG)
    .where(_MSG.c.id == bindparam("mid"), _MSG.c.status == "streaming")
    .values(content=bindparam("content"))
)
_FIRST_TOKEN = (
    update(_REQ)
    .where(_REQ.c.id == bindparam("rid"), _REQ.c.first_token_at.is_(None))
    .values(first_token_at=bindparam("at"))
)
_MARK_STARTED = (
    update(_REQ)
    .where(_REQ.c.id == bindparam("rid"), _REQ.c.state.in_(("queued", "generating")))
    .values(
        state="generating",
        deliveries=case(
            (_REQ.c.deliveries > bindparam("attempt"), _REQ.c.deliveries), else_=bindparam("attempt")
        ),
        attempt=bindparam("attempt"),
        worker=bindparam("worker"),
        started_at=func.coalesce(_REQ.c.started_at, bindparam("now")),
    )
)
_RESET_REPLY = (
    update(_MSG)
    .where(_MSG.c.request_id == bindparam("rid"), _MSG.c.role == "assistant", _MSG.c.status == "streaming")
    .values(attempt=bindparam("attempt"), content="")
)
MAX_DEPTH = 100_000  # a cycle guard for the branch walk (parent ids never form one; belt and braces)


class Busy(Conflict):
    code = "busy"


# --- conversations ---------------------------------------------------------------------------------------


def create_conversation(
    session: Session,
    *,
    user_id: int,
    title: str | None = None,
    system_prompt: str | None = None,
    model: str | None = None,
    conversation_id: str | None = None,
) -> Conversation:
    conv = Conversation(
        id=conversation_id or new_id(),
        user_id=user_id,
        title=(title or "New chat")[:200],
        system_prompt=system_prompt,
        model=model,
    )
    session.add(conv)
    session.flush()
    return conv


def get_conversation(session: Session, *, user_id: int, conversation_id: str) -> Conversation:
    conv = session.get(Conversation, conversation_id)
    if conv is None or conv.user_id != user_id:
        raise NotFound(f"conversation {conversation_id} not found")
    return conv


def list_conversations(
    session: Session, *, user_id: int, limit: int = 50, cursor: str | None = None
) -> tuple[list[Conversation], str | None]:
    """Newest first by updated_at; `cursor` is the last row's `updated_at|id`."""
    query = select(Conversation).where(Conversation.user_id == user_id)
    if cursor:
        stamp, _, last_id = cursor.partition("|")
        try:
            when = datetime.fromisoformat(stamp)
        except ValueError:
            raise ValidationFailed("invalid cursor")
        query = query.where(
            (Conversation.updated_at < when)
            | ((Conversation.updated_at == when) & (Conversation.id < last_id))
        )
    rows = list(
        session.scalars(
            query.order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit + 1)
        )
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = f"{rows[-1].updated_at.isoformat()}|{rows[-1].id}"
    return rows, next_cursor


def update_conversation(
    session: Session, *, user_id: int, conversation_id: str, **changes: Any
) -> Conversation:
    conv = get_conversation(session, user_id=user_id, conversation_id=conversation_id)
    if "active_leaf_id" in changes and changes["active_leaf_id"] is not None:
        leaf = session.get(Message, changes["active_leaf_id"])
        if leaf is None or leaf.conversation_id != conv.id:
            raise NotFound(f"message {changes['active_leaf_id']} not found in this conversation")
    for key in ("title", "system_prompt", "model", "active_leaf_id"):
        if key in changes:
            setattr(conv, key, changes[key])
    conv.updated_at = utcnow()
    session.flush()
    return conv


def running_request(session: Session, *, conversation_id: str) -> ChatRequest | None:
    return session.scalar(
        select(ChatRequest)
        .where(
            ChatRequest.conversation_id == conversation_id, ChatRequest.state.in_(("queued", "generating"))
        )
        .limit(1)
    )


def delete_conversation(session: Session, *, user_id: int, conversation_id: str) -> None:
    conv = get_conversation(session, user_id=user_id, conversation_id=conversation_id)
    if running_request(session, conversation_id=conv.id) is not None:
        raise Busy("a reply is being generated in this conversation; cancel it first")
    conv.active_leaf_id = None
    session.flush()
    session.delete(conv)
    session.flush()


# --- messages ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _branch_query() -> Any:
    """Built once (building a recursive CTE costs more than running it): the messages from the root to the
    leaf bound as `leaf_id`, root first."""
    path = (
        select(Message.id.label("id"), Message.parent_id.label("parent_id"), literal(0).label("depth"))
        .where(Message.id == bindparam("leaf_id"))
        .cte("branch", recursive=True)
    )
    path = path.union_all(
        select(Message.id, Message.parent_id, (path.c.depth + 1).label("depth"))
        .join(path, Message.id == path.c.parent_id)
        .where(path.c.depth < MAX_DEPTH)
    )
    return select(Message).join(path, Message.id == path.c.id).order_by(path.c.depth.desc())


def branch_of(session: Session, *, leaf_id: str | None) -> list[Message]:
    """The path from the root to `leaf_id`: one recursive query, however deep the conversation."""
    if not leaf_id:
        return []
    return list(session.scalars(_branch_query(), {"leaf_id": leaf_id}))


def list_messages(
    session: Session,
    *,
    user_id: int,
    conversation_id: str,
    branch: str = "active",
    before: str | None = None,
    limit: int = 100,
) -> list[Message]:
    conv = get_conversation(session, user_id=user_id, conversation_id=conversation_id)
    if branch == "all":
        rows = list(
            session.scalars(
                select(Message)
                .where(Message.conversation_id == conv.id)
                .order_by(Message.created_at, Message.id)
            )
        )
    else:
        rows = branch_of(session, leaf_id=conv.active_leaf_id)
    if before:
        ids = [m.id for m in rows]
        if before not in ids:
            raise NotFound(f"message {before} not found")
        rows = rows[: ids.index(before)]
    return rows[-limit:]


def get_message(session: Session, *, user_id: int, message_id: str) -> Message:
    msg = session.get(Message, message_id)
    if msg is None:
        raise NotFound(f"message {message_id} not found")
    get_conversation(session, user_id=user_id, conversation_id=msg.conversation_id)
    return msg


# --- requests ------------------------------------------------------------------------------------------------


@dataclass
class Submitted:
    request_id: str  # server id (Redis keys)
    client_request_id: str
    conversation_id: str | None
    user_message_id: str | None
    message_id: str | None
    model: str
    duplicate: bool
    state: str

    def ack(self) -> dict[str, Any]:
        return {
            "request_id": self.client_request_id,
            "conversation_id": self.conversation_id,
            "user_message_id": self.user_message_id,
            "message_id": self.message_id,
            "duplicate": self.duplicate,
        }


def _submitted(req: ChatRequest, duplicate: bool) -> Submitted:
    return Submitted(
        request_id=req.id,
        client_request_id=req.client_request_id,
        conversation_id=req.conversation_id,
        user_message_id=req.user_message_id,
        message_id=req.assistant_message_id,
        model=req.model,
        duplicate=duplicate,
        state=req.state,
    )


@readonly
def find_request(session: Session, *, user_id: int, client_request_id: str) -> ChatRequest | None:
    return session.scalar(
        select(ChatRequest).where(
            ChatRequest.user_id == user_id, ChatRequest.client_request_id == client_request_id
        )
    )


def get_request(session: Session, *, user_id: int, client_request_id: str) -> ChatRequest:
    req = find_request(session, user_id=user_id, client_request_id=client_request_id)
    if req is None:
        raise NotFound(f"request {client_request_id} not found")
    return req


def check_duplicate(
    session: Session, *, user_id: int, client_request_id: str, fingerprint: str
) -> Submitted | None:
    """The earlier request with this client id (same content), Conflict for different content, or None."""
    req = find_request(session, user_id=user_id, client_request_id=client_request_id)
    if req is None:
        return None
    if req.content_sha256 != fingerprint:
        raise Conflict(f"request_id {client_request_id} was already used for a different message")
    return _submitted(req, duplicate=True)


def send_fingerprint(
    *,
    kind: str,
    content: str | None,
    conversation_id: str | None,
    parent_id: str | None,
    message_id: str | None = None,
) -> str:
    return sha256_of(
        {
            "kind": kind,
            "content": content,
            "conversation_id": conversation_id,
            "parent_id": parent_id,
            "message_id": message_id,
        }
    )


def check_budget(*, content: str, system_prompt: str | None, max_tokens: int) -> None:
    chat = settings()
    budget = chat.context_tokens - max_tokens
    need = message_tokens({"content": content}) + (
        message_tokens({"content": system_prompt}) if system_prompt else 0
    )
    if need > budget:
        raise TooLarge(
            f"the message needs about {need} tokens; the context holds {budget} "
            f"({chat.context_tokens} minus {max_tokens} for the reply)"
        )


@atomic
def create_send(
    session: Session,
    *,
    request_id: str,
    user_id: int,
    client_request_id: str,
    fingerprint: str,
    conversation_id: str,
    new_conversation: bool,
    content: str,
    parent_id: str | None = None,
    model: str | None = None,
    system_prompt: str | None = None,
    params: dict[str, Any] | None = None,
) -> Submitted:
    """A user message, its (empty, streaming) assistant reply and the request, in one transaction.

    Idempotent on (user, client_request_id), by the unique key alone (no lookup first: a new request is the
    common case): a resend, or a concurrent twin, fails the insert and gets the earlier request back, or
    Conflict when its content differs. Ids are made here, so the rows go out in one flush."""
    chat = settings()
    now = utcnow()
    try:
        with session.begin_nested():
            if new_conversation:
                # Core statements, not the unit of work: this transaction is on every reply's critical path.
                conv_model, active_leaf = model, None
                session.execute(
                    _INSERT_CONV,
                    {
                        "id": conversation_id,
                        "user_id": user_id,
                        "title": title_from(content)[:200],
                        "system_prompt": system_prompt,
                        "model": model,
                        "active_leaf_id": None,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
            else:
                conv = get_conversation(session, user_id=user_id, conversation_id=conversation_id)
                conv_model, active_leaf = conv.model, conv.active_leaf_id
            if parent_id is None:
                parent_id = active_leaf
            elif parent_id:
                parent = session.get(Message, parent_id)
                if parent is None or parent.conversation_id != conversation_id:
                    raise NotFound(f"message {parent_id} not found in this conversation")
            else:
                parent_id = None  # "" = a new root
            use_model = model or conv_model or chat.default_model
            user_message_id, reply_id = new_id(), new_id()
            session.execute(
                _INSERT_REQ,
                {
                    "id": request_id,
                    "user_id": user_id,
                    "client_request_id": client_request_id,
                    "conversation_id": conversation_id,
                    "kind": "send",
                    "model": use_model,
                    "params": params or {},
                    "content_sha256": fingerprint,
                    "user_message_id": user_message_id,
                    "assistant_message_id": reply_id,
                    "state": "queued",
                    "deliveries": 0,
                    "attempt": 0,
                    "enqueued_at": now,
                },
            )
            common = {"conversation_id": conversation_id, "request_id": request_id}
            session.execute(
                _INSERT_MSG,
                [
                    {
                        **common,
                        "id": user_message_id,
                        "parent_id": parent_id,
                        "role": "user",
                        "content": content,
                        "status": "complete",
                        "model": None,
                        "attempt": 1,
                        "created_at": now,
                    },
                    {
                        **common,
                        "id": reply_id,
                        "parent_id": user_message_id,
                        "role": "assistant",
                        "content": "",
                        "status": "streaming",
                        "model": use_model,
                        "attempt": 1,
                        "created_at": now + timedelta(microseconds=1),  # after its question in time order
                    },
                ],
            )
            session.execute(_SET_LEAF, {"cid": conversation_id, "leaf": reply_id, "now": now})
            if not new_conversation:
                session.expire(conv, ["active_leaf_id", "updated_at"])
    except IntegrityError:
        dup = check_duplicate(
            session, user_id=user_id, client_request_id=client_request_id, fingerprint=fingerprint
        )
        if dup is None:
            raise
        return dup
    return Submitted(
        request_id=request_id,
        client_request_id=client_request_id,
        conversation_id=conversation_id,
        user_message_id=user_message_id,
        message_id=reply_id,
        model=use_model,
        duplicate=False,
        state="queued",
    )


def create_regenerate(
    session: Session,
    *,
    request_id: str,
    user_id: int,
    client_request_id: str,
    fingerprint: str,
    message_id: str,
    model: str | None = None,
    params: dict[str, Any] | None = None,
) -> Submitted:
    """A new assistant sibling under the user message that `message_id` answers (or is)."""
    chat = settings()
    target = get_message(session, user_id=user_id, message_id=message_id)
    user_msg = session.get(Message, target.parent_id) if target.role == "assistant" else target
    if user_msg is None or user_msg.role != "user":
        raise ValidationFailed("only a reply (or the message it answers) can be regenerated")
    conv = get_conversation(session, user_id=user_id, conversation_id=target.conversation_id)
    use_model = model or conv.model or chat.default_model
    try:
        with session.begin_nested():
            req = ChatRequest(
                id=request_id,
                user_id=user_id,
                client_request_id=client_request_id,
                conversation_id=conv.id,
                kind="regenerate",
                model=use_model,
                params=params or {},
                content_sha256=fingerprint,
                user_message_id=user_msg.id,
            )
            session.add(req)
            session.flush()
            reply = Message(
                conversation_id=conv.id,
                parent_id=user_msg.id,
                role="assistant",
                content="",
                status="streaming",
                request_id=req.id,
                model=use_model,
            )
            session.add(reply)
            session.flush()
            req.assistant_message_id = reply.id
            conv.active_leaf_id = reply.id
            conv.updated_at = utcnow()
            session.flush()
    except IntegrityError:
        dup = check_duplicate(
            session, user_id=user_id, client_request_id=client_request_id, fingerprint=fingerprint
        )
        if dup is None:
            raise
        return dup
    return _submitted(req, duplicate=False)


def create_api_request(
    session: Session,
    *,
    request_id: str,
    user_id: int,
    api_token_id: int | None,
    model: str,
    messages: list[dict[str, str]],
    params: dict[str, Any],
) -> Submitted:
    """A `/v1` request: not a conversation unless chat.store_api_requests."""
    chat = settings()
    conv_id = None
    user_msg_id = reply_id = None
    if chat.store_api_requests:
        conv = create_conversation(
            session, user_id=user_id, title=title_from(messages[-1]["content"]), model=model
        )
        conv_id = conv.id
    req = ChatRequest(
        id=request_id,
        user_id=user_id,
        client_request_id=f"api-{request_id}",
        conversation_id=conv_id,
        kind="api",
        model=model,
        api_token_id=api_token_id,
        params={**params, "messages": messages},
        content_sha256=sha256_of(messages),
    )
    session.add(req)
    session.flush()
    if conv_id:
        parent = None
        for m in messages:
            msg = Message(conversation_id=conv_id, parent_id=parent, role=m["role"], content=m["content"])
            session.add(msg)
            session.flush()
            parent = msg.id
        reply = Message(
            conversation_id=conv_id,
            parent_id=parent,
            role="assistant",
            status="streaming",
            request_id=req.id,
            model=model,
        )
        session.add(reply)
        session.flush()
        user_msg_id, reply_id = parent, reply.id
        req.user_message_id, req.assistant_message_id = user_msg_id, reply_id
        session.get(Conversation, conv_id).active_leaf_id = reply_id  # type: ignore[union-attr]
        session.flush()
    return _submitted(req, duplicate=False)


def fail_request(
    session: Session, *, request_id: str, state: str, code: str, message: str
) -> ChatRequest | None:
    req = session.get(ChatRequest, request_id)
    if req is None:
        return None
    if req.state in FINISHED_STATES and req.state != "dead":
        return req
    req.state, req.error_code, req.error_message = state, code, message[:2000]
    req.finished_at = utcnow()
    if req.assistant_message_id:
        msg = session.get(Message, req.assistant_message_id)
        if msg is not None and msg.status == "streaming":
            msg.status = "interrupted" if state == "interrupted" else "error"
            msg.error_code = code
            msg.completed_at = utcnow()
    session.flush()
    return req


def interrupt_unfinished(session: Session) -> list[tuple[int, str, str | None]]:
    """After a restart of the in-process broker: requests it held end `interrupted`, partial text kept.

    Returns (user id, client request id, conversation id) of each."""
    rows = list(session.scalars(select(ChatRequest).where(ChatRequest.state.in_(("queued", "generating")))))
    for req in rows:
        fail_request(
            session,
            request_id=req.id,
            state="interrupted",
            code="interrupted",
            message="the server restarted while this reply was generated",
        )
    return [(req.user_id, req.client_request_id, req.conversation_id) for req in rows]


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


def _context(session: Session, req: ChatRequest) -> list[dict[str, str]]:
    chat = settings()
    if req.kind == "api" and "messages" in req.params:
        return [dict(m) for m in req.params["messages"]]
    conv = session.get(Conversation, req.conversation_id) if req.conversation_id else None
    path = branch_of(session, leaf_id=req.user_message_id)
    system = (conv.system_prompt if conv and conv.system_prompt is not None else None) or chat.system_prompt
    out = [{"role": "system", "content": system}] if system else []
    out += [
        {"role": m.role, "content": m.content}
        for m in path
        if m.role in ("user", "assistant", "system")
        and not (m.role == "assistant" and m.status in ("error",) and not m.content)
    ]
    return out


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
    req = session.get(ChatRequest, request_id)
    if req is None:
        return None
    chat = settings()
    max_tokens = min(int(req.params.get("max_tokens") or chat.max_tokens), chat.max_tokens)
    messages, trimmed = trim_context(_context(session, req), budget=chat.context_tokens - max_tokens)
    return Job(
        request_id=req.id,
        kind=req.kind,
        state=req.state,
        user_id=req.user_id,
        conversation_id=req.conversation_id,
        assistant_message_id=req.assistant_message_id,
        model=req.model,
        params={**req.params, "max_tokens": max_tokens},
        messages=messages,
        trimmed=trimmed,
        prompt_estimate=sum(message_tokens(m) for m in messages),
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


# --- export ---------------------------------------------------------------------------------------------------


def export_conversation(session: Session, *, user_id: int, conversation_id: str, fmt: str = "json") -> str:
    conv = get_conversation(session, user_id=user_id, conversation_id=conversation_id)
    if fmt == "md":
        lines = [f"# {conv.title}", ""]
        system = conv.system_prompt or settings().system_prompt
        if system:
            lines += [f"> system: {system}", ""]
        for m in branch_of(session, leaf_id=conv.active_leaf_id):
            lines += [f"**{m.role}**", "", m.content, ""]
        return "\n".join(lines)
    if fmt != "json":
        raise ValidationFailed("format must be json or md")
    from suite.chat.schemas import ConversationRead, MessageRead

    messages = list(
        session.scalars(
            select(Message).where(Message.conversation_id == conv.id).order_by(Message.created_at)
        )
    )
    body = {
        "conversation": ConversationRead.model_validate(conv).model_dump(mode="json"),
        "messages": [MessageRead.model_validate(m).model_dump(mode="json") for m in messages],
    }
    return json.dumps(body, ensure_ascii=False, indent=2)


@readonly
def stats(session: Session) -> dict[str, int]:
    from sqlalchemy import func

    rows = session.execute(select(ChatRequest.state, func.count()).group_by(ChatRequest.state)).all()
    return {state: count for state, count in rows}
