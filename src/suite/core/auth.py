"""Users, password hashing (argon2), hashed API tokens (bearer) and the route dependencies.

`CurrentUser` accepts a bearer API token or a web session cookie (a cookie-authenticated unsafe request must
also carry the session's CSRF token); `AdminUser` also needs the admin role; `require_role("editor")` lets
admins and editors through; `require_scope("catalog:write")` checks a token's scopes (tokens without scopes
and cookie sessions carry all of their user's rights).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import delete, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from suite.core.db import SessionDep, utcnow
from suite.core.errors import Conflict, Forbidden, NotFound, Unauthorized, UsageError, ValidationFailed
from suite.core.models import ApiToken, User, WebSession

BASE_ROLES = ("admin", "user")
TOKEN_PREFIX = "st_"
TOKEN_PREFIX_LEN = 10  # stored and shown: "st_" plus 7 characters
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")
SCOPE_RE = re.compile(r"[A-Za-z0-9_.:*-]{1,64}")
MAX_TOKEN_LIFETIME = timedelta(days=3650)
_DURATION_RE = re.compile(r"(\d+)\s*([smhdw]?)")
FORM_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_hasher = PasswordHasher()


def valid_roles() -> set[str]:
    from suite.core.plugins import domain_roles

    return set(BASE_ROLES) | domain_roles()


# --- passwords -----------------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_hex(16))


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ValidationFailed(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ValidationFailed(f"password must be at most {MAX_PASSWORD} characters")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- users ---------------------------------------------------------------------------------------------


def check_role(role: str) -> str:
    roles = valid_roles()
    if role not in roles:
        raise ValidationFailed(f"unknown role {role!r}; roles: {', '.join(sorted(roles))}")
    return role


def find_user(session: Session, *, username: str) -> User | None:
    """The user with this username (case-insensitive), or None."""
    return session.scalar(select(User).where(func.lower(User.username) == username.strip().lower()))


def create_user(
    session: Session, *, username: str, password: str, role: str = "user", email: str | None = None
) -> User:
    username = username.strip()
    if not USERNAME_RE.fullmatch(username):
        raise ValidationFailed(
            "username must be 1-64 characters: letters, digits and _ . @ + - (first a letter or digit)"
        )
    check_password_rules(password)
    check_role(role)
    if find_user(session, username=username) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = User(
        username=username, password_hash=hash_password(password), role=role, email=email, is_active=True
    )
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, *, username: str) -> User:
    user = find_user(session, username=username)
    if user is None:
        raise NotFound(f"user {username!r} not found")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def set_role(session: Session, *, username: str, role: str) -> User:
    user = get_user(session, username=username)
    user.role = check_role(role)
    session.flush()
    return user


def set_password(session: Session, *, username: str, password: str) -> User:
    """A new password; the user's web sessions end (API tokens stay valid)."""
    check_password_rules(password)
    user = get_user(session, username=username)
    user.password_hash = hash_password(password)
    end_user_sessions(session, user=user)
    return user


def disable_user(session: Session, *, username: str) -> tuple[User, int]:
    """Disable a user: logins, sessions and API tokens stop working. Returns the user and sessions ended."""
    user = get_user(session, username=username)
    user.is_active = False
    ended = end_user_sessions(session, user=user)
    return user, ended


def enable_user(session: Session, *, username: str) -> User:
    user = get_user(session, username=username)
    user.is_active = True
    session.flush()
    return user


def end_user_sessions(session: Session, *, user: User) -> int:
    """Delete every web session of this user; the number deleted."""
    result = session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    session.flush()
    return int(getattr(result, "rowcount", 0) or 0)


def authenticate_password(session: Session, *, username: str, password: str) -> User:
    """The active user with these credentials, else Unauthorized (one message for any bad credential)."""
    user = find_user(session, username=username)
    if user is None:
        verify_password(_dummy_hash(), password)  # same work whether or not the user exists
        raise Unauthorized("invalid username or password")
    if not verify_password(user.password_hash, password):
        raise Unauthorized("invalid username or password")
    if not user.is_active:
        raise Unauthorized(f"user {user.username!r} is disabled")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = utcnow()
    session.flush()
    return user


