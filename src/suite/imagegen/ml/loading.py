# mypy: disable-error-code="no-untyped-call"
"""Pipeline loading: diffusers folders component by component (cancellable, with progress) and single
`.safetensors` files through the bundled config skeletons, never touching the network."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from suite.imagegen import formats
from suite.imagegen.formats import CorruptWeights, NotAModel, check_model_dir
from suite.imagegen.ml.runtime import LoadCancelled, diffusers, torch  # runtime first: warnings, logs

SKIP_COMPONENTS = {"safety_checker", "feature_extractor", "image_encoder"}


def component_class(library: str, cls_name: str) -> Any:
    import importlib

    module = importlib.import_module(library)
    return getattr(module, cls_name)


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
    pipeline_cls = pipeline_class(index)
    items = pipeline_components(index)
    components: dict[str, Any] = {}
    total = len(items) + 1
    for i, (name, (library, cls_name)) in enumerate(items):
        check_cancel(cancel)
        progress(i, total, name)
        cls = component_class(library, cls_name)
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
    return assemble(pipeline_cls, index, components, device=device, progress=progress, total=total)


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise LoadCancelled("model load cancelled")


def pipeline_class(index: dict[str, Any]) -> Any:
    pipeline_cls = getattr(diffusers, str(index.get("_class_name")), None)
    if pipeline_cls is None:
        raise NotAModel(f"unknown pipeline class {index.get('_class_name')!r}")
    return pipeline_cls


def pipeline_components(index: dict[str, Any]) -> list[tuple[str, tuple[str, str]]]:
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


def assemble(
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
    pipeline_cls = pipeline_class(index)
    items = pipeline_components(index)
    total = len(items) + 2
    check_cancel(cancel)
    progress(0, total, "checkpoint")
    try:
        checkpoint = load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise CorruptWeights(f"cannot read {path.name}: {str(exc).splitlines()[0][:300]}") from None
    components: dict[str, Any] = {}
    try:
        for i, (name, (library, cls_name)) in enumerate(items, start=1):
            check_cancel(cancel)
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
    return assemble(pipeline_cls, index, components, device=device, progress=progress, total=total)
