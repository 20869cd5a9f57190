# mypy: disable-error-code="no-untyped-call,union-attr"
"""imagegen benchmarks (`suite imagegen bench`, `benchmarks/bench_imagegen.py`): `run(...) -> dict`.

Everything is built offline from configs with random weights (speed does not depend on weight values):
- b1: overhead of the native (POST job + SSE + GET job + GET png) and A1111 (`/sdapi/v1/txt2img`) routes on a
  real uvicorn over a direct diffusers call, same model, seed and parameters, interleaved, median of N, with
  pixel equality asserted; plus the server-side split of a native request (queue, load, gen, save) so the
  overhead can be located;
- b2: tiny-model throughput (images/s at 64x64, 2/4/20 steps, 1 and 2 torch threads), engine vs direct pipe;
- b4: cancel latency (a long job cancelled after 1 s: time to its `cancelled` state);
- b5: load/unload memory (RSS before load, after load + one warm-up step, after unload; 5 cycles);
- single_file: a full-size random-weight SD1.5 (or SD2-v, SDXL) written as an A1111 single file, registered
  and generated through the bundled config skeleton, pixels equal to diffusers built from the same weights;
- gpu: the GPU plan (benchmarks/README.md): SD1.5- and SDXL-size pipelines from the bundled configs, it/s and
  peak VRAM for plain diffusers against SDPA/math attention, channels_last, torch.compile and VAE tiling, and
  the engine's overhead over a direct call at full size (skipped without CUDA).

Nothing is downloaded; SUITE_DATA_DIR defaults to a fresh temporary folder.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PROMPT = "a photo of an astronaut riding a horse"
ALL = ("b1", "b2", "b4", "b5")
EXTRA = ("single_file", "gpu")


def _environment() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if "SUITE_DATA_DIR" not in os.environ:
        os.environ["SUITE_DATA_DIR"] = tempfile.mkdtemp(prefix="bench-imagegen-")
        from suite.core.config import reset_settings

        reset_settings()


def _quick() -> bool:
    return os.environ.get("SUITE_BENCH_QUICK") == "1"


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _direct(pipe: Any, *, steps: int, seed: int, size: int = 64, cfg: float = 7.0, **kw: Any) -> Any:
    import torch

    return pipe(
        PROMPT,
        num_inference_steps=steps,
        width=size,
        height=size,
        guidance_scale=cfg,
        generator=torch.Generator("cpu").manual_seed(seed),
        **kw,
    ).images[0]


def _pixels(img_or_png: Any) -> Any:
    import numpy as np
    from PIL import Image

    if isinstance(img_or_png, bytes | bytearray):
        img_or_png = Image.open(io.BytesIO(img_or_png))
    return np.asarray(img_or_png.convert("RGB"))


def _register(tiny: Path) -> None:
    from suite.core.db import prepare_database, session_scope
    from suite.imagegen import service

    prepare_database()
    with session_scope() as session:
        if not service.list_models(session):
            service.add_model(session, path=tiny, name="tiny", family="tiny")


def _median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def bench_overhead(tiny: Path, n: int = 8, steps: int = 4) -> dict[str, Any]:
    """B1: HTTP routes vs a direct pipe call (interleaved, median of n, pixels compared every round)."""
    import httpx
    import numpy as np
    import torch
    import uvicorn
    from diffusers import StableDiffusionPipeline

    from suite.core.api import create_app
    from suite.core.db import session_scope
    from suite.imagegen import worker as worker_mod
    from suite.imagegen.models import GenJob

    w = worker_mod.Worker(threads=1).start(recover=False)
    worker_mod._worker = w
    app = create_app(["imagegen"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    torch.set_num_threads(1)  # the worker's thread count (the setting is per calling thread)
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    body = {"prompt": PROMPT, "steps": steps, "width": 64, "height": 64, "seed": 123, "sampler": "DDIM"}
    a1111 = {**body, "sampler_name": "DDIM", "cfg_scale": 7}
    times: dict[str, list[float]] = {"direct": [], "native": [], "a1111": [], "gen": []}
    split: dict[str, list[float]] = {"post": [], "sse": [], "get_job": [], "get_png": []}
    cpu: dict[str, list[float]] = {"direct": [], "native": [], "a1111": []}  # process CPU (all threads)
    mismatches = 0
    try:
        with httpx.Client(base_url=base, timeout=120) as http:
            for i in range(n + 1):  # the first round warms up (model load) and is not counted
                c0, t0 = time.process_time(), time.perf_counter()
                ref = _pixels(_direct(pipe, steps=steps, seed=123))
                t_direct = time.perf_counter() - t0
                c_direct = time.process_time() - c0

                c0, t0 = time.process_time(), time.perf_counter()
                job_id = http.post("/api/v1/imagegen/jobs", json=body).json()["job_id"]
                t1 = time.perf_counter()
                with http.stream("GET", f"/api/v1/imagegen/jobs/{job_id}/events") as r:
                    for _ in r.iter_lines():
                        pass
                t2 = time.perf_counter()
                job = http.get(f"/api/v1/imagegen/jobs/{job_id}").json()
                t3 = time.perf_counter()
                png = http.get(job["images"][0]["url"]).content
                t4 = time.perf_counter()
                t_native = t4 - t0
                c_native = time.process_time() - c0

                c0, t5 = time.process_time(), time.perf_counter()
                res = http.post("/sdapi/v1/txt2img", json=a1111).json()
                t_a1111 = time.perf_counter() - t5
                c_a1111 = time.process_time() - c0
                if not (
                    np.array_equal(ref, _pixels(png))
                    and np.array_equal(ref, _pixels(base64.b64decode(res["images"][0])))
                ):
                    mismatches += 1
                if i:
                    times["direct"].append(t_direct)
                    times["native"].append(t_native)
                    times["a1111"].append(t_a1111)
                    cpu["direct"].append(c_direct)
                    cpu["native"].append(c_native)
                    cpu["a1111"].append(c_a1111)
                    for key, value in zip(split, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                        split[key].append(value)
                    with session_scope() as session:
                        row = session.get(GenJob, job_id)
                        times["gen"].append((row.gen_ms or 0) / 1000)
    finally:
        server.should_exit = True
        thread.join(10)
        w.stop()
        worker_mod._worker = None
    med = {k: _median_ms(v) for k, v in times.items()}
    native = round(med["native"] - med["direct"], 2)
    a1111_over = round(med["a1111"] - med["direct"], 2)
    return {
        "n": n,
        "steps": steps,
        "size": "64x64",
        "direct_ms": med["direct"],
        "native_ms": med["native"],
        "a1111_ms": med["a1111"],
        "worker_gen_ms": med["gen"],
        "native_overhead_ms": native,
        "a1111_overhead_ms": a1111_over,
        "native_split_ms": {k: _median_ms(v) for k, v in split.items()},
        # CPU time of the whole process (server, worker and client threads): what the routes cost, read
        # without the wait for a busy machine's cores
        "cpu_ms": {k: _median_ms(v) for k, v in cpu.items()},
        "native_cpu_overhead_ms": round(_median_ms(cpu["native"]) - _median_ms(cpu["direct"]), 2),
        "a1111_cpu_overhead_ms": round(_median_ms(cpu["a1111"]) - _median_ms(cpu["direct"]), 2),
        "pixel_mismatches": mismatches,
        "target_ms": 15,
        "meets_target": native < 15 and a1111_over < 15 and mismatches == 0,
    }


def bench_throughput(tiny: Path, threads: list[int], n: int = 5) -> dict[str, Any]:
    """B2: images/s of the engine and of a direct pipe, per thread count and step count."""
    import torch
    from diffusers import StableDiffusionPipeline

    from suite.imagegen import ml

    out: dict[str, Any] = {}
    engine = ml.Engine(threads=threads[0])
    engine.load(tiny, key="tiny")
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for t in threads:
        torch.set_num_threads(t)
        for steps in (2, 4, 20):
            direct, ours = [], []
            for i in range(n + 1):
                t0 = time.perf_counter()
                _direct(pipe, steps=steps, seed=i)
                d = time.perf_counter() - t0
                t0 = time.perf_counter()
                engine.generate(
                    ml.GenRequest(prompt=PROMPT, sampler="DDIM", steps=steps, width=64, height=64, seed=i)
                )
                e = time.perf_counter() - t0
                if i:
                    direct.append(d)
                    ours.append(e)
            md, me = statistics.median(direct), statistics.median(ours)
            out[f"threads{t}_steps{steps}"] = {
                "direct_img_s": round(1 / md, 2),
                "engine_img_s": round(1 / me, 2),
                "engine_vs_direct_pct": round((me / md - 1) * 100, 1),
            }
    return out


def bench_cancel(tiny: Path, after_s: float = 1.0, runs: int = 3) -> dict[str, Any]:
    """B4: time from cancel to the job's `cancelled` state, against the step time."""
    from suite.core.db import session_scope
    from suite.imagegen import service
    from suite.imagegen import worker as worker_mod
    from suite.imagegen.models import GenJob
    from suite.imagegen.schemas import JobCreate

    w = worker_mod.Worker(threads=1).start(recover=False)
    results = []
    try:
        with (
            service.write_lock,
            session_scope() as session,
        ):  # load the model first: cancel, not load, is timed
            warm, payload = service.create_job(
                session, req=JobCreate(prompt=PROMPT, steps=1, width=64, height=64, model="tiny")
            )
        w.submit(payload, owner_user_id=None, client_id=None, origin="native")
        handle = w.handle(warm.id)
        assert handle is not None
        handle.done.wait(120)
        for _ in range(runs):
            with service.write_lock, session_scope() as session:
                req = JobCreate(
                    prompt=PROMPT,
                    steps=150,
                    n_iter=2,
                    width=64,
                    height=64,
                    seed=1,
                    sampler="DDIM",
                    model="tiny",
                )
                job, payload = service.create_job(session, req=req)
            w.submit(payload, owner_user_id=None, client_id=None, origin="native")
            h = w.handle(job.id)
            while h.status != "running":
                time.sleep(0.005)
            time.sleep(after_s)
            step_before = h.step
            t0 = time.perf_counter()
            w.cancel(job.id)
            h.done.wait(60)
            latency = time.perf_counter() - t0
            results.append(
                {
                    "latency_ms": round(latency * 1000, 2),
                    "stopped_at_step": h.step,
                    "step_at_cancel": step_before,
                    "status": h.status,
                }
            )
        with service.write_lock, session_scope() as session:
            done = JobCreate(
                prompt=PROMPT, steps=20, width=64, height=64, seed=1, sampler="DDIM", model="tiny"
            )
            timed, payload = service.create_job(session, req=done)
        w.submit(payload, owner_user_id=None, client_id=None, origin="native")
        handle = w.handle(timed.id)
        assert handle is not None
        handle.done.wait(60)
        with session_scope() as session:
            gen_ms = session.get(GenJob, timed.id).gen_ms
    finally:
        w.stop()
    step_ms = gen_ms / 20 if gen_ms else None
    median = float(statistics.median(float(r["latency_ms"]) for r in results))
    return {
        "runs": results,
        "median_latency_ms": median,
        "step_ms": round(step_ms, 2) if step_ms else None,
        "target": "<= one step + 50 ms",
        "meets_target": step_ms is not None and median <= step_ms + 50,
    }


