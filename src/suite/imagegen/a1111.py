"""The A1111-compatible subset at /sdapi/v1: existing clients (webuiapi, Krita, SillyTavern) work unchanged.

Errors use A1111's body `{error, detail, body, errors}`; jobs go through the same FIFO and id space as the
native API, so a client can follow an A1111 job by id on Socket.IO or SSE.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from suite.core.db import session_scope
from suite.core.errors import NotFound, SuiteError, Unauthorized
from suite.imagegen import progress, samplers, service
from suite.imagegen.schemas import A1111Generate, PngInfoRequest


def a1111_error(status: int, error: str, detail: str, errors: Any = None) -> JSONResponse:
    return JSONResponse(
        {"error": error, "detail": detail, "body": "", "errors": errors or ""}, status_code=status
    )


class A1111Route(APIRoute):
    """Our errors in A1111's format."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except SuiteError as exc:
                headers = {}
                if exc.status_code == 401:
                    headers["WWW-Authenticate"] = 'Basic realm="sdapi"'
                retry = getattr(exc, "retry_after", None)
                if retry is not None:
                    headers["Retry-After"] = str(max(1, int(retry + 0.999)))
                response = a1111_error(exc.status_code, type(exc).__name__, exc.message, {"code": exc.code})
                response.headers.update(headers)
                return response
            except RequestValidationError as exc:
                errs = exc.errors()
                first = errs[0] if errs else {}
                where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
                return a1111_error(
                    422, "RequestValidationError", f"{where}: {first.get('msg')}", str(errs)[:2000]
                )

        return route


async def _auth(request: Request) -> service.Caller:
    """HTTP Basic (user + API token) or a bearer token; open on loopback when allowed. Async: only a token
    lookup goes to the thread pool."""
    from suite.core.auth import bearer_token

    s = service.settings()
    if not s.a1111:
        raise NotFound("Not Found")
    header = request.headers.get("authorization", "")
    token = bearer_token(request)
    username = None
    if header.lower().startswith("basic "):
        try:
            username, _, token = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            raise Unauthorized("bad basic auth header") from None
    if token:
        return await run_in_threadpool(_token_caller, token, username)
    from suite.imagegen.access import is_loopback

    if s.a1111_open_on_loopback and is_loopback(request):
        return service.LOCAL
    raise Unauthorized("authentication required (HTTP Basic with an API token, or a bearer token)")


def _token_caller(token: str, username: str | None) -> service.Caller:
    from suite.core.auth import authenticate_token

    with service.write_lock, session_scope() as session:
        user, _tok = authenticate_token(session, token)
        if username is not None and not secrets.compare_digest(username, user.username):
            raise Unauthorized("user name does not match the token")
        return service.Caller(user_id=user.id, admin=user.role == "admin")


A1111Caller = Annotated[service.Caller, Depends(_auth)]


async def _origin(request: Request) -> None:
    from suite.imagegen.access import refuse_foreign_origin

    refuse_foreign_origin(request)


sdapi = APIRouter(prefix="/sdapi/v1", route_class=A1111Route, tags=["a1111"], dependencies=[Depends(_origin)])


def _submit(body: A1111Generate, caller: service.Caller, *, img2img: bool) -> tuple[str, Any]:
    from suite.imagegen.api import submit_job, worker

    with session_scope() as session:
        req, _extra = service.from_a1111(session, body, img2img=img2img)
        job, _pos = submit_job(
            session, req=req, caller=caller, origin="a1111", force_task_id=body.force_task_id, a1111=True
        )
        return job.id, worker()


def _recorded(job_id: str, body: A1111Generate, worker: Any) -> dict[str, Any] | None:
    """The blocked call's answer from the worker's record of the job and its PNG bytes (no read back, no
    thread hop); None when it lacks them."""
    handle = worker.handle(job_id)
    read = handle.read if handle is not None else None
    pngs = worker.a1111_pngs.pop(job_id, None)
    if read is None or (pngs is None and read["status"] != "failed" and read["images"]):
        return None
    spec = handle.payload["model"]
    infotexts = handle.result.get("infotexts", [])
    return _answer(read, spec["name"], spec["short_hash"], infotexts, pngs or [], body)


