"""Native API at /api/v1/imagegen, pages at /imagegen/, A1111 routes at /sdapi/v1, Socket.IO, readiness."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from suite.core.db import SessionDep, session_scope
from suite.core.errors import Conflict, NotFound, ValidationFailed
from suite.imagegen import formats, infotext, progress, samplers, service
from suite.imagegen.a1111 import sdapi
from suite.imagegen.access import AdminDep, CallerDep, check_origin
from suite.imagegen.models import FINISHED, GenJob
from suite.imagegen.schemas import (
    DownloadCreate,
    JobAccepted,
    JobCreate,
    JobPage,
    JobRead,
    LoraRead,
    LoraUpload,
    ModelCreate,
    ModelRead,
    PngInfoRequest,
)
from suite.imagegen.service import Caller

log = logging.getLogger("suite.imagegen.api")
SMALL_FILE = 4 * 1024 * 1024
RECENT_READ_MAX = 1024 * 1024  # read on the event loop up to this size
JSON = "application/json"

__all__ = ["pages", "readiness", "router", "sdapi", "shutdown", "startup"]


router = APIRouter(dependencies=[Depends(check_origin)])
pages = APIRouter(include_in_schema=False)


# --- jobs ---------------------------------------------------------------------------------------------------


def worker() -> Any:
    from suite.imagegen.worker import get_worker

    return get_worker()


def submit_job(
    session: Session | None,
    *,
    req: JobCreate,
    caller: Caller,
    origin: str = "native",
    force_task_id: str | None = None,
    parent_job_id: str | None = None,
    a1111: bool = False,
) -> tuple[GenJob, int]:
    """Create the row, commit it, queue it. The queue limit is checked before anything is written."""
    w = worker()
    w.check_capacity()
    if session is not None:
        session.rollback()  # end the request's read snapshot; the write below has its own transaction
    with service.write_lock, session_scope() as own:
        job, payload = service.create_job(
            own,
            req=req,
            origin=origin,
            caller=caller,
            force_task_id=force_task_id,
            parent_job_id=parent_job_id,
            a1111_schedule=a1111,
        )
    try:
        position = w.submit(payload, owner_user_id=caller.user_id, client_id=req.client_id, origin=origin)
    except Exception:
        with service.write_lock, session_scope() as own:
            own.delete(own.get(GenJob, job.id))
        raise
    return job, position


def live(job: GenJob) -> dict[str, Any]:
    from suite.imagegen.worker import current_worker

    w = current_worker()
    h = w.handle(job.id) if w is not None else None
    # a finished job has no place in the queue (the worker may not have dropped it as current yet)
    position = w.position(job.id) if w is not None and job.status not in FINISHED else None
    data = service.job_read(job, position=position)
    if h is not None and job.status == "running":
        data["step"] = h.step
    return data


WaitQuery = Annotated[
    float | None,
    Query(ge=0, le=600, description="wait up to this many seconds for the job to finish (no polling needed)"),
]


def read_live(job_id: str, caller: Caller) -> dict[str, Any]:
    with session_scope() as session:
        return JobRead.model_validate(
            live(service.get_job(session, job_id=job_id, caller=caller))
        ).model_dump(mode="json")


async def wait_for(job_id: str, timeout: float) -> bool:
    """True when the job reached a terminal status within `timeout` seconds (woken by the worker's event)."""
    from suite.imagegen.worker import current_worker

    w = current_worker()
    if w is None:
        return False
    try:
        await progress.wait_finished(w, job_id, timeout)
    except TimeoutError:
        return False
    return True


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    responses={200: {"model": JobRead, "description": "with `wait`: the finished job"}},
)
async def create_job(body: JobCreate, caller: CallerDep, wait: WaitQuery = None) -> Response:
    """Queue a job (202 with its id). With `wait`, answer when it finishes instead: 200 with the job (its
    images' URLs), or 202 when it is still queued or running after `wait` seconds."""

    def submit() -> tuple[str, int]:
        job, position = submit_job(None, req=body, caller=caller)
        return job.id, position

    job_id, position = await run_in_threadpool(submit)
    if wait and await wait_for(job_id, wait):
        handle = worker().handle(job_id)
        if handle is not None and handle.read is not None:  # the worker's record: no read back
            return Response(JobRead.model_validate(handle.read).model_dump_json(), media_type=JSON)
        return JSONResponse(await run_in_threadpool(read_live, job_id, caller), status_code=200)
    status = "queued"
    if wait:  # still queued or running after `wait` seconds
        handle = worker().handle(job_id)
        if handle is not None:
            status, position = handle.status, worker().position(job_id) or 0
    return JSONResponse({"job_id": job_id, "status": status, "position": position}, status_code=202)


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    session: SessionDep,
    caller: CallerDep,
    status: str | None = None,
    model: str | None = None,
    q: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    jobs, nxt = service.list_jobs(
        session, caller=caller, status=status, model=model, q=q, limit=limit, cursor=cursor
    )
    return {"items": [live(j) for j in jobs], "next_cursor": nxt}


