"""Chat's view of the core LLM registry: resolve a model name to a provider, classify provider failures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from suite.chat.settings import chat_settings
from suite.core.errors import NotFound


def get_provider(name: str) -> Any:
    """The core provider called `name` (a chat "model" is a configured provider name)."""
    from suite.core import llm

    try:
        return llm.get_provider(name)
    except llm.UnknownProvider as exc:
        raise ModelNotFound(f"model {name!r} not found") from exc


def reset() -> None:
    from suite.core import llm

    llm.reset()


class ModelNotFound(NotFound):
    code = "model_not_found"


def model_names() -> list[str]:
    """Configured provider names, the default first."""
    from suite.core import llm
    from suite.core.config import get_settings

    settings = get_settings()
    names = [chat_settings().default_model, settings.llm.default, *settings.llm.providers]
    names += [n for n in llm.provider_names() if n != "scripted"]  # the implicit test provider stays unlisted
    return list(dict.fromkeys(n for n in names if n))


def is_known_model(name: str) -> bool:
    from suite.core import llm

    return name in model_names() or name in llm.provider_names()


@dataclass
class Failure:
    code: str  # provider_error | provider_timeout
    message: str
    retryable: bool
    retry_after: float | None = None


NOT_RETRYABLE = {"provider_auth_failed", "not_supported", "provider_bad_response", "provider_not_installed"}


def classify(exc: BaseException) -> Failure | None:
    """A provider's own failure (answered with an error frame), or None for anything else (a crash: the
    delivery is not acked, so it is retried and, past max_deliveries, dead-lettered)."""
    from suite.core.llm.base import ProviderError, ProviderTimeout

    if isinstance(exc, ProviderTimeout | TimeoutError):
        return Failure("provider_timeout", str(exc) or "the provider timed out", True)
    if isinstance(exc, ProviderError):
        code = getattr(exc, "code", "provider_error")
        status = getattr(exc, "status", None)
        retryable = code not in NOT_RETRYABLE and (status is None or status == 429 or status >= 500)
        return Failure("provider_error", exc.message, retryable, getattr(exc, "retry_after", None))
    return None


def runtime_of(provider: Any) -> str | None:
    try:
        info = provider.info()
    except Exception:
        return None
    extra = getattr(info, "extra", None) or {}
    return str(extra.get("runtime") or info.kind)
