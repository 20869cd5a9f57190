"""The CLIP BPE merges from the open-clip-torch wheel (MIT), registered with the core packaged-file helper.

Install it without its dependencies: `pip install --no-deps open-clip-torch==3.3.0` (torchvision and timm are
not needed; only this one file is read, the package is never imported).
"""

from __future__ import annotations

from pathlib import Path

from suite.core import packaged

CLIP_BPE = packaged.PackagedFile(
    name="clip-bpe",
    distribution="open-clip-torch",
    version="3.3.0",
    path="open_clip/bpe_simple_vocab_16e6.txt.gz",
    sha256="924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
    pip_args="--no-deps",
    description="CLIP BPE merges for the built-in tiny model's tokenizer",
)
packaged.register(CLIP_BPE)


def locate(item: packaged.PackagedFile = CLIP_BPE) -> Path | None:
    """The verified file, or None when its wheel is missing (the tiny model then uses a char vocabulary)."""
    try:
        return packaged.locate(item.name)
    except packaged.PackagedFileError:
        return None
