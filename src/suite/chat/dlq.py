"""Dead letters: list them, and put one back on the queue (a new delivery count, the same request)."""

from __future__ import annotations

from typing import Any

from suite.chat import notify, service
from suite.chat.db import run_db
from suite.chat.models import ChatRequest
from suite.core.errors import NotFound


def _requeue(session: Any, *, request_id: str) -> dict[str, Any]:
    req = session.get(ChatRequest, request_id)
    if req is None:
        raise NotFound(f"request {request_id} not found")
    req.state, req.error_code, req.error_message, req.finished_at = "queued", None, None, None
    req.deliveries = 0
    if req.assistant_message_id:
        from suite.chat.models import Message

        msg = session.get(Message, req.assistant_message_id)
        if msg is not None:
            msg.status, msg.content, msg.error_code = "streaming", "", None
    return {
        "user_id": str(req.user_id),
        "conversation_id": req.conversation_id or "",
        "model": req.model,
        "client_request_id": req.client_request_id,
    }


async def retry(runtime: Any, request_id: str) -> dict[str, Any]:
    """Retry by server request id (as listed in the dead letters)."""
    item = await runtime.broker.remove_dead(request_id)
    if item is None:
        raise NotFound(f"no dead letter for request {request_id}")
    fields = await run_db(_requeue, request_id=request_id)
    client_id = fields.pop("client_request_id")
    await runtime.broker.reply_append(request_id, "reset", {"attempt": 0})
    await runtime.broker.submit(request_id, fields)
    notify.request_state(
        int(fields["user_id"]),
        request_id=client_id,
        conversation_id=fields["conversation_id"] or None,
        state="queued",
        kind="retry",
    )
    await notify.notifier().drain()  # the CLI's loop ends right after this
    return {"request_id": client_id, "id": request_id, "state": "queued"}


__all__ = ["retry", "service"]
