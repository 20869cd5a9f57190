"""Run the app with uvicorn (`suite serve`, `suite <domain> serve`)."""

from __future__ import annotations

import uvicorn

from suite.core.config import get_settings


def run_server(
    *, domains: list[str] | None, host: str | None, port: int | None, reload: bool, worker: bool
) -> None:
    from suite.core.api import create_app

    settings = get_settings()
    app = create_app(domains, embedded_worker=worker)
    uvicorn.run(app, host=host or settings.server.host, port=settings.server.port if port is None else port)
