"""Chat housekeeping (run as a core Huey job by `suite chat purge`, or inline with `--now`).

- SQL: finished requests older than `keep_days` are deleted. Messages keep their text (their `request_id` is
  set to NULL by the foreign key); what goes is the idempotency key and the timings, so a client resending a
  request id that old starts a new request. Conversations and messages are never purged here.
- Redis: per-reply streams and their seq counters always get an `EXPIRE` when written; a key that lost it (a
  restore, a hand edit) gets `reply_ttl_s` again; dead letters older than `keep_days` are trimmed (XTRIM MINID).
- In-process broker: expired reply buffers, locks and counters are dropped (it does that as it runs, too).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from suite.chat.models import FINISHED_STATES, ChatRequest
from suite.core.db import utcnow
from suite.core.errors import ValidationFailed


def purge_requests(session: Session, *, keep_days: int) -> int:
    if keep_days < 0:
        raise ValidationFailed("keep_days must be >= 0")
    cutoff = utcnow() - timedelta(days=keep_days)
    old = (
        select(ChatRequest.id)
        .where(
            ChatRequest.state.in_(sorted(FINISHED_STATES)),
            func.coalesce(ChatRequest.finished_at, ChatRequest.enqueued_at) < cutoff,
        )
        .scalar_subquery()
    )
    result = session.execute(delete(ChatRequest).where(ChatRequest.id.in_(old)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def purge_broker(*, keep_days: int) -> dict[str, int]:
    from suite.chat.broker import build_broker

    broker = build_broker()
    try:
        if broker.kind != "redis":
            broker._purge()  # type: ignore[attr-defined]
            return {"reply_streams_expired": 0, "dead_letters_trimmed": 0}
        client = broker.client  # type: ignore[attr-defined]
        prefix = broker.prefix  # type: ignore[attr-defined]
        ttl = broker.settings.reply_ttl_s  # type: ignore[attr-defined]
        fixed = 0
        async for key in client.scan_iter(match=f"{prefix}reply:*", count=500):
            if await client.ttl(key) == -1:
                await client.expire(key, ttl)
                fixed += 1
        min_id = f"{int((time.time() - keep_days * 86400) * 1000)}-0"
        trimmed = await client.xtrim(broker.dead_key, minid=min_id, approximate=False)  # type: ignore[attr-defined]
        return {"reply_streams_expired": fixed, "dead_letters_trimmed": int(trimmed or 0)}
    finally:
        await broker.close()


def purge(*, keep_days: int = 30) -> dict[str, Any]:
    """Everything above; returns the counts."""
    from suite.core.db import session_scope

    with session_scope() as session:
        requests = purge_requests(session, keep_days=keep_days)
    return {"requests": requests, **asyncio.run(purge_broker(keep_days=keep_days))}
