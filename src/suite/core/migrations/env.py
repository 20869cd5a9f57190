"""Alembic env: runs against the engine passed in `config.attributes` (or the suite's engine)."""

from __future__ import annotations

from typing import Any

from alembic import context

from suite.core.db import Base, get_engine
from suite.core.migrations import import_models

config = context.config
import_models()
target_metadata = Base.metadata
domain = config.attributes.get("autogenerate_domain")


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
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
