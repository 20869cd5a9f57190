"""The ML side: the only package that imports torch, diffusers and transformers (import it lazily).

`runtime` (imports, errors, device and memory policy), `loading` (pipelines from folders and single files),
`tiny` (the built-in model), `engine` (one resident pipeline per device, driven by one thread).
"""

from __future__ import annotations

from suite.imagegen.formats import check_model_dir
from suite.imagegen.ml.engine import (
    LATENT_RGB,
    Engine,
    GenRequest,
    GenResult,
    JobSignals,
    build_scheduler,
    latents_preview,
)
from suite.imagegen.ml.loading import (
    SKIP_COMPONENTS,
    assemble,
    component_class,
    load_pipeline,
    pipeline_class,
    pipeline_components,
)
from suite.imagegen.ml.runtime import (
    STATES,
    InsufficientMemory,
    JobCancelled,
    LoadCancelled,
    LoraIncompatible,
    OutOfMemory,
    available_bytes,
    configure_threads,
    default_threads,
    dtype_name,
    free_memory,
    is_oom,
    memory_report,
    resolve_device,
    resolve_dtype,
)
from suite.imagegen.ml.tiny import (
    TINY_NAME,
    build_tiny_model,
    bytes_to_unicode,
    export_single_file,
    write_clip_tokenizer,
)

__all__ = [
    "LATENT_RGB",
    "SKIP_COMPONENTS",
    "STATES",
    "TINY_NAME",
    "Engine",
    "GenRequest",
    "GenResult",
    "InsufficientMemory",
    "JobCancelled",
    "JobSignals",
    "LoadCancelled",
    "LoraIncompatible",
    "OutOfMemory",
    "assemble",
    "available_bytes",
    "build_scheduler",
    "build_tiny_model",
    "bytes_to_unicode",
    "check_model_dir",
    "component_class",
    "configure_threads",
    "default_threads",
    "dtype_name",
    "export_single_file",
    "free_memory",
    "is_oom",
    "latents_preview",
    "load_pipeline",
    "memory_report",
    "pipeline_class",
    "pipeline_components",
    "resolve_device",
    "resolve_dtype",
    "write_clip_tokenizer",
]
