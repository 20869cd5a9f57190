"""AES-256-GCM for values that must be readable later (provider keys, Jira PATs), under a keyring of key ids.

The keyring is a JSON file with mode 600 at `settings.keyring_path`, outside the database, created by
`suite secrets init`. A ciphertext is `v1:<key id>:<base64url(nonce | ciphertext | tag)>`; the row's identity
(`"core_secret:<name>"`) is the associated data, so a value copied to another row does not decrypt.

Encrypted columns are registered (`register_encrypted_column`, at import of the models module that owns the
table) so `suite secrets rotate` can add a key, make it current and re-encrypt every registered column in
batches: resumable (rows already under the current key are skipped) and idempotent.

Modules: `keyring`, `cipher` (encrypt/decrypt), `columns` (the registry, `core_secret`), `rotation` (status
and `suite secrets rotate`). Everything public is importable from here.
"""

from __future__ import annotations

from suite.core.crypto.cipher import (
    NONCE_BYTES,
    TAG_BYTES,
    VERSION,
    decrypt,
    decrypt_bytes,
    encrypt,
    encrypt_bytes,
    key_id_of,
    parse_ciphertext,
)
from suite.core.crypto.columns import (
    SECRET_COLUMN,
    EncryptedColumn,
    delete_secret,
    encrypted_columns,
    get_secret,
    register_encrypted_column,
    set_secret,
)
from suite.core.crypto.keyring import (
    KEY_BYTES,
    KEYRING_FORMAT,
    Keyring,
    KeyringMissing,
    add_key,
    init_keyring,
    keyring_path,
    load_keyring,
)
from suite.core.crypto.rotation import keyring_status, rotate

__all__ = [
    "KEYRING_FORMAT",
    "KEY_BYTES",
    "NONCE_BYTES",
    "SECRET_COLUMN",
    "TAG_BYTES",
    "VERSION",
    "EncryptedColumn",
    "Keyring",
    "KeyringMissing",
    "add_key",
    "decrypt",
    "decrypt_bytes",
    "delete_secret",
    "encrypt",
    "encrypt_bytes",
    "encrypted_columns",
    "get_secret",
    "init_keyring",
    "key_id_of",
    "keyring_path",
    "keyring_status",
    "load_keyring",
    "parse_ciphertext",
    "register_encrypted_column",
    "rotate",
    "set_secret",
]
