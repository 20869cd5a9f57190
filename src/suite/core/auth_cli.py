"""`suite users`, `suite tokens`, `suite secrets`: light module, work imported inside command bodies."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from suite.core.cli_utils import emit, info

if TYPE_CHECKING:
    from suite.core.models import ApiToken, User

users_app = typer.Typer(help="Manage users (one login for every domain).", no_args_is_help=True)
tokens_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
secrets_app = typer.Typer(help="The encryption keyring and encrypted secrets.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def read_hidden(what: str, *, from_stdin: bool, confirm: bool, flag: str | None = None) -> str:
    """A secret value from stdin (`from_stdin`, or any piped stdin when `flag` is None) or a hidden prompt."""
    from suite.core.errors import UsageError

    if from_stdin or (flag is None and not sys.stdin.isatty()):
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
        value = value[:-1] if value.endswith("\r") else value
        if not value:
            raise UsageError(f"no {what} on stdin")
        return value
    if not sys.stdin.isatty():
        raise UsageError(f"cannot prompt for the {what}: stdin is not a terminal; pipe it in with {flag}")
    value = typer.prompt(what.capitalize(), hide_input=True, confirmation_prompt=confirm)
    return str(value)


def user_row(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "role": user.role,
        "active": user.is_active,
        "created_at": user.created_at,
        "last_login_at": user.last_login_at,
    }


def token_row(token: ApiToken) -> dict[str, Any]:
    from suite.core.auth import token_state

    return {
        "id": token.id,
        "user": token.user.username,
        "name": token.name,
        "prefix": token.prefix,
        "scopes": list(token.scopes),
        "state": token_state(token),
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "last_used_at": token.last_used_at,
    }


# --- users ---------------------------------------------------------------------------------------------


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[str, typer.Option("--role", help="admin, user or a role a domain declares.")] = "user",
    email: Annotated[str | None, typer.Option("--email")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add a user (the password is prompted for, hidden, or read from stdin)."""
    from suite.core import auth
    from suite.core.db import session_scope

    auth.check_role(role)
    password = read_hidden("password", from_stdin=password_stdin, confirm=True, flag="--password-stdin")
    with session_scope() as session:
        user = auth.create_user(session, username=username, password=password, role=role, email=email)
        row = user_row(user)
    if as_json:
        emit(row, as_json=True)
    else:
        info(f"created user {row['username']} (role {row['role']})")


@users_app.command("list")
def users_list(as_json: JsonOpt = False) -> None:
    """List users."""
    from suite.core import auth
    from suite.core.db import session_scope

    with session_scope() as session:
        rows = [user_row(u) for u in auth.list_users(session)]
    emit(rows, as_json=as_json, title="users")


@users_app.command("set-role")
def users_set_role(
    username: Annotated[str, typer.Argument()],
    role: Annotated[str, typer.Argument(help="admin, user or a role a domain declares.")],
    as_json: JsonOpt = False,
) -> None:
    """Change a user's role."""
    from suite.core import auth
    from suite.core.db import session_scope

    with session_scope() as session:
        row = user_row(auth.set_role(session, username=username, role=role))
    if as_json:
        emit(row, as_json=True)
    else:
        info(f"{row['username']} now has the role {row['role']}")


@users_app.command("disable")
def users_disable(username: Annotated[str, typer.Argument()], as_json: JsonOpt = False) -> None:
    """Disable a user: logins, web sessions (ended now) and API tokens stop working."""
    from suite.core import auth
    from suite.core.db import session_scope

    with session_scope() as session:
        user, ended = auth.disable_user(session, username=username)
        row = {**user_row(user), "sessions_ended": ended}
    if as_json:
        emit(row, as_json=True)
    else:
        info(f"disabled user {row['username']}; ended {ended} web session(s)")


@users_app.command("enable")
def users_enable(username: Annotated[str, typer.Argument()], as_json: JsonOpt = False) -> None:
    """Enable a disabled user again."""
    from suite.core import auth
    from suite.core.db import session_scope

    with session_scope() as session:
        row = user_row(auth.enable_user(session, username=username))
    if as_json:
        emit(row, as_json=True)
    else:
        info(f"enabled user {row['username']}")


@users_app.command("set-password")
def users_set_password(
    username: Annotated[str, typer.Argument()],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
) -> None:
    """Set a new password (the user's web sessions end)."""
    from suite.core import auth
    from suite.core.db import session_scope

    password = read_hidden("password", from_stdin=password_stdin, confirm=True, flag="--password-stdin")
    with session_scope() as session:
        user = auth.set_password(session, username=username, password=password)
        name = user.username
    info(f"password of {name} changed")


