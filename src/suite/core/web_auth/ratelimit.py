"""Login rate limit: fixed one-minute windows per username and client address, in Redis when configured (shared
by every server process), else in this process."""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from suite.core.config import get_settings

log = logging.getLogger("suite.auth")

LOGIN_WINDOW_S = 60.0


class Limiter(Protocol):
    def hit(self, key: str, limit: int) -> float | None:
        """Count one attempt; the seconds to wait when over `limit`, else None."""

    def reset(self, key: str) -> None: ...


class MemoryLimiter:
    """Fixed one-minute windows in this process."""

    def __init__(self, window_s: float = LOGIN_WINDOW_S) -> None:
        self.window_s = window_s
        self._hits: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, limit: int) -> float | None:
        now = time.monotonic()
        with self._lock:
            start, count = self._hits.get(key, (now, 0))
            if now - start >= self.window_s:
                start, count = now, 0
            count += 1
            self._hits[key] = (start, count)
            if len(self._hits) > 10_000:
                self._hits = {k: v for k, v in self._hits.items() if now - v[0] < self.window_s}
        return self.window_s - (now - start) if count > limit else None

    def reset(self, key: str) -> None:
        with self._lock:
            self._hits.pop(key, None)


class RedisLimiter:
    """Shared by every server process: SET NX EX + INCR, the key's TTL as Retry-After."""

    def __init__(self, url: str, window_s: float = LOGIN_WINDOW_S) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self.window_s = window_s
        self.fallback = MemoryLimiter(window_s)

    def hit(self, key: str, limit: int) -> float | None:
        import redis

        name = f"suite:login:{key}"
        try:
            pipe = self.client.pipeline()
            pipe.set(name, 0, ex=int(self.window_s), nx=True)
            pipe.incr(name)
            pipe.ttl(name)
            _, count, ttl = pipe.execute()
        except redis.RedisError as exc:
            log.warning("login rate limit: Redis unavailable (%s); counting in this process", exc)
            return self.fallback.hit(key, limit)
        return float(max(ttl, 1)) if int(count) > limit else None

    def reset(self, key: str) -> None:
        import redis

        self.fallback.reset(key)
        try:
            self.client.delete(f"suite:login:{key}")
        except redis.RedisError:
            pass


_limiters: dict[str, Limiter] = {}
_limiters_lock = threading.Lock()


def login_limiter() -> Limiter:
    url = get_settings().redis_url or ""
    with _limiters_lock:
        limiter = _limiters.get(url)
        if limiter is None:
            limiter = RedisLimiter(url) if url else MemoryLimiter()
            _limiters[url] = limiter
        return limiter


def reset_rate_limits() -> None:
    """Forget every in-process counter and Redis client (tests)."""
    with _limiters_lock:
        _limiters.clear()
