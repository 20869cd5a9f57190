"""glibc malloc for CPU inference: the worker thread shares the main arena, so the large buffers of one step
are reused by the next instead of being mapped and faulted in afresh (imagegen/heap.py)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from typing import Any

import pytest

from suite.imagegen import heap

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

# Another thread allocates and exits first (its arena goes to glibc's free list, which a new thread takes
# first), then a thread allocates 100 MiB twice, touching every page: the page faults of the second pass
# say whether the first pass's memory was kept.
SCRIPT = """
import ctypes, json, resource, sys, threading
from suite.imagegen import heap
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 100 * 2**20

def passes(out):
    faults = []
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        p = libc.malloc(SIZE)
        ctypes.memset(p, 1, SIZE)
        libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    out.update(faults=faults, main_arena=heap.on_main_arena())

other = threading.Thread(target=lambda: libc.free(libc.malloc(2**20)))
other.start(); other.join()
out = {}
if sys.argv[1] == "tuned":
    thread, main = heap.start_thread(lambda: passes(out), name="t")
    out["reported"] = main
else:
    thread = threading.Thread(target=passes, args=(out,))
    thread.start()
thread.join()
print(json.dumps(out))
"""


def _run(mode: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120, check=True
    )
    return dict(json.loads(proc.stdout))


@glibc
def test_a_tuned_thread_keeps_large_buffers_between_uses() -> None:
    pages = 100 * 2**20 // 4096
    plain = _run("plain")
    assert plain["main_arena"] is False
    assert min(plain["faults"]) > pages // 2  # glibc default: mapped and faulted in every time

    tuned = _run("tuned")
    assert tuned["reported"] is True and tuned["main_arena"] is True
    assert tuned["faults"][0] > pages // 2  # the first use faults the pages in once
    assert tuned["faults"][1] < pages // 20  # then they stay


@glibc
def test_the_worker_thread_runs_on_the_main_arena(worker: Any) -> None:
    assert worker.main_arena is True
    assert worker.thread.name == "imagegen-worker"
    assert worker.call(lambda _engine: heap.on_main_arena()) is True


def test_untuned_start_thread_is_a_plain_thread() -> None:
    seen: list[str] = []
    thread, main = heap.start_thread(lambda: seen.append("ran"), name="plain", tuned=False)
    thread.join(10)
    assert seen == ["ran"] and main is False and thread.name == "plain"
