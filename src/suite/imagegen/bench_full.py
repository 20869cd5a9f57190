# mypy: disable-error-code="no-untyped-call,union-attr"
"""Full-size architectures from the bundled skeletons with random weights (speed does not depend on weight
values; nothing is downloaded):

- full_size: the HTTP native and A1111 routes against a direct pipeline call on a random-weight SD1.5 on the
  CPU (256x256, 3 steps by default), with the step time and the overhead as a share of it (target < 1 %);
- single_file: a full-size checkpoint per family written as an A1111 single file, registered, loaded through the
  bundled skeleton and generated from; pixels equal diffusers built from the same weights;
- gpu: the GPU plan (benchmarks/README.md; skipped without CUDA).
"""

from __future__ import annotations

import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from suite.imagegen.bench_http import PROMPT, direct_call, median_ms, pixels

_direct = direct_call
_pixels = pixels
_median_ms = median_ms


def random_pipeline(
    family: str, *, device: str = "cpu", dtype: Any = None, seed: int = 0
) -> tuple[Any, Path]:
    """A full-size pipeline of `family` (sd15, sd2, sd2v, sdxl) from the bundled configs, random weights, and
    the skeleton folder.

    Weights are rounded through fp16 so a half-precision single file holds exactly the same values."""
    import diffusers
    import torch

    from suite.imagegen import ml, skeletons

    folder = skeletons.ensure(family)
    index = json.loads((folder / "model_index.json").read_text())
    torch.manual_seed(seed)
    components: dict[str, Any] = {}
    for name, (library, cls_name) in ml.pipeline_components(index):
        cls = ml.component_class(library, cls_name)
        if name.startswith("tokenizer") or name == "scheduler":
            components[name] = cls.from_pretrained(str(folder), subfolder=name)
            continue
        with torch.device(device):
            if library == "diffusers":
                module = cls.from_config(cls.load_config(str(folder), subfolder=name))
            else:
                module = cls(cls.config_class.from_pretrained(str(folder / name)))
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(p.half().to(p.dtype))
        components[name] = module.to(dtype=dtype) if dtype is not None else module
    pipeline_cls = getattr(diffusers, index["_class_name"])
    return ml.assemble(
        pipeline_cls, index, components, device=device, progress=lambda *a: None, total=1
    ), folder