# --- API tokens ----------------------------------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '90m', '3600s', '2w' or plain seconds."""
    match = _DURATION_RE.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) <= 0:
        raise UsageError(f"invalid duration {text!r}: use a positive number with s, m, h, d or w (e.g. 30d)")
    delta = timedelta(seconds=int(match.group(1)) * _DURATION_UNITS[match.group(2)])
    if delta > MAX_TOKEN_LIFETIME:
        raise UsageError(f"duration {text!r} is longer than {MAX_TOKEN_LIFETIME.days} days")
    return delta


def scope_allows(granted: list[str], needed: str) -> bool:
    """Empty `granted` means every scope; `catalog:*` grants `catalog:read`; `*` grants everything."""
    if not granted:
        return True
    for scope in granted:
        if scope in {needed, "*"} or (scope.endswith("*") and needed.startswith(scope[:-1])):
            return True
    return False


def create_token(
    session: Session,
    *,
    user: User,
    name: str,
    scopes: list[str] | None = None,
    expires_in: timedelta | None = None,
) -> tuple[ApiToken, str]:
    """A new API token; the plain value is returned once and only its sha256 is stored."""
    name = name.strip()
    if not name or len(name) > 100:
        raise ValidationFailed("token name must be 1-100 characters")
    scopes = list(dict.fromkeys(scopes or []))
    bad = [s for s in scopes if not SCOPE_RE.fullmatch(s)]
    if bad:
        raise ValidationFailed(f"invalid scope {bad[0]!r}: use letters, digits and _ . : * -")
    if expires_in is not None and (expires_in <= timedelta(0) or expires_in > MAX_TOKEN_LIFETIME):
        raise ValidationFailed(f"token lifetime must be positive and at most {MAX_TOKEN_LIFETIME.days} days")
    if not user.is_active:
        raise Conflict(f"user {user.username!r} is disabled")
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        name=name,
        prefix=plain[:TOKEN_PREFIX_LEN],
        token_hash=hash_token(plain),
        scopes=scopes,
        expires_at=(utcnow() + expires_in) if expires_in else None,
    )
    session.add(token)
    session.flush()
    return token, plain


