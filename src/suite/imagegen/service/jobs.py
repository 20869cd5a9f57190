"""Jobs and history: request images, validation, job creation, listing, re-run, deletion, reads."""

from __future__ import annotations

import base64
import binascii
import io
import random
import uuid
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session, selectinload

from suite.core.db import utcnow
from suite.core.errors import Conflict, NotFound, TooLarge, UsageError, ValidationFailed
from suite.imagegen import formats, infotext, samplers
from suite.imagegen.models import FINISHED, GenImage, GenJob, ImageModel, JobLora, Lora
from suite.imagegen.schemas import JobCreate
from suite.imagegen.service.base import LOCAL, TINY_NAME, Caller, outputs_root, settings
from suite.imagegen.service.registry import default_model, get_lora, get_model, lora_path, model_spec

JOBS = cast(Table, GenJob.__table__)
JOB_LORAS = cast(Table, JobLora.__table__)

# --- images in requests -------------------------------------------------------------------------------------


def decode_image(data: str, *, what: str = "init_image") -> Any:
    """base64 (a data-URI prefix tolerated) -> RGB PIL image, with size and pixel limits."""
    from PIL import Image

    if data.startswith(("http://", "https://")):
        raise ValidationFailed(f"{what}: URLs are not fetched; send base64", code="bad_image")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    limit = int(settings().max_upload_mb * 1024 * 1024)
    if len(data) * 3 // 4 > limit:
        raise TooLarge(f"{what} is over max_upload_mb ({settings().max_upload_mb} MB)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed(f"{what} is not valid base64", code="bad_image") from None
    max_pixels = 4096 * 4096
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            img.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ValidationFailed(f"{what} has more than {max_pixels} pixels", code="image_too_large") from None
    except Exception:
        raise ValidationFailed(f"{what} is not an image", code="bad_image") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    return img.convert("RGB")


def encode_png(img: Any) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# --- jobs ---------------------------------------------------------------------------------------------------


def validate_request(req: JobCreate) -> list[str]:
    """Budget checks beyond the schema; returns warnings."""
    s = settings()
    for label, value in (("width", req.width), ("height", req.height)):
        if value % 8:
            raise ValidationFailed(f"{label} {value} is not a multiple of 8", code="bad_size")
    if req.width * req.height * req.batch_size > s.max_pixels_per_job:
        raise ValidationFailed(
            f"width*height*batch_size = {req.width * req.height * req.batch_size} is over max_pixels_per_job "
            f"({s.max_pixels_per_job})",
            code="over_budget",
        )
    if req.batch_size * req.n_iter > s.max_images_per_job:
        raise ValidationFailed(
            f"batch_size*n_iter = {req.batch_size * req.n_iter} is over max_images_per_job "
            f"({s.max_images_per_job})",
            code="over_budget",
        )
    for label, text in (("prompt", req.prompt), ("negative_prompt", req.negative_prompt)):
        if len(text) > s.max_prompt_chars:
            raise ValidationFailed(
                f"{label} has {len(text)} characters, over max_prompt_chars ({s.max_prompt_chars})",
                code="prompt_too_long",
            )
    if req.mode != "txt2img" and not (req.init_image or req.init_image_id):
        raise ValidationFailed(f"{req.mode} needs init_image or init_image_id", code="missing_init_image")
    if req.mode == "inpaint" and not req.mask:
        raise ValidationFailed("inpaint needs a mask", code="missing_mask")
    samplers.resolve(req.sampler, req.schedule)
    warns = []
    words = len(req.prompt.split())
    if words > 70:
        warns.append(f"prompt has about {words} words; CLIP reads the first 77 tokens and truncates the rest")
    return warns


def new_job_id(force: str | None = None) -> str:
    if force and formats.SAFE_ID.match(force):
        return force
    return uuid.uuid4().hex


def create_job(
    session: Session,
    *,
    req: JobCreate,
    origin: str = "native",
    caller: Caller = LOCAL,
    force_task_id: str | None = None,
    parent_job_id: str | None = None,
    a1111_schedule: bool = False,
    build_builtin: bool = True,
) -> tuple[GenJob, dict[str, Any]]:
    """Validate, resolve model/LoRAs/images and write the queued job row. Returns (job, runtime payload)."""
    warns = validate_request(req)
    choice = samplers.resolve(req.sampler, req.schedule, a1111=a1111_schedule)
    prompt, tag_loras = infotext.extract_loras(req.prompt)
    if req.model:
        model = get_model(session, ref=req.model)
        builtin = model.source == "builtin"
    else:
        model, builtin = default_model(session, build=build_builtin)
    if model.status != "ok":
        raise _unusable(model)
    refs = [(r.name, r.weight) for r in req.loras] + tag_loras
    loras: list[tuple[Lora, float]] = []
    seen: set[str] = set()
    for lname, weight in refs:
        if lname in seen:
            continue
        seen.add(lname)
        if not -2.0 <= weight <= 2.0:
            raise ValidationFailed(f"LoRA {lname!r} weight {weight} is outside -2..2")
        loras.append((get_lora(session, name=lname), weight))
    init_image = mask = None
    if req.mode != "txt2img":
        if req.init_image:
            init_image = decode_image(req.init_image)
        else:
            image = get_image(session, image_id=int(req.init_image_id or 0), caller=caller)
            from PIL import Image

            init_image = Image.open(image_file(image)).convert("RGB")
        init_image = fit_image(init_image, req.width, req.height, req.resize_mode)
        if req.mask:
            mask = decode_image(req.mask, what="mask").convert("L").resize((req.width, req.height))
    seed = req.seed if req.seed >= 0 else random.randint(0, 2**32 - 1)
    job_id = new_job_id(force_task_id)
    if force_task_id and session.get(GenJob, job_id) is not None:  # a fresh uuid4 never collides
        job_id = new_job_id()
    params = req.model_dump(exclude={"init_image", "mask"})
    params.update(
        prompt=prompt, seed=seed, model=model.name, schedule=choice.schedule, sampler=choice.sampler.name
    )
    params["loras"] = [{"name": lo.name, "weight": w} for lo, w in loras]
    row: dict[str, Any] = dict(
        id=job_id,
        owner_user_id=caller.user_id,
        client_id=req.client_id,
        origin=origin,
        mode=req.mode,
        status="queued",
        params=params,
        prompt=prompt,
        model_id=model.id,
        model_sha256=model.sha256,
        sampler=choice.sampler.name,
        schedule=choice.schedule,
        seed=seed,
        steps=req.steps,
        width=req.width,
        height=req.height,
        batch_size=req.batch_size,
        n_iter=req.n_iter,
        step=0,
        total_steps=req.steps * req.n_iter,
        warnings=warns + ([f"no model configured: using the built-in {TINY_NAME}"] if builtin else []),
        parent_job_id=parent_job_id,
        created_at=utcnow(),
    )
    # Core INSERTs (no unit of work): the returned job is not in the session; read it back to change it
    conn = session.connection()
    conn.execute(insert(JOBS), [row])
    if loras:
        conn.execute(
            insert(JOB_LORAS), [{"job_id": job_id, "lora_id": lo.id, "weight": w} for lo, w in loras]
        )
    job = GenJob(**row)
    loras_spec = [(lo.name, w, str(lora_path(lo)), lo.short_hash) for lo, w in loras]
    payload = runtime_payload(
        job, model_spec(model), loras_spec, init_image=init_image, mask=mask, a1111=a1111_schedule
    )
    return job, payload


def runtime_payload(
    job: GenJob,
    model: dict[str, Any],
    loras: list[tuple[str, float, str, str]],
    *,
    init_image: Any = None,
    mask: Any = None,
    a1111: bool = False,
) -> dict[str, Any]:
    """What the worker needs to run a queued job without reading its row back: the model and LoRA specs,
    the parameters, and `read`, the job as `job_read` shows it (the worker completes it when the job ends)."""
    return {
        "job_id": job.id,
        "model": model,
        "loras": loras,
        "init_image": init_image,
        "mask": mask,
        "a1111": a1111,
        "params": dict(job.params),
        "total_steps": job.total_steps,
        "warnings": list(job.warnings or []),
        "read": job_read(job, images=[]),
    }


def _unusable(model: ImageModel) -> ValidationFailed:
    return ValidationFailed(
        f"model {model.name!r} is {model.status}; run `models verify`", code="model_unusable"
    )


def fit_image(img: Any, width: int, height: int, mode: str) -> Any:
    from PIL import Image

    if img.size == (width, height):
        return img
    if mode == "crop":
        scale = max(width / img.width, height / img.height)
        resized = img.resize((max(width, round(img.width * scale)), max(height, round(img.height * scale))))
        left = (resized.width - width) // 2
        top = (resized.height - height) // 2
        return resized.crop((left, top, left + width, top + height))
    return img.resize((width, height), Image.Resampling.LANCZOS)


def get_job(session: Session, *, job_id: str, caller: Caller = LOCAL) -> GenJob:
    if not formats.SAFE_ID.match(job_id or ""):
        raise NotFound(f"job {job_id[:80]!r} not found", code="job_not_found")
    job = session.get(GenJob, job_id, options=[selectinload(GenJob.images)])
    if job is None or (not caller.admin and job.owner_user_id != caller.user_id):
        raise NotFound(f"job {job_id!r} not found", code="job_not_found")
    return job


def list_jobs(
    session: Session,
    *,
    caller: Caller = LOCAL,
    status: str | None = None,
    model: str | None = None,
    q: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[GenJob], str | None]:
    """Newest first; `cursor` is the created_at|id of the last row of the previous page."""
    stmt = (
        select(GenJob)
        .options(selectinload(GenJob.images))
        .order_by(GenJob.created_at.desc(), GenJob.id.desc())
    )
    if not caller.admin:
        stmt = stmt.where(GenJob.owner_user_id == caller.user_id)
    if status:
        stmt = stmt.where(GenJob.status == status)
    if model:
        stmt = stmt.where(GenJob.model_id == get_model(session, ref=model).id)
    if q:
        stmt = stmt.where(GenJob.prompt.contains(q))
    if since:
        stmt = stmt.where(GenJob.created_at >= since)
    if cursor:
        try:
            stamp, _, last_id = cursor.partition("|")
            at = datetime.fromisoformat(stamp)
        except ValueError:
            raise UsageError("bad cursor") from None
        stmt = stmt.where((GenJob.created_at < at) | ((GenJob.created_at == at) & (GenJob.id < last_id)))
    rows = list(session.scalars(stmt.limit(limit + 1)))
    nxt = None
    if len(rows) > limit:
        rows = rows[:limit]
        nxt = f"{rows[-1].created_at.isoformat()}|{rows[-1].id}"
    return rows, nxt


def rerun_request(job: GenJob, *, new_seed: bool = False) -> JobCreate:
    params = dict(job.params)
    if new_seed:
        params["seed"] = -1
    if job.mode != "txt2img":
        raise ValidationFailed("re-run of img2img/inpaint jobs needs the original image; submit a new job")
    return JobCreate.model_validate(params)


def get_image(session: Session, *, image_id: int, caller: Caller = LOCAL) -> GenImage:
    image = session.get(GenImage, image_id)
    if image is None or (not caller.admin and image.job.owner_user_id != caller.user_id):
        raise NotFound(f"image {image_id} not found", code="image_not_found")
    return image


def image_file(image: GenImage) -> Path:
    path = formats.contained(outputs_root(), image.relpath)
    if not path.is_file():
        raise NotFound(f"image {image.id} file is missing", code="image_missing")
    return path


def delete_image(session: Session, *, image_id: int, caller: Caller = LOCAL) -> None:
    image = get_image(session, image_id=image_id, caller=caller)
    path = formats.contained(outputs_root(), image.relpath)
    session.delete(image)
    session.flush()
    path.unlink(missing_ok=True)


def delete_job(session: Session, *, job_id: str, caller: Caller = LOCAL) -> None:
    job = get_job(session, job_id=job_id, caller=caller)
    if job.status not in FINISHED:
        raise Conflict(f"job {job_id} is {job.status}; cancel it first", code="job_active")
    files = [formats.contained(outputs_root(), im.relpath) for im in job.images]
    session.delete(job)
    session.flush()
    for f in files:
        f.unlink(missing_ok=True)


def image_read(image_id: int, row: Any) -> dict[str, Any]:
    """An image entry of `job_read`; `row` is a GenImage or its column dict."""
    get = row.get if isinstance(row, dict) else lambda key: getattr(row, key)
    return {
        "id": image_id,
        "idx": get("idx"),
        "seed": get("seed"),
        "url": f"/api/v1/imagegen/images/{image_id}",
        "width": get("width"),
        "height": get("height"),
        "sha256": get("sha256"),
    }


def job_read(
    job: GenJob, *, position: int | None = None, images: list[GenImage] | None = None
) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "origin": job.origin,
        "mode": job.mode,
        "position": position,
        "step": job.step,
        "total": job.total_steps,
        "prompt": job.prompt,
        "model_id": job.model_id,
        "model_sha256": job.model_sha256,
        "sampler": job.sampler,
        "schedule": job.schedule,
        "seed": job.seed,
        "steps": job.steps,
        "width": job.width,
        "height": job.height,
        "batch_size": job.batch_size,
        "n_iter": job.n_iter,
        "params": job.params,
        "images": [image_read(im.id, im) for im in (job.images if images is None else images)],
        "warnings": job.warnings or [],
        "error": {"code": job.error_code or "", "message": job.error_message or ""}
        if job.error_code
        else None,
        "timings": {
            "queue_ms": job.queue_ms,
            "load_ms": job.load_ms,
            "gen_ms": job.gen_ms,
            "save_ms": job.save_ms,
        },
        "parent_job_id": job.parent_job_id,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }
