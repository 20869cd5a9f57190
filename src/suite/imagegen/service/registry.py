"""Model and LoRA registries: add (family read from headers), list, verify, remove; the built-in tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from suite.core.db import utcnow
from suite.core.errors import Conflict, NotFound, TooLarge, UsageError, ValidationFailed
from suite.imagegen import formats, skeletons
from suite.imagegen.formats import CorruptWeights, NotAModel
from suite.imagegen.models import GenJob, ImageModel, Lora, Option
from suite.imagegen.service.base import TINY_NAME, loras_root, models_root, settings, tiny_dir

# --- models -------------------------------------------------------------------------------------------------


def title_of(model: ImageModel) -> str:
    return f"{model.name} [{model.short_hash}]"


def _inspect_model(path: Path, family: str, *, config: Path | None = None) -> dict[str, Any]:
    if not path.exists():
        raise NotFound(f"model path {path} does not exist", code="model_missing")
    if path.is_dir():
        if config is not None:
            raise UsageError("--config is for single .safetensors files; a folder has its own configs")
        index = formats.check_model_dir(path)
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
