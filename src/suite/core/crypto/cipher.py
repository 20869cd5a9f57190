"""AES-256-GCM ciphertexts `v1:<key id>:<base64url(nonce | ciphertext | tag)>` with associated data."""

from __future__ import annotations

import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from suite.core.crypto.keyring import Keyring, _b64d, _b64e, load_keyring
from suite.core.errors import CryptoError

VERSION = "v1"
NONCE_BYTES = 12
TAG_BYTES = 16


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
