"""B3 end to end with the local model: 1, 2 and 4 sockets through a real `suite chat serve` (in-process broker,
embedded worker, the bundled SmolLM2), against a direct provider call in the same run (same messages, greedy,
same max_tokens), interleaved in pairs (direct then chat, chat then direct, ...). Added latency = e2e total -
direct total per pair (median of the pairs) at one socket; target < 5 % of the generation time. The CPU time of
each side is counted too (the bench process and its model child for the direct call; the server and its model
child for chat), and the worker's own `done.timings.total_ms` splits what the chat path adds into the worker's
share and delivery (socket -> broker -> worker, frames back).
With more sockets the local runtime serialises requests (one model per process): the wait is reported as queue
time, and errors must stay at 0. A pinger socket measures WebSocket ping round trips while the model loads
and decodes (the event loop must stay free: the model loads and decodes in a child process)."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from typing import Any

from suite.chat.bench.common import Stack, cpu_seconds, loadavg, pct, summary
from suite.chat.bench.model import PROMPT, bench_cache_dir, installed_runtimes


def _family(pids: list[int]) -> list[int]:
    import psutil

    out = []
    for pid in pids:
        try:
            out += [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
        except psutil.Error:
            continue
    return out


async def _direct(provider: Any, tokens: int) -> dict[str, float]:
    c0 = cpu_seconds(_family([os.getpid()]))
    t0 = time.perf_counter()
    first = None
    count = 0
    async for chunk in provider.stream_chat(PROMPT, max_tokens=tokens, temperature=0):
        if chunk.delta and first is None:
            first = time.perf_counter() - t0
        if chunk.usage is not None:
            count = chunk.usage.completion_tokens
    return {
        "ttft_ms": (first or 0.0) * 1000,
        "total_ms": (time.perf_counter() - t0) * 1000,
        "cpu_ms": (cpu_seconds(_family([os.getpid()])) - c0) * 1000,
        "tokens": count,
    }


async def _pinger(url: str, token: str, rtts: list[float], stop: asyncio.Event) -> None:
    import websockets

    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.recv()
        while not stop.is_set():
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "ping", "ts": t0}))
            while json.loads(await ws.recv()).get("type") != "pong":
                pass
            rtts.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.02)


async def _one(url: str, token: str, tokens: int, out: list[dict[str, Any]]) -> None:
    import websockets

    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.recv()
        rid = str(uuid.uuid4())
        t0 = time.perf_counter()
        await ws.send(
            json.dumps(
                {
                    "type": "send",
                    "request_id": rid,
                    "content": PROMPT[1]["content"],
                    "system_prompt": PROMPT[0]["content"],
                    "max_tokens": tokens,
                    "temperature": 0,
                }
            )
        )
        first = None
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "delta" and first is None:
                first = time.perf_counter() - t0
            if frame["type"] in ("done", "error"):
                break
        out.append(
            {
                "ok": frame["type"] == "done",
                "ttft_ms": (first or 0.0) * 1000,
                "total_ms": (time.perf_counter() - t0) * 1000,
                "queue_ms": (frame.get("timings") or {}).get("queue_ms"),
                "worker_total_ms": (frame.get("timings") or {}).get("total_ms"),
                "tokens": (frame.get("usage") or {}).get("completion_tokens"),
            }
        )


async def _round(stack: Stack, sockets: int, tokens: int) -> dict[str, Any]:
    replies: list[dict[str, Any]] = []
    rtts: list[float] = []
    stop = asyncio.Event()
    pinger = asyncio.create_task(_pinger(stack.ws_url, stack.token, rtts, stop))
    await asyncio.gather(*(_one(stack.ws_url, stack.token, tokens, replies) for _ in range(sockets)))
    stop.set()
    await pinger
    return {
        "sockets": sockets,
        "errors": sum(not r["ok"] for r in replies),
        "ttft_ms": summary([r["ttft_ms"] for r in replies]),
        "total_ms": summary([r["total_ms"] for r in replies]),
        "queue_ms": summary([r["queue_ms"] for r in replies if r["queue_ms"] is not None]),
        "worker_total_ms": pct(
            [r["worker_total_ms"] for r in replies if r["worker_total_ms"] is not None], 0.5
        ),
        "completion_tokens": [r["tokens"] for r in replies],
        "ping_rtt_ms_during_decode": {**summary(rtts), "max": round(max(rtts), 2) if rtts else None},
    }


async def _main(stack: Stack, sockets: list[int], tokens: int, pairs: int) -> dict[str, Any]:
    from suite.core.llm.local import LocalProvider

    out: dict[str, Any] = {}
    provider = LocalProvider()  # the direct call, in this process: same cache, threads, prompt, greedy
    await provider.prepare()
    await _direct(provider, 4)  # warm-up
    t0 = time.perf_counter()
    warm = await _round(stack, 1, 4)  # loads the model in the server
    out["server_first_reply_s"] = round(time.perf_counter() - t0, 2)
    out["ping_rtt_ms_during_load"] = warm["ping_rtt_ms_during_decode"]
    direct: list[dict[str, float]] = []
    e2e: list[dict[str, Any]] = []
    server = _family(stack.pids)

    async def chat_round() -> dict[str, Any]:
        c0 = cpu_seconds(server)
        r = await _round(stack, 1, tokens)
        r["cpu_ms"] = (cpu_seconds(server) - c0) * 1000
        return r

    for i in range(pairs):  # alternated, never overlapping: the same machine state for both
        if i % 2:
            e2e.append(await chat_round())
            direct.append(await _direct(provider, tokens))
        else:
            direct.append(await _direct(provider, tokens))
            e2e.append(await chat_round())
    out["direct"] = {
        "total_ms": summary([d["total_ms"] for d in direct]),
        "ttft_ms": summary([d["ttft_ms"] for d in direct]),
        "cpu_ms": summary([d["cpu_ms"] for d in direct]),
        "completion_tokens": [d["tokens"] for d in direct],
    }
    out["one_socket"] = {
        "total_ms": summary([r["total_ms"]["p50"] for r in e2e]),
        "ttft_ms": summary([r["ttft_ms"]["p50"] for r in e2e]),
        "queue_ms": summary([r["queue_ms"]["p50"] for r in e2e if r["queue_ms"]["p50"] is not None]),
        "worker_total_ms": summary([r["worker_total_ms"] for r in e2e if r["worker_total_ms"] is not None]),
        "cpu_ms": summary([r["cpu_ms"] for r in e2e]),
        "completion_tokens": [r["completion_tokens"][0] for r in e2e],
        "ping_rtt_ms_during_decode": e2e[-1]["ping_rtt_ms_during_decode"],
    }
    added = [r["total_ms"]["p50"] - d["total_ms"] for r, d in zip(e2e, direct, strict=True)]
    out["added_ms_per_pair"] = [round(a, 1) for a in added]
    out["added_ms_p50"] = pct(added, 0.5)
    gen = pct([d["total_ms"] for d in direct], 0.5) or 0.0
    out["added_pct_of_generation"] = round(100 * (out["added_ms_p50"] or 0.0) / gen, 2) if gen else None
    delivery = [r["total_ms"]["p50"] - r["worker_total_ms"] for r in e2e if r["worker_total_ms"] is not None]
    out["delivery_ms_p50"] = pct(delivery, 0.5)  # client total - the worker's own total, same request
    added_cpu = [r["cpu_ms"] - d["cpu_ms"] for r, d in zip(e2e, direct, strict=True)]
    out["added_cpu_ms_p50"] = pct(added_cpu, 0.5)
    out["rounds"] = [await _round(stack, n, tokens) for n in sockets if n > 1]
    return out


def run_e2e(*, sockets: list[int] | None = None, tokens: int = 32, pairs: int = 6) -> dict[str, Any]:
    sockets = sockets or [1, 2, 4]
    out: dict[str, Any] = {
        "benchmark": "chat end to end with the local model (B3)",
        "cpu_count": os.cpu_count(),
        "max_tokens": tokens,
        "target": "added latency < 5 % of the generation time at 1 socket; no errors; loop free (pings)",
        "load_before": loadavg(),
    }
    if not installed_runtimes():
        out["skipped"] = "no local runtime installed"
        return out
    from suite.core.config import reset_settings

    cache = bench_cache_dir()
    threads = str(os.cpu_count() or 1)
    data = tempfile.mkdtemp(prefix="bench-chat-direct-")
    os.environ.update(
        SUITE_DATA_DIR=data, SUITE_LLM__LOCAL__CACHE_DIR=cache, SUITE_LLM__LOCAL__THREADS=threads
    )
    reset_settings()
    stack_env = {
        "SUITE_CHAT__DEFAULT_MODEL": "local",
        "SUITE_LLM__LOCAL__CACHE_DIR": cache,
        "SUITE_LLM__LOCAL__THREADS": threads,
        "SUITE_CHAT__REPLY_TIMEOUT_S": "600",
        "SUITE_CHAT__CHUNK_TIMEOUT_S": "600",
    }
    with Stack(env=stack_env) as stack:
        out.update(asyncio.run(_main(stack, sockets, tokens, pairs)))
    out["load_after"] = loadavg()
    return out
