"""Key status and rotation: rows per key id in every encrypted column; re-encryption under a new key, in
batches, resumable and idempotent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy import Table, func, not_, select, tuple_, update
from sqlalchemy.orm import Session

from suite.core.crypto.cipher import VERSION, decrypt_bytes, encrypt_bytes, key_id_of
from suite.core.crypto.columns import EncryptedColumn, encrypted_columns
from suite.core.crypto.keyring import Keyring, _key_order, add_key, load_keyring
from suite.core.errors import CryptoError


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
