"""Writing a job's images: PNG files (tmp, fsync, rename) with the A1111 `parameters` chunk, and their rows."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.core.db import utcnow
from suite.core.errors import SuiteError
from suite.imagegen import infotext, service


class OutputWriteFailed(SuiteError):
    code = "output_write_failed"
    status_code = 500


@dataclass
class Saved:
    paths: list[Path] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # GenImage columns
    infotexts: list[str] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)  # the PNG bytes (A1111 answers with them)


def png_bytes(img: Any, text: str) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_images(
    job_id: str, payload: dict[str, Any], p: dict[str, Any], images: list[Any], seeds: list[int]
) -> Saved:
    """Write the images under outputs/<yyyy/mm/dd>/; on any OSError the files written so far are removed and
    OutputWriteFailed is raised (no row will point to a missing file)."""
    model = payload["model"]
    lora_hashes = {n: short for n, _w, _f, short in payload.get("loras", [])}
    day = utcnow().strftime("%Y/%m/%d")
    root = service.outputs_root()
    saved = Saved()
    try:
        (root / day).mkdir(parents=True, exist_ok=True)
        for idx, (img, seed) in enumerate(zip(images, seeds, strict=True)):
            text = infotext.build(
                prompt=p["prompt"],
                negative_prompt=p.get("negative_prompt", ""),
                steps=p["steps"],
                sampler=p["sampler"],
                schedule=p.get("schedule"),
                cfg_scale=p["cfg_scale"],
                seed=seed,
                width=img.width,
                height=img.height,
                model_hash=model["short_hash"],
                model_name=model["name"],
                clip_skip=p.get("clip_skip", 1),
                lora_hashes=lora_hashes,
                denoising_strength=p.get("strength") if p["mode"] != "txt2img" else None,
            )
            rel = f"{day}/{job_id}-{idx}.png"
            data = png_bytes(img, text)
            write_atomic(root / rel, data)
            saved.paths.append(root / rel)
            saved.rows.append(
                {
                    "job_id": job_id,
                    "idx": idx,
                    "seed": seed,
                    "relpath": rel,
                    "width": img.width,
                    "height": img.height,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "bytes": len(data),
                    "infotext": text,
                }
            )
            saved.infotexts.append(text)
            saved.data.append(data)
    except OSError as exc:
        for path in saved.paths:
            path.unlink(missing_ok=True)
        raise OutputWriteFailed(f"cannot write images under {root}: {exc.strerror or exc}") from None
    return saved
