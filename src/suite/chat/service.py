"""Conversations, messages and requests in SQL: functions that take the session and keyword-only arguments.

Every lookup is scoped to the user: another user's conversation, message or request is NotFound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from suite.chat.models import FINISHED_STATES, ChatRequest, Conversation, Message, new_id
from suite.chat.text import message_tokens, sha256_of, title_from

__all__ = ["sha256_of", "title_from"]
from suite.core.db import utcnow
from suite.core.errors import Conflict, NotFound, TooLarge, ValidationFailed


def settings():  # type: ignore[no-untyped-def]
    from suite.core.config import get_settings

    return get_settings().chat


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


def branch_of(session: Session, *, leaf_id: str | None) -> list[Message]:
    """The path from the root to `leaf_id`."""
    out: list[Message] = []
    seen: set[str] = set()
    current = session.get(Message, leaf_id) if leaf_id else None
    while current is not None and current.id not in seen:
        seen.add(current.id)
        out.append(current)
        current = session.get(Message, current.parent_id) if current.parent_id else None
    out.reverse()
    return out


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

    Idempotent on (user, client_request_id): a concurrent twin loses on the unique key and gets the winner."""
    chat = settings()
    dup = check_duplicate(
        session, user_id=user_id, client_request_id=client_request_id, fingerprint=fingerprint
    )
    if dup is not None:
        return dup
    try:
        with session.begin_nested():
            if new_conversation:
                conv = create_conversation(
                    session,
                    user_id=user_id,
                    conversation_id=conversation_id,
                    title=title_from(content),
                    system_prompt=system_prompt,
                    model=model,
                )
            else:
                conv = get_conversation(session, user_id=user_id, conversation_id=conversation_id)
            if parent_id is None:
                parent_id = conv.active_leaf_id
            elif parent_id:
                parent = session.get(Message, parent_id)
                if parent is None or parent.conversation_id != conv.id:
                    raise NotFound(f"message {parent_id} not found in this conversation")
            else:
                parent_id = None  # "" = a new root
            use_model = model or conv.model or chat.default_model
            req = ChatRequest(
                id=request_id,
                user_id=user_id,
                client_request_id=client_request_id,
                conversation_id=conv.id,
                kind="send",
                model=use_model,
                params=params or {},
                content_sha256=fingerprint,
            )
            session.add(req)
            session.flush()
            user_msg = Message(
                conversation_id=conv.id, parent_id=parent_id, role="user", content=content, request_id=req.id
            )
            session.add(user_msg)
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
            req.user_message_id, req.assistant_message_id = user_msg.id, reply.id
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


def interrupt_unfinished(session: Session) -> int:
    """After a restart of the in-process broker: requests it held end `interrupted`, partial text kept."""
    rows = list(session.scalars(select(ChatRequest).where(ChatRequest.state.in_(("queued", "generating")))))
    for req in rows:
        fail_request(
            session,
            request_id=req.id,
            state="interrupted",
            code="interrupted",
            message="the server restarted while this reply was generated",
        )
    return len(rows)


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


def start_job(session: Session, *, request_id: str, worker: str, attempt: int) -> Job | None:
    """Mark the request generating and build its context (trimmed to the budget). None when it is gone."""
    req = session.get(ChatRequest, request_id)
    if req is None:
        return None
    chat = settings()
    max_tokens = min(int(req.params.get("max_tokens") or chat.max_tokens), chat.max_tokens)
    messages, trimmed = trim_context(_context(session, req), budget=chat.context_tokens - max_tokens)
    if req.state not in FINISHED_STATES:
        req.state = "generating"
        req.deliveries = max(req.deliveries, attempt)
        req.attempt = attempt
        req.worker = worker
        req.started_at = req.started_at or utcnow()
        if req.assistant_message_id:
            msg = session.get(Message, req.assistant_message_id)
            if msg is not None:
                msg.attempt, msg.content, msg.status = attempt, "", "streaming"
        session.flush()
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
    )


def save_partial(
    session: Session,
    *,
    request_id: str,
    message_id: str | None,
    content: str,
    first_token_at: datetime | None,
) -> None:
    if message_id:
        session.execute(
            update(Message)
            .where(Message.id == message_id, Message.status == "streaming")
            .values(content=content)
        )
    if first_token_at is not None:
        session.execute(
            update(ChatRequest)
            .where(ChatRequest.id == request_id, ChatRequest.first_token_at.is_(None))
            .values(first_token_at=first_token_at)
        )


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
) -> ChatRequest | None:
    """The final assistant row (overwritten, never inserted twice) and the request's end state."""
    req = session.get(ChatRequest, request_id)
    if req is None:
        return None
    now = utcnow()
    req.state = state
    req.finished_at = now
    req.first_token_at = req.first_token_at or first_token_at
    req.tokens_in, req.tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
    req.error_code, req.error_message = error_code, (error_message or None)
    if req.kind == "api" and not settings().store_api_requests:
        req.params = {k: v for k, v in req.params.items() if k != "messages"}
    if req.assistant_message_id:
        msg = session.get(Message, req.assistant_message_id)
        if msg is not None:
            msg.content = content
            msg.status = {"done": "complete", "cancelled": "cancelled"}.get(state, "error")
            msg.finish_reason = finish_reason
            msg.tokens_in, msg.tokens_out = req.tokens_in, req.tokens_out
            msg.runtime = runtime
            msg.error_code = error_code
            msg.completed_at = now
    if req.conversation_id:
        conv = session.get(Conversation, req.conversation_id)
        if conv is not None:
            conv.updated_at = now
    session.flush()
    return req


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


def stats(session: Session) -> dict[str, int]:
    from sqlalchemy import func

    rows = session.execute(select(ChatRequest.state, func.count()).group_by(ChatRequest.state)).all()
    return {state: count for state, count in rows}
