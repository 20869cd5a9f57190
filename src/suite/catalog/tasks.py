"""Huey tasks: thin wrappers with their own sessions; arguments are ids and flags, never keys."""

from __future__ import annotations

from typing import Any

from suite.core.tasks import progress, task


@task(retries=0, domain="catalog")
def seed_run(job_id: str, run_id: str) -> dict[str, Any]:
    """Run (or resume) the seed run `run_id`, created beforehand by the API with its options."""
    from suite.catalog import models as m
    from suite.catalog import seed as seeding
    from suite.core.db import new_session

    with new_session() as s:
        run = s.get(m.SeedRun, run_id)
        options = seeding.SeedOptions.from_params(run.params if run else {})
    summary = seeding.seed(options, resume=run_id, job_id=job_id, progress=progress(job_id))
    return {"run_id": run_id, "status": summary["status"], "processed": summary["processed"]}


@task(retries=0, domain="catalog")
def enrich_job(job_id: str, field: str, force: bool = False, limit: int | None = None) -> dict[str, Any]:
    """Write generated text for one field; resumable (only entities still lacking text are visited)."""
    from suite.catalog import enrich

    return enrich.enrich(field=field, force=force, limit=limit, progress=progress(job_id))


@task(retries=0, domain="catalog")
def embed_job(job_id: str, limit: int | None = None) -> dict[str, Any]:
    """Embed movies for semantic search; resumable (unchanged movies are skipped by their text hash)."""
    from suite.catalog import semantic

    return semantic.build_embeddings(limit=limit, progress=progress(job_id))
