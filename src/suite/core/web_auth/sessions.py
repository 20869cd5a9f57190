"""Server-side web sessions: the cookie holds a random token, `core_session` only its sha256; password login
(rate limited) and logout."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from fastapi import Request, Response
from sqlalchemy import delete
from sqlalchemy.orm import Session

from suite.core import auth
from suite.core.config import get_settings
from suite.core.db import utcnow
from suite.core.errors import RateLimited
from suite.core.models import User, WebSession
from suite.core.web_auth.ratelimit import login_limiter

SESSION_COOKIE = "suite_session"
_TOUCH_EVERY = timedelta(minutes=1)


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
