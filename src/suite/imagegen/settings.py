"""The [imagegen] table of suite.toml (env SUITE_IMAGEGEN__KEY)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from suite.core.config import Section


class ImagegenSettings(Section):
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: cuda fp16, cpu/mps fp32"
    )
    threads: int | None = Field(
        None, ge=1, le=256, description="torch threads (default: 1 under tests, else cores)"
    )
    default_model: str | None = Field(None, description="model name used when a request names none")
    max_pixels_per_job: int = Field(1024 * 1024 * 4, ge=64 * 64, description="width*height*batch_size")
    max_images_per_job: int = Field(16, ge=1, le=256)
    max_prompt_chars: int = Field(2000, ge=1)
    queue_limit: int = Field(32, ge=1, description="queued jobs per device; more get 429")
    max_upload_mb: float = Field(16, gt=0)
    max_lora_mb: float = Field(1024, gt=0)
    lora_cache: int = Field(8, ge=1, le=64, description="adapters kept loaded (LRU)")
    switch_policy: Literal["wait", "refuse"] = "wait"
    a1111: bool = Field(True, description="serve the A1111-compatible /sdapi/v1 routes")
    a1111_open_on_loopback: bool = Field(True, description="no auth on /sdapi when bound to loopback")
    open_on_loopback: bool = Field(True, description="anonymous native API from loopback clients")
    allowed_origins: list[str] = Field(
        default_factory=list, description="extra origins for POST and Socket.IO"
    )
    preview_every: int = Field(0, ge=0, description="cheap latent previews every N steps (0: off)")
    progress_hz: float = Field(4.0, gt=0, description="progress events per second per job, at most")
    upstream_events: bool = Field(False, description="also emit the upstream's Socket.IO event names")
    allow_downloads: bool = Field(
        False, description="model downloads (hub or URL); refused when HF_HUB_OFFLINE=1"
    )
    hub_endpoint: str | None = Field(
        None, description="Hugging Face base URL (default: HF_ENDPOINT or huggingface.co)"
    )
    allow_pickle_formats: bool = False
    model_roots: list[Path] = Field(
        default_factory=list, description="roots `POST /models` may register from"
    )
    worker: bool = Field(True, description="run the generation worker inside serve")
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile the UNet (GPU only)")
    malloc_tuning: bool = Field(
        True,
        description="glibc: keep large CPU buffers between steps and run the worker on the main malloc arena",
    )
    device_lock_wait_s: float = Field(
        0, ge=0, description="wait this long for a device another process's worker holds (0: refuse at once)"
    )
    idle_unload_s: float | None = Field(None, gt=0)
    memory_margin_mb: float = Field(512, ge=0, description="refuse loads leaving less free memory than this")
