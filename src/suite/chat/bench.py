"""Pipeline benchmark (B1): real `suite chat serve` (+ a worker process on Redis), N WebSocket clients, the
scripted provider with a fixed TTFT/ITL so the model is not the bottleneck. Every token is its own frame
(`coalesce_tokens = 1`), the worst case for the pipeline. Added latency = end to end minus the provider loop
alone, timed in the same run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def _wait_http(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def _wait_redis(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


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
    return {"ttft_ms_p50": _pct(ttft, 0.5), "total_ms_p50": _pct(total, 0.5)}


async def _client(url: str, token: str, messages: int, stats: dict[str, Any]) -> None:
    import websockets

    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
    ) as ws:
        await ws.recv()  # hello
        conversation = None
        for _ in range(messages):
            rid = str(uuid.uuid4())
            sent = time.perf_counter()
            await ws.send(
                json.dumps(
                    {
                        "type": "send",
                        "request_id": rid,
                        "conversation_id": conversation,
                        "content": "benchmark",
                    }
                )
            )
            first = None
            while True:
                frame = json.loads(await ws.recv())
                stats["frames"] += 1
                kind = frame["type"]
                if kind == "ack":
                    conversation = frame["conversation_id"]
                elif kind == "delta" and first is None:
                    first = time.perf_counter() - sent
                elif kind in ("done", "error"):
                    if kind == "error":
                        stats["errors"] += 1
                    break
            stats["ttft"].append((first or 0) * 1000)
            stats["total"].append((time.perf_counter() - sent) * 1000)
            stats["replies"] += 1


async def _drive(ws_url: str, token: str, sockets: int, messages: int) -> dict[str, Any]:
    stats: dict[str, Any] = {"frames": 0, "replies": 0, "errors": 0, "ttft": [], "total": []}
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
        "ttft_ms_p50": _pct(stats["ttft"], 0.5),
        "ttft_ms_p95": _pct(stats["ttft"], 0.95),
        "total_ms_p50": _pct(stats["total"], 0.5),
        "total_ms_p95": _pct(stats["total"], 0.95),
    }


def _cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _rss_mb(pids: list[int]) -> float:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2**20, 1)


def run_broker(
    broker: str,
    *,
    sockets: list[int],
    messages: int,
    tokens: int,
    ttft_s: float = 0.0,
    token_delay_s: float = 0.0,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-chat-{broker}-"))
    options = {"tokens": tokens, "ttft_s": ttft_s, "token_delay_s": token_delay_s}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_")}
    env.update(
        SUITE_DATA_DIR=str(workdir / "data"),
        SUITE_ENV="test",
        SUITE_LOG_LEVEL="WARNING",
        SUITE_CHAT__DEFAULT_MODEL="bench",
        SUITE_CHAT__MESSAGES_PER_MINUTE="1000000",
        SUITE_CHAT__COALESCE_TOKENS="1",
        SUITE_CHAT__CONCURRENCY="128",
        SUITE_CHAT__MAX_TOKENS=str(max(tokens, 256)),
        SUITE_CHAT__CONTEXT_TOKENS=str(max(tokens, 256) * 4),
        SUITE_CHAT__MAX_CONNECTIONS="10000",
        SUITE_LLM__PROVIDERS__BENCH__KIND="scripted",
        SUITE_LLM__PROVIDERS__BENCH__OPTIONS=json.dumps(options),
    )
    procs: list[subprocess.Popen[bytes]] = []
    log = open(workdir / "log.txt", "ab")  # noqa: SIM115
    try:
        if broker == "redis":
            port = _free_port()
            binary = shutil.which("redis-server")
            if binary is None:
                return {"broker": broker, "skipped": "redis-server not installed"}
            procs.append(
                subprocess.Popen(
                    [
                        binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(workdir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            _wait_redis(port)
            env["SUITE_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        token = subprocess.run(
            [
                sys.executable,
                "-c",
                "from suite.core.auth import create_user, create_token\n"
                "from suite.core.db import session_scope\n"
                "with session_scope() as s:\n"
                "    u = create_user(s, username='bench', password='benchmark-password')\n"
                "    print(create_token(s, user=u, name='bench')[1])",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        http_port = _free_port()
        serve = [sys.executable, "-m", "suite", "chat", "serve", "--port", str(http_port)]
        if broker == "redis":
            serve.append("--no-worker")
        procs.append(subprocess.Popen(serve, env=env, stdout=log, stderr=subprocess.STDOUT))
        if broker == "redis":
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "suite", "chat", "worker", "--concurrency", "128"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        _wait_http(f"http://127.0.0.1:{http_port}/healthz")
        ws_url = f"ws://127.0.0.1:{http_port}/api/v1/chat/ws"
        pids = [p.pid for p in procs]
        asyncio.run(_drive(ws_url, token, 1, 3))  # warm-up (imports, first SQL, first connection)
        alone = asyncio.run(_provider_alone(options))
        rows = []
        for n in sockets:
            cpu0 = _cpu_seconds(pids)
            wall0 = time.perf_counter()
            row = asyncio.run(_drive(ws_url, token, n, messages))
            row["server_cpu_s"] = round(_cpu_seconds(pids) - cpu0, 2)
            row["server_cpu_util"] = round(row["server_cpu_s"] / (time.perf_counter() - wall0), 2)
            row["server_rss_mb"] = _rss_mb(pids)
            if row["ttft_ms_p50"] is not None and alone["ttft_ms_p50"] is not None:
                row["added_ttft_ms_p50"] = round(row["ttft_ms_p50"] - alone["ttft_ms_p50"], 3)
                row["added_total_ms_p50"] = round(row["total_ms_p50"] - alone["total_ms_p50"], 3)
            rows.append(row)
        return {"broker": broker, "provider_alone": alone, "results": rows}
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def run_pipeline(*, sockets: list[int], messages: int, tokens: int, brokers: list[str]) -> dict[str, Any]:
    load_before = os.getloadavg()
    started = time.time()
    out = {
        "benchmark": "chat pipeline (B1)",
        "tokens_per_reply": tokens,
        "messages_per_socket": messages,
        "frames": "one per token (coalesce_tokens = 1) + status + done",
        "cpu_count": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
        "brokers": [run_broker(b, sockets=sockets, messages=messages, tokens=tokens) for b in brokers],
    }
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out["seconds"] = round(time.time() - started, 1)
    return out