def bench_memory(cycles: int = 5) -> dict[str, Any]:
    """B5: RSS before load, after load plus one warm-up step, after unload, for the small tiny model."""
    from suite.imagegen import ml

    folder = Path(tempfile.mkdtemp(prefix="bench-small-")) / "small"
    ml.build_tiny_model(folder, size="small")
    engine = ml.Engine(threads=1)
    ml.free_memory("cpu")
    before = _rss()
    rows = []
    for _ in range(cycles):
        engine.load(folder, key="small")
        engine.generate(ml.GenRequest(prompt=PROMPT, sampler="DDIM", steps=1, width=64, height=64))
        loaded = _rss()
        engine.unload()
        rows.append({"loaded_mib": round(loaded / 2**20, 1), "after_unload_mib": round(_rss() / 2**20, 1)})
    after = _rss()
    return {
        "model": "tiny small (18 MB)",
        "before_mib": round(before / 2**20, 1),
        "cycles": rows,
        "after_mib": round(after / 2**20, 1),
        "unload_within_10pct": after <= before * 1.10,
        "growth_over_cycles_mib": round(rows[-1]["after_unload_mib"] - rows[0]["after_unload_mib"], 1),
    }


# --- full-size architectures from the bundled skeletons -------------------------------------------------


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
    for name, (library, cls_name) in ml._components(index):
        cls = ml._component_class(library, cls_name)
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
    return ml._assemble(
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


def summary(result: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    b1 = result.get("b1_overhead")
    if b1:
        s.update(
            native_overhead_ms=b1["native_overhead_ms"],
            a1111_overhead_ms=b1["a1111_overhead_ms"],
            pixel_mismatches=b1["pixel_mismatches"],
            b1_meets_target=b1["meets_target"],
        )
    b2 = result.get("b2_throughput")
    if b2 and "threads1_steps2" in b2:
        s["tiny_img_s_2steps_1thread"] = b2["threads1_steps2"]["engine_img_s"]
    b4 = result.get("b4_cancel")
    if b4:
        s["cancel_ms"] = b4["median_latency_ms"]
    b5 = result.get("b5_memory")
    if b5:
        s["unload_within_10pct"] = b5["unload_within_10pct"]
    sf = result.get("single_file")
    if sf:
        s["single_file_pixels_equal"] = all(v.get("pixels_equal_direct") for v in sf.values())
    return s


def run(
    only: list[str] | None = None,
    threads: list[int] | None = None,
    *,
    single_file_families: list[str] | None = None,
    gpu_families: list[str] | None = None,
    gpu_compile: bool = True,
) -> dict[str, Any]:
    """The selected benchmarks (default b1, b2, b4, b5) with the machine's details and a `summary`."""
    _environment()
    import psutil

    from suite.imagegen import ml

    only = list(only or ALL)
    unknown = set(only) - set(ALL) - set(EXTRA)
    if unknown:
        raise ValueError(
            f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(ALL + EXTRA)}"
        )
    threads = threads or [1, 2]
    quick = _quick()
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": os.getloadavg(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": sys.version.split()[0],
            "quick": quick,
        }
    }
    tiny: Path | None = None
    if {"b1", "b2", "b4"} & set(only):
        tiny = Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny"
        ml.build_tiny_model(tiny)
        _register(tiny)
    if "b1" in only and tiny is not None:
        result["b1_overhead"] = bench_overhead(tiny, n=4 if quick else 8)
    if "b2" in only and tiny is not None:
        result["b2_throughput"] = bench_throughput(tiny, threads, n=2 if quick else 5)
    if "b4" in only and tiny is not None:
        result["b4_cancel"] = bench_cancel(tiny, runs=1 if quick else 3)
    if "b5" in only:
        result["b5_memory"] = bench_memory(cycles=2 if quick else 5)
    if "single_file" in only:
        result["single_file"] = bench_single_file(single_file_families or ["sd15"])
    if "gpu" in only:
        result["gpu"] = bench_gpu(gpu_families, compile=gpu_compile)
    result["machine"]["loadavg_after"] = os.getloadavg()
    result["summary"] = summary(result)
    return result
