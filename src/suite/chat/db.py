"""Run sync service calls from async code: a thread, its own session_scope, plain values back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
LOCK_RETRIES = 6


def _locked(exc: BaseException) -> bool:
    text = f"{exc} {getattr(exc, '__cause__', '')}".lower()
    return "database is locked" in text or "database table is locked" in text


def _run(fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
    from suite.core.db import session_scope

    for attempt in range(LOCK_RETRIES):
        try:
            with session_scope() as session:
                return fn(session, **kwargs)
        except Exception as exc:
            # SQLite in WAL mode answers SQLITE_BUSY at once (no busy wait) when a deferred transaction that
            # has read must upgrade to write after another connection committed: the whole transaction is
            # rolled back, so running it again is safe.
            if attempt == LOCK_RETRIES - 1 or not _locked(exc):
                raise
            time.sleep(0.02 * 2**attempt)
    raise AssertionError("unreachable")


async def run_db(fn: Callable[..., T], **kwargs: Any) -> T:
    """`fn(session, **kwargs)` in a worker thread with a committing session (never on the event loop)."""
    return await asyncio.to_thread(_run, fn, kwargs)
