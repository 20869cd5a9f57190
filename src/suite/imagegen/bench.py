# mypy: disable-error-code="no-untyped-call,union-attr"
"""imagegen benchmarks (`suite imagegen bench`, `benchmarks/bench_imagegen.py`): `run(...) -> dict`.

Everything is built offline from configs with random weights (speed does not depend on weight values):
- b1: overhead of the native (POST job?wait + GET png) and A1111 (`/sdapi/v1/txt2img`) routes on a real
  uvicorn over a direct diffusers call, same model, seed and parameters, interleaved rounds (bench_http), wall
  and process CPU medians, pixel equality asserted; the SSE-following native flow is measured beside them;
- b2: tiny-model throughput (images/s at 64x64, 2/4/20 steps, 1 and 2 torch threads), engine vs direct pipe;
- b4: cancel latency (a long job cancelled after 1 s: time to its `cancelled` state);
- b5: load/unload memory (RSS before load, after load + one warm-up step, after unload; 5 cycles);
- full_size, single_file, gpu (opt-in, `bench_full`): the routes' overhead on a full-size random-weight SD1.5
  on the CPU as a share of its step time; A1111 single files of each family; the GPU plan.

Nothing is downloaded; SUITE_DATA_DIR defaults to a fresh temporary folder.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from suite.imagegen import bench_http

PROMPT = bench_http.PROMPT
ALL = ("b1", "b2", "b4", "b5")
EXTRA = ("full_size", "single_file", "gpu")


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


_direct = bench_http.direct_call
_pixels = bench_http.pixels
_median_ms = bench_http.median_ms


def _register(tiny: Path) -> None:
    from suite.core.db import prepare_database, session_scope
    from suite.imagegen import service

    prepare_database()
    with session_scope() as session:
        if not service.list_models(session):
            service.add_model(session, path=tiny, name="tiny", family="tiny")


def bench_overhead(tiny: Path, n: int = 60, steps: int = 4) -> dict[str, Any]:
    """B1: the native and A1111 routes against a direct pipe call (bench_http: interleaved rounds, medians,
    pixels compared every round), plus the SSE-following native flow for comparison."""
    import torch
    from diffusers import StableDiffusionPipeline

    from suite.imagegen import bench_http

    with bench_http.serving(threads=1) as base:
        torch.set_num_threads(1)  # the worker's thread count (process-wide)
        pipe = StableDiffusionPipeline.from_pretrained(str(tiny), local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        out = bench_http.rounds(
            base, lambda: _direct(pipe, steps=steps, seed=123), steps=steps, size=64, seed=123, n=n, sse=True
        )
    if out["pixel_mismatches"]:
        raise AssertionError(f"B1: pixels differ from the direct call: {out['pixel_mismatches']}")
    native, a1111 = out["native_overhead_ms"], out["a1111_overhead_ms"]
    return {
        "size": "64x64",
        "steps": steps,
        **out,
        "target_ms": 15,
        "meets_target": native["wall"] < 15 and a1111["wall"] < 15,
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


def summary(result: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    b1 = result.get("b1_overhead")
    if b1:
        s.update(
            native_overhead_ms=b1["native_overhead_ms"]["wall"],
            a1111_overhead_ms=b1["a1111_overhead_ms"]["wall"],
            native_cpu_overhead_ms=b1["native_overhead_ms"]["cpu"],
            a1111_cpu_overhead_ms=b1["a1111_overhead_ms"]["cpu"],
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
    full = result.get("full_size")
    if full:
        s["full_size_overhead_pct_of_step"] = {
            k: v["wall_pct_of_step"] for k, v in full["overhead_vs_step"].items()
        }
        s["full_size_outside_generation_pct_of_step"] = {
            k: v["outside_generation_pct_of_step"] for k, v in full["overhead_vs_step"].items()
        }
        s["full_size_meets_target"] = full["meets_target"]
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
    rounds: int | None = None,
    full_size_rounds: int | None = None,
) -> dict[str, Any]:
    """The selected benchmarks (default b1, b2, b4, b5) with the machine's details and a `summary`; `rounds`
    are b1's counted rounds, `full_size_rounds` full_size's."""
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
        result["b1_overhead"] = bench_overhead(tiny, n=rounds or (5 if quick else 60))
    if "b2" in only and tiny is not None:
        result["b2_throughput"] = bench_throughput(tiny, threads, n=2 if quick else 5)
    if "b4" in only and tiny is not None:
        result["b4_cancel"] = bench_cancel(tiny, runs=1 if quick else 3)
    if "b5" in only:
        result["b5_memory"] = bench_memory(cycles=2 if quick else 5)
    if "full_size" in only:
        from suite.imagegen.bench_full import bench_full_size

        result["full_size"] = bench_full_size(n=full_size_rounds or (2 if quick else 3))
    if "single_file" in only:
        from suite.imagegen.bench_full import bench_single_file

        result["single_file"] = bench_single_file(single_file_families or ["sd15"])
    if "gpu" in only:
        from suite.imagegen.bench_full import bench_gpu

        result["gpu"] = bench_gpu(gpu_families, compile=gpu_compile)
    result["machine"]["loadavg_after"] = os.getloadavg()
    result["summary"] = summary(result)
    return result
