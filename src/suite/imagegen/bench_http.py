"""The HTTP overhead harness shared by B1 (tiny model) and the full-size CPU run: a real uvicorn on 127.0.0.1
with the imagegen app and a worker, and rounds that interleave a direct diffusers call with the routes.

Per round, in a rotating order: `direct` (`pipe(...)` on a pipeline of its own, same model, seed and
parameters), `native` (POST /api/v1/imagegen/jobs?wait=... then GET the PNG: what a client does), `a1111`
(POST /sdapi/v1/txt2img) and optionally `native_sse` (POST, SSE until the terminal status, which carries
the image URLs, then GET the PNG). Wall and
process CPU time and minor page faults of each call; every route's pixels must equal the direct call's of the
same round. Each route's paired wall overhead is also split in two with the job's `gen_ms` (the worker's
`engine.generate`, read after the timed call): the route around generation, and generation against the
direct call.
"""

from __future__ import annotations

import base64
import io
import os
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PROMPT = "a photo of an astronaut riding a horse"


def pixels(img_or_png: Any) -> Any:
    import numpy as np
    from PIL import Image

    if isinstance(img_or_png, bytes | bytearray):
        img_or_png = Image.open(io.BytesIO(img_or_png))
    return np.asarray(img_or_png.convert("RGB"))


def direct_call(pipe: Any, *, steps: int, seed: int, size: int = 64, cfg: float = 7.0, **kw: Any) -> Any:
    """The baseline: the diffusers pipeline called directly, CPU generator seeded as the engine does."""
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


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def quartiles_ms(values: list[float]) -> list[float]:
    q = statistics.quantiles(values, n=4)
    return [round(q[0] * 1000, 2), round(q[2] * 1000, 2)]


@contextmanager
def serving(threads: int | None) -> Iterator[str]:
    """The imagegen app on uvicorn (127.0.0.1, a free port) with its own worker; yields the base URL."""
    import uvicorn

    from suite.core.api import create_app
    from suite.imagegen import worker as worker_mod

    w = worker_mod.Worker(threads=threads).start(recover=False)
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
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        w.stop()
        worker_mod._worker = None


def _native(http: Any, body: dict[str, Any]) -> tuple[Any, str]:
    r = http.post("/api/v1/imagegen/jobs", params={"wait": 600}, json=body)
    job = r.json()
    if r.status_code != 200 or job["status"] != "succeeded":
        raise RuntimeError(f"native job did not succeed: {r.status_code} {job}")
    return pixels(http.get(job["images"][0]["url"]).content), job["id"]


def _native_sse(http: Any, body: dict[str, Any]) -> tuple[Any, str]:
    """POST, follow the job's SSE stream to its terminal `job.status` (which carries the image URLs), GET
    the PNG."""
    import json

    job_id = http.post("/api/v1/imagegen/jobs", json=body).json()["job_id"]
    last: dict[str, Any] = {}
    with http.stream("GET", f"/api/v1/imagegen/jobs/{job_id}/events") as r:
        event = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("job.status", "job.snapshot"):
                last = json.loads(line[6:])
    if last.get("status") != "succeeded" or not last.get("images"):
        raise RuntimeError(f"native SSE job did not succeed: {last}")
    return pixels(http.get(last["images"][0]["url"]).content), job_id


def _a1111(http: Any, body: dict[str, Any]) -> tuple[Any, str]:
    res = http.post("/sdapi/v1/txt2img", json=body).json()
    if "images" not in res:
        raise RuntimeError(f"A1111 call failed: {res}")
    return pixels(base64.b64decode(res["images"][0])), res["job_id"]


def _gen_s(job_id: str) -> float:
    from suite.imagegen.worker import current_worker

    w = current_worker()
    h = w.handle(job_id) if w is not None else None
    if h is None or h.read is None:
        raise RuntimeError(f"job {job_id} has no record in the worker")
    return float(h.read["timings"]["gen_ms"]) / 1000


def rounds(
    base: str,
    direct: Callable[[], Any],
    *,
    steps: int,
    size: int,
    seed: int,
    n: int,
    sse: bool = False,
    model: str | None = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """n counted rounds after one warm-up round (model load); medians and paired overheads per route."""
    import httpx
    import numpy as np

    body = {"prompt": PROMPT, "steps": steps, "width": size, "height": size, "seed": seed, "sampler": "DDIM"}
    a1111: dict[str, Any] = {**body, "sampler_name": "DDIM", "cfg_scale": 7}
    if model:
        body["model"] = model
    if checkpoint:
        a1111["override_settings"] = {"sd_model_checkpoint": checkpoint}
    calls: dict[str, Callable[[Any], tuple[Any, str | None]]] = {
        "direct": lambda _http: (pixels(direct()), None),
        "native": lambda http: _native(http, body),
        "a1111": lambda http: _a1111(http, a1111),
    }
    if sse:
        calls["native_sse"] = lambda http: _native_sse(http, body)
    names = list(calls)
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    faults: dict[str, list[int]] = {k: [] for k in names}
    gen: dict[str, list[float]] = {k: [] for k in names[1:]}  # the worker's engine.generate, per job
    loads: list[float] = []
    mismatches: list[str] = []
    with httpx.Client(base_url=base, timeout=3600) as http:
        for i in range(n + 1):
            order = names[i % len(names) :] + names[: i % len(names)]  # rotate: no route always goes first
            got: dict[str, Any] = {}
            for name in order:
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                c0, t0 = time.process_time(), time.perf_counter()
                got[name], job_id = calls[name](http)
                t1, c1 = time.perf_counter(), time.process_time()
                f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                if i:
                    wall[name].append(t1 - t0)
                    cpu[name].append(c1 - c0)
                    faults[name].append(f1 - f0)
                    if job_id is not None:  # the worker's record of the job (in process, no request)
                        gen[name].append(_gen_s(job_id))
            mismatches += [f"round {i}: {k}" for k in names[1:] if not np.array_equal(got["direct"], got[k])]
            loads.append(os.getloadavg()[0])
    out: dict[str, Any] = {
        "rounds": n,
        "order": "rotating per round",
        "loadavg_1m": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "wall_ms": {k: median_ms(v) for k, v in wall.items()},
        "cpu_ms": {k: median_ms(v) for k, v in cpu.items()},
        "page_faults": {k: int(statistics.median(v)) for k, v in faults.items()},  # minor, whole process
        "pixel_mismatches": mismatches,
    }
    for k in names[1:]:
        dw = [a - b for a, b in zip(wall[k], wall["direct"], strict=True)]
        dc = [a - b for a, b in zip(cpu[k], cpu["direct"], strict=True)]
        outside = [a - b for a, b in zip(wall[k], gen[k], strict=True)]
        engine = [a - b for a, b in zip(gen[k], wall["direct"], strict=True)]
        out[f"{k}_overhead_ms"] = {
            # median of the per-round differences (paired): steadier than a difference of medians
            "wall": median_ms(dw),
            "cpu": median_ms(dc),
            "wall_iqr": quartiles_ms(dw),  # [p25, p75]: how settled the median is
            "cpu_iqr": quartiles_ms(dc),
            # the wall split in two: the route around the worker's engine.generate (HTTP, queue, database,
            # PNG, the client's decode), and engine.generate against the direct call (paired)
            "outside_generation": median_ms(outside),
            "outside_generation_iqr": quartiles_ms(outside),
            "generation_vs_direct": median_ms(engine),
            "generation_vs_direct_iqr": quartiles_ms(engine),
        }
    return out
