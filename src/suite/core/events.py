"""Event bus: typed events by topic, in-process by default, Redis pub/sub when configured."""

from __future__ import annotations


async def aclose() -> None:
    return None
