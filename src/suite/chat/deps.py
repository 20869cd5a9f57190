"""Route dependencies for the async chat routes.

The core `CurrentUser` keeps its request session (and on SQLite its `BEGIN IMMEDIATE` write lock) open until the
response ends; an async route that then runs its own sessions in threads, or streams SSE for minutes, would wait
on that lock. `ChatUser` authenticates in a short session of its own and hands back plain values.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from suite.core.auth import SubmittedCsrf
from suite.core.errors import Forbidden, Unauthorized


@dataclass(frozen=True)
class UserRef:
    id: int
    username: str
    role: str


def _authenticate(request: Request, submitted: str | None) -> UserRef | None:
    from suite.core import auth
    from suite.core.db import session_scope

    with session_scope() as session:
        user = auth.optional_user(request, session, submitted)
        return UserRef(user.id, user.username, user.role) if user is not None else None


async def chat_user(request: Request, submitted: SubmittedCsrf) -> UserRef:
    user = await asyncio.to_thread(_authenticate, request, submitted)
    if user is None:
        raise Unauthorized("authentication required: send 'Authorization: Bearer <token>' or log in")
    return user


async def chat_admin(user: Annotated[UserRef, Depends(chat_user)]) -> UserRef:
    if user.role != "admin":
        raise Forbidden("admin role required")
    return user


ChatUser = Annotated[UserRef, Depends(chat_user)]
ChatAdmin = Annotated[UserRef, Depends(chat_admin)]
