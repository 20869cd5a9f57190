"""`suite --help` and every sub-command's `--help` stay light: no torch, diffusers, transformers, sqlalchemy
or fastapi in `sys.modules` (each checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

from suite import __version__

HEAVY = ("torch", "diffusers", "transformers", "sqlalchemy", "fastapi")

# Runs `suite <args> --help` in-process and reports the exit code and which heavy packages got imported.
PROBE = f"""
import json, sys
args = sys.argv[1:]
from suite.cli import main
sys.argv = ["suite", *args, "--help"]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set({HEAVY!r}))
print("PROBE " + json.dumps({{"code": code, "heavy": heavy}}))
"""


def probe(*args: str) -> tuple[dict[str, object], subprocess.CompletedProcess[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, f"probe printed nothing; stderr:\n{proc.stderr}"
    return json.loads(lines[-1][6:]), proc


def sub_apps() -> list[str]:
    """Names of the sub-commands registered on the root app (core groups and every landed domain)."""
    code = (
        "import json; from suite.cli import app; print(json.dumps([g.name for g in app.registered_groups]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_root_help_is_light() -> None:
    result, proc = probe()
    assert result == {"code": 0, "heavy": []}
    assert "serve" in proc.stdout and "db" in proc.stdout
    assert "warning" not in proc.stderr.lower(), proc.stderr  # no in-tree domain CLI failed to load


def test_every_sub_app_help_is_light() -> None:
    names = sub_apps()
    assert {"config", "db", "users", "tokens", "secrets"} <= set(names)
    # One fresh interpreter per sub-app, all at once.
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", PROBE, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name in names
    }
    bad = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        lines = [line for line in out.splitlines() if line.startswith("PROBE ")]
        result = json.loads(lines[-1][6:]) if lines else {"code": None, "stderr": err[-500:]}
        if result != {"code": 0, "heavy": []}:
            bad[name] = result
    assert bad == {}, f"sub-commands whose --help failed or imported heavy modules: {bad}"


def test_version(run_cli) -> None:  # type: ignore[no-untyped-def]
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"suite {__version__}"


def test_unknown_command_exits_2(run_cli) -> None:  # type: ignore[no-untyped-def]
    proc = run_cli("no-such-command")
    assert proc.returncode == 2, proc.stderr
    assert "No such command 'no-such-command'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_option_exits_2(run_cli) -> None:  # type: ignore[no-untyped-def]
    proc = run_cli("db", "current", "--no-such-option")
    assert proc.returncode == 2, proc.stderr
    assert "No such option" in proc.stderr
