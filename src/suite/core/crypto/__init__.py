"""AES-256-GCM for values that must be readable later (provider keys, Jira PATs), under a keyring of key ids.

The keyring is a JSON file with mode 600 at `settings.keyring_path`, outside the database, created by
`suite secrets init`. A ciphertext is `v1:<key id>:<base64url(nonce | ciphertext | tag)>`; the row's identity
(`"core_secret:<name>"`) is the associated data, so a value copied to another row does not decrypt.

Encrypted columns are registered (`register_encrypted_column`, at import of the models module that owns the
table) so `suite secrets rotate` can add a key, make it current and re-encrypt every registered column in
batches: resumable (rows already under the current key are skipped) and idempotent.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Table, func, not_, select, tuple_, update
from sqlalchemy.orm import Session

from suite.core.config import get_settings
from suite.core.errors import Conflict, CryptoError, NotFound, ValidationFailed
from suite.core.models import Secret

VERSION = "v1"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
KEYRING_FORMAT = "suite-keyring"
_KEY_ID_RE = re.compile(r"k(\d+)")
_SECRET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,127}")


class KeyringMissing(CryptoError):
    code = "keyring_missing"
    exit_code = 2


# --- the keyring ---------------------------------------------------------------------------------------


@dataclass
class Keyring:
    path: Path
    current: str
    keys: dict[str, bytes]
    created: dict[str, str] = field(default_factory=dict)

    def key(self, key_id: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            have = ", ".join(sorted(self.keys, key=_key_order))
            raise CryptoError(
                f"ciphertext uses key id {key_id!r}, which is not in the keyring {self.path} (it has: {have})"
            ) from None

    def to_json(self) -> dict[str, Any]:
        keys = [
            {"id": kid, "created_at": self.created.get(kid, ""), "key": _b64e(self.keys[kid])}
            for kid in sorted(self.keys, key=_key_order)
        ]
        return {"format": KEYRING_FORMAT, "version": 1, "current": self.current, "keys": keys}


def _key_order(key_id: str) -> tuple[int, str]:
    match = _KEY_ID_RE.fullmatch(key_id)
    return (int(match.group(1)) if match else 0, key_id)


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def keyring_path() -> Path:
    return get_settings().keyring_path


_cache: dict[Path, tuple[tuple[int, int, int], Keyring]] = {}


def load_keyring(path: Path | None = None) -> Keyring:
    """The keyring (re-read when the file changes), or a clear CryptoError."""
    path = path or keyring_path()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyringMissing(f"no keyring at {path}; create one with `suite secrets init`") from None
    if os.name == "posix" and st.st_mode & 0o077:
        raise CryptoError(
            f"keyring {path} is readable by other users (mode {st.st_mode & 0o777:o}); chmod 600 it"
        )
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _cache.get(path)
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        keys = {str(k["id"]): _b64d(str(k["key"])) for k in data["keys"]}
        created = {str(k["id"]): str(k.get("created_at", "")) for k in data["keys"]}
        current = str(data["current"])
    except PermissionError:
        raise CryptoError(f"keyring {path} is not readable (permission denied)") from None
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise CryptoError(
            f"keyring {path} is not a valid keyring file ({type(exc).__name__}: {exc})"
        ) from None
    if current not in keys or any(len(k) != KEY_BYTES for k in keys.values()):
        raise CryptoError(f"keyring {path} is not a valid keyring file (bad current key id or key length)")
    ring = Keyring(path=path, current=current, keys=keys, created=created)
    _cache[path] = (stamp, ring)
    return ring


def _write(ring: Keyring, *, exclusive: bool) -> None:
    """Write atomically with mode 600; `exclusive` refuses to replace an existing file."""
    ring.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=ring.path.parent, prefix=".keyring-", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(ring.to_json(), fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        if exclusive:
            try:
                os.link(tmp, ring.path)  # atomic, and fails when the file exists
            except FileExistsError:
                raise Conflict(
                    f"a keyring already exists at {ring.path}; refusing to overwrite it "
                    "(use `suite secrets rotate` to add a key)"
                ) from None
            except OSError:  # a filesystem without hard links
                fd = os.open(ring.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(Path(tmp).read_text(encoding="utf-8"))
        else:
            os.replace(tmp, ring.path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _cache.pop(ring.path, None)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock next to the keyring while it is read, changed and written."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.name != "posix":  # pragma: no cover
        yield
        return
    import fcntl

    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def init_keyring(path: Path | None = None) -> Keyring:
    """Create the keyring with one key; refuse to overwrite an existing one."""
    path = path or keyring_path()
    if path.exists():
        raise Conflict(f"a keyring already exists at {path}; refusing to overwrite it")
    ring = Keyring(path=path, current="k1", keys={"k1": AESGCM.generate_key(256)}, created={"k1": _now()})
    _write(ring, exclusive=True)
    return ring


def add_key(path: Path | None = None) -> Keyring:
    """Add a new key and make it current (old keys stay, so older ciphertexts still decrypt)."""
    path = path or keyring_path()
    with _locked(path):
        _cache.pop(path, None)
        ring = load_keyring(path)
        kid = f"k{max(_key_order(k)[0] for k in ring.keys) + 1}"
        keys = {**ring.keys, kid: AESGCM.generate_key(256)}
        new = Keyring(path=path, current=kid, keys=keys, created={**ring.created, kid: _now()})
        _write(new, exclusive=False)
    return new


# --- encrypt / decrypt ---------------------------------------------------------------------------------


def parse_ciphertext(ciphertext: str) -> tuple[str, str, str]:
    """(version, key id, data) of a ciphertext, or CryptoError."""
    parts = ciphertext.split(":", 2) if isinstance(ciphertext, str) else []
    if len(parts) != 3 or not parts[1]:
        raise CryptoError(f"not a suite ciphertext (expected {VERSION}:<key id>:<data>)")
    if parts[0] != VERSION:
        raise CryptoError(f"unsupported ciphertext version {parts[0][:16]!r} (this suite reads {VERSION})")
    return parts[0], parts[1], parts[2]


def key_id_of(ciphertext: str) -> str:
    return parse_ciphertext(ciphertext)[1]


def encrypt_bytes(data: bytes, *, aad: str, keyring: Keyring | None = None) -> str:
    ring = keyring or load_keyring()
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(ring.key(ring.current)).encrypt(nonce, data, aad.encode())
    return f"{VERSION}:{ring.current}:{_b64e(nonce + sealed)}"


def decrypt_bytes(ciphertext: str, *, aad: str, keyring: Keyring | None = None) -> bytes:
    _, kid, data = parse_ciphertext(ciphertext)
    ring = keyring or load_keyring()
    key = ring.key(kid)
    try:
        raw = _b64d(data)
    except (binascii.Error, ValueError):
        raise CryptoError(f"ciphertext for {aad} is not valid base64") from None
    if len(raw) < NONCE_BYTES + TAG_BYTES:
        raise CryptoError(f"ciphertext for {aad} is truncated")
    try:
        return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad.encode())
    except InvalidTag:
        raise CryptoError(
            f"cannot decrypt {aad}: authentication failed "
            "(tampered data, a wrong key, or a value copied from another row)"
        ) from None


def encrypt(value: str, *, aad: str, keyring: Keyring | None = None) -> str:
    return encrypt_bytes(value.encode(), aad=aad, keyring=keyring)


def decrypt(ciphertext: str, *, aad: str, keyring: Keyring | None = None) -> str:
    return decrypt_bytes(ciphertext, aad=aad, keyring=keyring).decode()


# --- the registry of encrypted columns -----------------------------------------------------------------


@dataclass(frozen=True)
class EncryptedColumn:
    """A text column holding ciphertexts; `key` names the columns identifying a row (the AAD)."""

    table: str
    column: str
    key: tuple[str, ...]
    aad_prefix: str = ""

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"

    def aad(self, *key_values: Any) -> str:
        if len(key_values) != len(self.key):
            raise ValueError(f"{self.name} is keyed by {', '.join(self.key)}")
        return ":".join([self.aad_prefix or self.table, *(str(v) for v in key_values)])

    def encrypt(self, value: str, *key_values: Any) -> str:
        return encrypt(value, aad=self.aad(*key_values))

    def decrypt(self, ciphertext: str, *key_values: Any) -> str:
        return decrypt(ciphertext, aad=self.aad(*key_values))

    def table_obj(self) -> Table:
        from suite.core.db import Base

        table = Base.metadata.tables.get(self.table)
        if table is None or self.column not in table.c or any(k not in table.c for k in self.key):
            raise CryptoError(f"encrypted column {self.name} is registered but its table is not known")
        return table


_registry: dict[str, EncryptedColumn] = {}


def register_encrypted_column(
    table: str, column: str, *, key: str | tuple[str, ...] = ("id",), aad_prefix: str = ""
) -> EncryptedColumn:
    """Declare a column of ciphertexts so `secrets rotate` re-encrypts it (call at import of your models).

    Give `aad_prefix` (e.g. "agent_user.jira_pat") when one table has several encrypted columns.
    """
    col = EncryptedColumn(table, column, (key,) if isinstance(key, str) else tuple(key), aad_prefix)
    _registry[col.name] = col
    return col


def encrypted_columns(*, load: bool = False) -> list[EncryptedColumn]:
    """Every registered column; `load` first imports every domain's models so theirs are registered."""
    if load:
        from suite.core.migrations import import_models

        import_models()
    return list(_registry.values())