def _result(job_id: str, body: A1111Generate) -> dict[str, Any]:
    """The blocked call's answer from the database and the files."""
    from suite.imagegen.models import ImageModel

    with session_scope() as session:
        job = service.get_job(session, job_id=job_id)
        model = session.get(ImageModel, job.model_id) if job.model_id else None
        files = [service.image_file(im).read_bytes() for im in job.images] if body.send_images else []
        return _answer(
            service.job_read(job),
            model.name if model else None,
            model.short_hash if model else None,
            [im.infotext for im in job.images],
            files,
            body,
        )


def _answer(
    read: dict[str, Any],
    model_name: str | None,
    model_hash: str | None,
    infotexts: list[str],
    pngs: list[bytes],
    body: A1111Generate,
) -> dict[str, Any]:
    if read["status"] == "failed":
        error = read["error"] or {}
        code = error.get("code") or "error"
        if code in ("lora_incompatible", "corrupt_weights", "not_a_model"):
            from suite.core.errors import ValidationFailed

            raise ValidationFailed(error.get("message") or "invalid request", code=code)
        raise SuiteError(error.get("message") or "generation failed", code=code)
    images = [base64.b64encode(png).decode() for png in pngs] if body.send_images else []
    seeds = [im["seed"] for im in read["images"]]
    info = service.a1111_info(read, model_name, model_hash, infotexts, seeds)
    params = body.model_dump(exclude={"init_images", "mask"})
    return {"images": images, "parameters": params, "info": json.dumps(info), "job_id": read["id"]}


async def _generate(body: A1111Generate, caller: service.Caller, *, img2img: bool) -> dict[str, Any]:
    job_id, worker = await run_in_threadpool(_submit, body, caller, img2img=img2img)
    await progress.wait_finished(worker, job_id)
    answer = _recorded(job_id, body, worker)
    return answer if answer is not None else await run_in_threadpool(_result, job_id, body)


@sdapi.post("/txt2img")
async def txt2img(caller: A1111Caller, body: Annotated[A1111Generate, Body()]) -> dict[str, Any]:
    return await _generate(body, caller, img2img=False)


@sdapi.post("/img2img")
async def img2img(caller: A1111Caller, body: Annotated[A1111Generate, Body()]) -> dict[str, Any]:
    return await _generate(body, caller, img2img=True)


@sdapi.get("/progress")
def get_progress(caller: A1111Caller, skip_current_image: bool = False) -> dict[str, Any]:
    from suite.imagegen.worker import current_worker

    w = current_worker()
    h = w.current if w is not None else None
    queued = w.queue_length if w is not None else 0
    state = {
        "skipped": bool(h and h.signals.skip.is_set()),
        "interrupted": bool(h and h.signals.interrupt.is_set()),
        "stopping_generation": False,
        "job": h.id if h else "",
        "job_count": (1 if h else 0) + queued,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": h.step if h else 0,
        "sampling_steps": h.total if h else 0,
    }
    frac = (h.step / h.total) if h and h.total else 0.0
    return {
        "progress": round(frac, 4),
        "eta_relative": 0.0,
        "state": state,
        "current_image": None,
        "textinfo": None,
        "current_task": h.id if h else None,
    }


@sdapi.post("/interrupt")
def interrupt(caller: A1111Caller) -> dict[str, Any]:
    from suite.imagegen.worker import current_worker

    w = current_worker()
    if w is not None:
        w.interrupt()
    return {}


@sdapi.post("/skip")
def skip(caller: A1111Caller) -> dict[str, Any]:
    from suite.imagegen.worker import current_worker

    w = current_worker()
    if w is not None:
        w.skip()
    return {}


@sdapi.get("/samplers")
def list_samplers(caller: A1111Caller) -> list[dict[str, Any]]:
    out = []
    for s in samplers.SAMPLERS:
        if not s.a1111:
            continue
        options = {"scheduler": s.a1111_default} if s.a1111_default != "uniform" else {}
        out.append({"name": s.name, "aliases": list(s.aliases), "options": options})
    return out


