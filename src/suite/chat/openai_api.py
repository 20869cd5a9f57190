"""The OpenAI-compatible API at the root (`/v1` by default; `chat.openai_prefix = ""` disables it).

`POST /v1/chat/completions` (JSON or SSE) and `GET /v1/models`, bearer = a core API token, per-key limits
(requests/min, completion tokens/min, concurrent requests). Requests go through the same broker and workers.
Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from suite.chat.schemas import OAIChatRequest
from suite.chat.settings import chat_settings
from suite.chat.text import BadText, check_text
from suite.core.errors import SuiteError

log = logging.getLogger("suite.chat.openai")
CREATED = int(time.time())


class OAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(self.retry_after + 0.999)))
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers)


def _auth(plain: str) -> dict[str, Any]:
    from suite.chat.models import KeyLimit
    from suite.core.auth import authenticate_token
    from suite.core.db import session_scope

    with session_scope() as session:
        user, token = authenticate_token(session, plain)
        override = session.get(KeyLimit, token.id)
        return {
            "user_id": user.id,
            "token_id": token.id,
            "limits": {
                "rpm": override.requests_per_minute if override else None,
                "tpm": override.tokens_per_minute if override else None,
                "max_concurrent": override.max_concurrent if override else None,
            },
        }


async def authenticate(request: Request) -> dict[str, Any]:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise OAIError(401, "missing API key: send 'Authorization: Bearer <token>'", code="invalid_api_key")
    try:
        return await asyncio.to_thread(_auth, value.strip())
    except SuiteError as exc:
        raise OAIError(401, f"invalid API key: {exc.message}", code="invalid_api_key")


def _text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        text = content
    else:
        parts = []
        for part in content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise OAIError(
                    400, "only text content parts are supported", param=f"messages[{index}].content"
                )
            parts.append(part["text"])
        text = "".join(parts)
    try:
        return check_text(text)
    except BadText as exc:
        raise OAIError(400, f"messages[{index}].content: {exc}", param=f"messages[{index}].content")


def validate(body: Any) -> tuple[OAIChatRequest, list[dict[str, str]]]:
    from suite.chat.llm import is_known_model

    if not isinstance(body, dict):
        raise OAIError(400, "the body must be a JSON object")
    try:
        req = OAIChatRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        raise OAIError(400, f"{param}: {err['msg']}", param=param)
    if req.n is not None and req.n != 1:
        raise OAIError(400, "only n = 1 is supported", param="n")
    for name in ("tools", "functions", "tool_choice"):
        if getattr(req, name):
            raise OAIError(400, f"{name} are not supported", param=name)
    if req.logprobs or req.top_logprobs:
        raise OAIError(400, "logprobs are not supported", param="logprobs")
    if not req.messages:
        raise OAIError(400, "messages must not be empty", param="messages")
    messages = []
    for i, m in enumerate(req.messages):
        if m.role not in ("system", "user", "assistant", "developer"):
            raise OAIError(400, f"unsupported role {m.role!r}", param=f"messages[{i}].role")
        role = "system" if m.role == "developer" else m.role
        messages.append({"role": role, "content": _text(m.content, i)})
    if not is_known_model(req.model):
        raise OAIError(404, f"the model {req.model!r} does not exist", param="model", code="model_not_found")
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, name)
        if value is not None and value < 1:
            raise OAIError(400, f"{name} must be at least 1", param=name)
    return req, messages


_workers_seen: tuple[float, bool] = (0.0, False)


async def workers_alive(runtime: Any) -> bool:
    global _workers_seen
    from suite.chat.runtime_state import embedded_worker

    if runtime.broker.kind == "memory":
        worker = embedded_worker()
        return worker is not None and not worker._stopping
    now = time.monotonic()
    if now - _workers_seen[0] < 1.0:
        return _workers_seen[1]
    try:
        alive = bool(await runtime.broker.live_workers())
    except SuiteError:
        alive = False
    _workers_seen = (now, alive)
    return alive


async def _limits(runtime: Any, key: dict[str, Any]) -> tuple[str, int]:
    """Per-key rpm, tpm and concurrency; returns the concurrency counter key to release."""

    defaults = chat_settings().api_limits
    own = key["limits"]
    rpm = own["rpm"] or defaults.rpm
    tpm = own["tpm"] or defaults.tpm
    max_concurrent = own["max_concurrent"] or defaults.max_concurrent
    broker = runtime.broker
    token = key["token_id"]
    retry = await broker.rate_hit(f"key:{token}:rpm", limit=rpm)
    if retry is not None:
        raise OAIError(
            429,
            f"rate limit reached: {rpm} requests per minute for this key",
            type="requests",
            code="rate_limit_exceeded",
            retry_after=retry,
        )
    if await broker.rate_peek(f"key:{token}:tpm") >= tpm:
        raise OAIError(
            429,
            f"rate limit reached: {tpm} tokens per minute for this key",
            type="tokens",
            code="rate_limit_exceeded",
            retry_after=60 - time.time() % 60,
        )
    conc_key = f"key:{token}:inflight"
    if await broker.counter_add(conc_key, 1, ttl_s=600) > max_concurrent:
        await broker.counter_add(conc_key, -1, ttl_s=600)
        raise OAIError(
            429,
            f"more than {max_concurrent} concurrent requests for this key",
            type="requests",
            code="rate_limit_exceeded",
            retry_after=1,
        )
    return conc_key, token


def build_router(prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=["openai"])
    if not prefix:
        return APIRouter()

    @router.get("/models")
    async def models(request: Request) -> JSONResponse:
        from suite.chat.llm import model_names

        try:
            await authenticate(request)
        except OAIError as exc:
            return exc.response()
        data = [{"id": n, "object": "model", "created": CREATED, "owned_by": "suite"} for n in model_names()]
        return JSONResponse({"object": "list", "data": data})

    @router.post("/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            return await _completions(request)
        except OAIError as exc:
            return exc.response()

    return router


async def _completions(request: Request) -> Any:
    from suite.chat.broker.base import BrokerUnavailable
    from suite.chat.runtime_state import get_runtime

    chat = chat_settings()
    key = await authenticate(request)
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise OAIError(400, f"the body is not JSON: {exc}")
    req, messages = validate(body)
    runtime = get_runtime()
    if not await workers_alive(runtime):
        raise OAIError(503, "no chat worker is alive", type="server_error", code="service_unavailable")
    max_tokens = min(req.max_completion_tokens or req.max_tokens or chat.max_tokens, chat.max_tokens)
    conc_key, token = await _limits(runtime, key)
    params = {
        "max_tokens": max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop": [req.stop] if isinstance(req.stop, str) else req.stop,
        "seed": req.seed,
    }
    try:
        sub = await runtime.submit_api(
            user_id=key["user_id"], api_token_id=token, model=req.model, messages=messages, params=params
        )
    except BrokerUnavailable as exc:
        await runtime.broker.counter_add(conc_key, -1, ttl_s=600)
        raise OAIError(503, exc.message, type="server_error", code="broker_unavailable")
    except BaseException:
        await runtime.broker.counter_add(conc_key, -1, ttl_s=600)
        raise
    completion_id = f"chatcmpl-{sub.request_id.replace('-', '')}"
    created = int(time.time())

    async def release(tokens: int) -> None:
        with contextlib.suppress(Exception):
            await runtime.broker.counter_add(conc_key, -1, ttl_s=600)
            if tokens:
                await runtime.broker.rate_hit(f"key:{token}:tpm", limit=1 << 62, amount=tokens)

    frames = runtime.frames(request_id=sub.request_id, client_request_id=sub.client_request_id)
    if not req.stream:
        parts: list[str] = []
        final: dict[str, Any] | None = None
        try:
            async for frame in frames:
                if frame["type"] == "reset":
                    parts = []
                elif frame["type"] == "delta":
                    parts.append(frame["text"])
                elif frame["type"] in ("done", "error"):
                    final = frame
        finally:
            if final is None:
                with contextlib.suppress(Exception):
                    await runtime.broker.cancel(sub.request_id)
            await release(int((final or {}).get("usage", {}).get("completion_tokens") or 0))
        assert final is not None
        if final["type"] == "error":
            raise _frame_error(final)
        usage = final["usage"]
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": req.model,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(parts)},
                        "logprobs": None,
                        "finish_reason": _finish(final["finish_reason"]),
                    }
                ],
                "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
            }
        )

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": req.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            body["usage"] = None
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def stream() -> AsyncIterator[str]:
        finished = False
        tokens = 0
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for frame in frames:
                kind = frame["type"]
                if kind == "delta":
                    yield chunk({"content": frame["text"]})
                elif kind == "done":
                    finished = True
                    usage = frame["usage"]
                    tokens = usage["completion_tokens"]
                    yield chunk({}, _finish(frame["finish_reason"]))
                    if include_usage:
                        body = {
                            "id": completion_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": req.model,
                            "choices": [],
                            "usage": {
                                **usage,
                                "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
                            },
                        }
                        yield f"data: {json.dumps(body)}\n\n"
                elif kind == "error":
                    finished = True
                    err = _frame_error(frame)
                    body = {
                        "error": {"message": err.message, "type": err.type, "param": None, "code": err.code}
                    }
                    yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not finished:
                log.info("/v1 client disconnected mid-stream; cancelling request %s", sub.request_id)
                with contextlib.suppress(Exception):
                    await runtime.broker.cancel(sub.request_id)
            await release(tokens)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def _finish(reason: str) -> str:
    return "stop" if reason == "cancelled" else reason


def _frame_error(frame: dict[str, Any]) -> OAIError:
    code = frame.get("code", "provider_error")
    status = {"provider_timeout": 504, "broker_unavailable": 503, "interrupted": 503}.get(code, 502)
    return OAIError(
        status,
        frame.get("message", code),
        type="server_error",
        code=code,
        retry_after=frame.get("retry_after"),
    )
