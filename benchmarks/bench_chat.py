"""Chat benchmarks B1-B5 (brief section 7): `run() -> dict` for benchmarks/run.py; also
`python benchmarks/bench_chat.py`. The same code as `suite chat bench pipeline|model|e2e|provider|slow`.

Environment: CHAT_BENCH_ONLY (comma-separated of pipeline,model,e2e,provider,slow; default all),
CHAT_BENCH_SOCKETS (B1, default 1,10,20,50,100), CHAT_BENCH_MESSAGES (B1, 5), CHAT_BENCH_TOKENS (B1, 64),
CHAT_BENCH_BROKERS (B1, memory,redis,redis-embedded), CHAT_BENCH_MODEL_TOKENS (B2, 64,256), SUITE_BENCH_LLM_CACHE (B2/B3: where
the converted model copy is kept between runs). B2 and B3 report `skipped` without a local runtime.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

ALL = ("pipeline", "model", "e2e", "provider", "slow")


def _ints(name: str, default: str) -> list[int]:
    return [int(s) for s in os.environ.get(name, default).split(",") if s.strip()]


def run() -> dict[str, Any]:
    only = [n.strip() for n in os.environ.get("CHAT_BENCH_ONLY", ",".join(ALL)).split(",") if n.strip()]
    out: dict[str, Any] = {
        "benchmark": "chat",
        "cpu_count": os.cpu_count(),
        "load_before": list(os.getloadavg()),
    }
    cpu0 = time.process_time()
    started = time.perf_counter()
    for name in only:
        t0 = time.perf_counter()
        try:
            if name == "pipeline":
                from suite.chat.bench.pipeline import run_pipeline

                brokers = [
                    b
                    for b in os.environ.get("CHAT_BENCH_BROKERS", "memory,redis,redis-embedded").split(",")
                    if b.strip()
                ]
                out[name] = run_pipeline(
                    sockets=_ints("CHAT_BENCH_SOCKETS", "1,10,20,50,100"),
                    messages=int(os.environ.get("CHAT_BENCH_MESSAGES", "5")),
                    tokens=int(os.environ.get("CHAT_BENCH_TOKENS", "64")),
                    brokers=brokers,
                    coalesced_sockets=_ints("CHAT_BENCH_COALESCED_SOCKETS", "20,50"),
                )
            elif name == "model":
                from suite.chat.bench.model import run_model

                out[name] = run_model(tokens=_ints("CHAT_BENCH_MODEL_TOKENS", "64,256"))
            elif name == "e2e":
                from suite.chat.bench.e2e import run_e2e

                out[name] = run_e2e()
            elif name == "provider":
                from suite.chat.bench.provider import run_provider

                out[name] = run_provider()
            elif name == "slow":
                from suite.chat.bench.slow import run_slow

                out[name] = run_slow()
            else:
                out[name] = {"error": f"unknown benchmark {name!r} (one of {', '.join(ALL)})"}
        except Exception as exc:  # one failing benchmark must not hide the others' numbers
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        out[name]["wall_s"] = round(time.perf_counter() - t0, 1)
    out["harness_cpu_s"] = round(time.process_time() - cpu0, 2)
    out["wall_s"] = round(time.perf_counter() - started, 1)
    out["load_after"] = list(os.getloadavg())
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
