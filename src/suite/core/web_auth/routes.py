"""Routes: the JSON API under /api/v1/auth (login, logout, me, API tokens) and the login/logout pages."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from suite.core import auth
from suite.core.auth import CurrentUser
from suite.core.db import SessionDep
from suite.core.errors import Forbidden, RateLimited, SuiteError, UsageError, ValidationFailed
from suite.core.models import User, WebSession
from suite.core.web_auth.csrf import CsrfProtected, attach_csrf_cookie, csrf_token, safe_next
from suite.core.web_auth.sessions import (
    clear_session_cookie,
    login,
    logout,
    set_session_cookie,
    user_from_cookie,
)

router = APIRouter(tags=["auth"])
pages = APIRouter(include_in_schema=False)


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
