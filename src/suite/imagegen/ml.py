# mypy: disable-error-code="no-untyped-call"
"""The engine: the only module that imports torch, diffusers and transformers (lazily, through this module).

One `Engine` per device holds at most one resident pipeline and is driven by exactly one thread (the
generation worker); `Engine.check_owner()` asserts it. Schedulers are built per job from the load-time config.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import gzip
import json
import os
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import diffusers
    import transformers

from suite.core.errors import SuiteError, Unavailable, ValidationFailed
from suite.imagegen import formats, samplers
from suite.imagegen.formats import CorruptWeights, NotAModel

# numpy-2 deprecation noise from schedulers and torchsde (§9 of the brief): filtered narrowly by module.
for _module in ("diffusers.schedulers", "torchsde", "scipy"):
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=_module)
warnings.filterwarnings("ignore", message="Should have tb<=t1")
diffusers.utils.logging.set_verbosity_error()
transformers.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()

STATES = ("idle", "loading", "loaded", "unloading", "error")
SKIP_COMPONENTS = {"safety_checker", "feature_extractor", "image_encoder"}
TINY_NAME = "tiny-sd"
# SD1.x latent -> RGB (a cheap preview; not the VAE).
LATENT_RGB = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]


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


# --- tokenizer and the tiny model --------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> unicode map (the 256 base symbols of CLIP's vocabulary)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def write_clip_tokenizer(out: Path, *, kind: str = "bpe", strict: bool = False) -> str:
    """vocab.json + merges.txt (+ tokenizer.json) in `out`: CLIP's 49,408-token BPE, or 514 char-level tokens.

    A `tokenizer_config.json` already in `out` is honoured (SD2's pad token `!`). Returns the kind written:
    "char" when the BPE file is not installed, or Unavailable naming the install command when `strict`
    (a real checkpoint needs the real vocabulary).
    """
    from suite.imagegen.packaged import CLIP_BPE, locate

    merges: list[str] = []
    if kind == "bpe":
        path = locate()
        if path is None and strict:
            raise Unavailable(
                f"the CLIP BPE merges are not installed; run: {CLIP_BPE.install_command}", code="missing_file"
            )
        if path is None:
            kind = "char"
        else:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                lines = fh.read().split("\n")
            merges = lines[1 : 49152 - 256 - 2 + 1]
    base = list(bytes_to_unicode().values())
    vocab_list = base + [v + "</w>" for v in base] + ["".join(m.split()) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab_list)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""))
    tok = transformers.CLIPTokenizer.from_pretrained(str(out), model_max_length=77)
    expected = 49408 if kind == "bpe" else 514
    if len(tok) != expected:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, expected {expected}")
    tok.save_pretrained(str(out))
    return kind


def build_tiny_model(
    out: Path, *, tokenizer: str = "bpe", size: str = "micro", seed: int = 0
) -> dict[str, Any]:
    """A small real Stable Diffusion pipeline from configs with random weights, offline; save_pretrained."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    kind = write_clip_tokenizer(tok_dir, kind=tokenizer)
    tok = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=77)
    if size == "micro":
        channels, layers, groups = (4, 8), 1, 2
    elif size == "small":
        channels, layers, groups = (32, 64), 2, 32
    else:
        raise ValidationFailed(f"unknown tiny model size {size!r}: micro or small")
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=channels,
        layers_per_block=layers,
        norm_num_groups=groups,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        block_out_channels=channels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=groups,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-5,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=len(tok),
            max_position_embeddings=77,
        )
    )
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe: Any = diffusers.StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out))
    # save_pretrained (transformers 5) writes only tokenizer.json: keep vocab.json/merges.txt beside it.
    write_clip_tokenizer(tok_dir, kind=kind)
    return {"path": str(out), "tokenizer": kind, "size": size, "seconds": round(time.perf_counter() - t0, 3)}


