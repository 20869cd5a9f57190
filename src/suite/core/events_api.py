"""WebSocket endpoint streaming one event-bus topic to a client: `GET /api/v1/events/ws`.

Protocol (JSON text frames):
1. Authenticate with `Authorization: Bearer <api token>` on the handshake, the web session cookie, or a first
   frame `{"type": "auth", "token": "..."}` within 5 s. Never through the query string (`?token=` is ignored).
2. Choose the topic with `?topic=...` or a frame `{"type": "subscribe", "topic": "..."}`.
3. The server answers `{"type": "subscribed", "topic": "..."}`, then sends each event as its JSON
   (`{"id", "topic", "type", "data", "ts"}`). The client sends nothing more.

Close codes: 4401 authentication failed, 4403 topic not allowed, 4408 too slow (queue overflow, or one send
blocked longer than `events.slow_client_timeout_s`), 1008 bad frame, 1011 server error, 1012 server stopping.
A handshake from a disallowed Origin gets HTTP 403.

Who may subscribe: `jobs.<id>[...]` the job's owner and admins, `jobs.*` admins; `user.<id>[...]` that user
only; `*` nobody; other namespaces any signed-in user unless a domain registers a rule with
`register_topic_rule()`. A scoped API token needs the `events:read` scope.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.websockets import WebSocketDisconnect, WebSocketState

from suite.core import events
from suite.core.config import get_settings
from suite.core.errors import DatabaseError, SuiteError, Unauthorized, Unavailable
from suite.core.models import Job, User

log = logging.getLogger("suite.events")

router = APIRouter(tags=["events"])

HANDSHAKE_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 5.0  # how long a close frame may wait behind unread data before we give up on it
TOKEN_SCOPE = "events:read"  # needed by scoped API tokens (unscoped ones may do everything their user may)
MAX_CONTROL_FRAME = 4096
DB_ATTEMPTS = 4

CLOSE_AUTH = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_SLOW = 4408
CLOSE_POLICY = 1008
CLOSE_ERROR = 1011
CLOSE_RESTART = 1012


@dataclass(frozen=True)
class Principal:
    """The authenticated caller, detached from the database session."""

    user_id: int
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @classmethod
    def of(cls, user: User) -> Principal:
        return cls(user_id=user.id, username=user.username, role=user.role)


# A rule decides whether `principal` may subscribe to `topic` (whose first segment it is registered for).
TopicRule = Callable[[Session, Principal, str], bool]


def _job_rule(session: Session, principal: Principal, topic: str) -> bool:
    from suite.core.tasks.rows import rows

    rows.flush()  # a job this process queued a moment ago: its row first
    job = session.get(Job, topic.split(".")[1])
    return job is not None and job.owner_id is not None and job.owner_id == principal.user_id


def _user_rule(session: Session, principal: Principal, topic: str) -> bool:
    return topic.split(".")[1] == str(principal.user_id)


_rules: dict[str, TopicRule] = {"jobs": _job_rule, "user": _user_rule}
_admins_see_all = {"jobs"}  # namespaces whose rule admins bypass


def register_topic_rule(namespace: str, rule: TopicRule, *, admins_bypass: bool = True) -> None:
    """Restrict topics `<namespace>.<x>[...]` to callers `rule` accepts (and admins, if `admins_bypass`)."""
    _rules[namespace] = rule
    if admins_bypass:
        _admins_see_all.add(namespace)
    else:
        _admins_see_all.discard(namespace)


def topic_allowed(session: Session, principal: Principal, topic: str) -> bool:
    """Whether `principal` may subscribe to `topic`; a pattern `a.b.*` is judged as its base `a.b`."""
    if topic == "*":
        return False  # spans every user's private topics
    base = topic.removesuffix(".*")
    namespace, _, rest = base.partition(".")
    rule = _rules.get(namespace)
    if rule is None:
        return True
    if principal.is_admin and namespace in _admins_see_all:
        return True
    return bool(rest) and rule(session, principal, base)  # `jobs.*` spans owners: only admins pass


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Same host as the handshake, or in `server.allowed_origins`. No Origin (not a browser): allowed."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if "*" in allowed or origin in {a.rstrip("/") for a in allowed}:
        return True
    netloc = urlsplit(origin).netloc.lower()
    return bool(host) and bool(netloc) and netloc == (host or "").lower()


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# --- database work (run in a thread) ---------------------------------------------------------------------


def _principal_from_token(token: str) -> Principal:
    from suite.core.auth import authenticate_token
    from suite.core.db import session_scope

    with session_scope() as session:
        user, _ = authenticate_token(session, token, scope=TOKEN_SCOPE)
        return Principal.of(user)


def _principal_from_cookie(scope: dict[str, Any]) -> Principal | None:
    from suite.core import web_auth
    from suite.core.db import session_scope

    # web_auth takes a Request (HTTP-only in Starlette); the handshake's scope as a GET has the same cookies.
    request = Request({**scope, "type": "http", "method": "GET"})
    with session_scope() as session:
        user = web_auth.user_from_cookie(request, session)
        return Principal.of(user) if user is not None else None


def _check_topic(principal: Principal, topic: str) -> bool:
    from suite.core.db import session_scope

    with session_scope() as session:
        return topic_allowed(session, principal, topic)


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking database work off the loop; auth failures close 4401, an unavailable database 1011."""
    try:
        for attempt in range(DB_ATTEMPTS):
            try:
                return await asyncio.to_thread(fn, *args)
            except DatabaseError as exc:
                # SQLite in WAL mode refuses at once (no busy wait) to upgrade a read transaction to a write
                # after another connection wrote, as two handshakes touching `last_used_at` can; try again.
                if "locked" not in exc.message or attempt == DB_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
    except Unauthorized as exc:
        raise _Close(CLOSE_AUTH, exc.message) from None
    except Unavailable as exc:
        log.warning("events websocket: %s", exc.message)
        raise _Close(CLOSE_ERROR, "service unavailable") from None
    except SuiteError as exc:
        raise _Close(CLOSE_AUTH if exc.status_code == 401 else CLOSE_FORBIDDEN, exc.message) from None


