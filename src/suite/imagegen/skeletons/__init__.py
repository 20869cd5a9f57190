"""Config skeletons for single-file checkpoints: what `from_single_file(path, config=<dir>)` reads instead of the
hub, so a `.safetensors` from A1111 or Civitai loads with the network off.

Bundled here, one folder per family, as small JSON files written from the public architecture configs (no
weights): `model_index.json` and the unet, vae, text encoder(s), scheduler and tokenizer configs of SD1.5
(`sd15`), SD2 512 epsilon (`sd2`), SD2 768 v-prediction (`sd2v`) and SDXL base (`sdxl`). They are materialised
under `<data_dir>/imagegen/configs/<family>/` on first use, with the CLIP tokenizer (vocab.json, merges.txt)
built from the BPE merges that ship in the open-clip-torch wheel (SD2 and SDXL's second tokenizer pad with `!`).

A checkpoint of another architecture is registered with `--config <a diffusers folder of that architecture>`:
its configs and tokenizer files (never its weights) are copied to `configs/model-<sha256[:16]>/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from suite.core.errors import ValidationFailed

HERE = Path(__file__).resolve().parent
BUNDLED = ("sd15", "sd2", "sd2v", "sdxl")
CUSTOM = re.compile(r"^model-[0-9a-f]{16}$")
STAMP = ".skeleton"
# family detected from a checkpoint header -> bundled skeleton (inpaint and refiner files need --config)
FOR_FAMILY = {"sd15": "sd15", "sd2": "sd2", "sd2v": "sd2v", "sdxl": "sdxl"}
COPY_SUFFIXES = {".json", ".txt", ".model"}
MAX_CONFIG_FILE = 16 * 1024 * 1024


class ConfigMissing(ValidationFailed):
    code = "config_missing"


def configs_root() -> Path:
    from suite.imagegen.service import root

    return root() / "configs"


def for_family(family: str | None) -> str | None:
    return FOR_FAMILY.get(family or "")


def bundled_files(name: str) -> list[Path]:
    folder = HERE / name
    return sorted(p for p in folder.rglob("*.json") if p.is_file())


def _fingerprint(name: str) -> str:
    h = hashlib.sha256()
    for path in bundled_files(name):
        h.update(path.relative_to(HERE / name).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _check_name(name: str) -> None:
    if name not in BUNDLED and not CUSTOM.match(name):
        raise ConfigMissing(f"unknown config skeleton {name[:60]!r}")


def path_of(name: str) -> Path:
    _check_name(name)
    return configs_root() / name


def ensure(name: str) -> Path:
    """The skeleton folder for `name`, materialised (bundled) or checked (custom). Heavy: builds tokenizers."""
    target = path_of(name)
    if CUSTOM.match(name):
        if not (target / "model_index.json").is_file():
            raise ConfigMissing(
                f"the config skeleton of this model ({target}) is missing; add the model again"
            )
        return target
    stamp = target / STAMP
    fingerprint = _fingerprint(name)
    if stamp.is_file() and stamp.read_text().strip() == fingerprint:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}-{uuid.uuid4().hex[:8]}")
    try:
        for src in bundled_files(name):
            dest = tmp / src.relative_to(HERE / name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        index = json.loads((tmp / "model_index.json").read_text())
        from suite.imagegen import ml

        for component, spec in index.items():
            if isinstance(spec, list) and spec[1:] == ["CLIPTokenizer"]:
                ml.write_clip_tokenizer(tmp / component, kind="bpe", strict=True)
        (tmp / STAMP).write_text(fingerprint + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def store_custom(source: Path, sha256: str) -> str:
    """Copy a diffusers folder's configs and tokenizer files (no weights) as the skeleton of one checkpoint."""
    from suite.imagegen.formats import NotAModel

    index_path = source / "model_index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        raise NotAModel(
            f"--config {source} is not a diffusers folder (no readable model_index.json)"
        ) from None
    if not isinstance(index, dict) or not str(index.get("_class_name", "")).endswith("Pipeline"):
        raise NotAModel(f"--config {source}/model_index.json names no pipeline class")
    name = f"model-{sha256[:16]}"
    target = path_of(name)
    tmp = target.with_name(f".{name}-{uuid.uuid4().hex[:8]}")
    root = source.resolve()
    try:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if (
                not path.is_file()
                or path.suffix not in COPY_SUFFIXES
                or len(rel.parts) > 2
                or any(part.startswith(".") for part in rel.parts)
                or not path.resolve().is_relative_to(root)
                or path.stat().st_size > MAX_CONFIG_FILE
            ):
                continue
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return name


def remove_custom(name: str) -> None:
    if CUSTOM.match(name):
        shutil.rmtree(path_of(name), ignore_errors=True)


def pipeline_class(folder: Path) -> str:
    return str(json.loads((folder / "model_index.json").read_text()).get("_class_name", ""))
