"""B4 provider: the core `openai` provider against our own `/v1` (a real `suite chat serve`, scripted model
with a fixed TTFT and inter-token delay) vs a raw httpx SSE read of the same server, interleaved in one loop.
Target: the provider adds < 1 ms p50 to the time to first token and to the end."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from typing import Any

from suite.chat.bench.common import Stack, loadavg, pct, scripted, summary

MESSAGES = [{"role": "user", "content": "benchmark"}]


async def _raw(client: Any, url: str, token: str) -> tuple[float, float, int]:
    body = {"model": "bench", "stream": True, "messages": MESSAGES}
    t0 = time.perf_counter()
    first = None
    chunks = 0
    async with client.stream(
        "POST", url, json=body, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            delta = data["choices"][0]["delta"].get("content") if data.get("choices") else None
            if delta:
                chunks += 1
                if first is None:
                    first = time.perf_counter() - t0
    return (first or 0.0) * 1000, (time.perf_counter() - t0) * 1000, chunks


async def _provider(provider: Any) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first = None
    chunks = 0
    async for chunk in provider.stream_chat(MESSAGES, model="bench"):
        if chunk.delta:
            chunks += 1
            if first is None:
                first = time.perf_counter() - t0
    return (first or 0.0) * 1000, (time.perf_counter() - t0) * 1000, chunks


async def _compare(stack: Stack, runs: int) -> dict[str, Any]:
    import httpx

    from suite.core.config import LLMProviderSettings
    from suite.core.llm.openai import OpenAIProvider

    config = LLMProviderSettings.model_validate(
        {"kind": "openai", "base_url": f"{stack.url}/v1", "api_key": stack.token, "model": "bench"}
    )
    provider = OpenAIProvider("own", config)
    url = f"{stack.url}/v1/chat/completions"
    raw: dict[str, list[float]] = {"ttft": [], "total": [], "cpu": []}
    prov: dict[str, list[float]] = {"ttft": [], "total": [], "cpu": []}
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(runs + 3):
            order = (0, 1) if i % 2 else (1, 0)
            for which in order:
                c0 = time.process_time()
                if which == 0:
                    ttft, total, _ = await _raw(client, url, stack.token)
                    target = raw
                else:
                    ttft, total, _ = await _provider(provider)
                    target = prov
                if i >= 3:  # warm-up
                    target["ttft"].append(ttft)
                    target["total"].append(total)
                    target["cpu"].append((time.process_time() - c0) * 1000)
    close = getattr(provider, "aclose", None)
    if close is not None:
        await close()

    def paired(key: str) -> float:
        # Each pair ran back to back, so the server's drift cancels; the p50 difference keeps it.
        return round(statistics.median(p - r for p, r in zip(prov[key], raw[key], strict=True)), 3)

    return {
        "raw_httpx": {"ttft_ms": summary(raw["ttft"]), "total_ms": summary(raw["total"])},
        "openai_provider": {"ttft_ms": summary(prov["ttft"]), "total_ms": summary(prov["total"])},
        "added_ttft_ms_p50": round((pct(prov["ttft"], 0.5) or 0) - (pct(raw["ttft"], 0.5) or 0), 3),
        "added_total_ms_p50": round((pct(prov["total"], 0.5) or 0) - (pct(raw["total"], 0.5) or 0), 3),
        "added_ttft_ms_paired_median": paired("ttft"),
        "added_total_ms_paired_median": paired("total"),
        "client_cpu_ms_per_call": {
            "raw_httpx": round(statistics.median(raw["cpu"]), 3),
            "openai_provider": round(statistics.median(prov["cpu"]), 3),
        },
        "note": "the server is a real `suite chat serve` (its own timers and worker): the p50 difference of "
        "two independent series carries its jitter; the paired median and the client CPU time isolate what "
        "the provider adds",
    }


def run_provider(
    *, runs: int = 100, tokens: int = 32, ttft_s: float = 0.05, itl_s: float = 0.005
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "chat provider (B4): openai provider vs raw httpx SSE, own /v1",
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "upstream": {"model": "scripted", "tokens": tokens, "ttft_s": ttft_s, "itl_s": itl_s},
        "target": "added < 1 ms p50",
        "load_before": loadavg(),
    }
    env = {
        "SUITE_CHAT__DEFAULT_MODEL": "bench",
        **scripted("bench", tokens=tokens, ttft_s=ttft_s, token_delay_s=itl_s),
    }
    with Stack(env=env) as stack:
        out["own_v1"] = asyncio.run(_compare(stack, runs))
    out["load_after"] = loadavg()
    return out
