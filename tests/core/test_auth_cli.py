"""`suite users|tokens|secrets` as a user runs them: subprocesses, exit codes, one-line errors.

Each run is a fresh interpreter (about 2 s), so the rules the services enforce are tested in test_auth.py and
test_crypto.py; here every command runs, with errors of both exit codes (1 failed, 2 usage or config).
"""

from __future__ import annotations

import json
import stat
import subprocess
from typing import Any

import pytest

from suite.core.config import get_settings

PASSWORD = "correct horse battery"


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert text in err, err


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)


def test_users_commands(run_cli: Any) -> None:
    from suite.core import auth, web_auth
    from suite.core.db import session_scope

    out = ok(run_cli("users", "add", "alice", "--password-stdin", input=PASSWORD + "\n"))
    assert out.stderr.strip() == "created user alice (role user)"
    no_tty = run_cli("users", "add", "bob")  # stdin is a pipe: no hidden prompt possible
    one_line_error(
        no_tty, 2, "cannot prompt for the password: stdin is not a terminal; pipe it in with --password-stdin"
    )
    one_line_error(
        run_cli("users", "add", "ALICE", "--password-stdin", input=PASSWORD), 1, "user 'ALICE' already exists"
    )

    users = as_json(run_cli("users", "list", "--json"))
    assert [(u["username"], u["role"], u["active"]) for u in users] == [("alice", "user", True)]
    assert "password" not in json.dumps(users)
    assert as_json(run_cli("users", "set-role", "alice", "admin", "--json"))["role"] == "admin"
    one_line_error(run_cli("users", "set-role", "alice", "root"), 2, "unknown role 'root'; roles: admin")

    with session_scope() as session:  # the database file the commands used
        user = auth.authenticate_password(session, username="alice", password=PASSWORD)
        web_auth.create_session(session, user=user)
    disabled = as_json(run_cli("users", "disable", "alice", "--json"))
    assert disabled["active"] is False and disabled["sessions_ended"] == 1
    ok(run_cli("users", "enable", "alice"))
    ok(run_cli("users", "set-password", "alice", "--password-stdin", input="another password\n"))
    with session_scope() as session:
        assert auth.authenticate_password(session, username="alice", password="another password").is_active


def test_tokens_commands(run_cli: Any) -> None:
    from suite.core import auth
    from suite.core.db import session_scope
    from suite.core.errors import Unauthorized

    ok(run_cli("users", "add", "dana", "--password-stdin", input=PASSWORD))
    args = ["--user", "dana", "--name", "ci", "--scope", "catalog:read", "--expires-in", "30d", "--json"]
    created = as_json(run_cli("tokens", "create", *args))
    plain = created["token"]
    assert (
        plain.startswith(created["prefix"])
        and created["scopes"] == ["catalog:read"]
        and created["expires_at"]
    )
    with session_scope() as session:
        assert auth.authenticate_token(session, plain)[0].username == "dana"

    human = ok(run_cli("tokens", "create", "--user", "dana", "--name", "script"))
    second = human.stdout.strip()  # only the token on stdout: TOKEN=$(suite tokens create ...)
    assert second.startswith("st_") and "\n" not in second and "shown only now" in human.stderr
    bad = run_cli("tokens", "create", "--user", "dana", "--name", "x", "--expires-in", "soon")
    one_line_error(bad, 2, "invalid duration 'soon'")

    listed = as_json(run_cli("tokens", "list", "--user", "dana", "--json"))
    assert {t["name"] for t in listed} == {"ci", "script"} and plain not in json.dumps(listed)
    revoked = ok(run_cli("tokens", "revoke", created["prefix"]))
    assert f"revoked token {created['id']} ({created['prefix']}, ci) of dana" in revoked.stderr
    one_line_error(run_cli("tokens", "revoke", "st_unknown"), 1, "API token 'st_unknown' not found")
    with session_scope() as session, pytest.raises(Unauthorized, match="revoked"):
        auth.authenticate_token(session, plain)


def test_secrets_commands(run_cli: Any) -> None:
    from suite.core import crypto
    from suite.core.db import session_scope

    one_line_error(run_cli("secrets", "status"), 2, "no keyring at ")
    init = as_json(run_cli("secrets", "init", "--json"))
    path = get_settings().keyring_path
    assert init == {"path": str(path), "current": "k1"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    one_line_error(run_cli("secrets", "init"), 1, "refusing to overwrite")
    assert path.read_bytes() == before

    stored = as_json(run_cli("secrets", "set", "tmdb.api_key", "--json", input="tmdb-secret-value\n"))
    assert stored == {"name": "tmdb.api_key", "key_id": "k1"}
    status = as_json(run_cli("secrets", "status", "--json"))
    assert status["current"] == "k1" and status["keys"][0]["rows"] == 1 and status["pending"] == 0

    rotated = as_json(run_cli("secrets", "rotate", "--json"))
    assert rotated == {"key_id": "k2", "added_key": True, "rows": 1, "reencrypted": 1}
    human = ok(run_cli("secrets", "status"))
    assert "current key k2" in human.stderr and "core_secret.ciphertext" in human.stdout
    with session_scope() as session:
        assert crypto.get_secret(session, name="tmdb.api_key") == "tmdb-secret-value"
    ok(run_cli("secrets", "delete", "tmdb.api_key"))
    with session_scope() as session:
        assert crypto.keyring_status(session)["columns"][0]["rows"] == 0


def test_rotate_resume_after_interrupted_run(run_cli: Any) -> None:
    from suite.core import crypto
    from suite.core.db import session_scope
    from suite.core.models import Secret

    crypto.init_keyring()
    values = {f"key-{i}": f"value-{i}" for i in range(6)}
    with session_scope() as session:
        for name, value in values.items():
            crypto.set_secret(session, name=name, value=value)

    def stop(done: int, total: int) -> None:
        if done >= 2:
            raise KeyboardInterrupt  # Ctrl-C after the first batch

    with pytest.raises(KeyboardInterrupt), session_scope() as session:
        crypto.rotate(session, batch_size=2, progress=stop)
    with session_scope() as session:
        status = crypto.keyring_status(session)
    assert status["current"] == "k2" and status["pending"] == 4

    resumed = as_json(run_cli("secrets", "rotate", "--resume", "--batch-size", "3", "--json"))
    assert resumed == {"key_id": "k2", "added_key": False, "rows": 4, "reencrypted": 4}
    with session_scope() as session:
        assert {s.name: crypto.key_id_of(s.ciphertext) for s in session.query(Secret)} == dict.fromkeys(
            values, "k2"
        )
        assert {name: crypto.get_secret(session, name=name) for name in values} == values
        broken = session.get(Secret, "key-0")
        assert broken is not None
        broken.ciphertext = broken.ciphertext.replace("v1:k2:", "v1:k7:", 1)
    failed = run_cli("secrets", "rotate")
    one_line_error(
        failed, 1, "1 of 6 rows could not be re-encrypted and keep their old key; first: ciphertext uses"
    )
