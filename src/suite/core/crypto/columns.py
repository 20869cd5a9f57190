"""The registry of encrypted columns (what `suite secrets rotate` re-encrypts), and named secrets in
`core_secret`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session

from suite.core.crypto.cipher import decrypt, encrypt
from suite.core.errors import CryptoError, NotFound, ValidationFailed
from suite.core.models import Secret

_SECRET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,127}")


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
