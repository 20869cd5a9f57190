"""Web login: server-side sessions (cookie), CSRF tokens on forms, login rate limit, login/logout pages.

The session cookie holds a random token; `core_session` stores only its sha256. Each session has its own
CSRF token: every cookie-authenticated POST/PUT/PATCH/DELETE, and every form post, must carry it as the
`csrf_token` form field or the `X-CSRF-Token` header, else 403. Before login, the login form uses a
double-submit cookie.

For domains: `PageUser` (a page that needs a login: redirects to /login), `CsrfProtected` (a route or router
dependency for form posts that use no user dependency) and `csrf_token(request)` for the hidden form field.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from suite.core import auth
from suite.core.auth import CurrentUser, SubmittedCsrf
from suite.core.config import get_settings
from suite.core.db import SessionDep, new_session, utcnow
from suite.core.errors import Forbidden, RateLimited, SuiteError, UsageError, ValidationFailed
from suite.core.models import User, WebSession

log = logging.getLogger("suite.auth")

SESSION_COOKIE = "suite_session"
CSRF_COOKIE = "suite_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
LOGIN_WINDOW_S = 60.0
_TOUCH_EVERY = timedelta(minutes=1)

router = APIRouter(tags=["auth"])
pages = APIRouter(include_in_schema=False)


# --- sessions ------------------------------------------------------------------------------------------


def _digest(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def create_session(session: Session, *, user: User, user_agent: str | None = None) -> tuple[WebSession, str]:
    """A new web session; returns the row and the plain cookie value (only its sha256 is stored)."""
    plain = secrets.token_urlsafe(32)
    now = utcnow()
    row = WebSession(
        id=_digest(plain),
        user_id=user.id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(seconds=get_settings().auth.session_ttl_s),
        user_agent=(user_agent or "")[:255] or None,
    )
    session.add(row)
    session.flush()
    return row, plain


def end_session(session: Session, *, plain: str) -> bool:
    """Delete the session behind a cookie value; whether one existed."""
    result = session.execute(delete(WebSession).where(WebSession.id == _digest(plain)))
    return bool(getattr(result, "rowcount", 0))


def purge_expired_sessions(session: Session) -> int:
    result = session.execute(delete(WebSession).where(WebSession.expires_at <= utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


def web_session_from_cookie(request: Request, session: Session) -> WebSession | None:
    """The live session named by the request's cookie (cached on `request.state`), or None."""
    if hasattr(request.state, "web_session"):
        cached: WebSession | None = request.state.web_session
        return cached
    found: WebSession | None = None
    plain = request.cookies.get(SESSION_COOKIE)
    if plain:
        row = session.get(WebSession, _digest(plain))
        now = utcnow()
        if row is not None and row.expires_at <= now:
            row = None  # expired rows are purged at the next login
        if row is not None:
            user = session.get(User, row.user_id)
            if user is None or not user.is_active:
                row = None
            elif now - row.last_seen_at > _TOUCH_EVERY:
                row.last_seen_at = now
        found = row
    request.state.web_session = found
    if found is not None:
        request.state.csrf_token = found.csrf_token  # read by suite.core.web.render
    return found


def user_from_cookie(request: Request, session: Session) -> User | None:
    """The active user of the request's session cookie, or None (no cookie, unknown, expired, disabled)."""
    row = web_session_from_cookie(request, session)
    user = session.get(User, row.user_id) if row is not None else None
    if user is not None:
        request.state.user = user  # read by suite.core.web.render
    return user


def set_session_cookie(response: Response, plain: str) -> None:
    settings = get_settings().auth
    response.set_cookie(
        SESSION_COOKIE,
        plain,
        max_age=settings.session_ttl_s,
        path="/",
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
    )


def clear_session_cookie(response: Response) -> None:
    settings = get_settings().auth
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=settings.cookie_secure
    )


# --- CSRF ----------------------------------------------------------------------------------------------


