"""`suite chat ask`: one question, answered in-process by the provider (never the broker)."""

from __future__ import annotations

import time
from typing import Any, TextIO

from suite.chat import service
from suite.chat.settings import chat_settings
from suite.chat.text import check_text, message_tokens


def _history(conversation_id: str) -> tuple[int, list[dict[str, str]], str | None, str | None]:
    from suite.chat.models import Conversation
    from suite.core.db import session_scope
    from suite.core.errors import NotFound

    with session_scope() as session:
        conv = session.get(Conversation, conversation_id)
        if conv is None:
            raise NotFound(f"conversation {conversation_id} not found")
        path = service.branch_of(session, leaf_id=conv.active_leaf_id)
        msgs = [{"role": m.role, "content": m.content} for m in path if m.content]
        return conv.user_id, msgs, conv.system_prompt, conv.model


def _save(*, user_id: int, conversation_id: str | None, prompt: str, result: dict[str, Any]) -> str:
    from suite.chat.models import ChatRequest, Message, new_id
    from suite.core.db import session_scope, utcnow

    with session_scope() as session:
        if conversation_id is None:
            conv = service.create_conversation(
                session, user_id=user_id, title=service.title_from(prompt), model=result["model_name"]
            )
        else:
            conv = service.get_conversation(session, user_id=user_id, conversation_id=conversation_id)
        rid = new_id()
        req = ChatRequest(
            id=rid,
            user_id=user_id,
            client_request_id=f"cli-{rid}",
            conversation_id=conv.id,
            kind="send",
            model=result["model_name"],
            params={},
            content_sha256=service.sha256_of(prompt),
            state="done",
            tokens_in=result["usage"]["prompt_tokens"],
            tokens_out=result["usage"]["completion_tokens"],
            started_at=utcnow(),
            finished_at=utcnow(),
        )
        session.add(req)
        session.flush()
        user_msg = Message(
            conversation_id=conv.id,
            parent_id=conv.active_leaf_id,
            role="user",
            content=prompt,
            request_id=rid,
        )
        session.add(user_msg)
        session.flush()
        reply = Message(
            conversation_id=conv.id,
            parent_id=user_msg.id,
            role="assistant",
            content=result["text"],
            status="complete",
            request_id=rid,
            model=result["model_name"],
            runtime=result["runtime"],
            finish_reason=result["finish_reason"],
            tokens_in=req.tokens_in,
            tokens_out=req.tokens_out,
            completed_at=utcnow(),
        )
        session.add(reply)
        session.flush()
        req.user_message_id, req.assistant_message_id = user_msg.id, reply.id
        conv.active_leaf_id = reply.id
        conv.updated_at = utcnow()
        return conv.id


def ask(
    prompt: str,
    *,
    model: str | None = None,
    system: str | None = None,
    conversation_id: str | None = None,
    username: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    save: bool = True,
    stream_to: TextIO | None = None,
) -> dict[str, Any]:
    from suite.chat.llm import get_provider, runtime_of

    chat = chat_settings()
    check_text(prompt)
    history: list[dict[str, str]] = []
    user_id = None
    conv_system = conv_model = None
    if conversation_id:
        user_id, history, conv_system, conv_model = _history(conversation_id)
    elif username and save:
        from suite.core.auth import get_user
        from suite.core.db import session_scope

        with session_scope() as session:
            user_id = get_user(session, username=username).id
    name = model or conv_model or chat.default_model
    cap = min(max_tokens or chat.max_tokens, chat.max_tokens)
    system_prompt = system or conv_system or chat.system_prompt
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + history
    messages.append({"role": "user", "content": prompt})
    messages, trimmed = service.trim_context(messages, budget=chat.context_tokens - cap)
    provider = get_provider(name)
    started = time.perf_counter()
    ttft = None
    parts: list[str] = []
    final: Any = None
    stream = provider.stream_chat_sync(messages, max_tokens=cap, temperature=temperature, seed=seed)
    try:
        for chunk in stream:
            if chunk.delta:
                if ttft is None:
                    ttft = time.perf_counter() - started
                parts.append(chunk.delta)
                if stream_to is not None:
                    stream_to.write(chunk.delta)
                    stream_to.flush()
            if chunk.finish_reason:
                final = chunk
    finally:
        stream.close()  # Ctrl-C: closing cancels the generation
    total = time.perf_counter() - started
    usage = final.usage if final is not None and final.usage is not None else None
    result = {
        "text": "".join(parts),
        "finish_reason": final.finish_reason if final is not None else "stop",
        "usage": {
            "prompt_tokens": usage.prompt_tokens if usage else sum(message_tokens(m) for m in messages),
            "completion_tokens": usage.completion_tokens if usage else len(parts),
        },
        "timings": {
            "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
            "total_ms": round(total * 1000, 1),
        },
        "model": provider.info().model,
        "model_name": name,
        "runtime": runtime_of(provider),
        "context_trimmed": trimmed > 0,
        "conversation_id": None,
    }
    if save and user_id is not None:
        result["conversation_id"] = _save(
            user_id=user_id, conversation_id=conversation_id, prompt=prompt, result=result
        )
    return result
