"""glibc malloc for CPU inference on the worker thread (no torch here: the worker imports this before torch).

A denoising step on the CPU allocates large short-lived buffers: oneDNN reorders every convolution's weights
per call (44-112 MiB each for SD1.5's 1280-channel layers), plus the activations. glibc serves a request of
more than 32 MiB (the most its mmap threshold reaches) that the free heap cannot hold with a fresh `mmap` and
returns it with `munmap` when freed, so the next step faults every page in again. On a thread other than
the main one it is worse: the thread gets an arena of its own, made of 64 MiB heaps that are dropped when
empty, and a request larger than a heap is always mmapped. Measured on SD1.5 at 256x256: ~465k page faults
(~1.8 GB zeroed) per step on a thread against none on the main thread, +1.2-2.2 s of system CPU per step.

`tune()` (once per process, glibc only) takes large requests from the heap (`M_MMAP_MAX` 0), keeps freed
memory for the next step (`M_TRIM_THRESHOLD` 2 GiB; the engine's unload calls `malloc_trim`, which gives
it back) and lets new threads share the existing arenas (`M_ARENA_MAX` 1). `start_thread` then starts the
worker on a thread that shares the main arena (the one heap that can hold buffers of any size), probing new
threads until one does: glibc attaches a new thread to an arena freed by an exited thread first, then to the
existing ones in turn, and the main arena is among them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import platform
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("suite.imagegen.heap")

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int
PROBE_SIZE = 64 * 1024  # above tcache sizes: served by the thread's arena
MAX_PROBES = 64

_lock = threading.Lock()
_tuned: bool | None = None


def _libc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


def tune() -> bool:
    """Apply the malloc options once per process; False where this is not glibc (or mallopt refused)."""
    global _tuned
    with _lock:
        if _tuned is None:
            libc = _libc()
            _tuned = libc is not None and all(
                libc.mallopt(option, value) == 1
                for option, value in (
                    (M_MMAP_MAX, 0),
                    (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                    (M_ARENA_MAX, 1),
                )
            )
        return _tuned


def on_main_arena() -> bool | None:
    """Whether the calling thread's malloc arena is the main one (its memory lies in the `[heap]` mapping);
    None where that cannot be told (not glibc, no `[heap]`)."""
    libc = _libc()
    if libc is None:
        return None
    heap: tuple[int, int] | None = None
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith("[heap]"):
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                heap = (start, end)
                break
    if heap is None:
        return None
    p = libc.malloc(PROBE_SIZE)
    try:
        return bool(p) and heap[0] <= p < heap[1]
    finally:
        libc.free(p)


def start_thread(
    target: Callable[[], None], *, name: str, tuned: bool = True
) -> tuple[threading.Thread, bool]:
    """Start `target` on a daemon thread, on the main malloc arena when `tuned` and glibc allow it (probe
    threads that landed elsewhere wait, holding their arena, until one lands there, then end). The thread
    and whether it shares the main arena."""
    if not tuned or not tune():
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread, False
    reports: queue.SimpleQueue[tuple[threading.Thread, bool | None]] = queue.SimpleQueue()
    release = threading.Event()

    def probe() -> None:
        me = threading.current_thread()
        ok = on_main_arena()
        reports.put((me, ok))
        if ok:
            me.name = name
            target()
        else:
            release.wait()

    main: bool | None = False
    try:
        for i in range(MAX_PROBES):
            thread = threading.Thread(target=probe, name=f"{name}-probe-{i}", daemon=True)
            thread.start()
            got, main = reports.get()
            if main or main is None:
                break
    finally:
        release.set()
    if main:
        return got, True
    if main is not None:
        log.warning(
            "the %s thread did not get glibc's main malloc arena: large CPU buffers will be mapped afresh "
            "every step (MALLOC_ARENA_MAX=1 in the environment avoids it)",
            name,
        )
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread, False