def bench_single_file(families: list[str], steps: int = 1, size: int = 64) -> dict[str, Any]:
    """A full-size random-weight checkpoint per family, written as an A1111 single file, registered with
    `models add` (family detected from the header), generated through the worker and the bundled skeleton:
    pixels must equal diffusers built from the same weights. Needs ~12 GB RAM for SD1.5, ~40 GB for SDXL."""
    import diffusers
    import numpy as np
    from safetensors.torch import save_file

    from suite.core.db import prepare_database, session_scope
    from suite.imagegen import ldm, service
    from suite.imagegen import worker as worker_mod
    from suite.imagegen.models import GenJob
    from suite.imagegen.schemas import JobCreate

    prepare_database()
    out: dict[str, Any] = {}
    for family in families:
        t0 = time.perf_counter()
        pipe, _folder = random_pipeline(family)
        built = time.perf_counter() - t0
        state = {k: v.detach().half().contiguous() for k, v in ldm.pipeline_to_ldm(pipe.components).items()}
        path = Path(tempfile.mkdtemp(prefix="bench-single-")) / f"{family}-random.safetensors"
        save_file(state, str(path))
        del state
        with session_scope() as session:
            model = service.add_model(
                session, path=path, name=f"{family}-file", family="sd2v" if family == "sd2v" else "auto"
            )
            detected, skeleton = model.family, model.config_skeleton
        w = worker_mod.Worker(threads=None).start(recover=False)
        try:
            with service.write_lock, session_scope() as session:
                req = JobCreate(
                    prompt=PROMPT, steps=steps, width=size, height=size, seed=5, sampler="DDIM",
                    model=f"{family}-file", cfg_scale=7,
                )  # fmt: skip
                job, payload = service.create_job(session, req=req)
            w.submit(payload, owner_user_id=None, client_id=None, origin="native")
            handle = w.handle(job.id)
            assert handle is not None
            handle.done.wait(1800)
            with session_scope() as session:
                row = session.get(GenJob, job.id)
                status, error, load_ms = row.status, row.error_message, row.load_ms
                ours = _pixels(_open_rgb(service.image_file(row.images[0]))) if row.images else None
        finally:
            w.stop()
        pipe.scheduler = diffusers.DDIMScheduler.from_config(dict(pipe.scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        direct = _pixels(_direct(pipe, steps=steps, seed=5, size=size))
        out[family] = {
            "status": status,
            "error": error,
            "detected_family": detected,
            "skeleton": skeleton,
            "file_gib": round(path.stat().st_size / 2**30, 2),
            "build_s": round(built, 1),
            "load_ms": load_ms,
            "pixels_equal_direct": ours is not None and bool(np.array_equal(ours, direct)),
        }
        path.unlink(missing_ok=True)
        del pipe
    return out


def _open_rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def _step_times(pipe: Any, *, steps: int, size: int, seed: int = 0, **kw: Any) -> dict[str, float]:
    """Wall time of one image and the denoising rate measured between step callbacks (decode excluded)."""
    import torch

    marks: list[float] = []

    def on_step(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
        return kwargs

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pipe(
        PROMPT,
        num_inference_steps=steps,
        width=size,
        height=size,
        generator=torch.Generator("cpu").manual_seed(seed),
        callback_on_step_end=on_step,
        **kw,
    )
    torch.cuda.synchronize()
    total = time.perf_counter() - t0
    its = (len(marks) - 1) / (marks[-1] - marks[0]) if len(marks) > 1 else float("nan")
    return {
        "it_s": round(its, 2),
        "s_per_image": round(total, 3),
        "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def bench_gpu(families: list[str] | None = None, steps: int = 20, compile: bool = True) -> dict[str, Any]:
    """The GPU plan: plain diffusers (SDPA is its default attention) vs math attention, channels_last,
    torch.compile (max-autotune, fullgraph) and both; VAE tiling at 2048; the engine's overhead at full size."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    import diffusers
    import numpy as np
    from diffusers.models.attention_processor import AttnProcessor

    from suite.imagegen import ml

    families = families or ["sd15", "sdxl"]
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dtype": "fp16",
    }
    for family in families:
        size = 1024 if family == "sdxl" else (768 if family == "sd2v" else 512)
        pipe, _folder = random_pipeline(family, device="cuda", dtype=torch.float16)
        pipe.set_progress_bar_config(disable=True)
        rows: dict[str, Any] = {"size": size, "steps": steps}
        warm = {"steps": 3, "size": size}
        _step_times(pipe, **warm)
        rows["plain (SDPA)"] = _step_times(pipe, steps=steps, size=size)

        pipe.unet.set_attn_processor(AttnProcessor())
        _step_times(pipe, **warm)
        rows["math attention (no SDPA)"] = _step_times(pipe, steps=steps, size=size)
        pipe.unet.set_default_attn_processor()

        pipe.unet.to(memory_format=torch.channels_last)
        _step_times(pipe, **warm)
        rows["channels_last"] = _step_times(pipe, steps=steps, size=size)
        pipe.unet.to(memory_format=torch.contiguous_format)

        # the engine on the same pipeline: same pixels as a direct call, overhead per image
        engine = ml.Engine(device="cuda", dtype="fp16", threads=None)
        engine.pipe = pipe
        engine._base_scheduler_config = dict(pipe.scheduler.config)
        engine.model_key, engine.state = family, "loaded"
        req = ml.GenRequest(prompt=PROMPT, sampler="DDIM", steps=steps, width=size, height=size, cfg_scale=7)
        pipe.scheduler = diffusers.DDIMScheduler.from_config(engine._base_scheduler_config)
        direct_t, engine_t, equal = [], [], True
        for i in range(4):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            direct = _direct(pipe, steps=steps, seed=i, size=size)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            req.seed = i
            ours = engine.generate(req).images[0]
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            if i:
                direct_t.append(t1 - t0)
                engine_t.append(t2 - t1)
            equal = equal and bool(np.array_equal(_pixels(direct), _pixels(ours)))
        step_ms = 1000 / rows["plain (SDPA)"]["it_s"]
        overhead = statistics.median(engine_t) * 1000 - statistics.median(direct_t) * 1000
        rows["engine_vs_direct"] = {
            "direct_ms": _median_ms(direct_t),
            "engine_ms": _median_ms(engine_t),
            "overhead_ms": round(overhead, 2),
            "overhead_pct_of_step": round(overhead / step_ms * 100, 2),
            "pixels_equal": equal,
            "target": "< 1 % of the step time",
        }

        if compile:
            t0 = time.perf_counter()
            pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=True)
            _step_times(pipe, **warm)
            rows["torch.compile"] = {
                **_step_times(pipe, steps=steps, size=size),
                "compile_s": round(time.perf_counter() - t0, 1),
            }
            pipe.unet = pipe.unet._orig_mod
            pipe.unet.to(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=True)
            _step_times(pipe, **warm)
            rows["torch.compile + channels_last"] = {
                **_step_times(pipe, steps=steps, size=size),
                "compile_s": round(time.perf_counter() - t0, 1),
            }
            pipe.unet = pipe.unet._orig_mod.to(memory_format=torch.contiguous_format)

        big = 2048
        pipe.vae.enable_tiling()
        rows["vae_tiling_2048"] = _step_times(pipe, steps=2, size=big)
        pipe.vae.disable_tiling()
        try:
            rows["no_tiling_2048"] = _step_times(pipe, steps=2, size=big)
        except torch.OutOfMemoryError:
            rows["no_tiling_2048"] = {"error": "out of memory"}
        out[family] = rows
        del pipe, engine
        ml.free_memory("cuda")
    return out


def _cpu_step_ms(pipe: Any, *, steps: int, size: int, seed: int = 0, calls: int = 2) -> float:
    """Median time between step callbacks of `calls` direct calls (the denoising step; VAE decode excluded)."""
    intervals: list[float] = []
    for _ in range(calls):
        marks: list[float] = []

        def on_step(
            p: Any, i: int, t: Any, kwargs: dict[str, Any], marks: list[float] = marks
        ) -> dict[str, Any]:
            marks.append(time.perf_counter())
            return kwargs

        direct_call(pipe, steps=steps, seed=seed, size=size, callback_on_step_end=on_step)
        intervals += [b - a for a, b in itertools.pairwise(marks)]
    return statistics.median(intervals) * 1000


def bench_full_size(family: str = "sd15", *, size: int = 256, steps: int = 3, n: int = 3) -> dict[str, Any]:
    """The routes' overhead at full size on the CPU: a random-weight `family` pipeline saved as a diffusers
    folder, registered and served by the worker (its own thread, all cores); the direct baseline is
    `StableDiffusionPipeline.from_pretrained` of the same folder called on the main thread (diffusers maps
    the safetensors files in both loads, so the two copies share the page cache). Rounds as in bench_http,
    with each route's wall split into the route around the worker's `engine.generate` and that call against
    the direct one, and the process's page faults per call (the worker runs on glibc's main malloc arena:
    imagegen/heap.py). SD1.5 takes ~6 GB of RAM (RSS reads ~10 GB: both copies map the same files)."""
    import diffusers
    import torch

    from suite.core.db import prepare_database, session_scope
    from suite.imagegen import bench_http, service
    from suite.imagegen import worker as worker_mod

    prepare_database()
    t0 = time.perf_counter()
    built, _skeleton = random_pipeline(family)
    folder = Path(tempfile.mkdtemp(prefix="bench-full-")) / f"{family}-random"
    built.save_pretrained(str(folder))
    del built
    build_s = time.perf_counter() - t0
    with session_scope() as session:
        model = service.add_model(session, path=folder, name=f"{family}-random", family="auto")
        name, title = model.name, service.title_of(model)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    try:
        with bench_http.serving(threads=None) as base:  # the worker's default: all cores
            threads = torch.get_num_threads()
            worker = worker_mod.current_worker()
            main_arena = worker is not None and worker.main_arena
            out = bench_http.rounds(
                base,
                lambda: direct_call(pipe, steps=steps, seed=7, size=size),
                steps=steps,
                size=size,
                seed=7,
                n=n,
                model=name,
                checkpoint=title,
            )
            step_ms = _cpu_step_ms(pipe, steps=steps, size=size)  # warm: after the rounds
    finally:
        import shutil

        shutil.rmtree(folder.parent, ignore_errors=True)
    if out["pixel_mismatches"]:
        raise AssertionError(f"full_size: pixels differ from the direct call: {out['pixel_mismatches']}")
    ratio = {
        k: {
            "wall_pct_of_step": round(out[f"{k}_overhead_ms"]["wall"] / step_ms * 100, 2),
            "cpu_pct_of_step": round(out[f"{k}_overhead_ms"]["cpu"] / step_ms * 100, 2),
            # how settled the paired wall median is: the width of its interquartile range
            "wall_iqr_width_pct_of_step": round(
                (out[f"{k}_overhead_ms"]["wall_iqr"][1] - out[f"{k}_overhead_ms"]["wall_iqr"][0])
                / step_ms
                * 100,
                2,
            ),
            "outside_generation_pct_of_step": round(
                out[f"{k}_overhead_ms"]["outside_generation"] / step_ms * 100, 2
            ),
        }
        for k in ("native", "a1111")
    }
    return {
        "family": family,
        "size": f"{size}x{size}",
        "steps": steps,
        "torch_threads": threads,
        "worker_on_main_malloc_arena": main_arena,
        "build_and_save_s": round(build_s, 1),
        "step_ms": round(step_ms, 1),
        **out,
        "overhead_vs_step": ratio,
        "target": "< 1 % of the step time",
        "meets_target": all(v["wall_pct_of_step"] < 1 for v in ratio.values()),
    }