def _is_form(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return content_type in auth.FORM_CONTENT_TYPES


def csrf_token(request: Request) -> str:
    """The CSRF token to put in a form's hidden `csrf_token` field (or an htmx `X-CSRF-Token` header).

    The session's token when logged in; otherwise a pre-session token the page must set as a cookie with
    `attach_csrf_cookie(request, response)` (the login page does).
    """
    row: WebSession | None = getattr(request.state, "web_session", None)
    if row is None and not hasattr(request.state, "web_session") and request.cookies.get(SESSION_COOKIE):
        with new_session() as session:
            row = web_session_from_cookie(request, session)
            session.commit()
    if row is not None:
        return row.csrf_token
    token: str | None = getattr(request.state, "csrf_pending", None) or request.cookies.get(CSRF_COOKIE)
    if not token:
        token = secrets.token_urlsafe(32)
        request.state.csrf_pending = token
    return token


def attach_csrf_cookie(request: Request, response: Response) -> None:
    """Set the pre-session CSRF cookie when `csrf_token(request)` minted a new one."""
    token = getattr(request.state, "csrf_pending", None)
    if token:
        response.set_cookie(
            CSRF_COOKIE,
            token,
            path="/",
            httponly=True,
            samesite="lax",
            secure=get_settings().auth.cookie_secure,
        )


def check_csrf(request: Request, session: Session, submitted: str | None) -> None:
    """403 unless an unsafe request with a session cookie, or any form post, carries the right CSRF token.

    Bearer-token requests are exempt (a browser cannot attach them across sites); so are non-form requests
    without a session (nothing ambient to abuse; authentication answers them).
    """
    if request.method in SAFE_METHODS or auth.bearer_token(request):
        return
    row = web_session_from_cookie(request, session)
    if row is None and not _is_form(request):
        return
    expected = row.csrf_token if row is not None else request.cookies.get(CSRF_COOKIE)
    if not expected:
        raise Forbidden(
            "CSRF check failed: no session or CSRF cookie; load the form again", code="csrf_failed"
        )
    if not submitted:
        raise Forbidden(
            f"CSRF token missing: send the form's {CSRF_FIELD} field or an {CSRF_HEADER} header",
            code="csrf_failed",
        )
    if not secrets.compare_digest(submitted.encode(), expected.encode()):
        raise Forbidden(
            "CSRF token does not match this session; reload the page and try again", code="csrf_failed"
        )


def csrf_protect(request: Request, session: SessionDep, submitted: SubmittedCsrf) -> None:
    """Route or router dependency: `dependencies=[Depends(csrf_protect)]` (safe methods pass)."""
    check_csrf(request, session, submitted)


CsrfProtected = Annotated[None, Depends(csrf_protect)]


# --- pages that need a login ---------------------------------------------------------------------------


def safe_next(target: str | None) -> str:
    """A local path to go to after login (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def login_url(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?next=" + quote(here, safe="/")


def page_user(request: Request, session: SessionDep, submitted: SubmittedCsrf) -> User:
    """The logged-in user of a web page; anonymous visitors are sent to /login (htmx: HX-Redirect)."""
    user = user_from_cookie(request, session)
    if user is None:
        target = login_url(request)
        if request.headers.get("hx-request"):
            raise StarletteHTTPException(401, "login required", headers={"HX-Redirect": target})
        raise StarletteHTTPException(303, "login required", headers={"Location": target})
    check_csrf(request, session, submitted)
    return user


PageUser = Annotated[User, Depends(page_user)]


# --- login rate limit ----------------------------------------------------------------------------------


class Limiter(Protocol):
    def hit(self, key: str, limit: int) -> float | None:
        """Count one attempt; the seconds to wait when over `limit`, else None."""

    def reset(self, key: str) -> None: ...


class MemoryLimiter:
    """Fixed one-minute windows in this process."""

    def __init__(self, window_s: float = LOGIN_WINDOW_S) -> None:
        self.window_s = window_s
        self._hits: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, limit: int) -> float | None:
        now = time.monotonic()
        with self._lock:
            start, count = self._hits.get(key, (now, 0))
            if now - start >= self.window_s:
                start, count = now, 0
            count += 1
            self._hits[key] = (start, count)
            if len(self._hits) > 10_000:
                self._hits = {k: v for k, v in self._hits.items() if now - v[0] < self.window_s}
        return self.window_s - (now - start) if count > limit else None

    def reset(self, key: str) -> None:
        with self._lock:
            self._hits.pop(key, None)


class RedisLimiter:
    """Shared by every server process: SET NX EX + INCR, the key's TTL as Retry-After."""

    def __init__(self, url: str, window_s: float = LOGIN_WINDOW_S) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self.window_s = window_s
        self.fallback = MemoryLimiter(window_s)

    def hit(self, key: str, limit: int) -> float | None:
        import redis

        name = f"suite:login:{key}"
        try:
            pipe = self.client.pipeline()
            pipe.set(name, 0, ex=int(self.window_s), nx=True)
            pipe.incr(name)
            pipe.ttl(name)
            _, count, ttl = pipe.execute()
        except redis.RedisError as exc:
            log.warning("login rate limit: Redis unavailable (%s); counting in this process", exc)
            return self.fallback.hit(key, limit)
        return float(max(ttl, 1)) if int(count) > limit else None

    def reset(self, key: str) -> None:
        import redis

        self.fallback.reset(key)
        try:
            self.client.delete(f"suite:login:{key}")
        except redis.RedisError:
            pass


_limiters: dict[str, Limiter] = {}
_limiters_lock = threading.Lock()


def login_limiter() -> Limiter:
    url = get_settings().redis_url or ""
    with _limiters_lock:
        limiter = _limiters.get(url)
        if limiter is None:
            limiter = RedisLimiter(url) if url else MemoryLimiter()
            _limiters[url] = limiter
        return limiter


def reset_rate_limits() -> None:
    """Forget every in-process counter and Redis client (tests)."""
    with _limiters_lock:
        _limiters.clear()


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def login(
    session: Session, request: Request, *, username: str, password: str
) -> tuple[User, WebSession, str]:
    """Rate-limited password login: the user, the new session and its plain cookie value."""
    key = f"{username.strip().lower()}|{_client_ip(request)}"
    limiter = login_limiter()
    wait = limiter.hit(key, get_settings().auth.login_attempts_per_minute)
    if wait is not None:
        raise RateLimited(
            f"too many login attempts for {username.strip()!r}; try again later", retry_after=wait
        )
    user = auth.authenticate_password(session, username=username, password=password)
    limiter.reset(key)
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        end_session(session, plain=old)
    purge_expired_sessions(session)
    row, plain = create_session(session, user=user, user_agent=request.headers.get("user-agent"))
    request.state.web_session = row
    request.state.csrf_token = row.csrf_token
    request.state.user = user
    return user, row, plain


def logout(request: Request, session: Session) -> None:
    plain = request.cookies.get(SESSION_COOKIE)
    if plain:
        end_session(session, plain=plain)
    request.state.web_session = None
    request.state.user = None
    request.state.csrf_token = ""


# --- JSON API (/api/v1/auth) ---------------------------------------------------------------------------


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=auth.MAX_PASSWORD)


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    email: str | None
    role: str
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None


