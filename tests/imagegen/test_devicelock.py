"""One generation worker per device and data dir, across processes: a lock file the kernel releases on death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

HOLDER = """
import sys, time
from suite.imagegen.worker import Worker
w = Worker(threads=1).start(recover=False)
print("holding", flush=True)
time.sleep(600)
"""


def _holder(env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "holding", proc.stderr.read() if proc.stderr else line
    return proc


def test_second_process_refuses_the_device_until_the_owner_dies(
    suite_env: Path, run_cli: Any, tmp_path: Path
) -> None:
    from suite.core.db import prepare_database, session_scope
    from suite.imagegen.models import GenJob

    prepare_database()
    env = {**os.environ, "SUITE_IMAGEGEN__DEVICE": "cpu"}
    owner = _holder(env)
    try:
        lock = suite_env / "imagegen" / "locks" / "cpu.lock"
        assert lock.read_text().strip() == str(owner.pid)
        refused = run_cli(
            "imagegen", "run", "--prompt", "a red circle", "--steps", "1", "--size", "64x64",
            "--out", str(tmp_path / "out"), env={"SUITE_IMAGEGEN__DEVICE": "cpu"},
        )  # fmt: skip
        assert refused.returncode != 0
        message = refused.stderr + refused.stdout
        assert "device cpu is in use by another suite imagegen worker" in message
        assert f"pid {owner.pid}" in message
        with session_scope() as session:  # refused before anything was written
            assert session.query(GenJob).count() == 0
    finally:
        owner.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel drops the lock
        owner.wait(30)
    done = run_cli(
        "imagegen", "run", "--prompt", "a red circle", "--steps", "1", "--size", "64x64",
        "--out", str(tmp_path / "out"), env={"SUITE_IMAGEGEN__DEVICE": "cpu"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "out").glob("*.png"))


def test_in_process_second_worker_refused_then_waits(suite_env: Path) -> None:
    import threading

    import pytest

    from suite.imagegen.devicelock import DeviceBusy, DeviceLock

    first = DeviceLock("cuda:0")
    first.acquire()
    try:
        assert first.path.name == "cuda-0.lock"
        with pytest.raises(DeviceBusy, match=rf"device cuda:0 is in use .*pid {os.getpid()}"):
            DeviceLock("cuda:0").acquire()
        other = DeviceLock("cpu")
        other.acquire()  # another device is free
        other.release()
        second = DeviceLock("cuda:0")
        threading.Timer(0.3, first.release).start()
        second.acquire(wait_s=30)  # waits for the owner's release instead of refusing
        assert second.held
        second.release()
    finally:
        first.release()
