"""The WebSocket protocol (version 1) at `/api/v1/chat/ws`. See `PROTOCOL` below and docs in the module.

Auth, never in the query string: the session cookie (the page; Origin must be allowed), `Authorization: Bearer`
on the handshake, or a first `auth{token}` frame within `auth_timeout_s`. A disallowed Origin is refused before
accept (HTTP 403 at the client); missing, invalid or expired auth is accepted then closed 4401 so the code
reaches the client.

Client -> server: auth, send, regenerate, cancel, resume, ping.
Server -> client: hello, ack, status, delta, reset, done, error, pong (reply frames carry request_id and seq).
Close codes: 1000 normal, 1001 shutdown, 1003 binary frame, 1008 ten bad frames in a row, 1009 frame too large,
1011 internal error, 1013 too many connections, 4401 auth, 4408 slow consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from suite import __version__
from suite.chat.schemas import CLIENT_FRAMES
from suite.chat.settings import chat_settings
from suite.chat.text import BadText, check_tree
from suite.core.errors import RateLimited, SuiteError

log = logging.getLogger("suite.chat.ws")

PROTOCOL = 1
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_UNSUPPORTED, CLOSE_POLICY = 1000, 1001, 1003, 1008
CLOSE_TOO_BIG, CLOSE_INTERNAL, CLOSE_TRY_LATER, CLOSE_AUTH, CLOSE_SLOW = 1009, 1011, 1013, 4401, 4408
SECRET_PARAMS = {"token", "access_token", "api_key", "key", "auth"}

_connections = 0
_live: set[Connection] = set()  # open, authenticated sockets (closed with 1001 at shutdown)
_draining = False


def set_draining(value: bool) -> None:
    """While draining (shutdown), new sockets are closed 1013 (try again later: another server)."""
    global _draining
    _draining = value


async def close_all(code: int = 1001, reason: str = "server shutdown", *, timeout: float = 2.0) -> int:
    """Close every open chat socket with `code` and wait (up to `timeout`) until they are closed."""
    conns = list(_live)
    for conn in conns:
        conn.close(code, reason)
    waits = [asyncio.ensure_future(c.finished.wait()) for c in conns]
    if waits:
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for w in pending:
            w.cancel()
    return len(conns)


ERROR_CODES = {
    "too_large": "too_large",
    "rate_limited": "rate_limited",
    "busy": "busy",
    "not_found": "not_found",
    "model_not_found": "not_found",
    "conflict": "conflict",
    "broker_unavailable": "broker_unavailable",
    "validation_error": "bad_frame",
    "bad_request": "bad_frame",
}


class BadFrame(Exception):
    def __init__(self, message: str, code: str = "bad_frame") -> None:
        super().__init__(message)
        self.code = code


def scrub_query(scope: dict[str, Any]) -> None:
    """Drop token-like query parameters before anything (uvicorn's access log included) prints the path."""
    raw = scope.get("query_string") or b""
    if not raw:
        return
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k.lower() not in SECRET_PARAMS]
    if len(kept) != len(pairs):
        scope["query_string"] = urlencode(kept).encode("latin-1")


def allowed_origins(ws: WebSocket) -> set[str]:
    from suite.core.config import get_settings

    settings = get_settings()
    host = ws.headers.get("host", "")
    own = {f"http://{host}", f"https://{host}"} if host else set()
    extra = {*chat_settings().allowed_origins, *settings.server.allowed_origins}
    return {o.rstrip("/").lower() for o in own | extra}


