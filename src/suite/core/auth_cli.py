"""`suite users`, `suite tokens`, `suite secrets`: light module, work imported inside command bodies."""

from __future__ import annotations

import typer

users_app = typer.Typer(help="Manage users (one login for every domain).", no_args_is_help=True)
tokens_app = typer.Typer(help="Create and revoke API tokens.", no_args_is_help=True)
secrets_app = typer.Typer(help="The encryption keyring: init, status, rotate.", no_args_is_help=True)