def export_single_file(folder: Path, out: Path) -> dict[str, Any]:
    """A diffusers folder (SD1.x, SD2 or SDXL architecture) as one .safetensors in the original (A1111) layout."""
    from safetensors.torch import save_file

    from suite.imagegen import ldm

    index = check_model_dir(folder)
    components: dict[str, Any] = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        spec = index.get(name)
        if isinstance(spec, list) and spec[0] and spec[1]:
            cls = _component_class(spec[0], spec[1])
            components[name] = cls.from_pretrained(str(folder), subfolder=name, local_files_only=True)
    state = {k: v.detach().contiguous() for k, v in ldm.pipeline_to_ldm(components).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        save_file(state, str(tmp), metadata={"format": "pt", "exported_by": "suite imagegen"})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(out), "tensors": len(state), "bytes": out.stat().st_size}


# --- loading ------------------------------------------------------------------------------------------------


def _component_class(library: str, cls_name: str) -> Any:
    import importlib

    module = importlib.import_module(library)
    return getattr(module, cls_name)


def check_model_dir(path: Path) -> dict[str, Any]:
    if not path.exists():
        from suite.core.errors import NotFound

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


def load_pipeline(
    path: Path,
    *,
    device: str,
    dtype: torch.dtype,
    single_file_config: Path | None = None,
    cancel: threading.Event | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> Any:
    """Load a diffusers folder, or a single file with its config skeleton, component by component
    (cancellable between components)."""
    progress = progress or (lambda done, total, phase: None)
    if path.is_file():
        return _load_single_file(
            path, device=device, dtype=dtype, config=single_file_config, cancel=cancel, progress=progress
        )
    index = check_model_dir(path)
    for st in path.rglob("*.safetensors"):
        formats.read_safetensors_header(st)  # CorruptWeights before any tensor is read
    pipeline_cls = _pipeline_class(index)
    items = _components(index)
    components: dict[str, Any] = {}
    total = len(items) + 1
    for i, (name, (library, cls_name)) in enumerate(items):
        _check_cancel(cancel)
        progress(i, total, name)
        cls = _component_class(library, cls_name)
        kwargs: dict[str, Any] = {"subfolder": name}
        if issubclass(cls, torch.nn.Module):
            kwargs["dtype"] = dtype
        if library == "transformers" or issubclass(cls, torch.nn.Module):
            kwargs["local_files_only"] = True
        try:
            components[name] = cls.from_pretrained(str(path), **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise CorruptWeights(
                f"cannot load {name} of {path.name}: {str(exc).splitlines()[0][:300]}"
            ) from None
    return _assemble(pipeline_cls, index, components, device=device, progress=progress, total=total)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise LoadCancelled("model load cancelled")


def _pipeline_class(index: dict[str, Any]) -> Any:
    pipeline_cls = getattr(diffusers, str(index.get("_class_name")), None)
    if pipeline_cls is None:
        raise NotAModel(f"unknown pipeline class {index.get('_class_name')!r}")
    return pipeline_cls


def _components(index: dict[str, Any]) -> list[tuple[str, tuple[str, str]]]:
    """(name, (library, class)) of the components to load; the safety checker and friends are skipped."""
    return [
        (name, (spec[0], spec[1]))
        for name, spec in index.items()
        if not name.startswith("_")
        and isinstance(spec, list)
        and len(spec) == 2
        and spec[0] is not None
        and spec[1] is not None
        and name not in SKIP_COMPONENTS
    ]


def _assemble(
    pipeline_cls: Any,
    index: dict[str, Any],
    components: dict[str, Any],
    *,
    device: str,
    progress: Callable[[int, int, str], None],
    total: int,
) -> Any:
    """The pipeline from its loaded components plus the index's plain options (SDXL's
    force_zeros_for_empty_prompt); skipped components are None and the safety checker is off."""
    import inspect

    params = inspect.signature(pipeline_cls.__init__).parameters
    kwargs = dict(components)
    for name, value in index.items():
        if name.startswith("_") or name in kwargs or name not in params:
            continue
        kwargs[name] = None if isinstance(value, list) else value
    if "requires_safety_checker" in params:
        kwargs["requires_safety_checker"] = False
    for name in SKIP_COMPONENTS:
        if name in params:
            kwargs[name] = None
    pipe = pipeline_cls(**kwargs)
    progress(total - 1, total, "device")
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    progress(total, total, "done")
    return pipe


def _load_single_file(
    path: Path,
    *,
    device: str,
    dtype: torch.dtype,
    config: Path | None,
    cancel: threading.Event | None,
    progress: Callable[[int, int, str], None],
) -> Any:
    """A single .safetensors checkpoint through diffusers' own single-file converters, one component at a
    time, with `config` (a skeleton folder) instead of the hub: nothing touches the network."""
    from diffusers import pipelines
    from diffusers.loaders.single_file import load_single_file_sub_model
    from safetensors.torch import load_file

    header = formats.read_safetensors_header(path)
    if config is None:
        family = formats.detect_family(header)
        raise NotAModel(
            f"{path.name}: no config skeleton for family {family or 'unknown'}; register it with "
            "`models add FILE --config <a diffusers folder of the same architecture>`"
        )
    index = check_model_dir(config)
    pipeline_cls = _pipeline_class(index)
    items = _components(index)
    total = len(items) + 2
    _check_cancel(cancel)
    progress(0, total, "checkpoint")
    try:
        checkpoint = load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise CorruptWeights(f"cannot read {path.name}: {str(exc).splitlines()[0][:300]}") from None
    components: dict[str, Any] = {}
    try:
        for i, (name, (library, cls_name)) in enumerate(items, start=1):
            _check_cancel(cancel)
            progress(i, total, name)
            try:
                components[name] = load_single_file_sub_model(
                    library_name=library,
                    class_name=cls_name,
                    name=name,
                    checkpoint=checkpoint,
                    pipelines=pipelines,
                    is_pipeline_module=hasattr(pipelines, library),
                    cached_model_config_path=str(config),
                    local_files_only=True,
                    torch_dtype=dtype,
                )
            except LoadCancelled:
                raise
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise CorruptWeights(
                    f"cannot load {name} of {path.name} with the {config.name} config: {first}"
                ) from None
    finally:
        del checkpoint
    return _assemble(pipeline_cls, index, components, device=device, progress=progress, total=total)


# --- generation ---------------------------------------------------------------------------------------------


@dataclass
class GenRequest:
    mode: str = "txt2img"
    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = "Euler a"
    schedule: str | None = None
    a1111: bool = False
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = 0
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int = 1  # A1111 convention: 1 = last layer
    loras: list[tuple[str, float, Path]] = field(default_factory=list)  # (name, weight, file)
    init_image: Any = None  # PIL image
    mask: Any = None
    strength: float = 0.75
    preview_every: int = 0


@dataclass
class JobSignals:
    cancel: threading.Event = field(default_factory=threading.Event)
    interrupt: threading.Event = field(default_factory=threading.Event)
    skip: threading.Event = field(default_factory=threading.Event)


@dataclass
class GenResult:
    images: list[Any]
    seeds: list[int]
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)


def build_scheduler(base_config: dict[str, Any], choice: samplers.SamplerChoice, seed: int) -> Any:
    """A fresh scheduler from the load-time config (never pipe.scheduler.config: kwargs would stick)."""
    cls = getattr(diffusers, choice.sampler.cls)
    kwargs = dict(choice.kwargs)
    if choice.sampler.seeded:
        kwargs["noise_sampler_seed"] = seed
    scheduler = cls.from_config(dict(base_config), **kwargs)
    for key, value in choice.kwargs.items():  # from_config silently drops unknown kwargs
        if scheduler.config.get(key) != value:
            raise ValidationFailed(
                f"sampler {choice.sampler.name!r} cannot take {key}={value!r}", code="schedule_unsupported"
            )
    return scheduler


def latents_preview(latents: torch.Tensor) -> list[bytes]:
    """Cheap latent -> RGB PNGs (a linear map, no VAE)."""
    import io

    from PIL import Image

    weights = torch.tensor(LATENT_RGB, dtype=torch.float32)
    rgb = torch.einsum("bchw,cr->bhwr", latents.detach().float().cpu()[:, :4], weights)
    arr = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().numpy()
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class Engine:
    """One device, one resident pipeline, one owning thread."""

    def __init__(
        self,
        *,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        options: dict[str, bool] | None = None,
        memory_margin_mb: float = 512,
        lora_cache: int = 8,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        self.threads = configure_threads(threads)
        self.options = options or {}
        self.margin = int(memory_margin_mb * 1024 * 1024)
        self.lora_cache = lora_cache
        self.state = "idle"
        self.error: str | None = None
        self.model_key: str | None = None
        self.pipe: Any = None
        self._derived: dict[str, Any] = {}
        self._base_scheduler_config: dict[str, Any] = {}
        self._loras: OrderedDict[str, str] = OrderedDict()  # lora key -> adapter name
        self._owner: int | None = None
        self.load_cancel = threading.Event()

    # ownership ----------------------------------------------------------------------------------------------
    def bind_owner(self) -> None:
        self._owner = threading.get_ident()

    def check_owner(self) -> None:
        if self._owner is not None and self._owner != threading.get_ident():
            raise RuntimeError("engine used from a thread that does not own it")

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "device": self.device,
            "dtype": dtype_name(self.dtype),
            "threads": self.threads,
            "model": self.model_key,
            "error": self.error,
            "loras": list(self._loras),
        }

    # load / unload ------------------------------------------------------------------------------------------
    def load(
        self,
        path: Path,
        *,
        key: str,
        single_file_config: Path | None = None,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> None:
        self.check_owner()
        if self.model_key == key and self.state == "loaded":
            return
        if self.state != "loading":  # the worker announces a load (and may cancel it) before calling this
            self.load_cancel.clear()
        if self.pipe is not None:
            self.unload()
        need = (
            formats.folder_tensor_bytes(path)
            if path.is_dir()
            else path.stat().st_size
            if path.exists()
            else 0
        )
        if need and need > available_bytes(self.device) - self.margin:
            raise InsufficientMemory(
                f"model {key} needs {need / 2**20:.0f} MiB but only "
                f"{available_bytes(self.device) / 2**20:.0f} MiB is free "
                f"(margin {self.margin / 2**20:.0f} MiB)"
            )
        self.state = "loading"
        self.error = None
        try:
            pipe = load_pipeline(
                path,
                device=self.device,
                dtype=self.dtype,
                single_file_config=single_file_config,
                cancel=self.load_cancel,
                progress=progress,
            )
            self._apply_options(pipe)
        except BaseException as exc:
            self.pipe = None
            self.model_key = None
            free_memory(self.device)
            self.state = "idle"
            if not isinstance(exc, SuiteError):
                self.state = "error"
                self.error = f"{type(exc).__name__}: {exc}"
            raise
        self.pipe = pipe
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self.model_key = key
        self.state = "loaded"

    def _apply_options(self, pipe: Any) -> None:
        o = self.options
        if o.get("vae_slicing"):
            pipe.vae.enable_slicing()
        if o.get("vae_tiling"):
            pipe.vae.enable_tiling()
        if o.get("channels_last"):
            pipe.unet.to(memory_format=torch.channels_last)
        if o.get("cpu_offload") and self.device.startswith("cuda"):
            pipe.enable_model_cpu_offload()
        if o.get("compile") and self.device.startswith("cuda"):
            pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=True)

    def unload(self) -> None:
        self.check_owner()
        if self.pipe is None:
            self.state = "idle"
            self.error = None
            return
        self.state = "unloading"
        self.pipe = None
        self._derived.clear()
        self._loras.clear()
        self.model_key = None
        free_memory(self.device)
        self.state = "idle"
        self.error = None

    def reset_error(self) -> None:
        if self.state == "error":
            self.state = "idle"
            self.error = None

    # LoRA ---------------------------------------------------------------------------------------------------
    def _ensure_loras(self, loras: list[tuple[str, float, Path]]) -> list[str]:
        names = []
        for name, _weight, file in loras:
            key = f"{name}:{file.stat().st_mtime_ns}"
            adapter = self._loras.get(key)
            if adapter is None:
                adapter = f"lora_{len(self._loras)}_{abs(hash(key)) % 10**8}"
                try:
                    self.pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=adapter)
                except Exception as exc:
                    with contextlib.suppress(Exception):
                        self.pipe.delete_adapters(adapter)
                    raise LoraIncompatible(
                        f"LoRA {name!r} is incompatible with model {self.model_key}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    ) from None
                self._loras[key] = adapter
                while len(self._loras) > self.lora_cache:
                    _old, old_adapter = self._loras.popitem(last=False)
                    with contextlib.suppress(Exception):
                        self.pipe.delete_adapters(old_adapter)
            else:
                self._loras.move_to_end(key)
            names.append(adapter)
        return names

    def _set_loras(self, req: GenRequest) -> None:
        if not self._loras and not req.loras:
            return
        if not req.loras:
            self.pipe.disable_lora()
            return
        adapters = self._ensure_loras(req.loras)
        self.pipe.enable_lora()
        self.pipe.set_adapters(adapters, [w for _n, w, _f in req.loras])

    # generation ---------------------------------------------------------------------------------------------
    def _pipe_for(self, mode: str) -> Any:
        if mode == "txt2img":
            return self.pipe
        if mode not in self._derived:
            cls = (
                diffusers.AutoPipelineForImage2Image
                if mode == "img2img"
                else diffusers.AutoPipelineForInpainting
            )
            derived = cls.from_pipe(self.pipe)
            derived.set_progress_bar_config(disable=True)
            self._derived[mode] = derived
        return self._derived[mode]

    def generate(
        self,
        req: GenRequest,
        *,
        signals: JobSignals | None = None,
        on_step: Callable[[int, int, Any], None] | None = None,
    ) -> GenResult:
        """Run a job: n_iter batches of batch_size; image i uses seed + i. Raises JobCancelled on cancel."""
        self.check_owner()
        if self.pipe is None:
            raise Unavailable("no model loaded", code="engine_idle")
        signals = signals or JobSignals()
        choice = samplers.resolve(req.sampler, req.schedule, a1111=req.a1111)
        self._set_loras(req)
        pipe = self._pipe_for(req.mode)
        images: list[Any] = []
        seeds: list[int] = []
        interrupted = False
        for it in range(req.n_iter):
            if signals.interrupt.is_set():
                interrupted = True
                break
            signals.skip.clear()
            batch_seeds = [req.seed + it * req.batch_size + i for i in range(req.batch_size)]
            pipe.scheduler = build_scheduler(self._base_scheduler_config, choice, batch_seeds[0])
            generators = [torch.Generator("cpu").manual_seed(s) for s in batch_seeds]

            def callback(
                p: Any, step: int, timestep: Any, kwargs: dict[str, Any], _it: int = it
            ) -> dict[str, Any]:
                if signals.cancel.is_set():
                    raise JobCancelled()
                if signals.interrupt.is_set() or signals.skip.is_set():
                    p._interrupt = True
                if on_step is not None:
                    on_step(_it, step + 1, kwargs.get("latents"))
                return kwargs

            kwargs: dict[str, Any] = {
                "prompt": req.prompt,
                "negative_prompt": req.negative_prompt or None,
                "num_inference_steps": req.steps,
                "guidance_scale": req.cfg_scale,
                "num_images_per_prompt": req.batch_size,
                "generator": generators[0] if req.batch_size == 1 else generators,
                "callback_on_step_end": callback,
                "callback_on_step_end_tensor_inputs": ["latents"],
                "output_type": "pil",
            }
            if req.clip_skip > 1:
                kwargs["clip_skip"] = req.clip_skip - 1
            if req.mode == "txt2img":
                kwargs.update(width=req.width, height=req.height)
            else:
                kwargs.update(image=req.init_image, strength=req.strength)
                if req.mode == "inpaint":
                    kwargs.update(mask_image=req.mask, width=req.width, height=req.height)
            with torch.inference_mode():
                out = pipe(**kwargs)
            images.extend(out.images)
            seeds.extend(batch_seeds)
            if signals.interrupt.is_set():
                interrupted = True
                break
        return GenResult(images=images, seeds=seeds, interrupted=interrupted)

    def encode_tokens(self, prompt: str) -> int:
        """Token count of a prompt with the loaded tokenizer (0 when none)."""
        tok = getattr(self.pipe, "tokenizer", None)
        if tok is None:
            return 0
        return len(tok(prompt, truncation=False)["input_ids"])