class MeRead(UserRead):
    auth: Literal["session", "token"]
    csrf_token: str | None = Field(None, description="send as X-CSRF-Token on cookie-authenticated writes")


class LoginOut(BaseModel):
    user: UserRead
    csrf_token: str
    expires_at: datetime


class TokenRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    state: str


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(default_factory=list, max_length=50)
    expires_in: str | None = Field(None, description="lifetime such as 30d, 12h, 90m; none = no expiry")


class TokenCreated(TokenRead):
    token: str = Field(description="the plain token, shown only this once")


def token_read(token: Any) -> dict[str, Any]:
    data = TokenRead.model_validate({**_attrs(token), "state": auth.token_state(token)})
    return data.model_dump()


def _attrs(token: Any) -> dict[str, Any]:
    names = ("id", "name", "prefix", "scopes", "created_at", "expires_at", "revoked_at", "last_used_at")
    return {name: getattr(token, name) for name in names}


@router.post("/login", response_model=LoginOut)
def api_login(body: LoginIn, request: Request, response: Response, session: SessionDep) -> LoginOut:
    """Log in with a password: sets the session cookie; returns the CSRF token for later writes."""
    user, row, plain = login(session, request, username=body.username, password=body.password)
    set_session_cookie(response, plain)
    return LoginOut(user=UserRead.model_validate(user), csrf_token=row.csrf_token, expires_at=row.expires_at)