SECRET_COLUMN = register_encrypted_column("core_secret", "ciphertext", key="name")


# --- core_secret ---------------------------------------------------------------------------------------


def set_secret(session: Session, *, name: str, value: str) -> Secret:
    """Store (or replace) a named secret, encrypted under the current key."""
    if not _SECRET_NAME_RE.fullmatch(name):
        raise ValidationFailed("secret name must be 1-128 characters: letters, digits and _ . : / @ -")
    if not value:
        raise ValidationFailed(f"secret {name!r}: the value is empty")
    ciphertext = SECRET_COLUMN.encrypt(value, name)
    row = session.get(Secret, name)
    if row is None:
        row = Secret(name=name, ciphertext=ciphertext)
        session.add(row)
    else:
        row.ciphertext = ciphertext
    session.flush()
    return row


def get_secret(session: Session, *, name: str) -> str:
    row = session.get(Secret, name)
    if row is None:
        raise NotFound(f"secret {name!r} not found")
    return SECRET_COLUMN.decrypt(row.ciphertext, name)


def delete_secret(session: Session, *, name: str) -> bool:
    row = session.get(Secret, name)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


# --- status and rotation -------------------------------------------------------------------------------


def _current_prefix(ring: Keyring) -> str:
    return f"{VERSION}:{ring.current}:"


