"""Run the app with uvicorn (`suite serve`, `suite <domain> serve`).

`--reload` needs an import string, so the app is then built by `app_factory` in the reloading child, which
reads the domains and the worker flag from two private environment variables. Query strings are redacted
from the access log and uvicorn's WebSocket lines (tokens travel there: `/api/v1/events/ws?token=...`).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from suite.core.config import get_settings

_DOMAINS_ENV = "_SUITE_SERVE_DOMAINS"  # not SUITE_*: settings never read it
_WORKER_ENV = "_SUITE_SERVE_WORKER"
_ALL = "*"
GRACEFUL_SHUTDOWN_S = 5

STOPPING_HOOKS_TIMEOUT_S = 3.0
_STOPPING_HOOKS = "suite_stopping_hooks"
log = logging.getLogger("suite.server")

_QUERY = re.compile(r"(?P<path>/[^\s?]*)\?(?P<query>\S*)")


def redact_query(text: str) -> str:
    """`/ws?token=abc&topic=x` -> `/ws?token=***&topic=***`: parameter names stay, values go."""

    def repl(match: re.Match[str]) -> str:
        names = [part.split("=", 1)[0] for part in match["query"].split("&") if part]
        return match["path"] + "?" + "&".join(f"{name}=***" for name in names)

    return _QUERY.sub(repl, text)


class RedactQueryFilter(logging.Filter):
    """Redact query-string values in uvicorn's access and WebSocket log lines (the record's string args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                redact_query(a) if isinstance(a, str) and "?" in a else a for a in record.args
            )
        return True


def _is_connection_error(exc: BaseException) -> bool:
    # Builtin ConnectionError/TimeoutError and redis' own (which do not subclass the builtins).
    return any(cls.__name__ in ("ConnectionError", "TimeoutError") for cls in type(exc).__mro__)


class QuietConnectionErrors(logging.Filter):
    """A dependency that is down is reported in one line, once a minute per message, not as a traceback on
    every poll (Huey's consumer logs each failed poll of a stopped Redis with its traceback)."""

    repeat_s = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not _is_connection_error(exc):
            return True
        record.msg = f"{record.getMessage().rstrip('.')}: {type(exc).__name__}: {exc}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        now = time.monotonic()
        last = self._last.get(record.msg)
        if last is not None and now - last < self.repeat_s:
            return False
        self._last[record.msg] = now
        return True


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config plus the redaction filter, and the `suite` and `huey` loggers on its handler
    with connection errors kept to one line."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {
        "redact_query": {"()": f"{__name__}.RedactQueryFilter"},
        "quiet_connection_errors": {"()": f"{__name__}.QuietConnectionErrors"},
    }
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_query")
    config["handlers"]["default"]["filters"].append("quiet_connection_errors")
    for name in ("suite", "huey"):
        config["loggers"][name] = {"handlers": ["default"], "level": level, "propagate": False}
    return config


def add_stopping_hook(app: Any, hook: Callable[[], Awaitable[None]]) -> None:
    """Run `hook` as soon as the server is told to stop (SIGTERM, Ctrl-C), once it no longer accepts
    connections and before uvicorn closes the open ones itself (WebSockets get 1012 from it) and runs the
    lifespan shutdown (the domains' `shutdown` hooks). Chat closes its sockets with 1001 here."""
    hooks = getattr(app.state, _STOPPING_HOOKS, None)
    if hooks is None:
        hooks = []
        setattr(app.state, _STOPPING_HOOKS, hooks)
    hooks.append(hook)


async def run_stopping_hooks(app: Any) -> None:
    import asyncio

    for hook in list(getattr(app.state, _STOPPING_HOOKS, None) or ()):
        try:
            await asyncio.wait_for(hook(), STOPPING_HOOKS_TIMEOUT_S)
        except Exception:
            log.exception("a stopping hook failed")


def _server_class() -> Any:
    import uvicorn

    class SuiteServer(uvicorn.Server):
        """uvicorn's server, with the app's stopping hooks run before it closes the open connections."""

        def __init__(self, config: uvicorn.Config, app: Any) -> None:
            super().__init__(config)
            self.suite_app = app

        async def shutdown(self, sockets: Any = None) -> None:
            for server in self.servers:  # stop accepting first, as uvicorn does
                server.close()
            await run_stopping_hooks(self.suite_app)
            await super().shutdown(sockets)

    return SuiteServer


def app_factory() -> Any:
    """The app for `--reload` (uvicorn calls this in the reloading child process)."""
    from suite.core.api import create_app

    raw = os.environ.get(_DOMAINS_ENV, _ALL)
    domains = None if raw == _ALL else [d for d in raw.split(",") if d]
    return create_app(domains, embedded_worker=os.environ.get(_WORKER_ENV) == "1")


def _check_domains(domains: list[str] | None) -> None:
    from suite.core.errors import UsageError
    from suite.core.plugins import load_domain_specs

    unknown = set(domains or ()) - {s.name for s in load_domain_specs()}
    if unknown:
        raise UsageError(f"unknown domain(s): {', '.join(sorted(unknown))}")


def check_port(host: str, port: int) -> None:
    """Fail in one line, before migrating anything, when the address cannot be bound (in use, not allowed)."""
    import socket

    from suite.core.errors import SuiteError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SuiteError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run_server(
    *, domains: list[str] | None, host: str | None, port: int | None, reload: bool, worker: bool | None
) -> None:
    """Serve `domains` (all landed ones when None) until Ctrl-C.

    `worker=None` takes `server.embedded_worker` from the config; True or False overrides it.
    """
    import uvicorn

    from suite.core.errors import SuiteError

    settings = get_settings()
    embedded = settings.server.embedded_worker if worker is None else worker
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    check_port(host, port)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": log_config(settings.log_level),
        "log_level": settings.log_level.lower(),
        "ws_max_size": settings.server.max_body_bytes,  # one knob for inbound message size
        "server_header": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "lifespan": "on",
    }
    try:
        if reload:
            _check_domains(domains)  # the child builds the app; fail here, in one line, on a bad name
            os.environ[_DOMAINS_ENV] = _ALL if domains is None else ",".join(domains)
            os.environ[_WORKER_ENV] = "1" if embedded else "0"
            package = Path(__file__).resolve().parents[1]
            uvicorn.run(
                f"{__name__}:app_factory", factory=True, reload=True, reload_dirs=[str(package)], **options
            )
            return
        from suite.core.api import create_app

        app = create_app(domains, embedded_worker=embedded)
        server = _server_class()(uvicorn.Config(app, **options), app)
        try:
            server.run()
        except KeyboardInterrupt:  # as uvicorn.run does
            pass
        if not server.started:
            raise SystemExit(3)  # as uvicorn.run does when start-up fails
    except SystemExit as exc:  # uvicorn exits 3 when start-up fails; the reason is in its log above
        if exc.code not in (0, None):
            raise SuiteError(f"the server on {host}:{port} failed to start (see the log above)") from None
        raise