@router.get("/jobs/{job_id}", response_model=JobRead)
async def read_job(job_id: str, caller: CallerDep, wait: WaitQuery = None) -> dict[str, Any]:
    """The job; with `wait`, a long poll: answers when it finishes or after `wait` seconds."""
    data = await run_in_threadpool(read_live, job_id, caller)
    if wait and data["status"] not in FINISHED and await wait_for(job_id, wait):
        data = await run_in_threadpool(read_live, job_id, caller)
    return data


@router.delete("/jobs/{job_id}")
def cancel_job(job_id: str, session: SessionDep, caller: CallerDep) -> JSONResponse:
    job = service.get_job(session, job_id=job_id, caller=caller)
    if job.status in FINISHED:
        raise Conflict(f"job {job_id} already {job.status}", code="job_finished")
    session.commit()
    result = worker().cancel(job_id)
    return JSONResponse(
        {"job_id": job_id, "status": result}, status_code=200 if result == "cancelled" else 202
    )


@router.post("/jobs/{job_id}/rerun", status_code=202, response_model=JobAccepted)
def rerun_job(job_id: str, session: SessionDep, caller: CallerDep, new_seed: bool = False) -> dict[str, Any]:
    old = service.get_job(session, job_id=job_id, caller=caller)
    req = service.rerun_request(old, new_seed=new_seed)
    job, position = submit_job(session, req=req, caller=caller, parent_job_id=old.id)
    return {"job_id": job.id, "status": "queued", "position": position}


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, caller: CallerDep) -> StreamingResponse:
    """Server-sent events: a snapshot, then job.progress / job.preview / job.status until the end."""

    def snapshot() -> dict[str, Any]:
        with session_scope() as session:
            return live(service.get_job(session, job_id=job_id, caller=caller))

    w = worker()
    hub = progress.hub_for(w)
    q = hub.listen(job_id)
    try:
        first = await run_in_threadpool(snapshot)
    except BaseException:
        hub.forget(job_id, q)
        raise

    async def stream() -> Any:
        try:
            yield sse("job.snapshot", first)
            if first["status"] in FINISHED:
                return
            handle = w.handle(job_id)
            while True:
                try:
                    event, data = await asyncio.wait_for(q.get(), timeout=15)
                except TimeoutError:
                    if handle is not None and handle.done.is_set():
                        yield sse("job.status", {"job_id": job_id, "status": handle.status})
                        return
                    yield ": keep-alive\n\n"
                    continue
                yield sse(event, data)
                if event == "job.status" and data.get("status") in FINISHED:
                    return
        finally:
            hub.forget(job_id, q)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# --- images -------------------------------------------------------------------------------------------------


