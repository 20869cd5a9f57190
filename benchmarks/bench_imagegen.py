"""imagegen benchmarks: `run() -> dict` for benchmarks/run.py; also `python benchmarks/bench_imagegen.py [b1,b2]`.

The measurements live in the package (`suite.imagegen.bench`, the same code as `suite imagegen bench`), so they
run from an installed wheel too; see its docstring. IMAGEGEN_BENCH_ONLY picks benchmarks (default b1,b2,b4,b5;
opt-in: full_size, single_file and gpu), IMAGEGEN_BENCH_FAMILIES the architectures of single_file and gpu,
IMAGEGEN_BENCH_ROUNDS the counted rounds of b1 (default 60).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _list(value: str | None) -> list[str] | None:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return items or None


def run(only: list[str] | None = None) -> dict[str, Any]:
    from suite.imagegen.bench import run as run_imagegen

    only = only or _list(os.environ.get("IMAGEGEN_BENCH_ONLY"))
    families = _list(os.environ.get("IMAGEGEN_BENCH_FAMILIES"))
    rounds = int(os.environ["IMAGEGEN_BENCH_ROUNDS"]) if os.environ.get("IMAGEGEN_BENCH_ROUNDS") else None
    return run_imagegen(only=only, single_file_families=families, gpu_families=families, rounds=rounds)


if __name__ == "__main__":
    print(json.dumps(run(_list(sys.argv[1] if len(sys.argv) > 1 else None)), indent=2, default=str))
