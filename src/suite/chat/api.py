"""Chat routes: REST and the WebSocket under /api/v1/chat, pages under /chat/, the OpenAI-compatible /v1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse

from suite.chat import notify, service
from suite.chat.db import run_db
from suite.chat.deps import ChatAdmin, ChatUser
from suite.chat.runtime_state import get_runtime
from suite.chat.schemas import (
    ConversationCreate,
    ConversationPage,
    ConversationRead,
    ConversationUpdate,
    MessageRead,
    RegenerateBody,
    RequestRead,
    SendAccepted,
    SendBody,
)
from suite.chat.settings import chat_settings
from suite.core.auth import CurrentUser
from suite.core.db import SessionDep
from suite.core.errors import NotFound

router = APIRouter()
pages = APIRouter()


def __getattr__(name: str) -> Any:
    # `openai_router` is built when the app is (its prefix is a setting; "" disables it).
    if name == "openai_router":
        from suite.chat.openai_api import build_router

        return build_router(chat_settings().openai_prefix.rstrip("/"))
    raise AttributeError(name)


__all__ = ["pages", "readiness", "router", "shutdown", "startup"]  # and openai_router, built on access


# --- domain hooks ---------------------------------------------------------------------------------------------


def readiness() -> str | None:
    from suite.chat.runtime_state import readiness_problems

    problems = readiness_problems()
    failing = [f"{name}: {problem}" for name, problem in problems.items() if problem]
    return "; ".join(failing) or None


async def startup(app: Any) -> None:
    from suite.chat import runtime_state, ws
    from suite.core.server import add_stopping_hook

    await runtime_state.start()

    async def going_away() -> None:  # before uvicorn closes the sockets with 1012 itself
        ws.set_draining(True)
        await ws.close_all(ws.CLOSE_GOING_AWAY, "server shutdown")

    add_stopping_hook(app, going_away)


async def shutdown(app: Any) -> None:
    """Close sockets with 1001, stop the embedded worker and janitor gracefully, close the broker."""
    from suite.chat import runtime_state

    await runtime_state.stop()


# --- conversations ----------------------------------------------------------------------------------------------


@router.get("/conversations", response_model=ConversationPage)
def list_conversations(
    user: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    rows, next_cursor = service.list_conversations(session, user_id=user.id, limit=limit, cursor=cursor)
    return {"items": [ConversationRead.model_validate(r) for r in rows], "next_cursor": next_cursor}


@router.post("/conversations", response_model=ConversationRead, status_code=201)
def create_conversation(body: ConversationCreate, user: CurrentUser, session: SessionDep) -> ConversationRead:
    conv = service.create_conversation(session, user_id=user.id, **body.model_dump())
    session.commit()  # the event below must never announce a row that is rolled back
    notify.publish_now(
        user.id, notify.CONVERSATION, {"conversation_id": conv.id, "action": "created", "title": conv.title}
    )
    return ConversationRead.model_validate(conv)


@router.get("/conversations/{conversation_id}", response_model=ConversationRead)
def read_conversation(conversation_id: str, user: CurrentUser, session: SessionDep) -> ConversationRead:
    return ConversationRead.model_validate(
        service.get_conversation(session, user_id=user.id, conversation_id=conversation_id)
    )


@router.patch("/conversations/{conversation_id}", response_model=ConversationRead)
def update_conversation(
    conversation_id: str, body: ConversationUpdate, user: CurrentUser, session: SessionDep
) -> ConversationRead:
    changes = body.model_dump(exclude_unset=True)
    conv = service.update_conversation(session, user_id=user.id, conversation_id=conversation_id, **changes)
    session.commit()
    notify.publish_now(
        user.id, notify.CONVERSATION, {"conversation_id": conv.id, "action": "updated", "title": conv.title}
    )
    return ConversationRead.model_validate(conv)


@router.delete("/conversations/{conversation_id}", status_code=204)
def delete_conversation(conversation_id: str, user: CurrentUser, session: SessionDep) -> Response:
    service.delete_conversation(session, user_id=user.id, conversation_id=conversation_id)
    session.commit()
    notify.publish_now(
        user.id, notify.CONVERSATION, {"conversation_id": conversation_id, "action": "deleted"}
    )
    return Response(status_code=204)


@router.get("/conversations/{conversation_id}/messages", response_model=list[MessageRead])
def list_messages(
    conversation_id: str,
    user: CurrentUser,
    session: SessionDep,
    branch: Annotated[str, Query(pattern="^(active|all)$")] = "active",
    before: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[MessageRead]:
    rows = service.list_messages(
        session, user_id=user.id, conversation_id=conversation_id, branch=branch, before=before, limit=limit
    )
    return [MessageRead.model_validate(m) for m in rows]


@router.get("/conversations/{conversation_id}/export")
def export_conversation(
    conversation_id: str,
    user: CurrentUser,
    session: SessionDep,
    format: Annotated[str, Query(pattern="^(json|md)$")] = "json",
) -> Response:
    body = service.export_conversation(session, user_id=user.id, conversation_id=conversation_id, fmt=format)
    media = "application/json" if format == "json" else "text/markdown; charset=utf-8"
    filename = f"conversation-{conversation_id}.{format}"
    return Response(
        body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


# --- sending ----------------------------------------------------------------------------------------------------


def _accepted(sub: service.Submitted) -> JSONResponse:
    body = SendAccepted(
        **sub.ack(), events_url=f"/api/v1/chat/requests/{sub.client_request_id}/events"
    ).model_dump(mode="json")
    return JSONResponse(body, status_code=200 if sub.duplicate else 202)


@router.post("/conversations/{conversation_id}/messages", response_model=SendAccepted, status_code=202)
async def send_message(conversation_id: str, body: SendBody, user: ChatUser) -> JSONResponse:
    sub = await get_runtime().send(
        user_id=user.id,
        client_request_id=body.request_id,
        content=body.content,
        conversation_id=conversation_id,
        parent_id=body.parent_id,
        model=body.model,
        system_prompt=body.system_prompt,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
    )
    return _accepted(sub)


@router.post("/messages/{message_id}/regenerate", response_model=SendAccepted, status_code=202)
async def regenerate(message_id: str, body: RegenerateBody, user: ChatUser) -> JSONResponse:
    sub = await get_runtime().regenerate(
        user_id=user.id,
        client_request_id=body.request_id,
        message_id=message_id,
        model=body.model,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
    )
    return _accepted(sub)


@router.get("/requests/{request_id}", response_model=RequestRead)
async def read_request(request_id: str, user: ChatUser) -> dict[str, Any]:
    row = await get_runtime().find(user_id=user.id, client_request_id=request_id)
    row.pop("id")
    return row


@router.post("/requests/{request_id}/cancel", status_code=202)
async def cancel_request(request_id: str, user: ChatUser) -> dict[str, Any]:
    row = await get_runtime().cancel(user_id=user.id, client_request_id=request_id)
    return {"request_id": row["request_id"], "state": "cancelling"}


@router.get("/requests/{request_id}/events")
async def request_events(
    request_id: str,
    user: ChatUser,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after_seq: Annotated[int | None, Query(ge=0)] = None,
) -> StreamingResponse:
    """The reply's frames as server-sent events (`id:` = seq), resumable with Last-Event-ID."""
    runtime = get_runtime()
    row = await runtime.find(user_id=user.id, client_request_id=request_id)
    start = (
        after_seq
        if after_seq is not None
        else (int(last_event_id) if last_event_id and last_event_id.isdigit() else 0)
    )

    async def events() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        async for frame, text in runtime.wire_frames(
            request_id=row["id"], client_request_id=row["request_id"], after_seq=start
        ):
            yield f"id: {frame.seq}\nevent: {frame.type}\ndata: {text}\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


