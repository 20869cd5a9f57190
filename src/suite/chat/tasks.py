"""Chat's Huey tasks: housekeeping only (generation goes through the chat broker, never Huey)."""

from __future__ import annotations

from typing import Any

from suite.core.tasks import task


@task(retries=1, retry_delay=5, domain="chat")
def purge(job_id: str, keep_days: int = 30) -> dict[str, Any]:
    """Finished requests older than `keep_days`, reply streams without a TTL, old dead letters."""
    from suite.chat import housekeeping

    return housekeeping.purge(keep_days=keep_days)
