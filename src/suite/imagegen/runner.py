"""What the worker thread does with a job: recover queued jobs after a restart, load the job's model, run it
on the engine with progress and previews, save its images and record the outcome."""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, insert, select, update

from suite.core.db import session_scope, utcnow
from suite.core.errors import SuiteError
from suite.imagegen import output, service
from suite.imagegen.handles import JobHandle
from suite.imagegen.models import GenImage, GenJob, ImageModel, JobLora, Lora

if TYPE_CHECKING:
    from suite.imagegen.worker import Worker

log = logging.getLogger("suite.imagegen.worker")
# plain Core statements for the worker's two writes per job (no ORM unit of work or identity map)
JOBS = cast(Table, GenJob.__table__)
IMAGES = cast(Table, GenImage.__table__)


def recover(w: Worker) -> None:
    """After a restart: running and queued A1111 jobs -> interrupted; queued native ones re-queued."""
    with service.write_lock, session_scope() as s:
        rows = list(
            s.scalars(
                select(GenJob).where(GenJob.status.in_(("queued", "running"))).order_by(GenJob.created_at)
            )
        )
        for job in rows:
            if job.id in w._handles:
                continue
            if job.status == "running" or job.origin != "native" or job.mode != "txt2img":
                job.status = "interrupted"
                job.finished_at = utcnow()
                job.error_code = "interrupted"
                job.error_message = "the server stopped while this job was queued or running"
                continue
            model = s.get(ImageModel, job.model_id) if job.model_id else None
            if model is None:
                job.status = "failed"
                job.error_code = "model_not_found"
                job.error_message = "its model was removed"
                continue
            loras = []
            for jl in s.scalars(select(JobLora).where(JobLora.job_id == job.id)):
                lora = s.get(Lora, jl.lora_id)
                if lora is not None:
                    loras.append((lora.name, jl.weight, str(service.lora_path(lora)), lora.short_hash))
            payload = service.runtime_payload(job, service.model_spec(model), loras)
            h = JobHandle(
                id=job.id, payload=payload, owner_user_id=job.owner_user_id, client_id=job.client_id
            )
            w._handles[h.id] = h
            w._queue.append(h.id)


def ensure_model(w: Worker, spec: dict[str, Any]) -> float:
    """Load the job's model when another (or none) is resident; returns the load time in ms."""
    if w.engine.model_key == spec["sha256"] and w.engine.state == "loaded":
        return 0.0
    t0 = time.perf_counter()

    def on_load(done: int, total: int, phase: str) -> None:
        w.emit("model.load_progress", {"model_id": spec["id"], "done": done, "total": total, "phase": phase})

    config = None
    if spec.get("config_skeleton"):
        from suite.imagegen import skeletons

        config = skeletons.ensure(spec["config_skeleton"])  # bundled ones build their tokenizer once
    w.engine.load_cancel.clear()
    w.engine.state = "loading"
    w._publish_engine()
    try:
        w.engine.load(Path(spec["path"]), key=spec["sha256"], single_file_config=config, progress=on_load)
    except BaseException:
        if w.engine.state == "loading":  # refused before the engine changed anything
            w.engine.state = "loaded" if w.engine.pipe is not None else "idle"
        raise
    finally:
        w._publish_engine()
    return (time.perf_counter() - t0) * 1000


