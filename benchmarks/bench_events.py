"""Events: publish-to-WebSocket-receive latency, p50/p99, with 1 and 100 subscribers, in-process and Redis.

A server process runs the real app under uvicorn (core routers) and publishes from its main thread into the
serving loop, as a job worker thread does; with Redis each event goes out to a redis-server on a free port
and back through the listener. Clients are `websockets` connections in this process, so client and server
do not share a GIL. Latency is receive time minus the `time.monotonic()` stamped into the event at publish
(one system-wide clock); with 100 subscribers it includes this process reading 100 frames per event.
Events are paced (not a throughput test). `python benchmarks/bench_events.py` prints the JSON result.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TOPIC = "bench.latency"
WARMUP = 20
# (subscribers, events measured, seconds between events)
SCENARIOS = ((1, 300, 0.002), (100, 150, 0.02))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the server process ----------------------------------------------------------------------------------


def _serve() -> None:
    """Child process: serve the app, then publish on command (JSON lines on stdin, answers on stdout)."""
    import uvicorn

    from suite.core import events
    from suite.core.api import create_app
    from suite.core.auth import create_token, create_user
    from suite.core.db import prepare_database, session_scope

    prepare_database()
    with session_scope() as session:
        user = create_user(session, username="bench", password="bench-password")
        token = create_token(session, user=user, name="bench")[1]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(create_app(domains=[]), log_level="warning", timeout_graceful_shutdown=2)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    print(json.dumps({"port": sock.getsockname()[1], "token": token}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "publish":
            for i in range(command["count"]):
                events.publish(TOPIC, "bench.tick", {"i": i, "t0": time.monotonic()})
                time.sleep(command["interval"])
            print(json.dumps({"published": command["count"]}), flush=True)
        else:
            break
    server.should_exit = True
    thread.join(10)


class ServerProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        hello = self._read()
        self.port: int = hello["port"]
        self.token: str = hello["token"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark server exited with {self.proc.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def command(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# --- clients ---------------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def _scenario(server: ServerProcess, subscribers: int, count: int, interval: float) -> dict[str, Any]:
    from websockets.asyncio.client import ClientConnection, connect

    url = f"ws://127.0.0.1:{server.port}/api/v1/events/ws?topic={TOPIC}"
    headers = {"Authorization": f"Bearer {server.token}"}

    async def open_one() -> ClientConnection:
        ws = await connect(url, additional_headers=headers, max_queue=None)
        assert json.loads(await ws.recv()) == {"type": "subscribed", "topic": TOPIC}
        return ws

    clients: list[ClientConnection] = []
    for start in range(0, subscribers, 10):  # connect in small batches
        clients += await asyncio.gather(*(open_one() for _ in range(min(10, subscribers - start))))
    total = WARMUP + count
    samples: list[list[tuple[float, str | bytes]]] = [[] for _ in clients]

    async def receive(ws: ClientConnection, out: list[tuple[float, str | bytes]]) -> None:
        for _ in range(total):
            raw = await ws.recv()
            out.append((time.monotonic(), raw))  # parse later, keep the receive loop short

    readers = [asyncio.create_task(receive(ws, out)) for ws, out in zip(clients, samples, strict=True)]
    await asyncio.to_thread(server.command, op="publish", count=total, interval=interval)
    await asyncio.wait_for(asyncio.gather(*readers), 60)
    for ws in clients:
        await ws.close()

    latencies_ms: list[float] = []
    for out in samples:
        for received, raw in out:
            data = json.loads(raw)["data"]
            if data["i"] >= WARMUP:
                latencies_ms.append((received - data["t0"]) * 1000)
    return {
        "subscribers": subscribers,
        "events": count,
        "interval_ms": interval * 1000,
        "samples": len(latencies_ms),
        "p50_ms": round(_percentile(latencies_ms, 50), 3),
        "p99_ms": round(_percentile(latencies_ms, 99), 3),
        "mean_ms": round(statistics.fmean(latencies_ms), 3),
        "max_ms": round(max(latencies_ms), 3),
    }


def _backend(env: dict[str, str]) -> list[dict[str, Any]]:
    server = ServerProcess(env)
    try:
        return [asyncio.run(_scenario(server, *scenario)) for scenario in SCENARIOS]
    finally:
        server.stop()


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = _free_port()
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
    ]
    proc = subprocess.Popen([*args, "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def run() -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = {"benchmark": "events", "loadavg_before": list(os.getloadavg())}
    base = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_")}
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        env = {**base, "SUITE_DATA_DIR": str(Path(tmp) / "local"), "SUITE_ENV": "test"}
        result["in_process"] = _backend(env)
        redis = _start_redis(Path(tmp))
        if redis is None:
            result["redis"] = {"skipped": "redis-server is not installed"}
        else:
            proc, url = redis
            try:
                env = {**env, "SUITE_DATA_DIR": str(Path(tmp) / "redis"), "SUITE_REDIS_URL": url}
                result["redis"] = _backend(env)
            finally:
                proc.terminate()
                proc.wait(10)
    result["loadavg_after"] = list(os.getloadavg())
    result["cpus"] = os.cpu_count()
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        _serve()
    else:
        print(json.dumps(run(), indent=2))
