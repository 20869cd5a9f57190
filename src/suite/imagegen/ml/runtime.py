# mypy: disable-error-code="no-untyped-call"
"""torch, diffusers and transformers imported once (with their warnings and log levels set), the engine's
errors, and the device, dtype, thread and memory policy."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
import warnings
from typing import Any

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import diffusers
    import transformers

from suite.core.errors import SuiteError, Unavailable, ValidationFailed

# numpy-2 deprecation noise from schedulers and torchsde (§9 of the brief): filtered narrowly by module.
for _module in ("diffusers.schedulers", "torchsde", "scipy"):
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=_module)
warnings.filterwarnings("ignore", message="Should have tb<=t1")
diffusers.utils.logging.set_verbosity_error()
transformers.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()

STATES = ("idle", "loading", "loaded", "unloading", "error")


class JobCancelled(Exception):
    """Raised from the step callback: the pipeline stops with no VAE decode."""


class LoadCancelled(SuiteError):
    code = "load_cancelled"
    status_code = 409


class OutOfMemory(SuiteError):
    code = "out_of_memory"
    status_code = 507


class InsufficientMemory(Unavailable):
    code = "insufficient_memory"


class LoraIncompatible(ValidationFailed):
    code = "lora_incompatible"


# --- device, dtype, threads ---------------------------------------------------------------------------------


def resolve_device(setting: str = "auto") -> str:
    if setting and setting != "auto":
        if setting.startswith("cuda") and not torch.cuda.is_available():
            raise Unavailable(f"device {setting!r} requested but CUDA is not available", code="no_device")
        if setting == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise Unavailable("device 'mps' requested but MPS is not available", code="no_device")
        return setting
    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(device: str, setting: str = "auto") -> torch.dtype:
    """cuda fp16; cpu and mps fp32 (MPS fp16 gives NaNs); bf16 only when asked."""
    if setting == "fp32":
        return torch.float32
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        return torch.float16
    return torch.float16 if device.startswith("cuda") else torch.float32


def default_threads() -> int:
    if "pytest" in sys.modules or os.environ.get("PYTEST_CURRENT_TEST"):
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_interop_done = False


def configure_threads(threads: int | None) -> int:
    """torch intra-op threads from config; inter-op set to 1 once (a second call raises in torch)."""
    global _interop_done
    n = threads or default_threads()
    torch.set_num_threads(n)
    if not _interop_done:
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        _interop_done = True
    return n


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate", "cannot allocate", "not enough memory")
    )


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device == "mps" and hasattr(torch, "mps"):
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def available_bytes(device: str) -> int:
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def memory_report() -> dict[str, Any]:
    import psutil

    vm = psutil.virtual_memory()
    out: dict[str, Any] = {"ram": {"free": vm.available, "used": vm.total - vm.available, "total": vm.total}}
    if torch.cuda.is_available():
        stats = torch.cuda.memory_stats()
        free, total = torch.cuda.mem_get_info()
        out["cuda"] = {
            "system": {"free": free, "used": total - free, "total": total},
            "active": {
                "current": stats.get("active_bytes.all.current", 0),
                "peak": stats.get("active_bytes.all.peak", 0),
            },
            "allocated": {
                "current": stats.get("allocated_bytes.all.current", 0),
                "peak": stats.get("allocated_bytes.all.peak", 0),
            },
            "reserved": {
                "current": stats.get("reserved_bytes.all.current", 0),
                "peak": stats.get("reserved_bytes.all.peak", 0),
            },
            "inactive": {
                "current": stats.get("inactive_split_bytes.all.current", 0),
                "peak": stats.get("inactive_split_bytes.all.peak", 0),
            },
            "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
        }
    else:
        out["cuda"] = {"error": "unavailable"}
    return out


__all__ = [
    "STATES",
    "InsufficientMemory",
    "JobCancelled",
    "LoadCancelled",
    "LoraIncompatible",
    "OutOfMemory",
    "available_bytes",
    "configure_threads",
    "default_threads",
    "diffusers",
    "dtype_name",
    "free_memory",
    "is_oom",
    "memory_report",
    "resolve_device",
    "resolve_dtype",
    "torch",
    "transformers",
]