def authenticate_token(session: Session, plain: str, *, scope: str | None = None) -> tuple[User, ApiToken]:
    """The active user behind a bearer token, or Unauthorized (unknown, revoked, expired, disabled user)."""
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(plain)))
    now = utcnow()
    if token is None:
        raise Unauthorized("invalid API token")
    if token.revoked_at is not None:
        raise Unauthorized("API token revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise Unauthorized("API token expired")
    if not token.user.is_active:
        raise Unauthorized("user disabled")
    if scope and not scope_allows(token.scopes, scope):
        raise Forbidden(f"API token lacks scope {scope!r}")
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        token.last_used_at = now
    return token.user, token


def list_tokens(session: Session, *, user: User | None = None) -> list[ApiToken]:
    """Tokens of one user (all users' when None), newest first."""
    query = select(ApiToken).order_by(ApiToken.id.desc())
    if user is not None:
        query = query.where(ApiToken.user_id == user.id)
    return list(session.scalars(query))


def find_token(session: Session, *, ident: str, user: User | None = None) -> ApiToken:
    """A token by id, by its shown prefix (`st_abc1234`) or by its full plain value; optionally one user's."""
    ident = ident.strip()
    query = select(ApiToken)
    if user is not None:
        query = query.where(ApiToken.user_id == user.id)
    if ident.isdigit():
        query = query.where(ApiToken.id == int(ident))
    elif ident.startswith(TOKEN_PREFIX) and len(ident) > TOKEN_PREFIX_LEN:
        query = query.where(ApiToken.token_hash == hash_token(ident))
    elif ident:
        query = query.where(ApiToken.prefix == ident)
    else:
        raise UsageError("give a token id or prefix")
    found = list(session.scalars(query))
    if not found:
        raise NotFound(f"API token {ident[:TOKEN_PREFIX_LEN]!r} not found")
    if len(found) > 1:
        ids = ", ".join(str(t.id) for t in found)
        raise UsageError(f"prefix {ident!r} matches several tokens (ids {ids}); give the id")
    return found[0]


def revoke_token(session: Session, *, ident: str, user: User | None = None) -> tuple[ApiToken, bool]:
    """Revoke a token (idempotent). Returns the token and whether this call revoked it."""
    token = find_token(session, ident=ident, user=user)
    if token.revoked_at is not None:
        return token, False
    token.revoked_at = utcnow()
    session.flush()
    return token, True


def token_expired(token: ApiToken, now: datetime | None = None) -> bool:
    return token.expires_at is not None and token.expires_at <= (now or utcnow())


def token_state(token: ApiToken, now: datetime | None = None) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "expired" if token_expired(token, now) else "active"


# --- dependencies --------------------------------------------------------------------------------------


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def submitted_csrf(request: Request) -> str | None:
    """The CSRF token a request carries: `X-CSRF-Token` header, or the `csrf_token` field of a form body.

    The form is read only when a CSRF check can happen (an unsafe method, cookies, no bearer token).
    """
    header = request.headers.get("x-csrf-token")
    if header:
        return header
    if request.method in {"GET", "HEAD", "OPTIONS", "TRACE"} or not request.cookies or bearer_token(request):
        return None
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type in FORM_CONTENT_TYPES:
        form = await request.form()
        value = form.get("csrf_token")
        return value if isinstance(value, str) and value else None
    return None


SubmittedCsrf = Annotated[str | None, Depends(submitted_csrf)]


# Declares the bearer scheme in OpenAPI (the Authorize button of /docs); `bearer_token` does the reading.
bearer_scheme = HTTPBearer(auto_error=False, description="an API token from `suite tokens create`")


def optional_user(
    request: Request,
    session: SessionDep,
    submitted: SubmittedCsrf,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> User | None:
    """The caller, from a bearer token or a web session cookie; None when anonymous.

    A cookie-authenticated POST/PUT/PATCH/DELETE must carry the session's CSRF token (403 otherwise).
    """
    plain = bearer_token(request)
    if plain:
        token_user, token = authenticate_token(session, plain)
        request.state.api_token_id = token.id
        request.state.api_token_scopes = list(token.scopes)
        user: User | None = token_user
    else:
        from suite.core import web_auth

        user = web_auth.user_from_cookie(request, session)
        if user is not None:
            web_auth.check_csrf(request, session, submitted)
    # End the auth transaction now (last-used stamps included): on SQLite it holds the write lock, which a
    # long or streaming route would otherwise keep until the response ends. Loaded objects stay usable.
    if session.in_transaction():
        try:
            session.commit()
        except OperationalError:
            # A read-only request lost the race to stamp last-used times: the stamp waits for the next one.
            session.rollback()
    return user


def current_user(user: Annotated[User | None, Depends(optional_user)]) -> User:
    if user is None:
        raise Unauthorized("authentication required: send 'Authorization: Bearer <token>' or log in")
    return user


def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if user.role != "admin":
        raise Forbidden("admin role required")
    return user


def require_role(*roles: str) -> Callable[[User], User]:
    """A dependency that lets admins and the given roles through: `Depends(require_role("editor"))`."""
    needed = f"one of the roles {', '.join(roles)} required" if roles else "admin role required"

    def check(user: Annotated[User, Depends(current_user)]) -> User:
        if user.role != "admin" and user.role not in roles:
            raise Forbidden(needed)
        return user

    return check


def require_scope(scope: str) -> Callable[[Request, User], User]:
    """A dependency that needs `scope` when the caller authenticated with a scoped API token."""

    def check(request: Request, user: Annotated[User, Depends(current_user)]) -> User:
        granted: list[str] | None = getattr(request.state, "api_token_scopes", None)
        if granted is not None and not scope_allows(granted, scope):
            raise Forbidden(f"API token lacks scope {scope!r}")
        return user

    return check


OptionalUser = Annotated[User | None, Depends(optional_user)]
CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]
