"""The `suite` command: core commands plus one sub-command per domain.

Kept light: building `suite --help` imports typer, rich and the domain specs only (a test checks sys.modules).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from suite import __version__
from suite.core import cli_utils
from suite.core.auth_cli import secrets_app, tokens_app, users_app
from suite.core.cli_options import HostOption, PortOption, ReloadOption, WorkerOption
from suite.core.cli_utils import emit

app = typer.Typer(
    help="suite: recommendations, a movie catalog, chat, a Jira story writer and image generation in one tool.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: typer.rich_utils alone would double the cost of `suite --help`
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
db_app = typer.Typer(
    help="Database migrations (one Alembic environment, a branch per domain).", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.add_typer(secrets_app, name="secrets")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"suite {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Path to suite.toml (default ./suite.toml or $SUITE_CONFIG)."),
    ] = None,
) -> None:
    cli_utils.set_debug(debug)
    if config is not None:
        os.environ["SUITE_CONFIG"] = str(config)


@app.command()
def version(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Print the version."""
    emit({"version": __version__} if as_json else f"suite {__version__}", as_json=as_json)


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The effective configuration, secrets masked, with where each value came from."""
    from suite.core.config import describe_settings, get_settings

    rows = describe_settings(get_settings())
    emit(rows, as_json=as_json, title="configuration", columns=["key", "value", "source"])


@db_app.command("upgrade")
def db_upgrade(
    target: Annotated[str, typer.Argument(help="Revision to upgrade to.")] = "heads",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Upgrade the database to the latest revision of every branch."""
    from suite.core.db import check_connection, get_engine
    from suite.core.migrations import status, upgrade

    check_connection()
    upgrade(get_engine(), target)
    emit(status(get_engine()), as_json=as_json, title="database")


@db_app.command("current")
def db_current(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the database's revisions against the heads this version knows."""
    from suite.core.db import check_connection, get_engine
    from suite.core.migrations import status

    check_connection()
    emit(status(get_engine()), as_json=as_json, title="database")


@db_app.command("revision")
def db_revision(
    domain: Annotated[str, typer.Option("--domain", help="Branch: core or a domain name.")],
    message: Annotated[str, typer.Option("-m", "--message", help="Revision message.")],
    empty: Annotated[bool, typer.Option("--empty", help="No autogenerate; write an empty revision.")] = False,
) -> None:
    """Write a new migration for one domain (autogenerate filtered to its tables)."""
    from suite.core.db import check_connection, get_engine
    from suite.core.migrations import revision

    if not empty:
        check_connection()
    path = revision(
        domain=domain, message=message, autogenerate=not empty, engine=None if empty else get_engine()
    )
    cli_utils.info(f"wrote {path}")


@app.command()
def worker(
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, max=64, help="Worker threads.")] = 1,
) -> None:
    """Run the job consumer for every domain's tasks (Ctrl-C stops it)."""
    from suite.core.db import prepare_database
    from suite.core.tasks import run_consumer

    prepare_database()
    run_consumer(workers=workers)


@app.command()
def serve(
    host: HostOption = None,
    port: PortOption = None,
    reload: ReloadOption = False,
    worker: WorkerOption = None,
) -> None:
    """Serve every domain in one app: /api/v1/<domain>, pages under /<domain>/, /healthz, /readyz, /docs."""
    from suite.core.server import run_server

    run_server(domains=None, host=host, port=port, reload=reload, worker=worker)


def _add_domains() -> None:
    from suite.core.plugins import load_domain_specs

    for spec in load_domain_specs():
        if not spec.cli:
            continue
        try:
            sub = spec.load_attr(spec.cli)
        except Exception as exc:
            print(f"warning: domain {spec.name!r} CLI skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        app.add_typer(sub, name=spec.name, help=spec.help)


_add_domains()


def main(argv: list[str] | None = None) -> Any:
    """Entry point: one readable line per error, exit codes 0 ok / 1 failed / 2 usage or config / 130 Ctrl-C.

    Typer's standalone mode handles usage errors (exit 2) and Ctrl-C (exit 130); our errors are mapped here.
    """
    from suite.core.errors import SuiteError

    try:
        app(args=argv)
    except SuiteError as exc:
        if cli_utils.DEBUG:
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if cli_utils.DEBUG:
            raise
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            from suite.core.db import describe_db_error

            print(f"error: {describe_db_error(exc)}", file=sys.stderr)
        else:
            print(f"error: {type(exc).__name__}: {exc} (run with --debug for a traceback)", file=sys.stderr)
        sys.exit(1)
