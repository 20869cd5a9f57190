"""One generation worker per device and data dir: an exclusive `flock` on `<data>/imagegen/locks/<device>.lock`.

The kernel releases the lock when its process dies (even on SIGKILL), so a crash never leaves the device
locked. The holder's pid is written into the file so the refusal can name it.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path

from suite.core.errors import Unavailable
from suite.imagegen import service


class DeviceBusy(Unavailable):
    code = "device_busy"


def lock_path(device: str) -> Path:
    return service.root() / "locks" / f"{re.sub(r'[^A-Za-z0-9_.-]', '-', device)}.lock"


class DeviceLock:
    def __init__(self, device: str) -> None:
        self.device = device
        self.path = lock_path(device)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, wait_s: float = 0.0) -> None:
        """Take the lock, waiting up to wait_s seconds; DeviceBusy naming the holder's pid otherwise."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder(fd)
                    os.close(fd)
                    raise DeviceBusy(
                        f"device {self.device} is in use by another suite imagegen worker"
                        f"{f' (pid {holder})' if holder else ''} on data dir {service.root().parent}: "
                        "send jobs to that server, stop it, or use another device or data dir",
                        code="device_busy",
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            return os.pread(fd, 32, 0).decode(errors="replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