@router.post("/logout", status_code=204)
def api_logout(request: Request, session: SessionDep, _csrf: CsrfProtected) -> Response:
    """End the cookie session (a no-op without one)."""
    logout(request, session)
    response = Response(status_code=204)
    clear_session_cookie(response)
    return response


@router.get("/me", response_model=MeRead)
def api_me(request: Request, user: CurrentUser) -> MeRead:
    """The caller: from the session cookie or the bearer token."""
    row: WebSession | None = getattr(request.state, "web_session", None)
    by_token = getattr(request.state, "api_token_id", None) is not None
    return MeRead(
        **UserRead.model_validate(user).model_dump(),
        auth="token" if by_token else "session",
        csrf_token=None if by_token or row is None else row.csrf_token,
    )


@router.get("/tokens", response_model=list[TokenRead])
def api_list_tokens(user: CurrentUser, session: SessionDep) -> list[dict[str, Any]]:
    """The caller's API tokens (never their values)."""
    return [token_read(t) for t in auth.list_tokens(session, user=user)]


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def api_create_token(
    body: TokenCreate, request: Request, user: CurrentUser, session: SessionDep
) -> TokenCreated:
    """A new API token for the caller; the plain value is in this response only."""
    granted: list[str] | None = getattr(request.state, "api_token_scopes", None)
    # a scoped token may only mint tokens within its own scopes
    if granted and (not body.scopes or not all(auth.scope_allows(granted, s) for s in body.scopes)):
        raise Forbidden("a scoped API token can only create tokens within its own scopes")
    try:
        expires_in = auth.parse_duration(body.expires_in) if body.expires_in else None
    except UsageError as exc:
        raise ValidationFailed(exc.message) from None
    token, plain = auth.create_token(
        session, user=user, name=body.name, scopes=body.scopes, expires_in=expires_in
    )
    return TokenCreated(**token_read(token), token=plain)


@router.delete("/tokens/{token_id}", status_code=204)
def api_revoke_token(token_id: int, user: CurrentUser, session: SessionDep) -> Response:
    """Revoke one of the caller's tokens (idempotent)."""
    auth.revoke_token(session, ident=str(token_id), user=user)
    return Response(status_code=204)


# --- pages ---------------------------------------------------------------------------------------------


def _login_page(
    request: Request,
    *,
    user: User | None,
    next_url: str,
    error: str | None,
    username: str = "",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    from suite.core.web import render

    context = {
        "user": user,
        "csrf_token": csrf_token(request),
        "next": next_url,
        "error": error,
        "username": username,
    }
    response = render(request, "login.html", context, status_code=status, headers=headers)
    attach_csrf_cookie(request, response)
    return response


@pages.get("/login", response_class=HTMLResponse)
def login_page(request: Request, session: SessionDep, next: str = "/") -> HTMLResponse:
    """The login form."""
    return _login_page(request, user=user_from_cookie(request, session), next_url=safe_next(next), error=None)


@pages.post("/login", response_class=HTMLResponse)
def login_form(
    request: Request,
    session: SessionDep,
    _csrf: CsrfProtected,
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=auth.MAX_PASSWORD)] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    """Form login: a session cookie and a redirect to `next`, or the form again with the problem."""
    target = safe_next(next)
    if not username.strip() or not password:
        return _login_page(
            request,
            user=None,
            next_url=target,
            error="Enter a username and password.",
            username=username,
            status=400,
        )
    try:
        _, _, plain = login(session, request, username=username, password=password)
    except RateLimited as exc:
        retry = {"Retry-After": str(max(1, int(exc.retry_after + 0.999)))}
        return _login_page(
            request,
            user=None,
            next_url=target,
            error=exc.message,
            username=username,
            status=429,
            headers=retry,
        )
    except SuiteError as exc:
        if exc.status_code != 401:
            raise
        return _login_page(
            request, user=None, next_url=target, error=exc.message, username=username, status=401
        )
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, plain)
    return response


@pages.post("/logout")
def logout_form(request: Request, session: SessionDep, _csrf: CsrfProtected) -> Response:
    """End the session and go back to the login page."""
    logout(request, session)
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response)
    return response
