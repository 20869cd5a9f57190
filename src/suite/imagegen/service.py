"""Business logic: model and LoRA registries, job creation and history. Functions take the session.

Nothing here imports torch: the worker (`suite.imagegen.worker`) owns the engine.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import random
import shutil
import threading
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from suite.core.config import get_settings
from suite.core.db import utcnow
from suite.core.errors import Conflict, NotFound, TooLarge, UsageError, ValidationFailed
from suite.imagegen import formats, infotext, samplers, skeletons
from suite.imagegen.formats import CorruptWeights, NotAModel
from suite.imagegen.models import FINISHED, GenImage, GenJob, ImageModel, JobLora, Lora, Option
from suite.imagegen.schemas import A1111Generate, JobCreate

TINY_NAME = "tiny-sd"
# SQLite (WAL, deferred BEGIN) refuses to upgrade a read transaction to a write once another connection has
# committed, whatever the busy timeout: imagegen's writers in this process take this lock around their
# write transactions (submissions and the worker's status updates).
write_lock = threading.RLock()
OOM_ADVICE = "try a smaller size or batch, VAE tiling ([imagegen] vae_tiling = true) or CPU offload"


@dataclass(frozen=True)
class Caller:
    """Who asks: a user id (None for the local anonymous caller) and whether they see everything."""

    user_id: int | None = None
    admin: bool = True


LOCAL = Caller()


def settings() -> Any:
    return get_settings().domain("imagegen")


def root() -> Path:
    return get_settings().data_dir / "imagegen"


def outputs_root() -> Path:
    return root() / "outputs"


def loras_root() -> Path:
    return root() / "loras"


def models_root() -> Path:
    return root() / "models"


def tiny_dir() -> Path:
    return root() / "tiny"


# --- models -------------------------------------------------------------------------------------------------


def title_of(model: ImageModel) -> str:
    return f"{model.name} [{model.short_hash}]"


def _inspect_model(path: Path, family: str, *, config: Path | None = None) -> dict[str, Any]:
    if not path.exists():
        raise NotFound(f"model path {path} does not exist", code="model_missing")
    if path.is_dir():
        if config is not None:
            raise UsageError("--config is for single .safetensors files; a folder has its own configs")
        index_path = path / "model_index.json"
        if not index_path.is_file():
            raise NotAModel(f"{path} is not a diffusers model folder (no model_index.json)")
        try:
            index = json.loads(index_path.read_text())
        except (ValueError, OSError) as exc:
            raise NotAModel(f"{path}/model_index.json is not valid JSON ({exc})") from None
        if not isinstance(index, dict) or not str(index.get("_class_name", "")).endswith("Pipeline"):
            raise NotAModel(f"{path}/model_index.json names no pipeline class")
        if not (path / "unet").is_dir() and not (path / "transformer").is_dir():
            raise NotAModel(f"{path} has no unet folder")
        for st in path.rglob("*.safetensors"):
            formats.read_safetensors_header(st)
        sha, size = formats.sha256_folder(path)
        if family == "auto":
            family = "sdxl" if "XL" in index["_class_name"] else _folder_family(path)
        return {"source": "dir", "sha256": sha, "size": size, "family": family, "meta": {}, "skeleton": None}
    if path.suffix.lower() in (".ckpt", ".bin", ".pt", ".pth") and not settings().allow_pickle_formats:
        raise ValidationFailed(
            f"{path.name}: pickle formats are refused (set [imagegen] allow_pickle_formats)",
            code="unsafe_format",
        )
    if path.suffix.lower() != ".safetensors":
        raise NotAModel(f"{path.name} is neither a diffusers folder nor a .safetensors file")
    header = formats.read_safetensors_header(path)
    detected = formats.detect_family(header)
    if family == "auto":
        family = detected or (_folder_family(config) if config is not None else "")
    if not family:
        raise NotAModel(
            f"{path.name}: no Stable Diffusion checkpoint keys found (family unknown); pass --family, or "
            "--config <a diffusers folder of the same architecture>"
        )
    if config is None and skeletons.for_family(family) is None:
        raise NotAModel(
            f"{path.name}: family {family} has no bundled config skeleton "
            f"({', '.join(skeletons.BUNDLED)} do); pass --config <a diffusers folder of the same architecture>"
        )
    if config is not None and not (config / "model_index.json").is_file():
        raise NotAModel(f"--config {config} is not a diffusers folder (no model_index.json)")
    return {
        "source": "single_file",
        "sha256": formats.sha256_file(path),
        "size": path.stat().st_size,
        "family": family,
        "meta": formats.metadata(header),
        "skeleton": skeletons.for_family(family) if config is None else None,
    }


def _folder_family(path: Path) -> str:
    try:
        cfg = json.loads((path / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return "sd15"
    ctx = cfg.get("cross_attention_dim")
    if cfg.get("in_channels") == 9:
        return "inpaint"
    return {768: "sd15", 1024: "sd2", 2048: "sdxl"}.get(ctx, "tiny" if ctx and ctx < 256 else "sd15")


def _check_root(path: Path, allowed_roots: list[Path] | None) -> Path:
    if "\0" in str(path):
        raise UsageError("invalid path", code="bad_path")
    path = path.expanduser()
    if allowed_roots is not None:
        resolved = path.resolve()
        if not any(resolved.is_relative_to(r.resolve()) for r in allowed_roots):
            raise NotFound(f"model path {path} is outside the allowed model roots", code="bad_path")
    return path.resolve()


def add_model(
    session: Session,
    *,
    path: Path,
    name: str | None = None,
    family: str = "auto",
    copy: bool = False,
    allowed_roots: list[Path] | None = None,
    source: str | None = None,
    config: Path | None = None,
) -> ImageModel:
    """Register a diffusers folder or a single .safetensors (linked in place, or copied under models/).

    A single file loads with the bundled config skeleton of its family (SD1.5, SD2, SD2-v, SDXL), or with the
    configs of `config` (a diffusers folder of the same architecture; its weights are never read).
    """
    path = _check_root(path, allowed_roots)
    if config is not None:
        config = _check_root(config, allowed_roots)
    if family not in ("auto", *formats.FAMILIES):
        raise ValidationFailed(f"unknown family {family!r}; one of auto, {', '.join(formats.FAMILIES)}")
    info = _inspect_model(path, family, config=config)
    name = formats.check_name(name or path.stem.replace(" ", "_"), "model name")
    if session.scalar(select(ImageModel).where(ImageModel.name == name)) is not None:
        raise Conflict(f"model {name!r} already exists", code="model_exists")
    skeleton = info["skeleton"]
    if config is not None:
        skeleton = skeletons.store_custom(config, info["sha256"])
    if copy:
        dest = models_root() / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, dest)
        else:
            dest = dest.with_suffix(path.suffix)
            shutil.copy2(path, dest)
        path = dest
    model = ImageModel(
        name=name,
        family=info["family"],
        source=source or info["source"],
        path=str(path),
        config_skeleton=skeleton,
        sha256=info["sha256"],
        short_hash=info["sha256"][:10],
        size_bytes=info["size"],
        prediction_type="v_prediction" if info["family"] == "sd2v" else "epsilon",
        meta=info["meta"],
        verified_at=utcnow(),
    )
    session.add(model)
    session.flush()
    return model


def model_spec(model: ImageModel) -> dict[str, Any]:
    """What the worker needs to load a model (plain data: it crosses threads)."""
    return {
        "id": model.id,
        "name": model.name,
        "path": model.path,
        "sha256": model.sha256,
        "short_hash": model.short_hash,
        "config_skeleton": model.config_skeleton,
    }


def list_models(session: Session) -> list[ImageModel]:
    return list(session.scalars(select(ImageModel).order_by(ImageModel.name)))


def get_model(session: Session, *, ref: str | int) -> ImageModel:
    model = None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        model = session.get(ImageModel, int(ref))
    if model is None:
        model = session.scalar(select(ImageModel).where(ImageModel.name == str(ref)))
    if model is None:
        raise NotFound(f"model {ref!r} not found", code="model_not_found")
    return model


def match_checkpoint(session: Session, *, title: str) -> ImageModel:
    """A1111 `sd_model_checkpoint`: a title, name, file name, short hash or sha256."""
    wanted = title.strip()
    for model in list_models(session):
        candidates = {title_of(model), model.name, Path(model.path).name, model.short_hash, model.sha256}
        if wanted in candidates or wanted.lower() in {c.lower() for c in candidates}:
            return model
    raise NotFound(f"model {title!r} not found", code="model_not_found")


def verify_model(session: Session, *, ref: str | int) -> dict[str, Any]:
    model = get_model(session, ref=ref)
    path = Path(model.path)
    if not path.exists():
        model.status = "missing"
        return {"ok": False, "sha256": None, "status": "missing", "name": model.name}
    sha = formats.sha256_folder(path)[0] if path.is_dir() else formats.sha256_file(path)
    ok = sha == model.sha256
    model.status = "ok" if ok else "corrupt"
    model.verified_at = utcnow()
    return {"ok": ok, "sha256": sha, "expected": model.sha256, "status": model.status, "name": model.name}


def remove_model(
    session: Session, *, ref: str | int, delete_files: bool = False, loaded_key: str | None = None
) -> None:
    model = get_model(session, ref=ref)
    if loaded_key is not None and loaded_key == model.sha256:
        raise Conflict(f"model {model.name!r} is loaded; unload it first", code="model_in_use")
    busy = session.scalar(
        select(GenJob.id)
        .where(GenJob.model_id == model.id, GenJob.status.in_(("queued", "running")))
        .limit(1)
    )
    if busy:
        raise Conflict(f"model {model.name!r} is used by job {busy}", code="model_in_use")
    path = Path(model.path)
    skeleton = model.config_skeleton
    session.delete(model)
    session.flush()
    if skeleton and skeletons.CUSTOM.match(skeleton):
        others = session.scalar(select(ImageModel.id).where(ImageModel.config_skeleton == skeleton).limit(1))
        if others is None:
            skeletons.remove_custom(skeleton)
    if delete_files and path.exists():
        managed = models_root().resolve()
        if not path.resolve().is_relative_to(managed) and model.source != "builtin":
            raise Conflict(
                f"{path} is not in the managed models folder; remove it yourself", code="not_managed"
            )
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def ensure_builtin(session: Session, *, build: bool = True) -> ImageModel:
    """The built-in tiny model, built on first use (offline) and registered as tiny-sd."""
    existing = session.scalar(select(ImageModel).where(ImageModel.name == TINY_NAME))
    if existing is not None and Path(existing.path).is_dir():
        return existing
    target = tiny_dir()
    if not (target / "model_index.json").is_file():
        if not build:
            raise NotFound(
                "no model registered and the tiny model is not built (suite imagegen make-tiny-model)"
            )
        from suite.imagegen import ml

        ml.build_tiny_model(target)
    if existing is not None:
        session.delete(existing)
        session.flush()
    return add_model(session, path=target, name=TINY_NAME, family="tiny", source="builtin")


def default_model(session: Session, *, build: bool = True) -> tuple[ImageModel, bool]:
    """(model, is_builtin_fallback): settings.default_model, the A1111 option, the only model, or tiny-sd."""
    name = settings().default_model
    if name:
        return get_model(session, ref=name), False
    opt = session.get(Option, "sd_model_checkpoint")
    if opt is not None and opt.value:
        try:
            return match_checkpoint(session, title=str(opt.value)), False
        except NotFound:
            pass
    models = [m for m in list_models(session) if m.status == "ok"]
    if models:
        non_builtin = [m for m in models if m.source != "builtin"]
        return (non_builtin or models)[0], not non_builtin
    return ensure_builtin(session, build=build), True


# --- LoRA ---------------------------------------------------------------------------------------------------


def add_lora(session: Session, *, name: str, path: Path | None = None, data: bytes | None = None) -> Lora:
    """Validate a .safetensors LoRA (header, size cap) and copy it into the managed folder."""
    name = formats.check_name(name, "LoRA name")
    cap = int(settings().max_lora_mb * 1024 * 1024)
    if session.scalar(select(Lora).where(Lora.name == name)) is not None:
        raise Conflict(f"LoRA {name!r} already exists", code="lora_exists")
    loras_root().mkdir(parents=True, exist_ok=True)
    dest = loras_root() / f"{name}.safetensors"
    tmp = dest.with_suffix(".tmp")
    try:
        if data is not None:
            if len(data) > cap:
                raise TooLarge(f"LoRA {name!r} is over max_lora_mb ({settings().max_lora_mb} MB)")
            tmp.write_bytes(data)
        else:
            assert path is not None
            if "\0" in str(path) or not path.is_file():
                raise NotFound(f"LoRA file {path} does not exist")
            if path.suffix.lower() != ".safetensors":
                raise ValidationFailed(f"{path.name}: LoRAs must be .safetensors", code="unsafe_format")
            if path.stat().st_size > cap:
                raise TooLarge(f"LoRA {name!r} is over max_lora_mb ({settings().max_lora_mb} MB)")
            shutil.copyfile(path, tmp)
        header = formats.read_safetensors_header(tmp)
        if not any(("lora" in k.lower() or "alpha" in k.lower()) for k in header if k != "__metadata__"):
            raise CorruptWeights(f"{name}: no LoRA tensors in this file")
        sha = formats.sha256_file(tmp)
        size = tmp.stat().st_size
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    meta = {k: v for k, v in formats.metadata(header).items() if k.startswith("ss_")}
    lora = Lora(
        name=name,
        alias=name,
        filename=dest.name,
        sha256=sha,
        short_hash=sha[:12],
        size_bytes=size,
        family=formats.lora_family(header),
        meta=meta,
    )
    session.add(lora)
    session.flush()
    return lora


def list_loras(session: Session) -> list[Lora]:
    return list(session.scalars(select(Lora).order_by(Lora.name)))


def get_lora(session: Session, *, name: str) -> Lora:
    lora = session.scalar(select(Lora).where(Lora.name == name))
    if lora is None:
        raise NotFound(f"LoRA {name!r} not found", code="lora_not_found")
    return lora


def lora_path(lora: Lora) -> Path:
    return formats.contained(loras_root(), lora.filename)


def remove_lora(session: Session, *, name: str) -> None:
    lora = get_lora(session, name=name)
    path = lora_path(lora)
    session.delete(lora)
    session.flush()
    path.unlink(missing_ok=True)


def refresh_loras(session: Session) -> int:
    """Register .safetensors files dropped into the managed folder by hand."""
    known = {lora.filename for lora in list_loras(session)}
    added = 0
    for path in sorted(loras_root().glob("*.safetensors")) if loras_root().is_dir() else []:
        if path.name in known:
            continue
        try:
            header = formats.read_safetensors_header(path)
            name = formats.check_name(path.stem, "LoRA name")
        except (ValidationFailed, UsageError):
            continue
        sha = formats.sha256_file(path)
        session.add(
            Lora(
                name=name,
                alias=name,
                filename=path.name,
                sha256=sha,
                short_hash=sha[:12],
                size_bytes=path.stat().st_size,
                family=formats.lora_family(header),
                meta={},
            )
        )
        added += 1
    session.flush()
    return added


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
    if session.get(GenJob, job_id) is not None:
        job_id = new_job_id()
    params = req.model_dump(exclude={"init_image", "mask"})
    params.update(
        prompt=prompt, seed=seed, model=model.name, schedule=choice.schedule, sampler=choice.sampler.name
    )
    params["loras"] = [{"name": lo.name, "weight": w} for lo, w in loras]
    job = GenJob(
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
        total_steps=req.steps * req.n_iter,
        warnings=warns + ([f"no model configured: using the built-in {TINY_NAME}"] if builtin else []),
        parent_job_id=parent_job_id,
    )
    session.add(job)
    session.flush()
    for lo, w in loras:
        session.add(JobLora(job_id=job.id, lora_id=lo.id, weight=w))
    session.flush()
    payload = {
        "job_id": job.id,
        "model": model_spec(model),
        "loras": [(lo.name, w, str(lora_path(lo)), lo.short_hash) for lo, w in loras],
        "init_image": init_image,
        "mask": mask,
        "a1111": a1111_schedule,
    }
    return job, payload


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


def job_read(job: GenJob, *, position: int | None = None) -> dict[str, Any]:
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
        "images": [
            {
                "id": im.id,
                "idx": im.idx,
                "seed": im.seed,
                "url": f"/api/v1/imagegen/images/{im.id}",
                "width": im.width,
                "height": im.height,
                "sha256": im.sha256,
            }
            for im in job.images
        ],
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
    job: GenJob, model: ImageModel | None, infotexts: list[str], seeds: list[int]
) -> dict[str, Any]:
    p = job.params
    n = len(seeds)
    return {
        "prompt": job.prompt,
        "all_prompts": [job.prompt] * n,
        "negative_prompt": p.get("negative_prompt", ""),
        "all_negative_prompts": [p.get("negative_prompt", "")] * n,
        "seed": job.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * n,
        "subseed_strength": 0,
        "width": job.width,
        "height": job.height,
        "sampler_name": job.sampler,
        "cfg_scale": p.get("cfg_scale"),
        "steps": job.steps,
        "batch_size": job.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": model.name if model else None,
        "sd_model_hash": model.short_hash if model else None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": p.get("strength") if job.mode != "txt2img" else 0,
        "extra_generation_params": {"Schedule type": job.schedule} if job.schedule else {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": (job.created_at or utcnow()).strftime("%Y%m%d%H%M%S"),
        "clip_skip": p.get("clip_skip", 1),
        "is_using_inpainting_conditioning": False,
        "version": "suite",
        "job_id": job.id,
        "warnings": job.warnings or [],
        "status": job.status,
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
