"""Users, password hashing (argon2), hashed API tokens (bearer) and the route dependencies.

`CurrentUser` accepts a bearer API token or a web session cookie; `AdminUser` also needs the admin role.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Annotated

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from suite.core.db import SessionDep, utcnow
from suite.core.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from suite.core.models import ApiToken, User

BASE_ROLES = ("admin", "user")
TOKEN_PREFIX = "st_"
_hasher = PasswordHasher()


def valid_roles() -> set[str]:
    from suite.core.plugins import domain_roles

    return set(BASE_ROLES) | domain_roles()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session: Session, *, username: str, password: str, role: str = "user", email: str | None = None) -> User:
    username = username.strip()
    if not username or len(username) > 64:
        raise ValidationFailed("username must be 1-64 characters")
    if len(password) < 8:
        raise ValidationFailed("password must be at least 8 characters")
    if role not in valid_roles():
        raise ValidationFailed(f"unknown role {role!r}; roles: {', '.join(sorted(valid_roles()))}")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password), role=role, email=email)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, *, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"user {username!r} not found")
    return user


def create_token(
    session: Session,
    *,
    user: User,
    name: str,
    scopes: list[str] | None = None,
    expires_in: timedelta | None = None,
) -> tuple[ApiToken, str]:
    """A new API token; the plain value is returned once and only its hash is stored."""
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        name=name,
        prefix=plain[:10],
        token_hash=hash_token(plain),
        scopes=list(scopes or []),
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
    if scope and token.scopes and scope not in token.scopes:
        raise Forbidden(f"API token lacks scope {scope!r}")
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        token.last_used_at = now
    return token.user, token


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def optional_user(request: Request, session: SessionDep) -> User | None:
    """The caller, from a bearer token or a web session cookie; None when anonymous."""
    plain = bearer_token(request)
    if plain:
        user, token = authenticate_token(session, plain)
        request.state.api_token_id = token.id
        return user
    from suite.core import web_auth

    return web_auth.user_from_cookie(request, session)


def current_user(user: Annotated[User | None, Depends(optional_user)]) -> User:
    if user is None:
        raise Unauthorized("authentication required: send 'Authorization: Bearer <token>' or log in")
    return user


def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if user.role != "admin":
        raise Forbidden("admin role required")
    return user


def require_role(*roles: str):  # type: ignore[no-untyped-def]
    """A dependency that lets admins and the given roles through."""

    def check(user: Annotated[User, Depends(current_user)]) -> User:
        if user.role != "admin" and user.role not in roles:
            raise Forbidden(f"one of the roles {', '.join(roles)} required")
        return user

    return check


OptionalUser = Annotated[User | None, Depends(optional_user)]
CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]


def token_expired(token: ApiToken, now: datetime | None = None) -> bool:
    return token.expires_at is not None and token.expires_at <= (now or utcnow())
