"""AES-256-GCM under a keyring: format, refusals, the keyring file, secrets and resumable rotation."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from suite.core import crypto
from suite.core.config import get_settings
from suite.core.errors import Conflict, CryptoError, NotFound, ValidationFailed
from suite.core.models import Job, Secret


class Interrupted(Exception):
    pass


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.init_keyring()


def flip_last_byte(ciphertext: str) -> str:
    version, kid, data = ciphertext.split(":")
    raw = bytearray(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    raw[-1] ^= 0x01  # the last byte belongs to the GCM tag
    return f"{version}:{kid}:{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def test_round_trip_and_format(keyring: crypto.Keyring) -> None:
    first = crypto.encrypt("jira-pat-123", aad="core_secret:jira")
    second = crypto.encrypt("jira-pat-123", aad="core_secret:jira")
    assert first.startswith("v1:k1:") and first != second  # a fresh nonce each time
    assert "jira-pat-123" not in first
    assert crypto.decrypt(first, aad="core_secret:jira") == "jira-pat-123"
    assert crypto.key_id_of(first) == "k1"
    assert crypto.decrypt_bytes(crypto.encrypt_bytes(b"\x00\xff", aad="x"), aad="x") == b"\x00\xff"


def test_wrong_associated_data_is_refused(keyring: crypto.Keyring) -> None:
    ciphertext = crypto.encrypt("value", aad="core_secret:a")
    with pytest.raises(CryptoError, match=r"cannot decrypt core_secret:b: authentication failed"):
        crypto.decrypt(ciphertext, aad="core_secret:b")


def test_flipped_tag_byte_is_refused(keyring: crypto.Keyring) -> None:
    ciphertext = crypto.encrypt("value", aad="core_secret:a")
    with pytest.raises(CryptoError, match="authentication failed") as exc:
        crypto.decrypt(flip_last_byte(ciphertext), aad="core_secret:a")
    assert exc.value.code == "crypto_error" and exc.value.__cause__ is None


def test_unknown_key_id_and_malformed_ciphertexts(keyring: crypto.Keyring) -> None:
    ciphertext = crypto.encrypt("value", aad="a")
    other = ciphertext.replace("v1:k1:", "v1:k9:", 1)
    with pytest.raises(
        CryptoError, match=r"key id 'k9', which is not in the keyring .*keyring\.json \(it has: k1\)"
    ):
        crypto.decrypt(other, aad="a")
    with pytest.raises(CryptoError, match="not a suite ciphertext"):
        crypto.decrypt("plain text", aad="a")
    with pytest.raises(CryptoError, match="unsupported ciphertext version 'v7'"):
        crypto.decrypt(ciphertext.replace("v1:", "v7:", 1), aad="a")
    with pytest.raises(CryptoError, match="truncated"):
        crypto.decrypt("v1:k1:AAAA", aad="a")
    with pytest.raises(CryptoError, match="not valid base64"):
        crypto.decrypt("v1:k1:A", aad="a")


def test_missing_keyring_names_the_command() -> None:
    with pytest.raises(
        crypto.KeyringMissing, match=r"no keyring at .*; create one with `suite secrets init`"
    ) as exc:
        crypto.encrypt("value", aad="a")
    assert exc.value.exit_code == 2


def test_keyring_file(keyring: crypto.Keyring) -> None:
    path = get_settings().keyring_path
    assert keyring.path == path and path.parent == get_settings().data_dir
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["current"] == "k1" and [k["id"] for k in data["keys"]] == ["k1"]
    assert len(base64.urlsafe_b64decode(data["keys"][0]["key"] + "=")) == 32
    before = path.read_bytes()
    with pytest.raises(Conflict, match="refusing to overwrite"):
        crypto.init_keyring()
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".keyring-")]  # no temp files left

    ring = crypto.add_key()
    assert ring.current == "k2" and set(ring.keys) == {"k1", "k2"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert crypto.load_keyring().current == "k2"  # re-read after the file changed


def test_unsafe_or_corrupt_keyring_is_refused(keyring: crypto.Keyring) -> None:
    path = keyring.path
    if os.name == "posix":
        path.chmod(0o644)
        with pytest.raises(CryptoError, match=r"readable by other users .*chmod 600"):
            crypto.load_keyring()
        path.chmod(0o600)
    path.write_text("{not json")
    with pytest.raises(CryptoError, match="is not a valid keyring file"):
        crypto.load_keyring()


def test_secrets_and_copied_ciphertext(db_session: Session, keyring: crypto.Keyring) -> None:
    crypto.set_secret(db_session, name="tmdb.api_key", value="tmdb-123")
    crypto.set_secret(db_session, name="openai.api_key", value="sk-456")
    assert crypto.get_secret(db_session, name="tmdb.api_key") == "tmdb-123"
    crypto.set_secret(db_session, name="tmdb.api_key", value="tmdb-789")
    assert crypto.get_secret(db_session, name="tmdb.api_key") == "tmdb-789"
    tmdb = db_session.get(Secret, "tmdb.api_key")
    openai = db_session.get(Secret, "openai.api_key")
    assert tmdb is not None and openai is not None and "tmdb" not in tmdb.ciphertext
    openai.ciphertext = tmdb.ciphertext  # copied to another row
    db_session.flush()
    with pytest.raises(CryptoError, match=r"cannot decrypt core_secret:openai\.api_key"):
        crypto.get_secret(db_session, name="openai.api_key")
    with pytest.raises(NotFound, match="secret 'nope' not found"):
        crypto.get_secret(db_session, name="nope")
    with pytest.raises(ValidationFailed):
        crypto.set_secret(db_session, name="bad name", value="x")
    assert crypto.delete_secret(db_session, name="tmdb.api_key")
    assert not crypto.delete_secret(db_session, name="tmdb.api_key")


@pytest.fixture
def job_messages() -> Iterator[crypto.EncryptedColumn]:
    """A second registered column, as a domain would register its own (here: core_job.message)."""
    column = crypto.register_encrypted_column("core_job", "message", key="id")
    yield column
    crypto.columns._registry.pop(column.name)


def by_key(session: Session) -> dict[str, dict[str, int]]:
    # Columns other domains register (catalog's TMDB key) hold no rows here: leave them out.
    return {c["column"]: c["by_key"] for c in crypto.keyring_status(session)["columns"] if c["by_key"]}


def test_rotate_reencrypts_every_registered_column(
    any_db_session: Session, keyring: crypto.Keyring, job_messages: crypto.EncryptedColumn
) -> None:
    values = {f"s{i:02d}": f"value-{i}" for i in range(7)}
    for name, value in values.items():
        crypto.set_secret(any_db_session, name=name, value=value)
    for i in range(3):
        any_db_session.add(Job(id=f"job-{i}", name="t", message=job_messages.encrypt(f"msg-{i}", f"job-{i}")))
    any_db_session.add(Job(id="job-plain", name="t", message=None))  # NULLs are left alone
    any_db_session.commit()

    seen: list[tuple[int, int]] = []
    summary = crypto.rotate(any_db_session, batch_size=3, progress=lambda d, t: seen.append((d, t)))
    assert summary == {"key_id": "k2", "added_key": True, "rows": 10, "reencrypted": 10}
    assert seen[0] == (0, 10) and seen[-1] == (10, 10)
    assert by_key(any_db_session) == {"core_secret.ciphertext": {"k2": 7}, "core_job.message": {"k2": 3}}
    for name, value in values.items():
        assert crypto.get_secret(any_db_session, name=name) == value
    job = any_db_session.get(Job, "job-1")
    assert job is not None and job.message is not None
    assert job_messages.decrypt(job.message, "job-1") == "msg-1"
    status = crypto.keyring_status(any_db_session)
    assert status["current"] == "k2" and status["pending"] == 0
    assert [(k["id"], k["current"], k["rows"]) for k in status["keys"]] == [
        ("k1", False, 0),
        ("k2", True, 10),
    ]


def test_interrupted_rotate_resumes_consistently(any_db_session: Session, keyring: crypto.Keyring) -> None:
    values = {f"name-{i}": f"secret-{i}" for i in range(9)}
    for name, value in values.items():
        crypto.set_secret(any_db_session, name=name, value=value)
    any_db_session.commit()

    def stop_after_two_batches(done: int, total: int) -> None:
        if done >= 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        crypto.rotate(any_db_session, batch_size=2, progress=stop_after_two_batches)
    any_db_session.rollback()
    assert by_key(any_db_session) == {"core_secret.ciphertext": {"k1": 5, "k2": 4}}
    assert crypto.keyring_status(any_db_session)["pending"] == 5
    for name, value in values.items():  # half-rotated data is still fully readable
        assert crypto.get_secret(any_db_session, name=name) == value

    summary = crypto.rotate(any_db_session, resume=True, batch_size=2)
    assert summary == {"key_id": "k2", "added_key": False, "rows": 5, "reencrypted": 5}
    assert by_key(any_db_session) == {"core_secret.ciphertext": {"k2": 9}}
    assert set(crypto.load_keyring().keys) == {"k1", "k2"}  # resuming adds no key
    again = crypto.rotate(any_db_session, resume=True)  # idempotent
    assert again["reencrypted"] == 0 and again["rows"] == 0
    for name, value in values.items():
        assert crypto.get_secret(any_db_session, name=name) == value


def test_rotate_reports_rows_it_cannot_decrypt(db_session: Session, keyring: crypto.Keyring) -> None:
    crypto.set_secret(db_session, name="good", value="fine")
    crypto.set_secret(db_session, name="bad", value="broken")
    bad = db_session.get(Secret, "bad")
    assert bad is not None
    bad.ciphertext = flip_last_byte(bad.ciphertext)
    db_session.commit()
    with pytest.raises(CryptoError, match=r"1 of 2 rows could not be re-encrypted .*core_secret:bad") as exc:
        crypto.rotate(db_session)
    assert exc.value.details["reencrypted"] == 1
    db_session.rollback()
    assert crypto.get_secret(db_session, name="good") == "fine"
    assert (
        db_session.scalars(select(Secret.ciphertext).where(Secret.name == "good")).one().startswith("v1:k2:")
    )
    assert (
        db_session.scalars(select(Secret.ciphertext).where(Secret.name == "bad")).one().startswith("v1:k1:")
    )


def test_keyring_path_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from suite.core.config import reset_settings

    target = tmp_path / "elsewhere" / "keys.json"
    monkeypatch.setenv("SUITE_CRYPTO__KEYRING_PATH", str(target))
    reset_settings()
    assert crypto.init_keyring().path == target and target.exists()
