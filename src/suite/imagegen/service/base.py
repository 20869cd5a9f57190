"""Settings, data paths, the caller and the write lock shared by imagegen's service modules."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite.core.config import get_settings

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
