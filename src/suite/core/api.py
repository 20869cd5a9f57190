"""The FastAPI application: error handlers, request ids, body limit, health, core and domain routers."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from suite import __version__
from suite.core.config import get_settings
from suite.core.errors import RateLimited, SuiteError
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


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


class BodyLimitMiddleware:
    """413 for bodies over `server.max_body_bytes` (by Content-Length, or counted while streaming)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        limit = scope.get("state", {}).get("max_body_bytes", self.max_bytes)
        if length is not None and length.isdigit() and int(length) > limit:
            await self._reject(send, limit)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send, limit)

    async def _reject(self, send: Send, limit: int) -> None:
        response = JSONResponse(error_body("too_large", f"request body over {limit} bytes"), status_code=413)
        await response({"type": "http"}, _empty_receive, send)


class _TooLarge(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SuiteError)
    async def suite_error(request: Request, exc: SuiteError) -> JSONResponse:
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body",)) or "request"
        detail = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")} for e in errors
        ]
        return JSONResponse(
            error_body("validation_error", f"{where}: {first.get('msg')}", errors=detail), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
        code = codes.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):
            from suite.core.db import describe_db_error

            return JSONResponse(error_body("database_unavailable", describe_db_error(exc)), status_code=503)
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        rid = getattr(request.state, "request_id", "")
        return JSONResponse(error_body("internal_error", f"internal error (request id {rid})"), status_code=500)


def check_readiness(specs: list[DomainSpec]) -> dict[str, dict[str, Any]]:
    """Each dependency's state: database, Redis when configured, every domain's own check."""
    checks: dict[str, dict[str, Any]] = {}
    from suite.core.db import check_connection

    try:
        check_connection()
        checks["database"] = {"ok": True}
    except SuiteError as exc:
        checks["database"] = {"ok": False, "error": exc.message}
    settings = get_settings()
    if settings.redis_url:
        import redis

        try:
            client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
            client.ping()
            client.close()
            checks["redis"] = {"ok": True}
        except redis.RedisError as exc:
            checks["redis"] = {"ok": False, "error": f"redis: {exc}"}
    for spec in specs:
        if not spec.readiness:
            continue
        try:
            problem = spec.load_attr(spec.readiness)()
            checks[spec.name] = {"ok": not problem, **({"error": str(problem)} if problem else {})}
        except Exception as exc:
            checks[spec.name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return checks


def create_app(domains: list[str] | None = None, *, embedded_worker: bool = False) -> FastAPI:
    """The app serving the named domains (all landed domains when None)."""
    settings = get_settings()
    specs = [s for s in load_domain_specs() if domains is None or s.name in domains]
    unknown = set(domains or ()) - {s.name for s in specs}
    if unknown:
        from suite.core.errors import UsageError

        raise UsageError(f"unknown domain(s): {', '.join(sorted(unknown))}")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        from suite.core.db import prepare_database

        try:
            prepare_database()
        except SuiteError as exc:  # serve still starts; /readyz names the database
            log.error("database not ready: %s", exc.message)
        consumer = None
        if embedded_worker:
            from suite.core.tasks import start_embedded_consumer

            consumer = start_embedded_consumer()
        for spec in specs:
            if spec.startup:
                await _maybe_await(spec.load_attr(spec.startup)(app))
        try:
            yield
        finally:
            if consumer is not None:
                consumer.stop()
            from suite.core import events

            await events.aclose()

    app = FastAPI(title="suite", version=__version__, lifespan=lifespan)
    app.state.domains = [s.name for s in specs]
    install_error_handlers(app)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = rid[:64]
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Alive: the process answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Ready: the database, Redis when configured and each domain's dependencies answer."""
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


async def _maybe_await(value: Any) -> Any:
    import inspect

    if inspect.isawaitable(value):
        return await value
    return value
