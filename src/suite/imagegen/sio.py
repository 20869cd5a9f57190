# mypy: disable-error-code="untyped-decorator"
"""Socket.IO at /socket.io: rooms per job, client and user; an explicit origin check (never '*' or [])."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from suite.core.db import session_scope
from suite.imagegen import service

log = logging.getLogger("suite.imagegen.sio")
UPSTREAM_NAMES = {"job.progress": "image_generation_step_end", "model.load_progress": "model_load_progress"}

_server: Any = None


def _origin_ok(origin: str | None, environ: dict[str, Any]) -> bool:
    from suite.imagegen.access import origin_allowed

    return origin_allowed(origin, environ.get("HTTP_HOST"))


def create_server() -> Any:
    import socketio

    sio = socketio.AsyncServer(
        async_mode="asgi", cors_allowed_origins=_origin_ok, logger=False, engineio_logger=False
    )

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        caller = await asyncio.to_thread(_authenticate, environ, auth)
        if caller is None:
            return False
        await sio.save_session(sid, {"user_id": caller.user_id, "admin": caller.admin})
        await sio.enter_room(sid, f"client:{sid}")
        await sio.enter_room(sid, f"user:{caller.user_id if caller.user_id is not None else 'local'}")
        _attach(sio)
        return True

    @sio.event
    async def subscribe(sid: str, data: Any) -> dict[str, Any]:
        job_id = str((data or {}).get("job_id", "")) if isinstance(data, dict) else ""
        sess = await sio.get_session(sid)
        caller = service.Caller(user_id=sess.get("user_id"), admin=bool(sess.get("admin")))

        def check() -> dict[str, Any]:
            with session_scope() as session:
                job = service.get_job(session, job_id=job_id, caller=caller)
                return {"job_id": job.id, "status": job.status}

        try:
            snap = await asyncio.to_thread(check)
        except Exception as exc:
            return {"ok": False, "error": getattr(exc, "message", str(exc))}
        await sio.enter_room(sid, f"job:{job_id}")
        return {"ok": True, **snap}

    @sio.event
    async def unsubscribe(sid: str, data: Any) -> dict[str, Any]:
        job_id = str((data or {}).get("job_id", "")) if isinstance(data, dict) else ""
        await sio.leave_room(sid, f"job:{job_id}")
        return {"ok": True}

    return sio


def _authenticate(environ: dict[str, Any], auth: Any) -> service.Caller | None:
    from suite.core.auth import authenticate_token
    from suite.core.errors import SuiteError

    token = auth.get("token") if isinstance(auth, dict) else None
    header = environ.get("HTTP_AUTHORIZATION", "")
    if not token and header.lower().startswith("bearer "):
        token = header[7:].strip()
    if token:
        try:
            with session_scope() as session:
                user, _ = authenticate_token(session, token)
                return service.Caller(user_id=user.id, admin=user.role == "admin")
        except SuiteError:
            return None
    host = environ.get("REMOTE_ADDR", "")
    if service.settings().open_on_loopback and (host.startswith("127.") or host in ("::1", "")):
        return service.LOCAL
    return None


_attached: dict[int, Any] = {}


def _attach(sio: Any) -> None:
    """Forward worker events to rooms (once per event loop)."""
    from suite.imagegen.worker import current_worker

    w = current_worker()
    if w is None:
        return
    loop = asyncio.get_running_loop()
    key = id(w)
    if key in _attached:
        return
    upstream = service.settings().upstream_events

    def on_event(event: str, data: dict[str, Any]) -> None:  # worker thread
        job_id = data.get("job_id")
        rooms = [f"job:{job_id}"] if job_id else None
        payload = {k: v for k, v in data.items() if k not in ("owner_user_id",)}

        async def send() -> None:
            if rooms:
                await sio.emit(event, payload, to=rooms)
                if upstream and event in UPSTREAM_NAMES:
                    await sio.emit(UPSTREAM_NAMES[event], payload, to=rooms)
            else:
                await sio.emit(event, payload)

        if not loop.is_closed():
            asyncio.run_coroutine_threadsafe(send(), loop)

    _attached[key] = w.subscribe(on_event)


def mount(app: Any) -> None:
    """Mount the Socket.IO ASGI app at /socket.io (once per app)."""
    global _server
    import socketio

    if getattr(app.state, "imagegen_sio", None) is not None:
        return
    _server = create_server()
    app.state.imagegen_sio = _server
    app.mount("/socket.io", socketio.ASGIApp(_server, socketio_path="socket.io"))


def reset() -> None:
    for unsub in _attached.values():
        unsub()
    _attached.clear()