def parse_frame(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadFrame(f"not JSON: {exc}")
    if not isinstance(data, dict):
        raise BadFrame("a frame must be a JSON object")
    try:
        check_tree(data)
    except BadText as exc:
        raise BadFrame(str(exc))
    kind = data.get("type")
    if not isinstance(kind, str):
        raise BadFrame("a frame needs a string `type`")
    model = CLIENT_FRAMES.get(kind)
    if model is None:
        raise BadFrame(f"unknown frame type {kind[:40]!r}", code="unknown_type")
    try:
        return model.model_validate(data).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "frame"
        raise BadFrame(f"{kind}.{where}: {err['msg']}")


def _authenticate_token(plain: str) -> dict[str, Any]:
    from suite.core.auth import authenticate_token
    from suite.core.db import session_scope

    with session_scope() as session:
        user, token = authenticate_token(session, plain)
        return {
            "user_id": user.id,
            "username": user.username,
            "token_id": token.id,
            "expires_at": token.expires_at,
        }


def _authenticate_cookie(ws: WebSocket) -> dict[str, Any] | None:
    from suite.core import web_auth
    from suite.core.db import session_scope

    with session_scope() as session:
        user = web_auth.user_from_cookie(ws, session)  # type: ignore[arg-type]
        if user is None:
            return None
        return {"user_id": user.id, "username": user.username, "token_id": None, "expires_at": None}


def _inflight(session: Any, *, user_id: int) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from suite.chat.models import ChatRequest

    rows = session.scalars(
        select(ChatRequest).where(
            ChatRequest.user_id == user_id, ChatRequest.state.in_(("queued", "generating"))
        )
    ).all()
    return [
        {"id": r.id, "request_id": r.client_request_id, "conversation_id": r.conversation_id} for r in rows
    ]


async def endpoint(ws: WebSocket) -> None:
    global _connections
    from suite.chat.db import run_db
    from suite.chat.runtime_state import get_runtime

    scrub_query(ws.scope)  # type: ignore[arg-type]
    chat = chat_settings()
    origin = ws.headers.get("origin")
    if origin and origin.rstrip("/").lower() not in allowed_origins(ws):
        log.warning("websocket from disallowed origin %s refused", origin[:200])
        await ws.close(code=CLOSE_POLICY)  # before accept: the client sees HTTP 403
        return
    await ws.accept()
    if _draining:
        await _close(ws, CLOSE_TRY_LATER, "the server is shutting down")
        return
    if _connections >= chat.max_connections:
        await _close(ws, CLOSE_TRY_LATER, "too many connections")
        return
    _connections += 1
    try:
        auth = None
        header = ws.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        try:
            if scheme.lower() == "bearer" and value.strip():
                auth = await run_db_auth(value.strip())
            else:
                auth = await asyncio.to_thread(_authenticate_cookie, ws)
                if auth is None:
                    auth = await _auth_frame(ws, chat.auth_timeout_s)
        except SuiteError as exc:
            await _close(ws, CLOSE_AUTH, exc.message[:120])
            return
        if auth is None:
            return
        runtime = get_runtime()
        conn = Connection(ws, auth, runtime)
        inflight = await run_db(_inflight, user_id=auth["user_id"])
        for item in inflight:
            item["seq"] = await _safe_last_seq(runtime, item.pop("id"))
        await conn.run(inflight)
    finally:
        _connections -= 1


async def run_db_auth(plain: str) -> dict[str, Any]:
    return await asyncio.to_thread(_authenticate_token, plain)


async def _safe_last_seq(runtime: Any, request_id: str) -> int:
    try:
        return int(await runtime.broker.reply_last_seq(request_id) or 0)
    except Exception:
        return 0


async def _auth_frame(ws: WebSocket, timeout: float) -> dict[str, Any] | None:
    try:
        async with asyncio.timeout(timeout):
            message = await ws.receive()
    except TimeoutError:
        await _close(ws, CLOSE_AUTH, "authentication required")
        return None
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    try:
        frame = parse_frame(text) if text is not None else None
    except BadFrame:
        frame = None
    if not frame or frame.get("type") != "auth":
        await _close(ws, CLOSE_AUTH, "authentication required: send an auth frame first")
        return None
    try:
        return await run_db_auth(frame["token"])
    except SuiteError as exc:
        await _close(ws, CLOSE_AUTH, exc.message[:120])
        return None


async def _close(ws: WebSocket, code: int, reason: str = "") -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await ws.close(code=code, reason=reason[:120])


class Connection:
    def __init__(self, ws: WebSocket, auth: dict[str, Any], runtime: Any) -> None:

        self.ws = ws
        self.auth = auth
        self.user_id: int = auth["user_id"]
        self.runtime = runtime
        self.s = chat_settings()
        self.out: asyncio.Queue[str] = asyncio.Queue()
        self.out_bytes = 0
        self.tails: dict[str, asyncio.Task[Any]] = {}
        self.bad = 0
        self.closing: int | None = None
        self._closed = asyncio.Event()
        self.finished = asyncio.Event()

    # --- outbound -----------------------------------------------------------------------------------------
    def push(self, frame: dict[str, Any]) -> None:
        self.push_raw(json.dumps(frame, ensure_ascii=False, separators=(",", ":")))

    def push_raw(self, data: str) -> None:
        if self.closing is not None:
            return
        self.out_bytes += len(data)
        self.out.put_nowait(data)
        if self.out.qsize() > self.s.outbound_max_frames or self.out_bytes > self.s.outbound_max_bytes:
            self.close(CLOSE_SLOW, "slow consumer: outbound queue over its cap")

    def error(self, code: str, message: str, **extra: Any) -> None:
        self.push({"type": "error", "code": code, "message": message, **extra})

    def close(self, code: int, reason: str = "") -> None:
        if self.closing is None:
            self.closing = code
            self._close_reason = reason
            self._closed.set()

    async def _sender(self) -> None:
        while True:
            data = await self.out.get()
            self.out_bytes -= len(data)
            try:
                async with asyncio.timeout(self.s.send_timeout_s):
                    await self.ws.send_text(data)
            except TimeoutError:
                self.close(CLOSE_SLOW, f"slow consumer: a send blocked over {self.s.send_timeout_s:g} s")
                return
            except Exception:
                self.close(CLOSE_GOING_AWAY)
                return

    # --- lifecycle ----------------------------------------------------------------------------------------
    async def run(self, inflight: list[dict[str, Any]]) -> None:
        s = self.s
        self.push(
            {
                "type": "hello",
                "protocol": PROTOCOL,
                "server_version": __version__,
                "user": {"id": self.user_id, "username": self.auth["username"]},
                "inflight": inflight,
                "limits": {
                    "max_message_chars": s.max_message_chars,
                    "max_frame_bytes": s.max_frame_bytes,
                    "messages_per_minute": s.messages_per_minute,
                },
            }
        )
        sender = asyncio.create_task(self._sender())
        reader = asyncio.create_task(self._reader())
        closed = asyncio.create_task(self._closed.wait())
        _live.add(self)
        try:
            await asyncio.wait({sender, reader, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, closed, *self.tails.values()):
                task.cancel()
            if self.closing is not None and self.closing != CLOSE_SLOW and not sender.done():
                # flush what is queued (an error frame before a close) briefly
                with contextlib.suppress(BaseException):
                    async with asyncio.timeout(1):
                        while not self.out.empty():
                            await asyncio.sleep(0.01)
            sender.cancel()
            await asyncio.gather(reader, sender, closed, *self.tails.values(), return_exceptions=True)
            if self.closing is not None:
                if self.closing == CLOSE_SLOW:
                    log.warning("closing slow websocket of user %s", self.user_id)
                await _close(self.ws, self.closing, getattr(self, "_close_reason", ""))
            _live.discard(self)
            self.finished.set()

    async def _reader(self) -> None:
        while True:
            try:
                message = await self.ws.receive()
            except WebSocketDisconnect:
                return
            if message["type"] == "websocket.disconnect":
                self.close(CLOSE_NORMAL)
                self.closing = None  # already gone: nothing to close
                return
            if message.get("bytes") is not None:
                self.close(CLOSE_UNSUPPORTED, "binary frames are not supported")
                return
            text = message.get("text") or ""
            if (
                len(text) > self.s.max_frame_bytes
                or len(text.encode("utf-8", "surrogatepass")) > self.s.max_frame_bytes
            ):
                self.close(CLOSE_TOO_BIG, f"frame over {self.s.max_frame_bytes} bytes")
                return
            if self._expired():
                self.error("expired", "the API token expired")
                self.close(CLOSE_AUTH, "token expired")
                return
            try:
                frame = parse_frame(text)
            except BadFrame as exc:
                self.bad += 1
                self.error(exc.code, str(exc))
                if self.bad >= self.s.max_bad_frames:
                    self.close(CLOSE_POLICY, f"{self.bad} bad frames in a row")
                    return
                continue
            self.bad = 0
            try:
                await self.dispatch(frame)
            except SuiteError as exc:
                extra: dict[str, Any] = {}
                if frame.get("request_id"):
                    extra["request_id"] = frame["request_id"]
                if isinstance(exc, RateLimited):
                    extra["retry_after"] = round(exc.retry_after, 3)
                self.error(ERROR_CODES.get(exc.code, exc.code), exc.message, **extra)
            except BadText as exc:
                self.error("bad_frame", str(exc), **({"request_id": frame.get("request_id")}))
            except Exception:
                log.exception("websocket frame %s failed", frame.get("type"))
                self.error("internal_error", "internal error")

    def _expired(self) -> bool:
        from suite.core.db import utcnow

        expires = self.auth.get("expires_at")
        return expires is not None and expires <= utcnow()

    # --- frames -------------------------------------------------------------------------------------------
    async def dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "ping":
            self.push({"type": "pong", "ts": frame.get("ts") if frame.get("ts") is not None else time.time()})
        elif kind == "auth":
            return  # already authenticated
        elif kind == "send":
            sub = await self.runtime.send(
                user_id=self.user_id,
                client_request_id=frame["request_id"],
                content=frame["content"],
                conversation_id=frame.get("conversation_id"),
                parent_id=frame.get("parent_id"),
                model=frame.get("model"),
                system_prompt=frame.get("system_prompt"),
                max_tokens=frame.get("max_tokens"),
                temperature=frame.get("temperature"),
            )
            self.push({"type": "ack", **sub.ack()})
            self.tail(sub.request_id, sub.client_request_id, 0)
        elif kind == "regenerate":
            sub = await self.runtime.regenerate(
                user_id=self.user_id,
                client_request_id=frame["request_id"],
                message_id=frame["message_id"],
                model=frame.get("model"),
                max_tokens=frame.get("max_tokens"),
                temperature=frame.get("temperature"),
            )
            self.push({"type": "ack", **sub.ack()})
            self.tail(sub.request_id, sub.client_request_id, 0)
        elif kind == "cancel":
            await self.runtime.cancel(user_id=self.user_id, client_request_id=frame["request_id"])
        elif kind == "resume":
            row = await self.runtime.find(user_id=self.user_id, client_request_id=frame["request_id"])
            self.tail(row["id"], row["request_id"], frame["after_seq"])

    def tail(self, request_id: str, client_request_id: str, after_seq: int) -> None:
        old = self.tails.pop(client_request_id, None)
        if old is not None:
            old.cancel()
        task = asyncio.create_task(self._tail(request_id, client_request_id, after_seq))
        self.tails[client_request_id] = task

        def forget(t: asyncio.Task[Any], k: str = client_request_id) -> None:
            if self.tails.get(k) is t:
                self.tails.pop(k, None)

        task.add_done_callback(forget)

    async def _tail(self, request_id: str, client_request_id: str, after_seq: int) -> None:
        try:
            async for _, text in self.runtime.wire_frames(
                request_id=request_id, client_request_id=client_request_id, after_seq=after_seq
            ):
                self.push_raw(text)
        except asyncio.CancelledError:
            raise
        except SuiteError as exc:
            self.error(ERROR_CODES.get(exc.code, exc.code), exc.message, request_id=client_request_id)
        except Exception:
            log.exception("tail of %s failed", request_id)
            self.error("internal_error", "internal error", request_id=client_request_id)
