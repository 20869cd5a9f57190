"""The FastAPI application: error handlers, request ids, body limit, health, core and domain routers.

Every error leaves as `{"error": {"code": "lower_snake", "message": ...}}` (plus `details` when useful),
whatever raised it: a `SuiteError` from a service, FastAPI's validation, Starlette's 404/405, the body limit,
or an unexpected exception (500, logged, the request id in the message).
"""

from __future__ import annotations

import inspect
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from suite import __version__
from suite.core.config import get_settings
from suite.core.errors import RateLimited, SuiteError, UsageError
from suite.core.plugins import DomainSpec, load_domain_specs

log = logging.getLogger("suite.api")

# Core routers: (import string, prefix).
CORE_ROUTERS: tuple[tuple[str, str], ...] = (
    ("suite.core.web_auth:router", "/api/v1/auth"),
    ("suite.core.web_auth:pages", ""),
    ("suite.core.jobs_api:router", "/api/v1/jobs"),
    ("suite.core.events_api:router", "/api/v1/events"),
    ("suite.core.web:router", ""),
)

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,64}")

HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The one error shape of the API."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


# --- middleware ----------------------------------------------------------------------------------------


class RequestIdMiddleware:
    """Echo a sane `X-Request-ID` from the client or make one; kept on `request.state.request_id`.

    A plain ASGI middleware (not `@app.middleware("http")`) so streaming responses and WebSockets pass through
    untouched. An incoming id with odd characters or over 64 characters is replaced, never echoed.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                rid = value.decode("latin-1")
                break
        if not _REQUEST_ID_OK.fullmatch(rid):
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = (REQUEST_ID_HEADER.lower().encode(), rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != header[0]]
                message["headers"] = [*headers, header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class _TooLarge(StarletteHTTPException):
    """Raised from `receive` when a streamed body passes the limit.

    An HTTPException so FastAPI's body parsing re-raises it (instead of turning it into a 400) and the
    HTTP error handler answers 413 in our shape; `BodyLimitMiddleware` catches it for mounted sub-apps.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class BodyLimitMiddleware:
    """413 for bodies over `server.max_body_bytes`: by Content-Length up front, or counted while streaming
    (chunked uploads have no Content-Length).

    A domain whose routes take bigger bodies (img2img uploads) names them in its spec:
    `extra={"body_limits": {"/sdapi/v1": 32 * 2**20}}`; the longest matching path prefix wins.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, prefixes: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Longest prefix first; "/a" matches "/a" and "/a/..." but not "/ab".
        self.prefixes = sorted((prefixes or {}).items(), key=lambda item: len(item[0]), reverse=True)

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.prefixes:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    await self._reject(scope, send, limit)
                    return
                break
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception as exc:
            if started or not _is_too_large(exc):
                raise
            await self._reject(scope, send, limit)

    async def _reject(self, scope: Scope, send: Send, limit: int) -> None:
        response = JSONResponse(
            error_body("too_large", f"request body over {limit} bytes"),
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, _disconnected, send)


def _is_too_large(exc: BaseException) -> bool:
    if isinstance(exc, _TooLarge):
        return True
    if isinstance(exc, BaseExceptionGroup):  # a task group that read the body
        return all(_is_too_large(e) for e in exc.exceptions)
    return False


async def _disconnected() -> Message:
    return {"type": "http.disconnect"}


# --- error handlers ------------------------------------------------------------------------------------


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to `{"error": {"code", "message"}}` with the right status."""

    async def suite_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SuiteError)
        headers: dict[str, str] = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if exc.status_code >= 500:
            log.warning("%s on %s %s: %s", exc.code, request.method, request.url.path, exc.message)
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        detail = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
            for e in errors
        ]
        return JSONResponse(
            error_body("validation_error", f"{where}: {first.get('msg')}", errors=detail), status_code=422
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = HTTP_ERROR_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) and exc.detail else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route for {request.method} {request.url.path}"
        elif exc.status_code == 405 and message == "Method Not Allowed":
            message = f"method {request.method} not allowed on {request.url.path}"
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        # Its own handler (not the catch-all): an expected 503 must not log an ASGI traceback.
        from suite.core.db import describe_db_error, is_busy_error

        rid = _request_id(request)
        headers = {REQUEST_ID_HEADER: rid} if rid else {}
        if is_busy_error(exc):
            body = error_body("database_busy", "the database is busy; retry shortly")
            return JSONResponse(body, status_code=503, headers={**headers, "Retry-After": "1"})
        body = error_body("database_unavailable", describe_db_error(exc))  # type: ignore[arg-type]
        return JSONResponse(body, status_code=503, headers=headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Runs in ServerErrorMiddleware, outside RequestIdMiddleware: set the header here.
        rid = _request_id(request)
        headers = {REQUEST_ID_HEADER: rid} if rid else {}
        log.error(
            "unhandled error on %s %s (request id %s)", request.method, request.url.path, rid, exc_info=exc
        )
        body = error_body("internal_error", f"internal error (request id {rid})")
        return JSONResponse(body, status_code=500, headers=headers)

    app.add_exception_handler(SuiteError, suite_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    from sqlalchemy.exc import OperationalError

    app.add_exception_handler(OperationalError, database_error)
    app.add_exception_handler(Exception, unexpected)


# --- health --------------------------------------------------------------------------------------------


def _check_redis(url: str) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
        return {"ok": True}
    except redis.RedisError as exc:
        from suite.core.db import safe_url

        return {"ok": False, "error": f"redis {safe_url(url)}: {exc}"}
    finally:
        client.close()


def check_readiness(specs: list[DomainSpec]) -> dict[str, dict[str, Any]]:
    """Each dependency's state: database, Redis when configured, every domain's own check.

    A domain's `readiness` callable returns None (or an empty value) when ready, or a problem string.
    """
    from suite.core.db import check_connection

    checks: dict[str, dict[str, Any]] = {}
    try:
        check_connection()
        checks["database"] = {"ok": True}
    except SuiteError as exc:
        checks["database"] = {"ok": False, "error": exc.message}
    settings = get_settings()
    if settings.redis_url:
        checks["redis"] = _check_redis(settings.redis_url)
    for spec in specs:
        if not spec.readiness:
            continue
        try:
            problem = spec.load_attr(spec.readiness)()
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        checks[spec.name] = {"ok": False, "error": str(problem)} if problem else {"ok": True}
    return checks


# --- the app -------------------------------------------------------------------------------------------


async def _call(target: str, app: FastAPI) -> None:
    """A domain's `startup`/`shutdown` hook: `mod:func` called with the app, awaited when it is async."""
    result = DomainSpec.load_attr(target)(app)
    if inspect.isawaitable(result):
        await result


def create_app(domains: list[str] | None = None, *, embedded_worker: bool = False) -> FastAPI:
    """The app serving the named domains (all landed domains when None).

    Nothing touches the database here: the lifespan creates or upgrades it, and a database that does not
    answer leaves the server up with `/readyz` saying 503 and naming it.
    """
    settings = get_settings()
    specs = [s for s in load_domain_specs() if domains is None or s.name in domains]
    unknown = set(domains or ()) - {s.name for s in specs}
    if unknown:
        raise UsageError(f"unknown domain(s): {', '.join(sorted(unknown))}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from starlette.concurrency import run_in_threadpool

        from suite.core.db import prepare_database

        try:
            await run_in_threadpool(prepare_database)
        except SuiteError as exc:  # serve still starts; /readyz names the database
            log.error("database not ready: %s", exc.message)
        consumer = None
        if embedded_worker:
            from suite.core.tasks import start_embedded_consumer

            consumer = start_embedded_consumer()
        started: list[DomainSpec] = []
        try:
            for spec in specs:
                if spec.startup:
                    await _call(spec.startup, app)
                started.append(spec)
            yield
        finally:
            for spec in reversed(started):  # every started domain stops, even when another one fails to
                if spec.shutdown:
                    try:
                        await _call(spec.shutdown, app)
                    except Exception:
                        log.exception("%s: shutdown failed", spec.name)
            if consumer is not None:
                consumer.stop()
            from suite.core import events

            await events.aclose()

    title = "suite" if domains is None or len(specs) != 1 else f"suite {specs[0].name}"
    app = FastAPI(
        title=title,
        version=__version__,
        lifespan=lifespan,
        description='Every error is `{"error": {"code", "message"}}`. Health: `/healthz`, `/readyz`.',
    )
    app.state.domains = [s.name for s in specs]
    app.state.domain_specs = specs
    install_error_handlers(app)

    # Middleware added last runs first: request id outermost, then the body limit, then CORS when configured.
    if settings.server.allowed_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.allowed_origins,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[REQUEST_ID_HEADER],
        )
    body_limits = {
        prefix: int(limit) for spec in specs for prefix, limit in spec.extra.get("body_limits", {}).items()
    }
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes, prefixes=body_limits)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Alive: the process answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "a dependency does not answer"}})
    def readyz() -> JSONResponse:
        """Ready: the database, Redis when configured and each domain's dependencies answer (503 names the
        failing ones)."""
        checks = check_readiness(specs)
        failing = [name for name, c in checks.items() if not c["ok"]]
        if failing:
            body = error_body("not_ready", f"not ready: {', '.join(failing)}", checks=checks)
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok", "checks": checks})

    for target, prefix in CORE_ROUTERS:
        app.include_router(DomainSpec.load_attr(target), prefix=prefix)
    for spec in specs:
        if spec.router:
            app.include_router(spec.load_attr(spec.router), prefix=f"/api/v1/{spec.name}", tags=[spec.name])
        if spec.pages:
            app.include_router(spec.load_attr(spec.pages), prefix=f"/{spec.name}", include_in_schema=False)
        if spec.root_router:
            app.include_router(spec.load_attr(spec.root_router))
    from suite.core.web import mount_static

    mount_static(app)
    return app