def run_job(w: Worker, h: JobHandle) -> None:
    ml = w.ml
    p = h.payload["params"]
    h.total = h.payload["total_steps"]
    started = utcnow()
    queue_ms = (started - h.payload["read"]["created_at"]).total_seconds() * 1000
    with service.write_lock, session_scope() as s:
        # one statement: queued -> running, unless it was cancelled (or deleted) meanwhile
        claimed = (
            s.connection()
            .execute(
                update(JOBS)
                .where(JOBS.c.id == h.id, JOBS.c.status == "queued")
                .values(status="running", started_at=started, queue_ms=queue_ms)
            )
            .rowcount
        )
        if claimed != 1:
            job = s.get(GenJob, h.id)
            h.status = job.status if job is not None else "cancelled"
    if claimed != 1:
        w._finish(h)
        return
    h.status = "running"
    h.started = time.monotonic()
    w._status_event(h)
    fields: dict[str, Any] = {}
    error: dict[str, str] | None = None
    written: list[Path] = []
    saved: output.Saved | None = None
    try:
        fields["load_ms"] = w.ensure_model(h.payload["model"])
        req = ml.GenRequest(
            mode=p["mode"],
            prompt=p["prompt"],
            negative_prompt=p.get("negative_prompt", ""),
            sampler=p["sampler"],
            schedule=p.get("schedule"),
            a1111=bool(h.payload.get("a1111")),
            steps=p["steps"],
            cfg_scale=p["cfg_scale"],
            width=p["width"],
            height=p["height"],
            seed=p["seed"],
            batch_size=p["batch_size"],
            n_iter=p["n_iter"],
            clip_skip=p.get("clip_skip", 1),
            loras=[(n, w, Path(f)) for n, w, f, _h in h.payload.get("loras", [])],
            init_image=h.payload.get("init_image"),
            mask=h.payload.get("mask"),
            strength=p.get("strength", 0.75),
        )
        # a token covers at least one character: 75 characters + BOS + EOS always fit in CLIP's 77
        tokens = w.engine.encode_tokens(req.prompt) if len(req.prompt) > 75 else 0
        if tokens > 77:
            fields["warnings"] = [f"prompt has {tokens} tokens; CLIP truncated it to 77"]
        preview_every = int(p.get("preview_every") or service.settings().preview_every or 0)
        t0 = time.perf_counter()
        result = w.engine.generate(
            req,
            signals=h.signals,
            on_step=lambda it, step, lat: on_step(w, h, req, it, step, lat, preview_every),
        )
        fields["gen_ms"] = (time.perf_counter() - t0) * 1000
        progress(w, h, h.total, h.total, "saving", force=True)
        t1 = time.perf_counter()
        saved = output.save_images(h.id, h.payload, p, result.images, result.seeds)
        written = saved.paths
        fields["save_ms"] = (time.perf_counter() - t1) * 1000
        h.status = "interrupted" if result.interrupted else "succeeded"
        h.result["seeds"] = result.seeds
    except ml.JobCancelled:
        h.status = "interrupted" if w._stopping else "cancelled"
    except ml.LoadCancelled as exc:
        h.status = "interrupted" if w._stopping else "cancelled"
        error = None if w._stopping else {"code": exc.code, "message": exc.message}
        if w.engine.state == "loading":
            w.engine.state = "idle"
    except BaseException as exc:
        h.status = "failed"
        if ml.is_oom(exc):
            ml.free_memory(w.engine.device)
            error = {"code": "out_of_memory", "message": f"out of memory: {service.OOM_ADVICE}"}
        elif isinstance(exc, SuiteError):
            error = {"code": exc.code, "message": exc.message}
        else:
            log.exception("imagegen job %s failed", h.id)
            error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
        if w.engine.state in ("loading", "unloading"):
            w.engine.state = "idle"
        if not isinstance(exc, Exception):
            raise
    finally:
        try:
            record(w, h, started, queue_ms, fields, error, saved)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        finally:
            w._publish_engine()
            w._finish(h, error)


def record(
    w: Worker,
    h: JobHandle,
    started: Any,
    queue_ms: float,
    fields: dict[str, Any],
    error: dict[str, str] | None,
    saved: output.Saved | None,
) -> None:
    """The job's outcome in one transaction (one UPDATE, one INSERT of its images), then `h.read`: the job as
    `service.job_read` shows it, so a waiting caller needs no read back."""
    values: dict[str, Any] = {"status": h.status, "finished_at": utcnow(), "step": h.step}
    for key in ("load_ms", "gen_ms", "save_ms"):
        if key in fields:
            values[key] = round(fields[key], 3)
    warnings = list(h.payload.get("warnings") or [])
    if fields.get("warnings"):
        values["warnings"] = warnings = [*warnings, *fields["warnings"]]
    if error:
        values["error_code"], values["error_message"] = error["code"], error["message"]
    image_ids: list[int] = []
    with service.write_lock, session_scope() as s:
        conn = s.connection()
        found = conn.execute(update(JOBS).where(JOBS.c.id == h.id).values(**values)).rowcount
        if saved is not None and saved.rows and found:
            stmt = insert(IMAGES).returning(IMAGES.c.id, sort_by_parameter_order=True)
            image_ids = list(conn.execute(stmt, saved.rows).scalars())
    if saved is not None and not found:  # the job was deleted meanwhile: no file without its row
        for path in saved.paths:
            path.unlink(missing_ok=True)
    read = dict(h.payload["read"])
    rows = saved.rows if saved is not None and found else []
    read.update(
        status=h.status,
        step=h.step,
        warnings=warnings,
        error=error,
        images=[service.image_read(i, row) for i, row in zip(image_ids, rows, strict=True)],
        started_at=started,
        finished_at=values["finished_at"],
        timings={
            "queue_ms": queue_ms,
            **{k: values.get(k) for k in ("load_ms", "gen_ms", "save_ms")},
        },
    )
    h.read = read
    h.result["infotexts"] = saved.infotexts if saved is not None and found else []
    if image_ids:
        w.remember_images(h, image_ids, saved)


def on_step(w: Worker, h: JobHandle, req: Any, it: int, step: int, latents: Any, preview_every: int) -> None:
    h.step = it * req.steps + step
    progress(w, h, h.step, h.total, "sampling")
    if preview_every and latents is not None and step % preview_every == 0:
        for index, png in enumerate(w.ml.latents_preview(latents)):
            w.emit(
                "job.preview",
                {
                    "job_id": h.id,
                    "step": h.step,
                    "index": index,
                    "png_b64": base64.b64encode(png).decode(),
                },
            )


def progress(w: Worker, h: JobHandle, done: int, total: int, phase: str, *, force: bool = False) -> None:
    now = time.monotonic()
    # throttled, the last step included: the forced "saving" event follows it at once
    if not force and now - h.last_progress < w.progress_interval:
        return
    h.last_progress = now
    elapsed = now - (h.started or now)
    eta = elapsed / done * (total - done) if done else None
    w.emit(
        "job.progress",
        {
            "job_id": h.id,
            "done": done,
            "total": total,
            "message": phase,
            "phase": phase,
            "eta_s": round(eta, 3) if eta is not None else None,
        },
    )