@router.get("/images/{image_id}")
async def read_image(
    image_id: int, caller: CallerDep, thumb: Annotated[int | None, Query(ge=16, le=1024)] = None
) -> Response:
    """The PNG (its parameters chunk intact), or a thumbnail. A recent image is read on the event loop (small
    file, page cache); otherwise one thread-pool hop for the row and the bytes."""
    if not thumb:
        fresh = recent_png(image_id, caller)
        if fresh is not None:
            return Response(fresh, media_type="image/png")

    def load() -> Response:
        with session_scope() as session:
            path = service.image_file(service.get_image(session, image_id=image_id, caller=caller))
        if thumb:
            from PIL import Image

            with Image.open(path) as img:
                img.thumbnail((thumb, thumb))
                buf = io.BytesIO()
                img.save(buf, format="PNG")
            return Response(buf.getvalue(), media_type="image/png")
        if path.stat().st_size <= SMALL_FILE:  # one read here beats FileResponse's thread hops per chunk
            return Response(path.read_bytes(), media_type="image/png")
        return FileResponse(path, media_type="image/png")

    return await run_in_threadpool(load)


def recent_png(image_id: int, caller: Caller) -> bytes | None:
    """The bytes of an image the worker wrote recently, when `caller` may see it; None: ask the database."""
    from suite.imagegen.worker import current_worker

    w = current_worker()
    if w is None:
        return None
    entry = w.recent_images.get(image_id)
    if entry is None:
        return None
    relpath, owner, size = entry
    if size > RECENT_READ_MAX or not (caller.admin or owner == caller.user_id):
        return None
    try:
        return formats.contained(service.outputs_root(), relpath).read_bytes()
    except (OSError, NotFound):  # deleted, or now a link that escapes: the database path answers
        w.forget_image(image_id)
        return None


