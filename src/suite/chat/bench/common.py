"""What the chat benchmarks share: free ports, a `suite chat serve` (and Redis, and a worker) in subprocesses
with a fresh data dir and a user token, percentiles, CPU time and RSS of processes, the machine's load."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def summary(values: list[float]) -> dict[str, float | None]:
    return {"p50": pct(values, 0.5), "p95": pct(values, 0.95), "p99": pct(values, 0.99), "n": len(values)}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def wait_http(url: str, timeout: float = 120) -> None:
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


def wait_redis(port: int) -> None:
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


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def rss_mb(pids: list[int]) -> float:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2**20, 1)


class Stack:
    """`suite chat serve` (+ redis-server and `suite chat worker` for `broker="redis"`) on 127.0.0.1 with its own
    data dir, a user `bench` and an API token. Use as a context manager."""

    def __init__(
        self, *, broker: str = "memory", env: dict[str, str] | None = None, separate_worker: bool = True
    ):
        self.broker = broker
        self.extra = env or {}
        self.separate_worker = separate_worker
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-chat-{broker}-"))
        self.port = free_port()
        self.token = ""
        self.env: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/chat/ws"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def __enter__(self) -> Stack:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_")}
        env.update(
            SUITE_DATA_DIR=str(self.workdir / "data"),
            SUITE_ENV="test",
            SUITE_LOG_LEVEL="WARNING",
            SUITE_CHAT__MESSAGES_PER_MINUTE="1000000",
            SUITE_CHAT__MAX_CONNECTIONS="10000",
            SUITE_CHAT__API_LIMITS__RPM="1000000",
            SUITE_CHAT__API_LIMITS__TPM="100000000",
            SUITE_CHAT__API_LIMITS__MAX_CONCURRENT="1000",
        )
        env.update(self.extra)
        self.log = open(self.workdir / "log.txt", "ab")
        try:
            if self.broker == "redis":
                binary = shutil.which("redis-server")
                if binary is None:
                    raise RuntimeError("redis-server is not installed")
                port = free_port()
                self.procs.append(
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
                            str(self.workdir),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                wait_redis(port)
                env["SUITE_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            self.env = env
            self.token = subprocess.run(
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
            serve = [sys.executable, "-m", "suite", "chat", "serve", "--port", str(self.port)]
            separate = self.broker == "redis" and self.separate_worker
            if separate:
                serve.append("--no-worker")
            self.procs.append(subprocess.Popen(serve, env=env, stdout=self.log, stderr=subprocess.STDOUT))
            if separate:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "suite", "chat", "worker", "--concurrency", "128"],
                        env=env,
                        stdout=self.log,
                        stderr=subprocess.STDOUT,
                    )
                )
            wait_http(f"{self.url}/healthz")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def scripted(name: str, **options: Any) -> dict[str, str]:
    """Env for a scripted provider called `name`."""
    prefix = f"SUITE_LLM__PROVIDERS__{name.upper()}__"
    return {prefix + "KIND": "scripted", prefix + "OPTIONS": json.dumps(options)}
