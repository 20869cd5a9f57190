"""B2 local model: per installed runtime, in a fresh process each (so the load is a real cold load): load time,
time to first token, decode tokens/s and CPU seconds per token for 64 and 256 tokens, RSS, and the event loop's
lag while the model loads and decodes (a 5 ms ticker on the loop; target p99 < 50 ms). The transformers runtime
loads and decodes in a child process (core/llm/child.py), so CPU time and RSS count this process and its
children.

The converted safetensors copy is kept between runs under SUITE_BENCH_LLM_CACHE (default: the user cache dir),
so a run measures the cached-copy load; the first run also reports the one-time conversion.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from suite.chat.bench.common import cpu_seconds, loadavg, rss_mb, summary

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "Explain in a few sentences why the sky is blue."},
]


def bench_cache_dir() -> str:
    cache = os.environ.get("SUITE_BENCH_LLM_CACHE")
    if cache:
        return cache
    import platformdirs

    return str(Path(platformdirs.user_cache_dir("suite")) / "bench" / "llm-models")


def installed_runtimes() -> list[str]:
    found = []
    if importlib.util.find_spec("llama_cpp") is not None:
        found.append("llamacpp")
    if importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("torch") is not None:
        found.append("transformers")
    return found


def _family() -> list[int]:
    import psutil

    me = psutil.Process()
    return [me.pid, *(c.pid for c in me.children(recursive=True))]


def _cpu() -> float:
    """CPU seconds of this process and its children (the model's process included)."""
    return cpu_seconds(_family())


class LagProbe:
    """How late a 5 ms timer fires on the event loop (ms), per phase."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, (loop.time() - t - self.interval) * 1000))

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    def take(self) -> dict[str, float | None]:
        lags, self.lags = self.lags, []
        return {**summary(lags), "max": round(max(lags), 3) if lags else None}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def _measure(runtime: str, tokens: list[int], budget_s: float) -> dict[str, Any]:

    from suite.core.llm.local import LocalProvider

    provider = LocalProvider()
    check = await provider.check()
    if not check.ok:
        return {"runtime": runtime, "skipped": check.detail}
    probe = LagProbe()
    probe.start()
    started = time.perf_counter()
    cpu0 = _cpu()
    load = await provider.prepare()
    out: dict[str, Any] = {
        "runtime": load.get("runtime"),
        "threads": load.get("threads"),
        "load_wall_s": round(time.perf_counter() - started, 3),
        "load_cpu_s": round(_cpu() - cpu0, 3),
        "copy_built_now": load.get("copy_built"),
        "copy_build_s": round(float(load.get("copy_seconds") or 0.0), 3),
        "model_load_s": round(float(load.get("model_load_seconds") or 0.0), 3),
        "loop_lag_ms_during_load": probe.take(),
        "runs": [],
    }
    for n in tokens:
        if time.perf_counter() - started > budget_s:
            out["runs"].append({"max_tokens": n, "skipped": f"over the {budget_s:g} s budget"})
            continue
        t0 = time.perf_counter()
        c0 = _cpu()
        ttft = None
        count = 0
        async for chunk in provider.stream_chat(PROMPT, max_tokens=n, temperature=0):
            if chunk.delta and ttft is None:
                ttft = time.perf_counter() - t0
            if chunk.usage is not None:
                count = chunk.usage.completion_tokens
        total = time.perf_counter() - t0
        decode = total - (ttft or 0.0)
        out["runs"].append(
            {
                "max_tokens": n,
                "completion_tokens": count,
                "ttft_s": round(ttft or 0.0, 4),
                "total_s": round(total, 3),
                "decode_tokens_per_s": round((count - 1) / decode, 2) if count > 1 and decode > 0 else None,
                "cpu_s_per_token": round((_cpu() - c0) / max(count, 1), 4),
                "loop_lag_ms_during_decode": probe.take(),
            }
        )
    await probe.stop()
    out["rss_mb"] = round(rss_mb(_family()), 1)
    return out


def _child(runtime: str, tokens: list[int], budget_s: float) -> None:
    print(json.dumps(asyncio.run(_measure(runtime, tokens, budget_s))))


def run_model(
    *, tokens: list[int] | None = None, runtimes: list[str] | None = None, budget_s: float = 240.0
) -> dict[str, Any]:
    tokens = tokens or [64, 256]
    out: dict[str, Any] = {
        "benchmark": "chat local model (B2)",
        "cpu_count": os.cpu_count(),
        "load_before": loadavg(),
        "target": "load from the cached copy <= 3 s; loop lag p99 < 50 ms while loading and decoding",
        "runtimes": [],
    }
    wanted = runtimes or installed_runtimes()
    if not wanted:
        out["skipped"] = "no local runtime installed (pip install 'suite[local]' or 'suite[llamacpp]')"
    cache = bench_cache_dir()
    for runtime in wanted:
        with tempfile.TemporaryDirectory(prefix="bench-chat-model-") as data:
            env = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_")}
            env.update(
                SUITE_DATA_DIR=data,
                SUITE_ENV="test",
                SUITE_LLM__LOCAL__RUNTIME=runtime,
                SUITE_LLM__LOCAL__CACHE_DIR=cache,
                SUITE_LOG_LEVEL="WARNING",
            )
            code = "import sys; from suite.chat.bench.model import _child; _child(sys.argv[1], " + (
                f"{tokens!r}, {budget_s!r})"
            )
            proc = subprocess.run(
                [sys.executable, "-c", code, runtime],
                env=env,
                capture_output=True,
                text=True,
                timeout=budget_s + 600,
            )
            if proc.returncode != 0:
                out["runtimes"].append({"runtime": runtime, "error": proc.stderr.strip()[-2000:]})
            else:
                out["runtimes"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out["load_after"] = loadavg()
    return out
