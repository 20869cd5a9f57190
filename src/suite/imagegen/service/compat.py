"""A1111 requests and answers: field mapping, infotext `info`, options."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from suite.core.db import utcnow
from suite.core.errors import NotFound, ValidationFailed
from suite.imagegen.models import Option
from suite.imagegen.schemas import A1111Generate, JobCreate
from suite.imagegen.service.registry import default_model, match_checkpoint, title_of

# --- A1111 --------------------------------------------------------------------------------------------------

UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "enable_hr": False,
    "restore_faces": (None, False),
    "tiling": (None, False),
    "subseed_strength": (0, 0.0),
    "script_name": (None, ""),
    "styles": (None, []),
    "seed_resize_from_h": (-1, 0),
    "seed_resize_from_w": (-1, 0),
}


def from_a1111(session: Session, body: A1111Generate, *, img2img: bool) -> tuple[JobCreate, dict[str, Any]]:
    """An A1111 request as a native one; known-but-unsupported fields must hold their defaults."""
    for key, default in UNSUPPORTED_DEFAULTS.items():
        value = getattr(body, key)
        allowed = default if isinstance(default, tuple) else (default,)
        if value not in allowed:
            raise ValidationFailed(
                f"{key} is not supported by this server (got {value!r})", code="unsupported_field"
            )
    if body.alwayson_scripts:
        raise ValidationFailed("alwayson_scripts is not supported by this server", code="unsupported_field")
    overrides = body.override_settings or {}
    model = None
    if overrides.get("sd_model_checkpoint"):
        model = match_checkpoint(session, title=str(overrides["sd_model_checkpoint"])).name
    clip_skip = overrides.get("CLIP_stop_at_last_layers")
    if clip_skip is None:
        opt = session.get(Option, "CLIP_stop_at_last_layers")
        clip_skip = opt.value if opt is not None else 1
    sampler = body.sampler_name or body.sampler_index or "Euler a"
    mode = "txt2img"
    init = None
    if img2img:
        if not body.init_images:
            raise ValidationFailed("init_images is required", code="missing_init_image")
        init = body.init_images[0]
        mode = "inpaint" if body.mask else "img2img"
    data = {
        "mode": mode,
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "model": model,
        "sampler": sampler,
        "schedule": body.scheduler,
        "steps": body.steps,
        "cfg_scale": body.cfg_scale,
        "width": body.width,
        "height": body.height,
        "seed": body.seed if body.seed >= 0 else -1,
        "batch_size": body.batch_size,
        "n_iter": body.n_iter,
        "clip_skip": int(clip_skip),
        "init_image": init,
        "mask": body.mask,
        "strength": body.denoising_strength if body.denoising_strength is not None else 0.75,
        "resize_mode": "crop" if body.resize_mode == 1 else "resize",
    }
    from pydantic import ValidationError

    try:
        req = JobCreate.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValidationFailed(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    return req, {"sd_model_checkpoint": model}


def a1111_info(
    job: dict[str, Any],
    model_name: str | None,
    model_hash: str | None,
    infotexts: list[str],
    seeds: list[int],
) -> dict[str, Any]:
    """A1111's `info` for a job as `job_read` shows it."""
    p = job["params"]
    n = len(seeds)
    created = job.get("created_at") or utcnow()
    return {
        "prompt": job["prompt"],
        "all_prompts": [job["prompt"]] * n,
        "negative_prompt": p.get("negative_prompt", ""),
        "all_negative_prompts": [p.get("negative_prompt", "")] * n,
        "seed": job["seed"],
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * n,
        "subseed_strength": 0,
        "width": job["width"],
        "height": job["height"],
        "sampler_name": job["sampler"],
        "cfg_scale": p.get("cfg_scale"),
        "steps": job["steps"],
        "batch_size": job["batch_size"],
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": model_name,
        "sd_model_hash": model_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": p.get("strength") if job["mode"] != "txt2img" else 0,
        "extra_generation_params": {"Schedule type": job["schedule"]} if job["schedule"] else {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": created.strftime("%Y%m%d%H%M%S"),
        "clip_skip": p.get("clip_skip", 1),
        "is_using_inpainting_conditioning": False,
        "version": "suite",
        "job_id": job["id"],
        "warnings": job["warnings"] or [],
        "status": job["status"],
    }


def get_options(session: Session) -> dict[str, Any]:
    out: dict[str, Any] = {"samples_format": "png", "CLIP_stop_at_last_layers": 1}
    for opt in session.scalars(select(Option)):
        out[opt.key] = opt.value
    try:
        model, _ = default_model(session, build=False)
        out["sd_model_checkpoint"] = title_of(model)
        out["sd_checkpoint_hash"] = model.sha256
    except NotFound:
        out.setdefault("sd_model_checkpoint", None)
        out.setdefault("sd_checkpoint_hash", None)
    return out


def set_option(session: Session, *, key: str, value: Any) -> None:
    opt = session.get(Option, key)
    if opt is None:
        session.add(Option(key=key, value=value))
    else:
        opt.value = value
    session.flush()
