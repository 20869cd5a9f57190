"""The TMDB key stored in the database (set by an admin from the CLI or the admin page), encrypted with core's
keyring: `catalog_setting.value_enc` holds core's ciphertext token, re-encrypted by `suite secrets rotate`.

A key in the configuration (`SUITE_CATALOG__TMDB_API_KEY` / `[catalog].tmdb_api_key`) takes precedence; the
stored one is for deployments whose admins manage it from the running app. The key itself never leaves this
module except to the TMDB client: status answers say only whether one is set, where from, and its key id.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from suite.catalog import models as m
from suite.core.db import utcnow
from suite.core.errors import ValidationFailed

TMDB_KEY = "tmdb_api_key"
MAX_KEY = 512


def set_tmdb_key(session: Session, *, value: str) -> dict[str, Any]:
    """Store (or replace) the TMDB key, encrypted under the keyring's current key."""
    key = (value or "").strip()
    if not key:
        raise ValidationFailed("the TMDB key is empty")
    if len(key) > MAX_KEY or any(c.isspace() or not c.isprintable() for c in key):
        raise ValidationFailed(f"the TMDB key must be 1-{MAX_KEY} printable characters without spaces")
    ciphertext = m.SETTING_VALUE.encrypt(key, TMDB_KEY)
    row = session.get(m.Setting, TMDB_KEY)
    if row is None:
        session.add(m.Setting(key=TMDB_KEY, value_enc=ciphertext, updated_at=utcnow()))
    else:
        row.value_enc, row.updated_at = ciphertext, utcnow()
    session.flush()
    return tmdb_key_status(session)


def clear_tmdb_key(session: Session) -> bool:
    row = session.get(m.Setting, TMDB_KEY)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def stored_tmdb_key(session: Session) -> str | None:
    row = session.get(m.Setting, TMDB_KEY)
    return m.SETTING_VALUE.decrypt(row.value_enc, TMDB_KEY) if row is not None else None


def tmdb_key_status(session: Session) -> dict[str, Any]:
    """Whether a key is set and where from; never the key."""
    from suite.catalog.settings import catalog_settings
    from suite.core.crypto import key_id_of

    configured = catalog_settings().tmdb_api_key
    row = session.get(m.Setting, TMDB_KEY)
    stored = {"key_id": key_id_of(row.value_enc), "updated_at": row.updated_at} if row is not None else None
    source = "config" if configured and configured.get_secret_value() else "database" if row else None
    return {"configured": source is not None, "source": source, "stored": stored}


def effective_tmdb_key() -> str:
    """The key the TMDB client uses: the configuration's, else the stored one, else ""."""
    from sqlalchemy.exc import SQLAlchemyError

    from suite.catalog.settings import catalog_settings
    from suite.core.db import new_session

    configured = catalog_settings().tmdb_api_key
    if configured and configured.get_secret_value():
        return str(configured.get_secret_value())
    try:
        with new_session(read_only=True) as session:
            return stored_tmdb_key(session) or ""
    except SQLAlchemyError:  # a database not created yet has no stored key
        return ""
