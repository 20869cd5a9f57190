"""imagegen: diffusers image generation with a safe job queue, progress per job, history and an A1111 API."""

from __future__ import annotations

from suite.core.plugins import DomainSpec

DOMAIN = DomainSpec(
    name="imagegen",
    help="Image generation with diffusers: models, samplers, LoRA, history, A1111-compatible API.",
    cli="suite.imagegen.cli:app",
    router="suite.imagegen.api:router",
    pages="suite.imagegen.api:pages",
    root_router="suite.imagegen.api:sdapi",
    settings="suite.imagegen.settings:ImagegenSettings",
    models="suite.imagegen.models",
    tasks="suite.imagegen.tasks",
    migrations="suite.imagegen.migrations",
    readiness="suite.imagegen.api:readiness",
    startup="suite.imagegen.api:startup",
    shutdown="suite.imagegen.api:shutdown",
)
