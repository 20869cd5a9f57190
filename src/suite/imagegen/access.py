"""Who may call imagegen's routes: loopback callers, origins, and the caller dependency.

The dependencies are `async def` on purpose: a sync dependency (and core's `OptionalUser`, which takes a session)
costs thread-pool hops per request, and on a loaded 2-core machine each hop is a scheduling delay of its own.
Only a request that carries credentials (a bearer token or a session cookie) goes to the thread pool.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from suite.core.auth import bearer_scheme, bearer_token, optional_user, submitted_csrf
from suite.core.errors import Forbidden, Unauthorized
from suite.core.models import User
from suite.core.web_auth.sessions import SESSION_COOKIE
from suite.imagegen import service
from suite.imagegen.service import Caller

LOOPBACK = {"127.0.0.1", "::1", "localhost", "testclient"}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    return host in LOOPBACK or host.startswith("127.")


def allowed_origins() -> set[str]:
    from suite.core.config import get_settings

    s = get_settings()
    return {o.rstrip("/") for o in [*s.server.allowed_origins, *service.settings().allowed_origins]}


def origin_allowed(origin: str | None, host: str | None, scheme: str = "http") -> bool:
    """Same origin as the Host header, or in the allow-list; a missing Origin (non-browser client) is fine."""
    if not origin:
        return True
    origin = origin.rstrip("/")
    if origin in allowed_origins():
        return True
    if host:
        parts = urlsplit(origin)
        return parts.netloc == host and parts.scheme in ("http", "https")
    return False


async def check_origin(request: Request) -> None:
    refuse_foreign_origin(request)


def refuse_foreign_origin(request: Request) -> None:
    """403 foreign_origin for a state-changing request from another site (browsers send Origin)."""
    if request.method in UNSAFE_METHODS and not origin_allowed(
        request.headers.get("origin"), request.headers.get("host")
    ):
        raise Forbidden(
            f"requests from origin {request.headers.get('origin')!r} are refused", code="foreign_origin"
        )


def _credentialed_user(request: Request, submitted: str | None) -> User | None:
    """core's `optional_user` (token or cookie, CSRF, last-used stamps) with a session of its own."""
    from suite.core.db import new_session

    session = new_session(read_only=request.method in SAFE_METHODS)
    try:
        user = optional_user(request, session, submitted)
        session.commit()
        return user
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


async def get_caller(
    request: Request,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> Caller:
    """A bearer token (or web session) user; anonymous local access from loopback when allowed."""
    if bearer_token(request) or request.cookies.get(SESSION_COOKIE):
        submitted = await submitted_csrf(request)
        user = await run_in_threadpool(_credentialed_user, request, submitted)
        if user is not None:
            return Caller(user_id=user.id, admin=user.role == "admin")
    if service.settings().open_on_loopback and is_loopback(request):
        return service.LOCAL
    raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")


CallerDep = Annotated[Caller, Depends(get_caller)]


async def admin_caller(caller: CallerDep) -> Caller:
    if not caller.admin:
        raise Forbidden("admin role required")
    return caller


AdminDep = Annotated[Caller, Depends(admin_caller)]
