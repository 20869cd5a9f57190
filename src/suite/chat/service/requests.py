"""Chat requests: send, regenerate, the OpenAI-compatible API's requests, idempotency and failure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from suite.chat.db import atomic, readonly
from suite.chat.models import FINISHED_STATES, ChatRequest, Conversation, Message, new_id
from suite.chat.service.common import (
    _INSERT_CONV,
    _INSERT_MSG,
    _INSERT_REQ,
    _SET_LEAF,
    settings,
)
from suite.chat.service.conversations import (
    branch_turns,
    create_conversation,
    get_conversation,
    get_message,
)
from suite.chat.service.jobs import Job, context_of, make_job
from suite.chat.text import message_tokens, sha256_of, title_from
from suite.core.db import utcnow
from suite.core.errors import Conflict, NotFound, TooLarge, ValidationFailed

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
    job: Job | None = None  # the worker's job, when asked for and the request is new (see create_send)

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


def _duplicate_of(
    session: Session, error: IntegrityError, *, user_id: int, client_request_id: str, fingerprint: str
) -> Submitted:
    """After a unique-key failure: the earlier request with this client id, Conflict when its content differs,
    or `error` again when it was about something else."""
    dup = check_duplicate(
        session, user_id=user_id, client_request_id=client_request_id, fingerprint=fingerprint
    )
    if dup is None:
        raise error
    return dup


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
    with_job: bool = False,
) -> Submitted:
    """A user message, its (empty, streaming) assistant reply and the request, in one transaction.

    `with_job`: also build the worker's job (what `load_job` would read back) from what is at hand here, so a
    worker can start without reading it: no read at all for a new conversation, the branch for an old one.

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
                system_prompt = conv.system_prompt
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
    except IntegrityError as exc:
        return _duplicate_of(
            session, exc, user_id=user_id, client_request_id=client_request_id, fingerprint=fingerprint
        )
    job = None
    if with_job:
        turns = branch_turns(session, leaf_id=parent_id) if parent_id else []
        turns.append(_Turn("user", content, "complete"))
        job = make_job(
            request_id=request_id,
            kind="send",
            state="queued",
            user_id=user_id,
            conversation_id=conversation_id,
            assistant_message_id=reply_id,
            model=use_model,
            params=params,
            context=context_of(system_prompt, turns),
            enqueued_at=now,
            client_request_id=client_request_id,
        )
    return Submitted(
        request_id=request_id,
        client_request_id=client_request_id,
        conversation_id=conversation_id,
        user_message_id=user_message_id,
        message_id=reply_id,
        model=use_model,
        duplicate=False,
        state="queued",
        job=job,
    )


@dataclass
class _Turn:
    role: str
    content: str
    status: str


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
    except IntegrityError as exc:
        return _duplicate_of(
            session, exc, user_id=user_id, client_request_id=client_request_id, fingerprint=fingerprint
        )
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