@router.delete("/images/{image_id}")
def delete_image(image_id: int, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    service.delete_image(session, image_id=image_id, caller=caller)
    return {"deleted": image_id}


@router.delete("/history/{job_id}")
def delete_history(job_id: str, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    service.delete_job(session, job_id=job_id, caller=caller)
    return {"deleted": job_id}


# --- models, engine -----------------------------------------------------------------------------------------


def model_read(model: Any) -> dict[str, Any]:
    return {
        "id": model.id,
        "name": model.name,
        "family": model.family,
        "source": model.source,
        "path": model.path,
        "config_skeleton": model.config_skeleton,
        "sha256": model.sha256,
        "short_hash": model.short_hash,
        "size_bytes": model.size_bytes,
        "status": model.status,
        "title": service.title_of(model),
        "added_at": model.added_at,
        "verified_at": model.verified_at,
    }


@router.get("/models", response_model=list[ModelRead])
def list_models(session: SessionDep, caller: CallerDep) -> list[dict[str, Any]]:
    return [model_read(m) for m in service.list_models(session)]


@router.post("/models", status_code=201, response_model=ModelRead)
def add_model(body: ModelCreate, session: SessionDep, caller: AdminDep) -> dict[str, Any]:
    roots = service.settings().model_roots or [service.models_root()]
    model = service.add_model(
        session,
        path=Path(body.path),
        name=body.name,
        family=body.family,
        allowed_roots=list(roots),
        config=Path(body.config) if body.config else None,
    )
    return model_read(model)


@router.post("/models/{ref}/verify")
def verify_model(ref: str, session: SessionDep, caller: AdminDep) -> dict[str, Any]:
    return service.verify_model(session, ref=ref)


@router.delete("/models/{ref}")
def remove_model(ref: str, session: SessionDep, caller: AdminDep) -> dict[str, Any]:
    from suite.imagegen.worker import current_worker

    w = current_worker()
    loaded = w.engine.model_key if w is not None and w.engine is not None else None
    service.remove_model(session, ref=ref, loaded_key=loaded)
    return {"deleted": ref}


def switch_model(session: Session, model: Any) -> None:
    """Load `model` on the worker after the running job (409 under switch_policy = refuse while busy)."""
    w = worker()
    if service.settings().switch_policy == "refuse" and w.busy:
        raise Conflict("a job is running; try again when it ends", code="engine_busy")
    spec = service.model_spec(model)
    session.commit()
    w.call(lambda engine: w.ensure_model(spec))


@router.post("/models/{ref}/load", status_code=202)
def load_model(ref: str, session: SessionDep, caller: AdminDep) -> dict[str, Any]:
    model = service.get_model(session, ref=ref)
    switch_model(session, model)
    return dict(worker().engine_info)


@router.post("/engine/unload")
def unload(caller: AdminDep) -> dict[str, Any]:
    w = worker()
    w.call(lambda engine: engine.unload())
    return dict(w.engine_info)


@router.post("/engine/cancel-load", status_code=202)
def cancel_load(caller: AdminDep) -> dict[str, Any]:
    """Stop the model load in progress (between two components); 409 when nothing is loading."""
    from suite.imagegen.worker import current_worker

    w = current_worker()
    if w is None or not w.cancel_load():
        raise Conflict("no model load is in progress", code="not_loading")
    return {"cancelling": True, "model": w.engine_info.get("model")}


@router.get("/engine")
def engine_state(caller: CallerDep) -> dict[str, Any]:
    import psutil

    from suite.imagegen.worker import current_worker

    w = current_worker()
    info: dict[str, Any] = dict(w.engine_info) if w is not None else {"state": "stopped"}
    vm = psutil.virtual_memory()
    info.update(
        queue_length=w.queue_length if w is not None else 0,
        running=w.current.id if w is not None and w.current is not None else None,
        ram={"total": vm.total, "available": vm.available},
    )
    return info


# --- LoRA, samplers, png-info, downloads ------------------------------------------------------------------


def lora_read(lora: Any) -> dict[str, Any]:
    return {
        "id": lora.id,
        "name": lora.name,
        "alias": lora.alias,
        "filename": lora.filename,
        "sha256": lora.sha256,
        "short_hash": lora.short_hash,
        "size_bytes": lora.size_bytes,
        "family": lora.family,
    }


@router.get("/loras", response_model=list[LoraRead])
def list_loras(session: SessionDep, caller: CallerDep) -> list[dict[str, Any]]:
    return [lora_read(lo) for lo in service.list_loras(session)]


@router.post("/loras", status_code=201, response_model=LoraRead)
def upload_lora(body: LoraUpload, session: SessionDep, caller: AdminDep) -> dict[str, Any]:
    try:
        data = base64.b64decode(body.data, validate=True)
    except ValueError:
        raise ValidationFailed("data is not valid base64") from None
    return lora_read(service.add_lora(session, name=body.name, data=data))


@router.delete("/loras/{name}")
def delete_lora(name: str, session: SessionDep, caller: AdminDep) -> dict[str, Any]:
    formats.check_name(name, "LoRA name")
    service.remove_lora(session, name=name)
    return {"deleted": name}


@router.get("/samplers")
def list_samplers() -> list[dict[str, Any]]:
    return samplers.describe()


def read_png_info(data: str) -> dict[str, Any]:
    from PIL import Image

    if not data:
        return {"info": "", "items": {}, "parameters": {}}
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            items = {k: v for k, v in img.info.items() if isinstance(v, str)}
    except Exception:
        raise ValidationFailed("image is not a valid base64 PNG", code="bad_image") from None
    text = items.pop("parameters", "")
    return {"info": text, "items": items, "parameters": infotext.parse(text) if text else {}}


@router.post("/png-info")
def png_info(body: PngInfoRequest) -> dict[str, Any]:
    return read_png_info(body.image)


def download_read(job: Any) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "state": job.state,
        "done": job.progress_done,
        "total": job.progress_total,
        "message": job.message,
        "error": job.error,
        "params": job.params,
        "result": job.result,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }


def _download_job(session: Session, job_id: str) -> Any:
    from suite.core import tasks
    from suite.core.errors import NotFound

    if not formats.SAFE_ID.match(job_id):
        raise NotFound(f"download {job_id[:80]!r} not found", code="job_not_found")
    try:
        job = tasks.get_job(session, job_id=job_id)
    except NotFound:
        job = None
    if job is None or job.domain != "imagegen" or job.name != "download":
        raise NotFound(f"download {job_id!r} not found", code="job_not_found")
    return job


@router.post("/downloads", status_code=202)
def create_download(body: DownloadCreate, session: SessionDep, caller: AdminDep) -> dict[str, Any]:
    """Queue a download job (core jobs: `suite worker` or serve's embedded consumer runs it)."""
    from suite.imagegen import downloads

    session.rollback()  # no read snapshot held across the job's own transactions
    job = downloads.submit(owner_id=caller.user_id, **body.model_dump())
    return download_read(job)


@router.get("/downloads")
def list_downloads(
    session: SessionDep, caller: AdminDep, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[dict[str, Any]]:
    from suite.core import tasks

    jobs = tasks.list_jobs(session, user=None, domain="imagegen", limit=limit)
    return [download_read(j) for j in jobs if j.name == "download"]


@router.get("/downloads/{job_id}")
def read_download(job_id: str, session: SessionDep, caller: AdminDep) -> dict[str, Any]:
    return download_read(_download_job(session, job_id))


@router.delete("/downloads/{job_id}")
def cancel_download(job_id: str, session: SessionDep, caller: AdminDep) -> dict[str, Any]:
    """Cancel a queued download, or a running one at its next chunk (its `.part` stays for a resume)."""
    from suite.core import tasks

    _download_job(session, job_id)
    job = tasks.cancel_job(session, job_id=job_id, user=None)
    session.commit()
    return download_read(job)


# --- pages --------------------------------------------------------------------------------------------------


@pages.get("/", response_class=HTMLResponse)
def generate_page(request: Request, session: SessionDep) -> HTMLResponse:
    from suite.core.web import render

    ctx = {
        "models": [model_read(m) for m in service.list_models(session)],
        "samplers": [s for s in samplers.describe() if s["available"]],
        "schedules": samplers.SCHEDULES,
        "loras": [lora_read(lo) for lo in service.list_loras(session)],
    }
    return render(request, "imagegen_generate.html", ctx)


@pages.get("/history", response_class=HTMLResponse)
def history_page(request: Request, session: SessionDep, caller: CallerDep) -> HTMLResponse:
    from suite.core.web import render

    jobs, _ = service.list_jobs(session, caller=caller, limit=60)
    return render(request, "imagegen_history.html", {"jobs": [service.job_read(j) for j in jobs]})


# --- readiness and startup ----------------------------------------------------------------------------------


def readiness() -> str | None:
    from suite.imagegen.worker import current_worker

    problems = []
    w = current_worker()
    if w is not None and w.engine_info.get("state") == "error":
        problems.append(f"imagegen_engine: {w.engine_info.get('error')}")
    out = service.outputs_root()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".ready"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        problems.append(f"imagegen_outputs_writable: {out}: {exc.strerror or exc}")
    return "; ".join(problems) or None


async def startup(app: Any) -> None:
    """Mount Socket.IO at /socket.io and start the generation worker (in the background)."""
    from suite.imagegen.sio import mount

    mount(app)
    if service.settings().worker:
        from suite.imagegen.worker import get_worker

        async def start() -> None:
            try:
                await asyncio.to_thread(get_worker)
            except Exception:
                log.exception("imagegen worker failed to start")

        app.state.imagegen_start = asyncio.get_running_loop().create_task(start())


async def shutdown(app: Any) -> None:
    """Stop the generation worker with the server: a running job ends `interrupted` at its next step (a model
    load is cancelled), queued native jobs stay queued for the next start, the thread is joined (10 s)."""
    start = getattr(app.state, "imagegen_start", None)
    if start is not None and not start.done():  # still importing torch: let it finish, then stop it
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(start), timeout=120)
    from suite.imagegen import progress, sio
    from suite.imagegen.worker import shutdown_worker

    await asyncio.to_thread(shutdown_worker, 10)
    sio.reset()
    progress.reset()
