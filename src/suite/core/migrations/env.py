"""Alembic env: runs against the engine passed in `config.attributes` (or the suite's engine)."""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Any

from alembic import context

from suite.core.db import Base, get_engine
from suite.core.migrations import import_models

config = context.config
import_models()
target_metadata = Base.metadata
domain = config.attributes.get("autogenerate_domain")


def _ignored() -> list[str]:
    """fnmatch patterns of objects written by hand in migrations (FTS tables, generated search columns) that
    autogenerate must leave alone: `DomainSpec.extra["autogenerate_ignore"]`, matched on `table` and
    `table.column` / index names."""
    from suite.core.plugins import load_domain_specs

    return [p for spec in load_domain_specs() for p in spec.extra.get("autogenerate_ignore", ())]


IGNORED = _ignored()


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    table = getattr(getattr(obj, "table", None), "name", None)
    names = [str(name)] + ([f"{table}.{name}"] if table else [])
    if reflected and compare_to is None and any(fnmatch(n, p) for n in names for p in IGNORED):
        return False
    if type_ == "table" and domain:
        return bool(name and name.startswith(f"{domain}_"))
    if domain and hasattr(obj, "table") and obj.table is not None:
        return str(obj.table.name).startswith(f"{domain}_")
    return True


def run() -> None:
    engine = config.attributes.get("engine") or get_engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            include_object=include_object,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run()
