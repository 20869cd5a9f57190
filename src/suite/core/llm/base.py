"""The provider protocol, its value types and errors, and helpers every provider shares.

A provider streams a chat reply as `ChatChunk`s: text deltas, then one final chunk carrying `finish_reason`
and `usage`. Closing the stream early (`aclose()`, or leaving an `async for` by break/exception) cancels the
work upstream: the HTTP response is closed, the local model stops at its next token.

Light on purpose: imports nothing beyond the standard library and `suite.core.errors`.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Coroutine, Generator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from suite.core.errors import ConfigError, SuiteError, Unavailable

T = TypeVar("T")

FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "cancelled"] | str
MessageLike = Mapping[str, Any]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and accurately."


# --- value types --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False  # True when the upstream sent no usage and the provider counted itself

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_tokens": self.total_tokens}


@dataclass(frozen=True)
class ChatChunk:
    """A text delta; the last chunk of a stream has `finish_reason` (and `usage`) set and usually no text."""

    delta: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    model: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    usage: Usage
    model: str
    provider: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": self.usage.to_dict(),
            "model": self.model,
            "provider": self.provider,
        }


@dataclass(frozen=True)
class ProviderInfo:
    name: str  # the configured name ("local", "groq", ...)
    kind: str  # "openai", "local", "scripted" or a plugin's kind
    model: str
    label: str  # how a person sees it; scripted providers say so here
    scripted: bool = False  # never a real model
    supports_embeddings: bool = False
    endpoint: str | None = None  # base URL without credentials, or the model file
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ProviderCheck:
    """Readiness: `ok`, and when not, one line saying why and, where it helps, the command that fixes it."""

    ok: bool
    detail: str
    code: str | None = None
    install_command: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenerationResult:
    """What a local runtime reports after one generation."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end token), "length", or "cancelled"


# --- errors -------------------------------------------------------------------------------------------


class ProviderError(SuiteError):
    """An LLM provider failed. `code`: provider_error, provider_timeout, rate_limited, provider_unavailable,
    provider_bad_response, provider_auth_failed, provider_not_installed, not_supported,
    context_length_exceeded."""

    code = "provider_error"
    status_code = 502

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
        install_command: str | None = None,
    ) -> None:
        details: dict[str, Any] = {}
        if provider:
            details["provider"] = provider
        if retry_after is not None:
            details["retry_after"] = round(retry_after, 3)
        if status is not None:
            details["upstream_status"] = status
        if install_command:
            details["install_command"] = install_command
        super().__init__(message, code=code, details=details)
        self.provider = provider
        self.retry_after = retry_after
        self.status = status
        self.install_command = install_command


class ProviderTimeout(ProviderError):
    code = "provider_timeout"
    status_code = 504


class ProviderRateLimited(ProviderError):
    code = "rate_limited"
    status_code = 429


class ProviderBadResponse(ProviderError):
    code = "provider_bad_response"
    status_code = 502


class ProviderAuthFailed(ProviderError):
    code = "provider_auth_failed"
    status_code = 502


class ProviderUnavailable(ProviderError, Unavailable):
    """The provider cannot answer at all: connection refused, or a missing wheel/runtime."""

    code = "provider_unavailable"
    status_code = 503


class ProviderNotInstalled(ProviderUnavailable):
    code = "provider_not_installed"


class NotSupported(ProviderError):
    code = "not_supported"
    status_code = 501


class ContextTooLong(ProviderError):
    code = "context_length_exceeded"
    status_code = 400


class UnknownProvider(ConfigError):
    code = "unknown_provider"


# --- the protocol -------------------------------------------------------------------------------------


@runtime_checkable
class LLMProvider(Protocol):
    name: str
    kind: str

    def info(self) -> ProviderInfo: ...

    def stream_chat(
        self,
        messages: Sequence[MessageLike],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        model: str | None = None,
        **extra: Any,
    ) -> AsyncGenerator[ChatChunk, None]: ...

    async def complete(
        self,
        messages: Sequence[MessageLike],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        model: str | None = None,
        **extra: Any,
    ) -> Completion: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def check(self) -> ProviderCheck: ...

    async def aclose(self) -> None: ...

    # Sync wrappers (CLI commands, Huey tasks); `BaseProvider` implements them for every provider.
    def complete_sync(self, messages: Sequence[MessageLike], **kwargs: Any) -> Completion: ...

    def stream_chat_sync(
        self, messages: Sequence[MessageLike], **kwargs: Any
    ) -> Generator[ChatChunk, None, None]: ...

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]: ...

    def check_sync(self) -> ProviderCheck: ...

    def close_sync(self) -> None: ...


