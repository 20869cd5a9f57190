"""Chat pipeline benchmark (B1): `run() -> dict` for benchmarks/run.py; also `python benchmarks/bench_chat.py`.

Sockets, messages and brokers come from CHAT_BENCH_SOCKETS (default 1,10,20,50), CHAT_BENCH_MESSAGES (5) and
CHAT_BENCH_BROKERS (memory,redis). Same code as `suite chat bench pipeline`.
"""

from __future__ import annotations

import json
import os
from typing import Any


def run() -> dict[str, Any]:
    from suite.chat.bench import run_pipeline

    sockets = [int(s) for s in os.environ.get("CHAT_BENCH_SOCKETS", "1,10,20,50").split(",") if s.strip()]
    brokers = [b for b in os.environ.get("CHAT_BENCH_BROKERS", "memory,redis").split(",") if b.strip()]
    return run_pipeline(
        sockets=sockets,
        messages=int(os.environ.get("CHAT_BENCH_MESSAGES", "5")),
        tokens=int(os.environ.get("CHAT_BENCH_TOKENS", "64")),
        brokers=brokers,
    )


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