# --- tokens --------------------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    user: Annotated[str, typer.Option("--user", "-u", help="The token's user.")],
    name: Annotated[str, typer.Option("--name", "-n", help="What the token is for.")],
    scope: Annotated[
        list[str] | None, typer.Option("--scope", "-s", help="Limit to a scope (repeatable).")
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="Lifetime: 30d, 12h, 90m, 2w.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token; its value is printed once (stdout), only its hash is stored."""
    from suite.core import auth
    from suite.core.db import session_scope

    lifetime = auth.parse_duration(expires_in) if expires_in else None
    with session_scope() as session:
        owner = auth.get_user(session, username=user)
        token, plain = auth.create_token(
            session, user=owner, name=name, scopes=scope or [], expires_in=lifetime
        )
        row = {**token_row(token), "token": plain}
    if as_json:
        emit(row, as_json=True)
        return
    scopes = ", ".join(row["scopes"]) or "all of the user's rights"
    expiry = f"expires {row['expires_at']:%Y-%m-%d %H:%M} UTC" if row["expires_at"] else "no expiry"
    info(f"token {row['id']} ({row['prefix']}) for {row['user']}: {scopes}; {expiry}. It is shown only now:")
    typer.echo(plain)


@tokens_app.command("list")
def tokens_list(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's tokens.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List API tokens (never their values)."""
    from suite.core import auth
    from suite.core.db import session_scope

    with session_scope() as session:
        owner = auth.get_user(session, username=user) if user else None
        rows = [token_row(t) for t in auth.list_tokens(session, user=owner)]
    emit(rows, as_json=as_json, title="tokens")


@tokens_app.command("revoke")
def tokens_revoke(
    ident: Annotated[str, typer.Argument(metavar="ID_OR_PREFIX", help="Token id or its prefix (st_...).")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke an API token (idempotent)."""
    from suite.core import auth
    from suite.core.db import session_scope

    with session_scope() as session:
        token, changed = auth.revoke_token(session, ident=ident)
        row = {**token_row(token), "revoked_now": changed}
    if as_json:
        emit(row, as_json=True)
    elif changed:
        info(f"revoked token {row['id']} ({row['prefix']}, {row['name']}) of {row['user']}")
    else:
        info(f"token {row['id']} ({row['prefix']}) was already revoked")


# --- secrets -------------------------------------------------------------------------------------------


@secrets_app.command("init")
def secrets_init(as_json: JsonOpt = False) -> None:
    """Create the keyring (mode 600, outside the database); refuses to overwrite one."""
    from suite.core import crypto

    ring = crypto.init_keyring()
    row = {"path": str(ring.path), "current": ring.current}
    if as_json:
        emit(row, as_json=True)
    else:
        info(f"created keyring {ring.path} (key {ring.current}); back it up: without it secrets are lost")


@secrets_app.command("status")
def secrets_status(as_json: JsonOpt = False) -> None:
    """Key ids, the current one, and how many rows each key encrypts."""
    from suite.core import crypto
    from suite.core.db import session_scope

    with session_scope() as session:
        status = crypto.keyring_status(session)
    if as_json:
        emit(status, as_json=True)
        return
    info(f"keyring {status['path']}; current key {status['current']}")
    emit(status["keys"], title="keys", columns=["id", "current", "rows", "created_at"])
    rows = [{"column": c["column"], "rows": c["rows"], "by key": c["by_key"]} for c in status["columns"]]
    emit(rows, title="encrypted columns")
    if status["unknown_key_ids"]:
        info(f"rows under key ids missing from the keyring: {status['unknown_key_ids']}")
    if status["pending"]:
        info(f"{status['pending']} row(s) are not under the current key; run `suite secrets rotate --resume`")


@secrets_app.command("rotate")
def secrets_rotate(
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Finish an interrupted rotation: no new key, skip rows already done."),
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=10_000)] = 200,
    as_json: JsonOpt = False,
) -> None:
    """Add a key, make it current and re-encrypt every encrypted column (resumable, idempotent)."""
    from suite.core import crypto
    from suite.core.cli_utils import progress
    from suite.core.db import session_scope

    crypto.load_keyring()  # a missing keyring fails before anything else
    with session_scope() as session, progress("re-encrypting", None, enabled=not as_json) as advance:
        summary = crypto.rotate(
            session,
            resume=resume,
            batch_size=batch_size,
            progress=lambda done, total: advance(done, total=total),
        )
    if as_json:
        emit(summary, as_json=True)
    else:
        info(f"{summary['reencrypted']} row(s) re-encrypted; current key {summary['key_id']}")


@secrets_app.command("set")
def secrets_set(
    name: Annotated[str, typer.Argument(help="Secret name, e.g. tmdb.api_key.")],
    as_json: JsonOpt = False,
) -> None:
    """Store a secret encrypted (value from stdin, or a hidden prompt)."""
    from suite.core import crypto
    from suite.core.db import session_scope

    crypto.load_keyring()
    value = read_hidden(f"value of {name}", from_stdin=False, confirm=True)
    with session_scope() as session:
        row = crypto.set_secret(session, name=name, value=value)
        out = {"name": row.name, "key_id": crypto.key_id_of(row.ciphertext)}
    if as_json:
        emit(out, as_json=True)
    else:
        info(f"stored secret {name} (key {out['key_id']})")


@secrets_app.command("delete")
def secrets_delete(name: Annotated[str, typer.Argument()]) -> None:
    """Delete a stored secret."""
    from suite.core import crypto
    from suite.core.db import session_scope
    from suite.core.errors import NotFound

    with session_scope() as session:
        if not crypto.delete_secret(session, name=name):
            raise NotFound(f"secret {name!r} not found")
    info(f"deleted secret {name}")