@sdapi.get("/schedulers")
def list_schedulers(caller: A1111Caller) -> list[dict[str, Any]]:
    return [
        {"name": key, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
        for key, label in samplers.SCHEDULE_LABELS.items()
    ]


@sdapi.get("/sd-models")
def sd_models(caller: A1111Caller) -> list[dict[str, Any]]:
    with session_scope() as session:
        return [
            {
                "title": service.title_of(m),
                "model_name": m.name,
                "hash": m.short_hash,
                "sha256": m.sha256,
                "filename": m.path,
                "config": None,
            }
            for m in service.list_models(session)
        ]


@sdapi.post("/refresh-checkpoints")
def refresh_checkpoints(caller: A1111Caller) -> None:
    from pathlib import Path

    with session_scope() as session:
        for model in service.list_models(session):
            if not Path(model.path).exists():
                model.status = "missing"
    return None


@sdapi.get("/options")
def get_options(caller: A1111Caller) -> dict[str, Any]:
    with session_scope() as session:
        return service.get_options(session)


@sdapi.post("/options")
def set_options(caller: A1111Caller, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    from suite.imagegen.api import switch_model

    with session_scope() as session:
        if body.get("sd_model_checkpoint"):
            model = service.match_checkpoint(session, title=str(body["sd_model_checkpoint"]))
            service.set_option(session, key="sd_model_checkpoint", value=service.title_of(model))
            switch_model(session, model)
        for key, value in body.items():
            if key != "sd_model_checkpoint":
                service.set_option(session, key=str(key)[:100], value=value)
    return {}


@sdapi.get("/loras")
def loras(caller: A1111Caller) -> list[dict[str, Any]]:
    with session_scope() as session:
        return [
            {"name": lo.name, "alias": lo.alias, "path": lo.filename, "metadata": lo.meta}
            for lo in service.list_loras(session)
        ]


@sdapi.post("/refresh-loras")
def refresh_loras(caller: A1111Caller) -> None:
    with session_scope() as session:
        service.refresh_loras(session)
    return None


@sdapi.post("/png-info")
def png_info(caller: A1111Caller, body: PngInfoRequest) -> dict[str, Any]:
    from suite.imagegen.api import read_png_info

    return read_png_info(body.image)


@sdapi.get("/memory")
def memory(caller: A1111Caller) -> dict[str, Any]:
    import psutil

    vm = psutil.virtual_memory()
    out: dict[str, Any] = {"ram": {"free": vm.available, "used": vm.total - vm.available, "total": vm.total}}
    import sys

    torch = sys.modules.get("torch")  # never import torch just to answer this
    if torch is not None and torch.cuda.is_available():
        from suite.imagegen import ml

        return ml.memory_report()
    out["cuda"] = {"error": "unavailable"}
    return out


@sdapi.post("/unload-checkpoint")
def unload_checkpoint(caller: A1111Caller) -> dict[str, Any]:
    from suite.imagegen.api import worker

    w = worker()
    w.call(lambda engine: engine.unload())
    return {}


@sdapi.post("/reload-checkpoint")
def reload_checkpoint(caller: A1111Caller) -> dict[str, Any]:
    from suite.imagegen.api import worker

    with session_scope() as session:
        model, _ = service.default_model(session)
        spec = service.model_spec(model)
    w = worker()
    w.call(lambda engine: w.ensure_model(spec))
    return {}


@sdapi.get("/scripts")
def scripts(caller: A1111Caller) -> dict[str, Any]:
    return {"txt2img": [], "img2img": []}


@sdapi.get("/cmd-flags")
def cmd_flags(caller: A1111Caller) -> dict[str, Any]:
    return {}


@sdapi.get("/upscalers")
def upscalers(caller: A1111Caller) -> list[Any]:
    return []


@sdapi.get("/prompt-styles")
def prompt_styles(caller: A1111Caller) -> list[Any]:
    return []
