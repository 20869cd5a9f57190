"""Weights on disk, read without torch: safetensors headers, model families, hashes, contained paths."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from suite.core.errors import NotFound, UsageError, ValidationFailed

MAX_HEADER_BYTES = 100 * 1024 * 1024
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
FAMILIES = ("sd15", "sd2", "sd2v", "sdxl", "sdxl_refiner", "inpaint", "tiny")


class CorruptWeights(ValidationFailed):
    code = "corrupt_weights"


class NotAModel(ValidationFailed):
    code = "not_a_model"


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file; CorruptWeights when truncated, garbage or absurd."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise CorruptWeights(f"{path.name}: not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", raw)
            if length > MAX_HEADER_BYTES or length > size - 8:
                raise CorruptWeights(f"{path.name}: safetensors header length {length} is impossible")
            header = json.loads(fh.read(length))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptWeights(f"{path.name}: safetensors header is not valid JSON ({exc})") from None
    except OSError as exc:
        raise CorruptWeights(f"{path.name}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(header, dict):
        raise CorruptWeights(f"{path.name}: safetensors header is not an object")
    end = 0
    for key, value in header.items():
        if key == "__metadata__":
            continue
        offsets = value.get("data_offsets") if isinstance(value, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            raise CorruptWeights(f"{path.name}: tensor {key!r} has no data offsets")
        end = max(end, int(offsets[1]))
    if 8 + length + end > size:
        raise CorruptWeights(f"{path.name}: truncated ({size} bytes, header needs {8 + length + end})")
    return header


def tensor_bytes(header: dict[str, Any]) -> int:
    total = 0
    for key, value in header.items():
        if key != "__metadata__" and isinstance(value, dict):
            offsets = value.get("data_offsets") or [0, 0]
            total += int(offsets[1]) - int(offsets[0])
    return total


def metadata(header: dict[str, Any], limit: int = 64 * 1024) -> dict[str, Any]:
    meta = header.get("__metadata__") or {}
    if len(json.dumps(meta)) > limit:
        return {"truncated": True}
    return dict(meta)


def detect_family(header: dict[str, Any]) -> str | None:
    """sd15, sd2, sdxl, sdxl_refiner or inpaint from the header keys alone (None when unknown)."""
    keys = set(header)
    first = header.get("model.diffusion_model.input_blocks.0.0.weight")
    if isinstance(first, dict) and (first.get("shape") or [0, 0])[1:2] == [9]:
        return "inpaint"
    if "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias" in keys:
        return "sdxl"
    if "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias" in keys:
        return "sdxl_refiner"
    k = header.get("model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight")
    if isinstance(k, dict) and (k.get("shape") or [0])[-1] == 1024:
        return "sd2"
    if "model.diffusion_model.output_blocks.11.0.skip_connection.weight" in keys:
        return "sd15"
    return None


def lora_family(header: dict[str, Any]) -> str | None:
    """The cross-attention width a LoRA targets, as a family hint (768 sd15, 1024 sd2, 2048 sdxl)."""
    for key, value in header.items():
        if "attn2" in key and ("to_k" in key or "to_v" in key) and "down" in key and isinstance(value, dict):
            shape = value.get("shape") or []
            if len(shape) == 2:
                return {768: "sd15", 1024: "sd2", 2048: "sdxl"}.get(shape[1], f"ctx{shape[1]}")
    return None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_folder(root: Path) -> tuple[str, int]:
    """Hash of the sorted (relpath, sha256) manifest of a folder, and its size in bytes."""
    h = hashlib.sha256()
    size = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        h.update(f"{rel}\0{sha256_file(path)}\n".encode())
        size += path.stat().st_size
    return h.hexdigest(), size


def folder_tensor_bytes(root: Path) -> int:
    total = 0
    for path in root.rglob("*.safetensors"):
        try:
            total += tensor_bytes(read_safetensors_header(path))
        except ValidationFailed:
            total += path.stat().st_size
    return total


def check_name(name: str, what: str = "name") -> str:
    """A safe file/registry name: [A-Za-z0-9._-]{1,100}, not '.' or '..'."""
    decoded = unquote(unquote(name))
    if decoded != name or not SAFE_NAME.match(name) or name in {".", ".."} or name.startswith("."):
        raise UsageError(
            f"invalid {what} {name[:120]!r}: use letters, digits, '.', '_' and '-'", code="bad_path"
        )
    return name


def sanitise_filename(name: str) -> str:
    """A download or upload file name reduced to a safe base name."""
    base = unquote(name).replace("\\", "/").split("/")[-1].replace("\0", "")
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")[:100]
    if not base:
        raise UsageError(f"invalid file name {name[:120]!r}", code="bad_path")
    return base


def contained(root: Path, relpath: str) -> Path:
    """root/relpath resolved; 404 unless it stays inside root (.., absolute, NUL, symlink escapes)."""
    if not relpath or "\0" in relpath or len(relpath) > 1024:
        raise NotFound("no such file", code="bad_path")
    root = root.resolve()
    candidate = (root / relpath).resolve()
    if not candidate.is_relative_to(root) or candidate == root:
        raise NotFound("no such file", code="bad_path")
    return candidate


def check_model_dir(path: Path) -> dict[str, Any]:
    """A diffusers folder's parsed model_index.json; NotFound or NotAModel (one line) otherwise."""
    if not path.exists():
        raise NotFound(f"model path {path} does not exist", code="model_missing")
    index_path = path / "model_index.json"
    if not path.is_dir() or not index_path.is_file():
        raise NotAModel(f"{path} is not a diffusers model folder (no model_index.json)")
    try:
        index = json.loads(index_path.read_text())
    except (ValueError, OSError) as exc:
        raise NotAModel(f"{path}/model_index.json is not valid JSON ({exc})") from None
    if not isinstance(index, dict) or not str(index.get("_class_name", "")).endswith("Pipeline"):
        raise NotAModel(f"{path}/model_index.json names no pipeline class")
    return index