def keyring_status(session: Session) -> dict[str, Any]:
    """Key ids, the current one, and rows per key id in every registered column."""
    ring = load_keyring()
    columns = []
    totals: Counter[str] = Counter()
    for col in encrypted_columns(load=True):
        table = col.table_obj()
        counts: Counter[str] = Counter()
        values = session.execute(select(table.c[col.column]).where(table.c[col.column].is_not(None)))
        for (value,) in values:
            try:
                counts[key_id_of(value)] += 1
            except CryptoError:
                counts["(invalid)"] += 1
        totals.update(counts)
        columns.append(
            {"column": col.name, "rows": sum(counts.values()), "by_key": dict(sorted(counts.items()))}
        )
    keys = [
        {
            "id": kid,
            "created_at": ring.created.get(kid, ""),
            "current": kid == ring.current,
            "rows": totals[kid],
        }
        for kid in sorted(ring.keys, key=_key_order)
    ]
    unknown = {kid: n for kid, n in totals.items() if kid not in ring.keys}
    pending = sum(n for kid, n in totals.items() if kid != ring.current)
    return {
        "path": str(ring.path),
        "current": ring.current,
        "keys": keys,
        "columns": columns,
        "pending": pending,
        "unknown_key_ids": unknown,
    }


def _pending_query(col: EncryptedColumn, table: Table, ring: Keyring) -> Any:
    value = table.c[col.column]
    return value.is_not(None) & not_(value.startswith(_current_prefix(ring), autoescape=True))


def rotate(
    session: Session,
    *,
    resume: bool = False,
    batch_size: int = 200,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Add a key (unless `resume`), make it current, re-encrypt every row not under it; commit per batch.

    `progress(done, total)` is called after each committed batch. Rows that cannot be decrypted are left as
    they are and reported in one CryptoError at the end (after every other row was re-encrypted).
    """
    columns = encrypted_columns(load=True)
    ring = load_keyring() if resume else add_key()
    totals: dict[str, int] = {}
    for col in columns:
        table = col.table_obj()
        count = select(func.count()).select_from(table).where(_pending_query(col, table, ring))
        totals[col.name] = int(session.scalar(count) or 0)
    total = sum(totals.values())
    done = reencrypted = 0
    failures: list[str] = []
    if progress:
        progress(0, total)
    for col in columns:
        table = col.table_obj()
        keys = [table.c[k] for k in col.key]
        value = table.c[col.column]
        last: tuple[Any, ...] | None = None
        while True:
            query = (
                select(*keys, value).where(_pending_query(col, table, ring)).order_by(*keys).limit(batch_size)
            )
            if last is not None:
                query = query.where(keys[0] > last[0] if len(keys) == 1 else tuple_(*keys) > tuple_(*last))
            rows = session.execute(query).all()
            if not rows:
                break
            for row in rows:
                key_values, old = tuple(row[:-1]), row[-1]
                aad = col.aad(*key_values)
                try:
                    new = encrypt_bytes(decrypt_bytes(old, aad=aad, keyring=ring), aad=aad, keyring=ring)
                except CryptoError as exc:
                    failures.append(exc.message)
                    continue
                match = [k == v for k, v in zip(keys, key_values, strict=True)]
                # compare-and-set: a row changed meanwhile is left for the next run
                result = session.execute(update(table).where(*match, value == old).values({col.column: new}))
                reencrypted += int(getattr(result, "rowcount", 0) or 0)
            last = tuple(rows[-1][:-1])
            session.commit()
            done += len(rows)
            if progress:
                progress(done, total)
    summary = {"key_id": ring.current, "added_key": not resume, "rows": total, "reencrypted": reencrypted}
    if failures:
        raise CryptoError(
            f"{len(failures)} of {total} rows could not be re-encrypted and keep their old key; "
            f"first: {failures[0]}",
            details={**summary, "failures": failures[:20]},
        )
    return summary
