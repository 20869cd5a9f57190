"""The `openai` provider: any OpenAI-compatible endpoint (OpenAI, Groq, Ollama, vLLM, llama.cpp server).

- One `httpx.AsyncClient` per provider and event loop (connections are reused; a client cannot cross loops).
- Retries with exponential backoff and jitter on 429, 408 and 5xx answers, on connection errors, and on a
  stream that closes before its first token; `Retry-After` (seconds or an HTTP date) and `retry-after-ms` are
  honoured.
  Once a token has been emitted nothing is retried: a retry would duplicate text.
- SSE is parsed incrementally from `aiter_lines`; `data: [DONE]` ends the stream; invalid JSON, a stream that
  closes before its end, or one that stalls past the read timeout become `ProviderError`s with a clear code.
- Closing the stream early (`aclose()`) closes the HTTP response, so the upstream sees the disconnect.
- The API key is a `SecretStr`; it is sent as a bearer header and never logged or shown.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from suite.core.config import LLMProviderSettings
from suite.core.errors import ConfigError
from suite.core.llm.base import (
    BaseProvider,
    ChatChunk,
    Completion,
    MessageLike,
    NotSupported,
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderCheck,
    ProviderError,
    ProviderInfo,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    Usage,
    normalise_messages,
    stop_tuple,
)

log = logging.getLogger("suite.llm.openai")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# After `[DONE]` the body still holds the chunked terminator: read it (bounded) so the keep-alive connection goes
# back to the pool. Closing with unread bytes drops the connection, and the next request pays a new TCP
# connect plus the server's connection setup before its first token (~2 ms on our own /v1).
DRAIN_AFTER_DONE_S = 0.25
DRAIN_AFTER_DONE_LINES = 64


class OpenAIOptions(BaseModel):
    """`[llm.providers.<name>] options = {...}` for kind "openai"."""

    model_config = ConfigDict(extra="forbid")

    stream_usage: bool = Field(True, description="ask for usage in the stream (stream_options.include_usage)")
    max_retry_wait_s: float = Field(30.0, ge=0, description="a longer Retry-After fails at once instead")
    max_backoff_s: float = Field(8.0, ge=0)
    trust_env: bool = Field(True, description="honour HTTP(S)_PROXY / NO_PROXY from the environment")
    max_connections: int = Field(32, ge=1)
    embedding_model: str | None = None


class _Retryable(Exception):
    """Internal: a failure that may be retried (nothing was emitted yet)."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(error.message)
        self.error = error


