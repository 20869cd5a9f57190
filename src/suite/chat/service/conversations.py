"""Conversations, the message tree, export and stats. Every lookup is scoped to the user."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, func, literal, select
from sqlalchemy.orm import Session

from suite.chat.db import readonly
from suite.chat.models import ChatRequest, Conversation, Message, new_id
from suite.chat.service.common import (
    MAX_DEPTH,
    Busy,
    settings,
)
from suite.core.db import utcnow
from suite.core.errors import NotFound, ValidationFailed

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


@lru_cache(maxsize=1)
def _branch_turns_query() -> Any:
    """`_branch_query` as plain rows (role, content, status): what a job's context needs, without ORM objects."""
    full = _branch_query()
    return full.with_only_columns(Message.role, Message.content, Message.status)


def branch_turns(session: Session, *, leaf_id: str | None) -> list[Any]:
    """The (role, content, status) rows of the path from the root to `leaf_id`, root first."""
    if not leaf_id:
        return []
    return list(session.execute(_branch_turns_query(), {"leaf_id": leaf_id}))


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

    rows = session.execute(select(ChatRequest.state, func.count()).group_by(ChatRequest.state)).all()
    return {state: count for state, count in rows}
