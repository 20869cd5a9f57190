"""Background work on Huey: SqliteHuey by default, RedisHuey when a Redis URL is set; the core_job table."""

from __future__ import annotations