# --- frames ----------------------------------------------------------------------------------------------


async def _read_frame(websocket: WebSocket, deadline: float, on_timeout: _Close) -> dict[str, Any]:
    """The next control frame as a dict with a string `type`; 1008 for anything else."""
    loop = asyncio.get_running_loop()
    try:
        message = await asyncio.wait_for(websocket.receive(), max(0.0, deadline - loop.time()))
    except TimeoutError:
        raise on_timeout from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is None:
        raise _Close(CLOSE_POLICY, "frames must be JSON text")
    if len(text) > MAX_CONTROL_FRAME:
        raise _Close(CLOSE_POLICY, "frame too large")
    try:
        frame = json.loads(text)
    except ValueError:
        raise _Close(CLOSE_POLICY, "frame is not valid JSON") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise _Close(CLOSE_POLICY, 'frame must be an object with a string "type"')
    return frame


async def _authenticate(websocket: WebSocket, deadline: float) -> Principal:
    header = websocket.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        principal: Principal = await _in_thread(_principal_from_token, value.strip())
        return principal
    if websocket.cookies:
        cookie_user: Principal | None = await _in_thread(_principal_from_cookie, dict(websocket.scope))
        if cookie_user is not None:
            return cookie_user
    # `?token=` is deliberately not read: query strings end up in logs and browser history.
    frame = await _read_frame(
        websocket, deadline, _Close(CLOSE_AUTH, f"no authentication within {HANDSHAKE_TIMEOUT_S:g} s")
    )
    if frame["type"] != "auth":
        raise _Close(
            CLOSE_AUTH, 'authentication required: first frame must be {"type": "auth", "token": ...}'
        )
    token = frame.get("token")
    if not isinstance(token, str) or not token.strip():
        raise _Close(CLOSE_AUTH, "auth frame without a token")
    principal = await _in_thread(_principal_from_token, token.strip())
    return principal


async def _choose_topic(websocket: WebSocket, deadline: float) -> str:
    topic = websocket.query_params.get("topic")
    if topic is None:
        frame = await _read_frame(
            websocket, deadline, _Close(CLOSE_POLICY, f"no subscribe frame within {HANDSHAKE_TIMEOUT_S:g} s")
        )
        if frame["type"] == "auth":
            raise _Close(CLOSE_POLICY, "already authenticated")
        if frame["type"] != "subscribe":
            raise _Close(CLOSE_POLICY, f"unexpected frame type {frame['type'][:40]!r}; expected subscribe")
        topic = frame.get("topic")
        if not isinstance(topic, str):
            raise _Close(CLOSE_POLICY, 'subscribe frame needs a string "topic"')
    try:
        events.check_topic(topic, pattern=True)
    except ValueError as exc:
        raise _Close(CLOSE_POLICY, str(exc)) from None
    return topic


