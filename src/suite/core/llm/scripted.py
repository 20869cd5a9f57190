"""The scripted provider: deterministic replies for tests and benchmarks. Never a real model, and says so.

Options (from `[llm.providers.<name>] options = {...}` or keyword arguments):
- `mode`: "fixed" (default) replies `reply`; "echo" replies the last user message.
- `reply`: the fixed reply text.
- `tokens`: emit exactly this many tokens, cycling through the reply's tokens (a long reply from short text).
- `token_delay_s`: pause between tokens; `ttft_s`: pause before the first token.
- `stall_after`: after this many tokens, stall: wait forever, or `stall_s` seconds and then fail with
  provider_timeout.
- `fail_times` + `fail_kind`: the first N requests fail before any token with rate_limited, provider_error,
  provider_timeout or provider_unavailable (`retry_after_s` for rate_limited).
- `embed_dim`: size of the deterministic (hash-based) embedding vectors.

A "token" is a word with its leading whitespace, so the deltas joined give the reply back exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from suite.core.errors import ConfigError
from suite.core.llm.base import (
    _WORD,
    BaseProvider,
    ChatChunk,
    MessageLike,
    ProviderCheck,
    ProviderError,
    ProviderInfo,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    StopMatcher,
    Usage,
    normalise_messages,
    rough_token_count,
    stop_tuple,
)

SCRIPTED_LABEL = "scripted test provider (not a real model)"


class ScriptedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["fixed", "echo"] = "fixed"
    reply: str = "This is a scripted reply from the suite test provider."
    tokens: int | None = Field(None, ge=0)
    token_delay_s: float = Field(0.0, ge=0)
    ttft_s: float = Field(0.0, ge=0)
    stall_after: int | None = Field(None, ge=0)
    stall_s: float | None = Field(None, gt=0)
    fail_times: int = Field(0, ge=0)
    fail_kind: Literal["rate_limited", "provider_error", "provider_timeout", "provider_unavailable"] = (
        "provider_error"
    )
    retry_after_s: float = Field(1.0, ge=0)
    embed_dim: int = Field(32, ge=1, le=4096)


class ScriptedProvider(BaseProvider):
    kind = "scripted"

    def __init__(self, name: str = "scripted", config: Any = None, **options: Any) -> None:
        super().__init__(name)
        merged = {**(getattr(config, "options", None) or {}), **options}
        try:
            self.options = ScriptedOptions(**merged)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"llm.providers.{name}.options.{key}: {err['msg']}") from None
        self.model = f"scripted-{self.options.mode}"
        self.requests = 0  # requests started (tests read it)
        self.cancelled = 0  # streams closed by the caller before their end
        self._failures_left = self.options.fail_times

    def info(self) -> ProviderInfo:
        return ProviderInfo(
            name=self.name,
            kind=self.kind,
            model=self.model,
            label=f"{SCRIPTED_LABEL}: {self.options.mode}",
            scripted=True,
            supports_embeddings=True,
        )

    async def check(self) -> ProviderCheck:
        return ProviderCheck(ok=True, detail=self.info().label)

    def _reply_tokens(self, messages: list[dict[str, str]]) -> list[str]:
        if self.options.mode == "echo":
            text = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        else:
            text = self.options.reply
        pieces = _WORD.findall(text)
        if self.options.tokens is None:
            return pieces
        if not pieces:
            pieces = [" token"]
        out: list[str] = []
        for i in range(self.options.tokens):
            piece = pieces[i % len(pieces)]
            if i >= len(pieces) and not piece[:1].isspace():
                piece = " " + piece  # the next round is a new word
            out.append(piece)
        return out

    def _fail(self) -> None:
        if self._failures_left <= 0:
            return
        self._failures_left -= 1
        kind = self.options.fail_kind
        message = f"{self.name}: scripted failure ({kind})"
        if kind == "rate_limited":
            raise ProviderRateLimited(message, provider=self.name, retry_after=self.options.retry_after_s)
        if kind == "provider_timeout":
            raise ProviderTimeout(message, provider=self.name)
        if kind == "provider_unavailable":
            raise ProviderUnavailable(message, provider=self.name)
        raise ProviderError(message, provider=self.name)

    async def stream_chat(
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
    ) -> AsyncGenerator[ChatChunk, None]:
        msgs = normalise_messages(messages)
        if max_tokens is not None and max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self.requests += 1
        self._fail()
        opts = self.options
        tokens = self._reply_tokens(msgs)
        prompt_tokens = sum(rough_token_count(m["content"]) + 4 for m in msgs)
        matcher = StopMatcher(stop_tuple(stop))
        emitted = 0
        finish = "stop"
        finished = False
        try:
            if opts.ttft_s:
                await asyncio.sleep(opts.ttft_s)
            for i, token in enumerate(tokens):
                if max_tokens is not None and emitted >= max_tokens:
                    finish = "length"
                    break
                if opts.stall_after is not None and i >= opts.stall_after:
                    await self._stall()
                if i and opts.token_delay_s:
                    await asyncio.sleep(opts.token_delay_s)
                emitted += 1
                text = matcher.feed(token)
                if text:
                    yield ChatChunk(delta=text, model=self.model)
                if matcher.stopped:
                    break
            else:
                if opts.stall_after is not None and len(tokens) == opts.stall_after:
                    await self._stall()
            tail = matcher.flush()
            if tail:
                yield ChatChunk(delta=tail, model=self.model)
            finished = True
            yield ChatChunk(
                finish_reason=finish,
                usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=emitted),
                model=self.model,
            )
        except (GeneratorExit, asyncio.CancelledError):
            if not finished:
                self.cancelled += 1
            raise

    async def _stall(self) -> None:
        if self.options.stall_s is None:
            await asyncio.Event().wait()  # until the caller gives up and closes the stream
        else:
            await asyncio.sleep(self.options.stall_s)
            raise ProviderTimeout(
                f"{self.name}: no token for {self.options.stall_s:g} s (scripted stall)", provider=self.name
            )

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Deterministic unit vectors from sha256 of each text: stable across runs, never semantic."""
        out: list[list[float]] = []
        dim = self.options.embed_dim
        for text in texts:
            values: list[float] = []
            counter = 0
            while len(values) < dim:
                block = hashlib.sha256(f"{counter}:{text}".encode()).digest()
                values.extend(v / 2**31 - 1.0 for v in struct.unpack("<8I", block))
                counter += 1
            vec = values[:dim]
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            out.append([v / norm for v in vec])
        return out
