"""Benchmark harness (`nox -s bench`): run every `benchmarks/bench_*.py` module's `run() -> dict`.

    python benchmarks/run.py --out DIR [NAME ...]     # NAME: cli, bench_cli or bench_cli.py
    python benchmarks/run.py --list

Each benchmark runs in its own Python process (a crash or a heavy import in one cannot skew another) with a
fresh SUITE_DATA_DIR unless one is set. Results: DIR/<name>.json per benchmark and DIR/summary.json with the
machine's details (load average before and after, CPU count, Python, git commit). Exit status 1 when any
benchmark fails, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def discover() -> dict[str, Path]:
    """Benchmark name (`cli` for bench_cli.py) -> module path, sorted by name."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def normalise(name: str) -> str:
    return Path(name).stem.removeprefix("bench_")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    return repr(obj)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default, sort_keys=False) + "\n")
    tmp.replace(path)


# --- machine info ----------------------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _mem_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs from nvidia-smi when present (imagegen's GPU plan reads this); [] otherwise."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "memory_total_bytes": _mem_total_bytes(),
        "gpus": _gpus(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
    }


# --- running -------------------------------------------------------------------------------------------


def run_single(path: Path, result_file: Path) -> int:
    """Child process: import one benchmark module, call run(), write its dict (or the error) as JSON."""
    started = time.perf_counter()
    record: dict[str, Any] = {"name": normalise(path.name), "module": path.name}
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{record['name']}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        run = getattr(module, "run", None)
        if not callable(run):
            raise TypeError(f"{path.name} has no run() function")
        result = run()
        if not isinstance(result, dict):
            raise TypeError(f"{path.name}: run() returned {type(result).__name__}, not dict")
        record.update(ok=True, result=result)
    except BaseException as exc:
        record.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        if isinstance(exc, KeyboardInterrupt):
            record["error"] = "interrupted"
    record["duration_s"] = round(time.perf_counter() - started, 3)
    write_json(result_file, record)
    return 0 if record["ok"] else 1


def run_in_subprocess(name: str, path: Path, out: Path, *, timeout: float, quick: bool) -> dict[str, Any]:
    result_file = out / f"{name}.json"
    result_file.unlink(missing_ok=True)
    env = dict(os.environ)
    if quick:
        env["SUITE_BENCH_QUICK"] = "1"
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix=f"suite-bench-{name}-") as tmp:
        env.setdefault("SUITE_DATA_DIR", str(Path(tmp) / "data"))
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--single",
            str(path),
            "--result-file",
            str(result_file),
        ]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=timeout)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
        wall = round(time.perf_counter() - t0, 3)
    if result_file.exists():
        record = json.loads(result_file.read_text())
    else:
        reason = f"timed out after {timeout:g} s" if code is None else f"process exited with status {code}"
        record = {"name": name, "module": path.name, "ok": False, "error": reason}
    if code is None and record.get("ok"):
        record.update(ok=False, error=f"timed out after {timeout:g} s")
    record.update(started_at=started_at, wall_s=wall, load_before=load_before, load_after=load_average())
    write_json(result_file, record)
    return record


def headline(record: dict[str, Any]) -> str:
    if not record.get("ok"):
        return f"FAILED: {record.get('error')}"
    summary = (record.get("result") or {}).get("summary")
    if isinstance(summary, dict):
        return ", ".join(f"{k}={v}" for k, v in summary.items())
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (sets SUITE_BENCH_QUICK=1)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark (default 1800)")
    parser.add_argument("--single", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.single is not None:
        return run_single(args.single, args.result_file)

    available = discover()
    if args.list:
        for name, path in available.items():
            print(f"{name}\t{path.relative_to(ROOT)}")
        return 0
    wanted = [normalise(n) for n in args.names] or list(available)
    unknown = [n for n in wanted if n not in available]
    if unknown:
        print(
            f"error: unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(available)}",
            file=sys.stderr,
        )
        return 2

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info()
    machine["load_average_start"] = load_average()
    records = []
    for name in wanted:
        print(f"== {name}", flush=True)
        record = run_in_subprocess(name, available[name], out, timeout=args.timeout, quick=args.quick)
        print(f"   {headline(record)} ({record['wall_s']} s)", flush=True)
        records.append(record)
    machine["load_average_end"] = load_average()
    failed = [r["name"] for r in records if not r.get("ok")]
    summary = {
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine,
        "ok": not failed,
        "failed": failed,
        "benchmarks": [
            {
                "name": r["name"],
                "ok": bool(r.get("ok")),
                "file": f"{r['name']}.json",
                "wall_s": r.get("wall_s"),
                "load_before": r.get("load_before"),
                "summary": (r.get("result") or {}).get("summary") if r.get("ok") else None,
                "error": r.get("error"),
            }
            for r in records
        ],
    }
    write_json(out / "summary.json", summary)
    print(f"results in {out}")
    if failed:
        print(f"error: {len(failed)} benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
