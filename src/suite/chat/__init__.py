"""Chat: WebSocket and HTTP clients, a Redis-stream worker pool that calls an LLM, durable history in SQL."""

from __future__ import annotations

from suite.core.plugins import DomainSpec

DOMAIN = DomainSpec(
    name="chat",
    help="Streaming chat: WebSocket, REST, an OpenAI-compatible /v1, workers on Redis streams, an offline model.",
    cli="suite.chat.cli:app",
    router="suite.chat.api:router",
    pages="suite.chat.api:pages",
    root_router="suite.chat.api:openai_router",
    settings="suite.chat.settings:ChatSettings",
    models="suite.chat.models",
    migrations="suite.chat.migrations",
    tasks="suite.chat.tasks",
    readiness="suite.chat.api:readiness",
    startup="suite.chat.api:startup",
    shutdown="suite.chat.api:shutdown",
)
