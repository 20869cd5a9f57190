"""The engine: one device, one resident pipeline, one owning thread (the generation worker); requests,
per-job schedulers built from the load-time config, LoRA adapters kept between jobs, latent previews."""

from __future__ import annotations

import contextlib
import copy
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.core.errors import SuiteError, Unavailable, ValidationFailed
from suite.imagegen import formats, samplers
from suite.imagegen.ml.loading import load_pipeline
from suite.imagegen.ml.runtime import (  # runtime first: warnings, logs
    InsufficientMemory,
    JobCancelled,
    LoraIncompatible,
    available_bytes,
    configure_threads,
    diffusers,
    dtype_name,
    free_memory,
    resolve_device,
    resolve_dtype,
    torch,
)

# SD1.x latent -> RGB (a cheap preview; not the VAE).
LATENT_RGB = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]


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
        self._schedulers: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}
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
        self._schedulers.clear()
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

    def _scheduler(self, choice: samplers.SamplerChoice, seed: int) -> Any:
        """A fresh scheduler per batch: a copy of a never-used prototype per sampler (from_config costs ~1 ms);
        seeded samplers take their seed in the constructor, so they are built each time."""
        if choice.sampler.seeded:
            return build_scheduler(self._base_scheduler_config, choice, seed)
        key = (choice.sampler.name, tuple(sorted(choice.kwargs.items())))
        proto = self._schedulers.get(key)
        if proto is None:
            proto = self._schedulers[key] = build_scheduler(self._base_scheduler_config, choice, seed)
        return copy.deepcopy(proto)

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
            pipe.scheduler = self._scheduler(choice, batch_seeds[0])
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
