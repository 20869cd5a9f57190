"""B1 pipeline: a real `suite chat serve` (+ a worker process and redis-server for Redis), N WebSocket clients,
the scripted provider with a fixed TTFT/ITL so the model is not the bottleneck.

Two shapes: every token its own frame (`coalesce_tokens = 1`, the worst case for the pipeline: frames/s) and
the default coalescing (16 tokens or 30 ms: delta tokens/s). Added latency = end to end minus the provider loop
alone, timed in the same run. Server CPU is the sum over the server processes (and the worker, and Redis).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any

from suite.chat.bench.common import Stack, cpu_seconds, loadavg, pct, rss_mb, scripted

# name -> (broker, worker in its own process): `redis` is a worker pool (`suite chat worker` beside `serve
# --no-worker`), `redis-embedded` is `suite chat serve` with Redis and its embedded worker.
BROKERS = {"memory": ("memory", False), "redis": ("redis", True), "redis-embedded": ("redis", False)}


async def _provider_alone(options: dict[str, Any], runs: int = 20) -> dict[str, float | None]:
    from suite.core.llm.scripted import ScriptedProvider

    provider = ScriptedProvider("bench", **options)
    ttft, total = [], []
    for _ in range(runs):
        start = time.perf_counter()
        first = None
        async for chunk in provider.stream_chat([{"role": "user", "content": "x"}]):
            if chunk.delta and first is None:
                first = time.perf_counter() - start
        total.append((time.perf_counter() - start) * 1000)
        ttft.append((first or 0) * 1000)
    return {"ttft_ms_p50": pct(ttft, 0.5), "total_ms_p50": pct(total, 0.5)}


async def _client(url: str, token: str, messages: int, stats: dict[str, Any]) -> None:
    import websockets

    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
    ) as ws:
        await ws.recv()  # hello
        for _ in range(messages):
            rid = str(uuid.uuid4())
            sent = time.perf_counter()
            await ws.send(
                json.dumps({"type": "send", "request_id": rid, "conversation_id": None, "content": "b"})
            )
            first = None
            while True:
                frame = json.loads(await ws.recv())
                stats["frames"] += 1
                kind = frame["type"]
                if kind == "delta":
                    stats["delta_chars"] += len(frame["text"])
                    if first is None:
                        first = time.perf_counter() - sent
                elif kind in ("done", "error"):
                    if kind == "error":
                        stats["errors"] += 1
                    else:
                        stats["tokens"] += frame["usage"]["completion_tokens"]
                    break
            stats["ttft"].append((first or 0) * 1000)
            stats["total"].append((time.perf_counter() - sent) * 1000)
            stats["replies"] += 1


async def drive(ws_url: str, token: str, sockets: int, messages: int) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "frames": 0,
        "replies": 0,
        "errors": 0,
        "tokens": 0,
        "delta_chars": 0,
        "ttft": [],
        "total": [],
    }
    started = time.perf_counter()
    await asyncio.gather(*(_client(ws_url, token, messages, stats) for _ in range(sockets)))
    elapsed = time.perf_counter() - started
    return {
        "sockets": sockets,
        "replies": stats["replies"],
        "errors": stats["errors"],
        "seconds": round(elapsed, 3),
        "replies_per_s": round(stats["replies"] / elapsed, 1),
        "frames_per_s": round(stats["frames"] / elapsed, 1),
        "tokens_per_s": round(stats["tokens"] / elapsed, 1),
        "ttft_ms_p50": pct(stats["ttft"], 0.5),
        "ttft_ms_p95": pct(stats["ttft"], 0.95),
        "total_ms_p50": pct(stats["total"], 0.5),
        "total_ms_p95": pct(stats["total"], 0.95),
    }


def _measure(stack: Stack, sockets: int, messages: int, alone: dict[str, Any]) -> dict[str, Any]:
    cpu0 = cpu_seconds(stack.pids)
    client0 = time.process_time()
    wall0 = time.perf_counter()
    load0 = loadavg()
    row = asyncio.run(drive(stack.ws_url, stack.token, sockets, messages))
    wall = time.perf_counter() - wall0
    row["server_cpu_s"] = round(cpu_seconds(stack.pids) - cpu0, 2)
    row["server_cpu_util"] = round(row["server_cpu_s"] / wall, 2)
    row["server_cpu_ms_per_reply"] = round(row["server_cpu_s"] * 1000 / max(row["replies"], 1), 2)
    row["client_cpu_util"] = round((time.process_time() - client0) / wall, 2)
    row["server_rss_mb"] = rss_mb(stack.pids)
    row["loadavg"] = [load0, loadavg()]
    if row["ttft_ms_p50"] is not None and alone["ttft_ms_p50"] is not None:
        row["added_ttft_ms_p50"] = round(row["ttft_ms_p50"] - alone["ttft_ms_p50"], 3)
        row["added_total_ms_p50"] = round(row["total_ms_p50"] - alone["total_ms_p50"], 3)
    return row


def run_broker(
    broker: str,
    *,
    sockets: list[int],
    messages: int,
    tokens: int,
    coalesced_sockets: list[int] | None = None,
    ttft_s: float = 0.0,
    token_delay_s: float = 0.0,
) -> dict[str, Any]:
    kind, separate = BROKERS[broker]
    options = {"tokens": tokens, "ttft_s": ttft_s, "token_delay_s": token_delay_s}
    env = {
        "SUITE_CHAT__DEFAULT_MODEL": "bench",
        "SUITE_CHAT__CONCURRENCY": "128",
        "SUITE_CHAT__MAX_TOKENS": str(max(tokens, 256)),
        "SUITE_CHAT__CONTEXT_TOKENS": str(max(tokens, 256) * 4),
        **scripted("bench", **options),
    }
    out: dict[str, Any] = {"broker": broker}
    try:
        with Stack(
            broker=kind, separate_worker=separate, env={**env, "SUITE_CHAT__COALESCE_TOKENS": "1"}
        ) as stack:
            asyncio.run(
                drive(stack.ws_url, stack.token, 1, 3)
            )  # warm-up (imports, first SQL, first connection)
            alone = asyncio.run(_provider_alone(options))
            out["provider_alone"] = alone
            out["frame_per_token"] = [_measure(stack, n, messages, alone) for n in sockets]
        if coalesced_sockets:
            with Stack(broker=kind, separate_worker=separate, env=env) as stack:
                asyncio.run(drive(stack.ws_url, stack.token, 1, 3))
                out["coalesced"] = [_measure(stack, n, messages, alone) for n in coalesced_sockets]
    except RuntimeError as exc:
        out["skipped"] = str(exc)
    return out


def run_pipeline(
    *,
    sockets: list[int],
    messages: int,
    tokens: int,
    brokers: list[str],
    coalesced_sockets: list[int] | None = None,
) -> dict[str, Any]:
    started = time.time()
    out: dict[str, Any] = {
        "benchmark": "chat pipeline (B1)",
        "tokens_per_reply": tokens,
        "messages_per_socket": messages,
        "frames": "frame_per_token: one delta per token (coalesce_tokens = 1) + status + done; "
        "coalesced: the defaults (16 tokens or 30 ms)",
        "targets": "added TTFT < 5 ms at 1 socket; >= 4,000 frames/s at 20 sockets (frame_per_token)",
        "cpu_count": os.cpu_count(),
        "load_before": loadavg(),
    }
    out["brokers"] = [
        run_broker(b, sockets=sockets, messages=messages, tokens=tokens, coalesced_sockets=coalesced_sockets)
        for b in brokers
    ]
    out["load_after"] = loadavg()
    out["seconds"] = round(time.time() - started, 1)
    return out