def safe_url(url: str) -> str:
    """The URL without user:password@ (shown in info and logs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_retry_after(headers: httpx.Headers) -> float | None:
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _upstream_message(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            text = str(err.get("message") or err.get("detail") or err)
        elif isinstance(err, str):
            text = err
    text = " ".join(text.split())
    return text[:300] + ("…" if len(text) > 300 else "")


class OpenAIProvider(BaseProvider):
    kind = "openai"

    def __init__(
        self,
        name: str = "openai",
        config: LLMProviderSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(name)
        self.config = config or LLMProviderSettings.model_validate({"kind": "openai"})
        try:
            self.options = OpenAIOptions(**self.config.options)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"llm.providers.{name}.options.{key}: {err['msg']}") from None
        self.base_url = (self.config.base_url or DEFAULT_BASE_URL).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"llm.providers.{name}.base_url must start with http:// or https://")
        self.model = self.config.model
        self._transport = transport
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._random = random.Random()

    # --- plumbing -----------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "suite-llm"}
        if self.config.api_key is not None and self.config.api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        headers.update(self.config.headers)
        return headers

    def client(self) -> httpx.AsyncClient:
        """This provider's client for the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=self._headers(),
                timeout=httpx.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s),
                limits=httpx.Limits(
                    max_connections=self.options.max_connections,
                    max_keepalive_connections=self.options.max_connections,
                ),
                trust_env=self.options.trust_env,
                transport=self._transport,
            )
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the client of the running loop; clients of other (closed) loops are dropped."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - always called from a loop
            return
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()

    def _payload(
        self,
        messages: Sequence[MessageLike],
        *,
        stream: bool,
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        stop: Sequence[str] | str | None,
        seed: int | None,
        model: str | None,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"messages": normalise_messages(messages), "stream": stream}
        if model or self.model:
            payload["model"] = model or self.model
        if max_tokens is not None:
            if max_tokens < 1:
                raise ValueError("max_tokens must be at least 1")
            payload["max_tokens"] = max_tokens
        if temperature is not None:
            payload["temperature"] = temperature
        if top_p is not None:
            payload["top_p"] = top_p
        stops = stop_tuple(stop)
        if stops:
            payload["stop"] = list(stops)
        if seed is not None:
            payload["seed"] = seed
        if stream and self.options.stream_usage:
            payload["stream_options"] = {"include_usage": True}
        payload.update(extra)
        return payload

    def _status_error(self, response: httpx.Response, body: bytes) -> ProviderError:
        status = response.status_code
        detail = _upstream_message(body) or response.reason_phrase
        where = f"{self.name}: {safe_url(str(response.request.url))} answered {status}"
        if status == 429:
            retry_after = parse_retry_after(response.headers)
            return ProviderRateLimited(
                f"{where} (rate limited): {detail}",
                provider=self.name,
                retry_after=retry_after,
                status=status,
            )
        if status in (401, 403):
            return ProviderAuthFailed(
                f"{where}: {detail} (check llm.providers.{self.name}.api_key)",
                provider=self.name,
                status=status,
            )
        retry_after = parse_retry_after(response.headers)
        if status in (408, 504):
            return ProviderTimeout(
                f"{where}: {detail}", provider=self.name, status=status, retry_after=retry_after
            )
        return ProviderError(f"{where}: {detail}", provider=self.name, status=status, retry_after=retry_after)

    def _transport_error(self, exc: httpx.HTTPError, *, tokens: int, phase: str) -> ProviderError:
        url = safe_url(self.base_url)
        if isinstance(exc, httpx.ConnectTimeout):
            return ProviderUnavailable(
                f"{self.name}: connecting to {url} timed out after {self.config.connect_timeout_s:g} s",
                provider=self.name,
            )
        if isinstance(exc, httpx.ConnectError):
            return ProviderUnavailable(f"{self.name}: cannot connect to {url}: {exc}", provider=self.name)
        if isinstance(exc, httpx.TimeoutException):
            return ProviderTimeout(
                f"{self.name}: {url} sent nothing for {self.config.timeout_s:g} s {phase} "
                f"(after {tokens} tokens)",
                provider=self.name,
            )
        return ProviderError(
            f"{self.name}: the connection to {url} closed {phase} (after {tokens} tokens): "
            f"{type(exc).__name__}: {exc}",
            provider=self.name,
        )

    async def _backoff(self, attempt: int, error: ProviderError) -> None:
        """Sleep before retry number `attempt` (0-based), or raise `error` when the wait would be too long."""
        if error.retry_after is not None:
            if error.retry_after > self.options.max_retry_wait_s:
                raise error
            delay = error.retry_after
        else:
            base = self.config.backoff_s * (2**attempt)
            delay = min(self.options.max_backoff_s, base) * self._random.uniform(0.5, 1.5)
        log.info(
            "%s: %s; retry %d/%d in %.2f s",
            self.name,
            error.code,
            attempt + 1,
            self.config.max_retries,
            delay,
        )
        if delay > 0:
            await asyncio.sleep(delay)

    @asynccontextmanager
    async def _send(
        self, method: str, path: str, payload: dict[str, Any] | None
    ) -> AsyncIterator[httpx.Response]:
        """Open a response (headers read, body not) or raise `_Retryable`/`ProviderError`."""
        client = self.client()
        request = client.build_request(method, path, json=payload)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            error = self._transport_error(exc, tokens=0, phase="before answering")
            if isinstance(exc, httpx.NetworkError | httpx.ConnectTimeout | httpx.RemoteProtocolError):
                # Nothing was received: refused, reset, or a stale keep-alive connection. Safe to retry.
                raise _Retryable(error) from exc
            raise error from exc
        try:
            if response.status_code >= 400:
                try:
                    body = await response.aread()
                except httpx.HTTPError:
                    body = b""
                error = self._status_error(response, body)
                if response.status_code in RETRY_STATUSES or response.status_code >= 500:
                    raise _Retryable(error)
                raise error
            yield response
        finally:
            await response.aclose()

    # --- chat -----------------------------------------------------------------------------------------

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
        payload = self._payload(
            messages,
            stream=True,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
            model=model,
            extra=extra,
        )
        attempt = 0
        emitted = False
        while True:
            try:
                async with (
                    self._send("POST", "/chat/completions", payload) as response,
                    aclosing(self._read_stream(response, payload.get("model"))) as chunks,
                ):
                    async for chunk in chunks:
                        if chunk.delta:
                            emitted = True
                        yield chunk
                return
            except _Retryable as exc:
                if emitted or attempt >= self.config.max_retries:
                    raise exc.error from None
                await self._backoff(attempt, exc.error)
                attempt += 1

    async def _read_stream(
        self, response: httpx.Response, requested_model: Any
    ) -> AsyncGenerator[ChatChunk, None]:
        model = str(requested_model or self.model or "")
        finish: str | None = None
        usage: Usage | None = None
        tokens = 0
        done = False
        lines = response.aiter_lines()
        data: list[str] = []
        try:
            while not done:
                try:
                    line = await anext(lines)
                except StopAsyncIteration:
                    break
                if line:
                    if line.startswith(":"):
                        continue  # comment / keep-alive
                    field, _, value = line.partition(":")
                    if field == "data":
                        data.append(value[1:] if value.startswith(" ") else value)
                    continue
                if not data:
                    continue
                event, data = "\n".join(data), []
                if event.strip() == "[DONE]":
                    done = True
                    break
                obj = self._parse_event(event)
                model = str(obj.get("model") or model)
                if obj.get("usage"):
                    usage = self._usage(obj["usage"])
                for choice in (obj.get("choices") or [])[:1]:
                    if not isinstance(choice, dict):
                        continue
                    delta = choice.get("delta") or {}
                    content = delta.get("content") if isinstance(delta, dict) else None
                    if content:
                        tokens += 1
                        yield ChatChunk(delta=str(content), model=model)
                    if choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
        except httpx.HTTPError as exc:
            error = self._transport_error(exc, tokens=tokens, phase="in the middle of the reply")
            if tokens == 0 and finish is None and not isinstance(exc, httpx.TimeoutException):
                raise _Retryable(error) from exc
            raise error from exc
        if done:
            await self._drain(lines)
        elif data and "\n".join(data).strip() == "[DONE]":
            done = True
        if not done and finish is None:
            error = ProviderError(
                f"{self.name}: the stream from {safe_url(self.base_url)} ended before the reply finished "
                f"(after {tokens} tokens, no [DONE])",
                provider=self.name,
            )
            if tokens == 0:
                raise _Retryable(error)
            raise error
        yield ChatChunk(
            finish_reason=finish or "stop",
            usage=usage or Usage(completion_tokens=tokens, estimated=True),
            model=model,
        )

    @staticmethod
    async def _drain(lines: AsyncIterator[str]) -> None:
        """Read what follows `[DONE]` so the connection is reused; a server that keeps talking is cut off."""
        try:
            async with asyncio.timeout(DRAIN_AFTER_DONE_S):
                for _ in range(DRAIN_AFTER_DONE_LINES):
                    await anext(lines)
        except (StopAsyncIteration, TimeoutError, httpx.HTTPError):
            pass

    def _parse_event(self, event: str) -> dict[str, Any]:
        try:
            obj = json.loads(event)
        except ValueError:
            raise ProviderBadResponse(
                f"{self.name}: invalid JSON in the stream from {safe_url(self.base_url)}: {event[:80]!r}",
                provider=self.name,
            ) from None
        if not isinstance(obj, dict):
            raise ProviderBadResponse(
                f"{self.name}: unexpected stream event {event[:80]!r}", provider=self.name
            )
        if obj.get("error"):
            err = obj["error"]
            message = err.get("message") if isinstance(err, dict) else str(err)
            raise ProviderError(f"{self.name}: the upstream reported an error: {message}", provider=self.name)
        return obj

    @staticmethod
    def _usage(raw: Any) -> Usage | None:
        if not isinstance(raw, dict):
            return None
        try:
            return Usage(
                prompt_tokens=int(raw.get("prompt_tokens") or 0),
                completion_tokens=int(raw.get("completion_tokens") or 0),
            )
        except (TypeError, ValueError):
            return None

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
        payload = self._payload(
            messages,
            stream=False,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
            model=model,
            extra=extra,
        )
        data = await self._request_json("POST", "/chat/completions", payload)
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content") or ""
            finish = str(choice.get("finish_reason") or "stop")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ProviderBadResponse(
                f"{self.name}: the answer has no choices[0].message: {json.dumps(data)[:120]}",
                provider=self.name,
            ) from None
        usage = self._usage(data.get("usage")) or Usage(estimated=True)
        return Completion(
            text=str(text),
            finish_reason=finish,
            usage=usage,
            model=str(data.get("model") or payload.get("model") or ""),
            provider=self.name,
        )

    async def _request_json(self, method: str, path: str, payload: dict[str, Any] | None) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                async with self._send(method, path, payload) as response:
                    try:
                        body = await response.aread()
                    except httpx.HTTPError as exc:
                        error = self._transport_error(exc, tokens=0, phase="while sending the answer")
                        if isinstance(exc, httpx.TimeoutException):
                            raise error from exc
                        raise _Retryable(error) from exc
            except _Retryable as exc:
                if attempt >= self.config.max_retries:
                    raise exc.error from None
                await self._backoff(attempt, exc.error)
                attempt += 1
                continue
            try:
                data = json.loads(body)
            except ValueError:
                raise ProviderBadResponse(
                    f"{self.name}: invalid JSON from {safe_url(self.base_url)}{path}: {body[:80]!r}",
                    provider=self.name,
                ) from None
            if not isinstance(data, dict):
                raise ProviderBadResponse(f"{self.name}: unexpected answer {body[:80]!r}", provider=self.name)
            return data

    # --- embeddings, readiness, info --------------------------------------------------------------------

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        model = self.options.embedding_model or self.model
        payload: dict[str, Any] = {"input": list(texts)}
        if model:
            payload["model"] = model
        try:
            data = await self._request_json("POST", "/embeddings", payload)
        except ProviderError as exc:
            if exc.status in (404, 405, 501):
                raise NotSupported(
                    f"{self.name}: {safe_url(self.base_url)} has no embeddings endpoint ({exc.status})",
                    provider=self.name,
                ) from None
            raise
        try:
            rows = sorted(data["data"], key=lambda r: int(r.get("index", 0)))
            return [[float(v) for v in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProviderBadResponse(
                f"{self.name}: unexpected embeddings answer", provider=self.name
            ) from None

    async def check(self) -> ProviderCheck:
        """GET /models: the endpoint answers and the key is accepted."""
        client = self.client()
        try:
            response = await client.get("/models", timeout=min(self.config.timeout_s, 10.0))
        except httpx.HTTPError as exc:
            error = self._transport_error(exc, tokens=0, phase="before answering")
            return ProviderCheck(ok=False, detail=error.message, code=error.code)
        if response.status_code >= 400:
            error = self._status_error(response, response.content)
            return ProviderCheck(ok=False, detail=error.message, code=error.code)
        return ProviderCheck(ok=True, detail=f"{self.info().label} answers")

    def info(self) -> ProviderInfo:
        endpoint = safe_url(self.base_url)
        host = urlsplit(self.base_url).hostname or endpoint
        model = self.model or "(server default)"
        return ProviderInfo(
            name=self.name,
            kind=self.kind,
            model=model,
            label=f"{model} via {host}",
            supports_embeddings=True,
            endpoint=endpoint,
        )
