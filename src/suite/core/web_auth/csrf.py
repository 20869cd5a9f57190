"""CSRF: each session has its own token, carried by every cookie-authenticated POST/PUT/PATCH/DELETE and every
form post as the `csrf_token` form field or the `X-CSRF-Token` header; before login, a double-submit cookie.
Also `PageUser`, the dependency of pages that need a login."""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request, Response
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from suite.core import auth
from suite.core.auth import SubmittedCsrf
from suite.core.config import get_settings
from suite.core.db import SessionDep, new_session
from suite.core.errors import Forbidden
from suite.core.models import User, WebSession
from suite.core.web_auth.sessions import SESSION_COOKIE, user_from_cookie, web_session_from_cookie

CSRF_COOKIE = "suite_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


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