def normalise_messages(messages: Sequence[MessageLike]) -> list[dict[str, str]]:
    """`[{"role", "content"}]` with string content; refuses empty lists and unknown roles early."""
    if not messages:
        raise ValueError("messages must not be empty")
    out: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        role = msg.get("role")
        content = msg.get("content")
        if role not in {"system", "user", "assistant", "tool"}:
            raise ValueError(f"messages[{i}].role must be system, user, assistant or tool, not {role!r}")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        out.append({"role": str(role), "content": content})
    return out


def stop_tuple(stop: Sequence[str] | str | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    return tuple(s for s in stop if s)


class BaseProvider:
    """Shared behaviour: `complete` built on `stream_chat`, no embeddings, sync wrappers for CLI and tasks."""

    kind: str = "base"

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} kind={self.kind!r}>"

    # Subclasses implement these two.
    def info(self) -> ProviderInfo:  # pragma: no cover - abstract
        raise NotImplementedError

    def stream_chat(
        self,
        messages: Sequence[MessageLike],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        model: str | None = None,
        **extra: Any,
    ) -> AsyncGenerator[ChatChunk, None]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def complete(
        self,
        messages: Sequence[MessageLike],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        model: str | None = None,
        **extra: Any,
    ) -> Completion:
        parts: list[str] = []
        final: ChatChunk | None = None
        stream = self.stream_chat(
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
            model=model,
            **extra,
        )
        try:
            async for chunk in stream:
                if chunk.delta:
                    parts.append(chunk.delta)
                if chunk.done:
                    final = chunk
        finally:
            await aclose_quietly(stream)
        if final is None:
            raise ProviderError(f"{self.name}: the reply ended without a finish reason", provider=self.name)
        return Completion(
            text="".join(parts),
            finish_reason=final.finish_reason or "stop",
            usage=final.usage or Usage(completion_tokens=len(parts), estimated=True),
            model=final.model or self.info().model,
            provider=self.name,
        )

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise NotSupported(f"provider {self.name!r} ({self.kind}) has no embeddings", provider=self.name)

    async def check(self) -> ProviderCheck:
        return ProviderCheck(ok=True, detail=self.info().label)

    async def aclose(self) -> None:
        return None

    # --- sync wrappers (CLI commands, Huey tasks): run on one background event loop ---------------------

    def complete_sync(self, messages: Sequence[MessageLike], **kwargs: Any) -> Completion:
        return run_sync(self.complete(messages, **kwargs))

    def stream_chat_sync(
        self, messages: Sequence[MessageLike], **kwargs: Any
    ) -> Generator[ChatChunk, None, None]:
        """Iterate a stream from synchronous code; closing the iterator cancels the stream."""
        return iterate_sync(lambda: self.stream_chat(messages, **kwargs))

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        return run_sync(self.embed(texts))

    def check_sync(self) -> ProviderCheck:
        return run_sync(self.check())

    def close_sync(self) -> None:
        run_sync(self.aclose())


async def aclose_quietly(stream: AsyncIterator[Any]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


# --- stop strings ---------------------------------------------------------------------------------------


class StopMatcher:
    """Cuts a stream of text deltas at the first stop string, holding back only what could start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self.stops), default=0) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """The text that is safe to emit now. After a stop string is seen, `stopped` is True."""
        if self.stopped:
            return ""
        if not self.stops:
            return delta
        text = self._pending + delta
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        keep = self._hold
        # Hold back the longest tail that is a prefix of some stop string.
        while keep > 0 and not any(s.startswith(text[-keep:]) for s in self.stops):
            keep -= 1
        if keep > 0:
            self._pending = text[-keep:]
            return text[:-keep]
        self._pending = ""
        return text

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return "" if self.stopped else out


_WORD = re.compile(r"\s*\S+|\s+")


def rough_token_count(text: str) -> int:
    """Words and punctuation runs: the scripted provider's notion of a token."""
    return len(_WORD.findall(text))


# --- the sync portal: one background event loop per process ----------------------------------------------


class _Portal:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=main, name="suite-llm-portal", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError(
                "the *_sync LLM helpers cannot be called from a running event loop; await instead"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self.loop())
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C or a timeout in the caller: cancel the task on the portal loop too
            raise


_portal = _Portal()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the process's background LLM loop and wait for it (sync callers only)."""
    return _portal.run(coro)


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def iterate_sync(factory: Any) -> Generator[ChatChunk, None, None]:
    """Drive an async iterator (made by `factory()` on the portal loop) from synchronous code."""

    async def make() -> AsyncGenerator[ChatChunk, None]:
        result: AsyncGenerator[ChatChunk, None] = factory()
        return result

    stream = run_sync(make())
    try:
        while True:
            try:
                chunk = run_sync(_await(stream.__anext__()))
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        try:
            run_sync(aclose_quietly(stream))
        except RuntimeError:
            pass  # still being cancelled after Ctrl-C: the cancellation closes it