# --- streaming -------------------------------------------------------------------------------------------


async def _stream(
    websocket: WebSocket, sub: events.Subscription, send_timeout: float
) -> tuple[int, str] | None:
    """Pump events to the client until it leaves, misbehaves or falls behind; the close to send, if any."""
    loop = asyncio.get_running_loop()
    sending_since: float | None = None

    async def pump() -> None:
        nonlocal sending_since
        async for event in sub:
            sending_since = loop.time()
            await websocket.send_text(event.json_text)  # blocks while the client's socket buffers are full
            sending_since = None

    async def watchdog() -> None:
        # One timer per connection instead of one per send (a tenth of the server's work with 100 clients).
        while True:
            await asyncio.sleep(send_timeout / 4)
            started = sending_since
            if started is not None and loop.time() - started > send_timeout:
                return

    async def listen() -> None:
        message = await websocket.receive()
        if message["type"] != "websocket.disconnect":
            raise _Close(CLOSE_POLICY, "no frames expected after subscribe")

    pumping = asyncio.create_task(pump())
    listening = asyncio.create_task(listen())
    dropped = asyncio.create_task(sub.wait_closed())
    blocked = asyncio.create_task(watchdog())
    tasks = (pumping, listening, dropped, blocked)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    if dropped.done() and not dropped.cancelled() and dropped.result():
        return CLOSE_SLOW, f"slow consumer: more than {sub.maxsize} events queued"
    if blocked.done() and not blocked.cancelled():
        return CLOSE_SLOW, f"slow consumer: a send blocked over {send_timeout:g} s"
    if listening.done() and not listening.cancelled():
        exc = listening.exception()
        if isinstance(exc, _Close):
            return exc.code, exc.reason
        if exc is None:
            return None  # the client closed
    if pumping.done() and not pumping.cancelled():
        exc = pumping.exception()
        if isinstance(exc, events.SlowConsumer):
            return CLOSE_SLOW, exc.message
        if isinstance(exc, WebSocketDisconnect | OSError):
            return None
        if exc is not None:
            raise exc
    return CLOSE_RESTART, "event stream closed"  # the bus closed: server shutting down


async def _close(websocket: WebSocket, code: int, reason: str, timeout: float) -> None:
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    try:
        # A client that does not read may never let the close frame through; do not wait on it forever.
        await asyncio.wait_for(websocket.close(code, reason.encode()[:120].decode(errors="ignore")), timeout)
    except (TimeoutError, OSError, RuntimeError, WebSocketDisconnect):
        pass


@router.websocket("/ws")
async def events_ws(websocket: WebSocket) -> None:
    """Stream one topic's events; see the module docstring for the protocol."""
    settings = get_settings()
    if not origin_allowed(
        websocket.headers.get("origin"), websocket.headers.get("host"), settings.server.allowed_origins
    ):
        body = {"error": {"code": "forbidden", "message": "origin not allowed"}}
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(JSONResponse(body, status_code=403))
        else:
            await websocket.close(CLOSE_POLICY)  # before accept: the server answers HTTP 403
        return
    await websocket.accept()  # 44xx close codes only reach a client after accept
    timeout = settings.events.slow_client_timeout_s
    close: tuple[int, str] | None
    try:
        deadline = asyncio.get_running_loop().time() + HANDSHAKE_TIMEOUT_S
        principal = await _authenticate(websocket, deadline)
        topic = await _choose_topic(websocket, deadline)
        if not await _in_thread(_check_topic, principal, topic):
            raise _Close(CLOSE_FORBIDDEN, f"topic {topic} not allowed")
        async with events.subscribe(topic) as sub:
            await websocket.send_text(json.dumps({"type": "subscribed", "topic": topic}))
            close = await _stream(websocket, sub, timeout)
    except _Close as exc:
        close = (exc.code, exc.reason)
    except (WebSocketDisconnect, OSError):
        return
    except Unavailable as exc:
        log.warning("events websocket: %s", exc.message)
        close = (CLOSE_ERROR, "event bus unavailable")
    except Exception:
        log.exception("events websocket failed")
        close = (CLOSE_ERROR, "internal error")
    if close is not None:
        await _close(websocket, *close, CLOSE_TIMEOUT_S)
