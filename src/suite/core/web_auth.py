"""Web login: server-side sessions (cookie), CSRF tokens on forms, login rate limit, login/logout pages."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session

from suite.core.models import User

router = APIRouter(tags=["auth"])
pages = APIRouter(include_in_schema=False)


def user_from_cookie(request: Request, session: Session) -> User | None:
    return None
