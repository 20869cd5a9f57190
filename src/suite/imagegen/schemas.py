"""Request and response models (native API and the A1111 subset)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class LoraRef(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    weight: float = Field(1.0, ge=-2.0, le=2.0)


class JobCreate(BaseModel):
    """POST /jobs. Sizes and budgets are checked against settings in the service."""

    model_config = ConfigDict(extra="ignore")

    mode: Literal["txt2img", "img2img", "inpaint"] = "txt2img"
    prompt: str = ""
    negative_prompt: str = ""
    model: str | None = None
    sampler: str = "Euler a"
    schedule: str | None = None
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0, le=30)
    width: int = Field(512, ge=64, le=2048)
    height: int = Field(512, ge=64, le=2048)
    seed: int = Field(-1, ge=-1, le=2**32 - 1)
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=64)
    clip_skip: int = Field(1, ge=1, le=12)
    loras: list[LoraRef] = Field(default_factory=list, max_length=8)
    init_image: str | None = None
    init_image_id: int | None = None
    mask: str | None = None
    strength: float = Field(0.75, ge=0.0, le=1.0)
    resize_mode: Literal["resize", "crop"] = "resize"
    preview_every: int = Field(0, ge=0, le=150)
    client_id: str | None = Field(None, max_length=64)


class JobAccepted(BaseModel):
    job_id: str
    status: str
    position: int | None = None


class ImageRead(BaseModel):
    id: int
    idx: int
    seed: int
    url: str
    width: int
    height: int
    sha256: str


class JobRead(BaseModel):
    id: str
    status: str
    origin: str
    mode: str
    position: int | None = None
    step: int
    total: int
    prompt: str
    model_id: int | None
    model_sha256: str | None
    sampler: str
    schedule: str | None
    seed: int
    steps: int
    width: int
    height: int
    batch_size: int
    n_iter: int
    params: dict[str, Any]
    images: list[ImageRead]
    warnings: list[str]
    error: dict[str, str] | None
    timings: dict[str, float | None]
    parent_job_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(BaseModel):
    items: list[JobRead]
    next_cursor: str | None


class ModelCreate(BaseModel):
    path: str
    name: str | None = None
    family: str = "auto"
    config: str | None = Field(
        None, description="single files: a diffusers folder whose configs (not weights) describe it"
    )


class ModelRead(BaseModel):
    id: int
    name: str
    family: str
    source: str
    path: str
    config_skeleton: str | None = None
    sha256: str
    short_hash: str
    size_bytes: int
    status: str
    title: str
    added_at: datetime
    verified_at: datetime | None


class LoraRead(BaseModel):
    id: int
    name: str
    alias: str
    filename: str
    sha256: str
    short_hash: str
    size_bytes: int
    family: str | None


class LoraUpload(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    data: str = Field(description="base64 of the .safetensors file")


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = ""


class DownloadCreate(BaseModel):
    """POST /downloads: a .safetensors from a URL, or a hub repo's single file (filename) or diffusers folder."""

    source: Literal["hub", "url"]
    repo_id: str | None = Field(None, max_length=200)
    revision: str = Field("main", max_length=64)
    url: str | None = Field(None, max_length=4096)
    filename: str | None = Field(None, max_length=300)
    name: str | None = Field(None, max_length=100, description="registry name (default: from the file)")
    family: str = "auto"
    sha256: str | None = Field(None, max_length=64)
    size: int | None = Field(None, ge=0)


# --- A1111 --------------------------------------------------------------------------------------------------


class A1111Generate(BaseModel):
    """txt2img / img2img body. Unknown fields are ignored, as A1111 does (never extra='forbid')."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    denoising_strength: float | None = None
    init_images: list[str] | None = None
    mask: str | None = None
    resize_mode: int = 0
    send_images: bool = True
    save_images: bool = False
    force_task_id: str | None = None
    override_settings: dict[str, Any] | None = None
    # known but unsupported: accepted only at their A1111 defaults
    enable_hr: bool = False
    restore_faces: bool | None = None
    tiling: bool | None = None
    subseed_strength: float = 0.0
    script_name: str | None = None
    alwayson_scripts: dict[str, Any] | None = None
    styles: list[str] | None = None
    subseed: int = -1
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    inpainting_fill: int = 0
    inpaint_full_res: bool | int = False
    mask_blur: int | None = None
    include_init_images: bool = False
    eta: float | None = None
