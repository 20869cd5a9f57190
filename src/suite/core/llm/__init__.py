"""LLM access for every domain: one provider protocol and a registry of providers by name.

    from suite.core.llm import get_provider
    provider = get_provider()                      # settings.llm.default ("local" unless configured)
    async for chunk in provider.stream_chat([{"role": "user", "content": "Hi"}], max_tokens=32):
        ...                                        # text deltas, then a chunk with finish_reason and usage
    reply = provider.complete_sync(messages)       # CLI commands and Huey tasks

Kinds: `openai` (any OpenAI-compatible endpoint), `local` (SmolLM2 in-process), `scripted` (tests), plus the
`suite.llm_providers` entry-point group (name = kind, value = a factory
`(name, LLMProviderSettings) -> provider`) and kinds registered at run time with `register_kind`. Names come
from `[llm.providers.<name>]` tables (each with a `kind`); "local" and "scripted" exist even without a table.

Light on purpose: importing this package imports neither httpx, torch nor transformers.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from suite.core.errors import ConfigError
from suite.core.llm.base import (
    DEFAULT_SYSTEM_PROMPT,
    BaseProvider,
    ChatChunk,
    Completion,
    ContextTooLong,
    LLMProvider,
    NotSupported,
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderCheck,
    ProviderError,
    ProviderInfo,
    ProviderNotInstalled,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    UnknownProvider,
    Usage,
    run_sync,
)

if TYPE_CHECKING:
    from suite.core.config import LLMProviderSettings

ProviderFactory = Callable[[str, "LLMProviderSettings"], LLMProvider]

ENTRY_POINT_GROUP = "suite.llm_providers"
BUILTIN_KINDS: dict[str, str] = {
    "openai": "suite.core.llm.openai:OpenAIProvider",
    "local": "suite.core.llm.local:LocalProvider",
    "scripted": "suite.core.llm.scripted:ScriptedProvider",
}
IMPLICIT_NAMES = ("local", "scripted")  # usable without a [llm.providers.<name>] table

_lock = threading.RLock()
_kinds: dict[str, ProviderFactory | str] = {}  # registered at run time (entry-point-free plugins, tests)
_named: dict[str, LLMProvider] = {}  # instances registered under a name
_cache: dict[str, LLMProvider] = {}  # providers built from settings, one per name per process


def _load_target(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def register_kind(kind: str, factory: ProviderFactory | str, *, replace: bool = False) -> None:
    """Add a provider kind: a factory `(name, LLMProviderSettings) -> provider`, or a "module:attr" string."""
    with _lock:
        if not replace and (kind in _kinds or kind in BUILTIN_KINDS):
            raise ValueError(f"LLM provider kind {kind!r} is already registered")
        _kinds[kind] = factory


def unregister_kind(kind: str) -> None:
    with _lock:
        _kinds.pop(kind, None)


def register_provider(name: str, provider: LLMProvider, *, replace: bool = False) -> None:
    """Make a ready provider instance available as `get_provider(name)` (takes precedence over settings)."""
    with _lock:
        if not replace and name in _named:
            raise ValueError(f"LLM provider {name!r} is already registered")
        _named[name] = provider
        _cache.pop(name, None)


def _entry_point_kinds() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def kinds() -> list[str]:
    """Every provider kind: built-in, entry points, registered."""
    return sorted({*BUILTIN_KINDS, *_entry_point_kinds(), *_kinds})


def _factory(kind: str) -> ProviderFactory:
    target: Any = _kinds.get(kind)
    source = "registered"
    if target is None and kind in BUILTIN_KINDS:
        target, source = BUILTIN_KINDS[kind], "built-in"
    if target is None:
        ep = _entry_point_kinds().get(kind)
        if ep is not None:
            try:
                return ep.load()  # type: ignore[no-any-return,unused-ignore]
            except Exception as exc:
                raise ConfigError(
                    f"LLM provider kind {kind!r} (entry point {ep.value}) failed to load: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
    if target is None:
        raise UnknownProvider(f"unknown LLM provider kind {kind!r}; known kinds: {', '.join(kinds())}")
    if isinstance(target, str):
        try:
            return _load_target(target)  # type: ignore[no-any-return,unused-ignore]
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"LLM provider kind {kind!r} ({source} {target}) failed to load: {exc}"
            ) from None
    return target


def provider_names() -> list[str]:
    """Every name `get_provider` accepts right now."""
    from suite.core.config import get_settings

    configured = get_settings().llm.providers
    return sorted({*IMPLICIT_NAMES, *configured, *_named})


def default_name() -> str:
    from suite.core.config import get_settings

    return get_settings().llm.default


def provider_config(name: str) -> LLMProviderSettings:
    """The `[llm.providers.<name>]` table, or the implicit one for "local" and "scripted"."""
    from suite.core.config import LLMProviderSettings, get_settings

    configured = get_settings().llm.providers
    if name in configured:
        return configured[name]
    if name in IMPLICIT_NAMES:
        return LLMProviderSettings.model_validate({"kind": name})
    raise UnknownProvider(
        f"unknown LLM provider {name!r}; known providers: {', '.join(provider_names())} "
        f"(add a [llm.providers.{name}] table with a kind: {', '.join(kinds())})"
    )


def create_provider(name: str, config: LLMProviderSettings | None = None) -> LLMProvider:
    """A new provider instance (not cached)."""
    config = config if config is not None else provider_config(name)
    return _factory(config.kind)(name, config)


def get_provider(name: str | None = None) -> LLMProvider:
    """The provider called `name` (default `settings.llm.default`), one instance per name per process."""
    name = name or default_name()
    with _lock:
        if name in _named:
            return _named[name]
        provider = _cache.get(name)
        if provider is None:
            provider = create_provider(name)
            _cache[name] = provider
        return provider


async def aclose_all() -> None:
    """Close every cached provider's connections on the running loop (server shutdown)."""
    with _lock:
        providers = list({id(p): p for p in [*_cache.values(), *_named.values()]}.values())
    for provider in providers:
        await provider.aclose()


def reset() -> None:
    """Forget cached providers and registered instances (tests; settings changed).

    Registered kinds stay (a module registers its kind once, at import), and so does a loaded local model.
    """
    with _lock:
        _cache.clear()
        _named.clear()


__all__ = [
    "BUILTIN_KINDS",
    "DEFAULT_SYSTEM_PROMPT",
    "ENTRY_POINT_GROUP",
    "BaseProvider",
    "ChatChunk",
    "Completion",
    "ContextTooLong",
    "LLMProvider",
    "NotSupported",
    "ProviderAuthFailed",
    "ProviderBadResponse",
    "ProviderCheck",
    "ProviderError",
    "ProviderFactory",
    "ProviderInfo",
    "ProviderNotInstalled",
    "ProviderRateLimited",
    "ProviderTimeout",
    "ProviderUnavailable",
    "UnknownProvider",
    "Usage",
    "aclose_all",
    "create_provider",
    "default_name",
    "get_provider",
    "kinds",
    "provider_config",
    "provider_names",
    "register_kind",
    "register_provider",
    "reset",
    "run_sync",
    "unregister_kind",
]
