"""The keyring: AES-256 keys by key id in a JSON file with mode 600 outside the database (`suite secrets init`
creates it, `suite secrets rotate` adds a key and makes it current)."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from suite.core.config import get_settings
from suite.core.errors import Conflict, CryptoError

KEY_BYTES = 32
KEYRING_FORMAT = "suite-keyring"
_KEY_ID_RE = re.compile(r"k(\d+)")


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