# --- models, stats, dead letters -----------------------------------------------------------------------------------


@router.get("/models")
async def list_models(user: ChatUser) -> dict[str, Any]:
    from suite.chat.llm import model_names

    return {"default": chat_settings().default_model, "models": [{"id": name} for name in model_names()]}


@router.get("/stats")
async def chat_stats(user: ChatUser) -> dict[str, Any]:
    from suite.chat.runtime_state import embedded_worker

    runtime = get_runtime()
    worker = embedded_worker()
    return {
        "broker": runtime.broker.kind,
        "queue": await runtime.broker.pending(),
        "workers": await runtime.broker.live_workers(),
        "embedded_worker": worker.stats.to_dict() if worker else None,
        "requests": await run_db(service.stats),
    }


@router.get("/dlq")
async def dead_letters(
    user: ChatAdmin, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    return await get_runtime().broker.dead_letters(limit=limit)


@router.post("/dlq/{request_id}/retry", status_code=202)
async def retry_dead(request_id: str, user: ChatAdmin) -> dict[str, Any]:
    from suite.chat.dlq import retry

    return await retry(get_runtime(), request_id)


# --- WebSocket ----------------------------------------------------------------------------------------------


@router.websocket("/ws")
async def chat_socket(websocket: WebSocket) -> None:
    from suite.chat.ws import endpoint

    await endpoint(websocket)


# --- pages ----------------------------------------------------------------------------------------------------


@pages.get("/")
def chat_page(request: Request, session: SessionDep) -> Response:
    return _page(request, session, None)


@pages.get("/c/{conversation_id}")
def conversation_page(conversation_id: str, request: Request, session: SessionDep) -> Response:
    return _page(request, session, conversation_id)


def _page(request: Request, session: Any, conversation_id: str | None) -> Response:
    from fastapi.responses import RedirectResponse

    from suite.core import web_auth
    from suite.core.config import get_settings
    from suite.core.web import render

    user = web_auth.user_from_cookie(request, session)
    if user is None:
        return RedirectResponse(web_auth.login_url(request), status_code=303)
    if conversation_id:
        try:
            service.get_conversation(session, user_id=user.id, conversation_id=conversation_id)
        except NotFound:
            return render(
                request,
                "chat/chat.html",
                {"missing": True, "conversation_id": None, "config": _page_config(get_settings())},
                status_code=404,
            )
    return render(
        request,
        "chat/chat.html",
        {"conversation_id": conversation_id, "missing": False, "config": _page_config(get_settings())},
    )


def _page_config(settings: Any) -> dict[str, Any]:
    return {
        "max_message_chars": chat_settings().max_message_chars,
        "ws_path": "/api/v1/chat/ws",
        "api": "/api/v1/chat",
    }
