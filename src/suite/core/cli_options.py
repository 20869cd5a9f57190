"""Options shared by `suite serve` and the domains' `serve` commands (one wording, one set of limits)."""

from __future__ import annotations

from typing import Annotated

import typer

HostOption = Annotated[str | None, typer.Option(help="Bind address (default from config: 127.0.0.1).")]
PortOption = Annotated[int | None, typer.Option(min=0, max=65535, help="Port (default from config: 8000).")]
ReloadOption = Annotated[bool, typer.Option("--reload", help="Restart on code changes (development).")]
WorkerOption = Annotated[
    bool | None,
    typer.Option(
        "--worker/--no-worker", help="Run an embedded job consumer (default: server.embedded_worker)."
    ),
]
