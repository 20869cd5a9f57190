"""imagegen background jobs on the shared Huey (never generation: a Huey worker never loads a pipeline)."""

from __future__ import annotations

from typing import Any

from suite.core.tasks import progress, task


@task(domain="imagegen", name="download")
def download(job_id: str, **request: Any) -> dict[str, Any]:
    """Fetch a model from the hub or a URL (resumable, verified) and register it."""
    from suite.imagegen import downloads

    return downloads.run(job_id, progress=progress(job_id), **request)
