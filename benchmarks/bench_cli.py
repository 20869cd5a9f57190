"""`suite --help` start-up cost against `python -c "import typer"`, measured in the same run.

Each sample is a fresh process; the two commands alternate so drift in machine load hits both alike. Wall
time from perf_counter around the process, CPU time (user + system) from the child's rusage. The figure is
the ratio of medians; the target is under 4x. Also reported: the forbidden heavy modules (must be none) and
the slowest imports of `suite --help` from `python -X importtime`, so a regression shows where it came from.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TARGET_RATIO = 4.0
HEAVY = ("torch", "diffusers", "transformers", "sqlalchemy", "fastapi")

CHECK_IMPORTS = f"""
import sys
from suite.cli import main
sys.argv = ["suite", "--help"]
try:
    main()
except SystemExit:
    pass
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
sys.stderr.write("MODULES=" + str(len(sys.modules)) + "\\n")
"""


def suite_command() -> list[str]:
    """The installed console script when it sits beside this interpreter, else `python -m suite`."""
    script = Path(sys.executable).with_name("suite")
    if script.exists():
        return [str(script), "--help"]
    return [sys.executable, "-m", "suite", "--help"]


def sample(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `cmd`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "min_ms": round(ordered[0] * 1000, 2),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def slowest_imports(env: dict[str, str], top: int = 12) -> list[dict[str, Any]]:
    """Top-level imports of `suite --help` by cumulative time (one `-X importtime` run)."""
    code = "import sys\nsys.argv = ['suite', '--help']\nfrom suite.cli import main\n"
    code += "try:\n    main()\nexcept SystemExit:\n    pass\n"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env, check=False
    )
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if cumulative.isdigit():
            raw = line.split("|")[2]
            depth = (len(raw) - len(raw.lstrip(" ")) - 1) // 2
            if depth <= 1:
                rows.append({"module": name, "cumulative_ms": round(int(cumulative) / 1000, 1)})
    rows.sort(key=lambda r: r["cumulative_ms"], reverse=True)
    return rows[:top]


def imported(env: dict[str, str]) -> tuple[list[str], int]:
    proc = subprocess.run([sys.executable, "-c", CHECK_IMPORTS], capture_output=True, text=True, env=env)
    heavy: list[str] = []
    count = 0
    for line in proc.stderr.splitlines():
        if line.startswith("HEAVY="):
            heavy = [m for m in line[6:].split(",") if m]
        elif line.startswith("MODULES="):
            count = int(line[8:])
    return heavy, count


def run() -> dict[str, Any]:
    quick = os.environ.get("SUITE_BENCH_QUICK") == "1"
    runs = int(os.environ.get("SUITE_BENCH_CLI_RUNS", "7" if quick else "25"))
    warmup = 2
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0", "COLUMNS": "100", "TERM": "dumb"}
    suite_cmd = suite_command()
    typer_cmd = [sys.executable, "-c", "import typer"]

    for _ in range(warmup):  # fill the OS page cache and the bytecode caches
        sample(suite_cmd, env)
        sample(typer_cmd, env)
    suite_wall, suite_cpu, typer_wall, typer_cpu = [], [], [], []
    for _ in range(runs):
        w, c = sample(suite_cmd, env)
        suite_wall.append(w)
        suite_cpu.append(c)
        w, c = sample(typer_cmd, env)
        typer_wall.append(w)
        typer_cpu.append(c)

    wall_ratio = statistics.median(suite_wall) / statistics.median(typer_wall)
    cpu_ratio = statistics.median(suite_cpu) / max(statistics.median(typer_cpu), 1e-6)
    heavy, module_count = imported(env)
    return {
        "summary": {
            "wall_ratio": round(wall_ratio, 2),
            "cpu_ratio": round(cpu_ratio, 2),
            "suite_help_wall_ms": round(statistics.median(suite_wall) * 1000, 1),
            "import_typer_wall_ms": round(statistics.median(typer_wall) * 1000, 1),
            "target_ratio": TARGET_RATIO,
            "meets_target": wall_ratio < TARGET_RATIO,
            "heavy_modules": heavy,
        },
        "runs": runs,
        "warmup": warmup,
        "suite_command": " ".join(suite_cmd),
        "baseline_command": " ".join(typer_cmd),
        "suite_help": {"wall": stats(suite_wall), "cpu": stats(suite_cpu)},
        "import_typer": {"wall": stats(typer_wall), "cpu": stats(typer_cpu)},
        "modules_loaded": module_count,
        "slowest_imports": slowest_imports(env),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
