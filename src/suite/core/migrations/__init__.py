"""One Alembic environment built in code: core's branch plus one labelled branch per domain.

No alembic.ini is needed at run time. `upgrade` goes to `heads`; autogenerate is filtered to one domain.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine

from suite.core.errors import SuiteError, UsageError

HERE = Path(__file__).resolve().parent


class MigrationError(SuiteError):
    code = "migration_error"
    exit_code = 1


def branch_folders() -> dict[str, Path]:
    """Branch label -> versions folder (core first)."""
    from suite.core.plugins import load_domain_specs

    folders = {"core": HERE / "versions"}
    for spec in load_domain_specs():
        if spec.migrations:
            module = importlib.import_module(spec.migrations)
            folders[spec.name] = Path(module.__file__ or "").resolve().parent / "versions"
    return folders


def import_models() -> None:
    """Import every ORM module so Base.metadata knows all tables."""
    from suite.core.plugins import load_domain_specs

    importlib.import_module("suite.core.models")
    for spec in load_domain_specs():
        if spec.models:
            importlib.import_module(spec.models)


def alembic_config(engine: Engine | None = None, **attributes: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("version_locations", " ".join(str(p) for p in branch_folders().values()))
    cfg.set_main_option("path_separator", "space")
    cfg.attributes["engine"] = engine
    cfg.attributes.update(attributes)
    return cfg


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def current_revisions(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def applied_revisions(script: ScriptDirectory, current: set[str]) -> set[str]:
    """Every revision the database has, dependencies included.

    Alembic keeps only the branch tips in its version table: a domain branch that depends on core's head
    stands for it, so core's revision is applied without being listed.
    """
    if not current:
        return set()
    return {rev.revision for rev in script.iterate_revisions(tuple(current), "base") if rev is not None}


def is_up_to_date(script: ScriptDirectory, current: set[str]) -> bool:
    return set(script.get_heads()) <= applied_revisions(script, current)


def check_known(engine: Engine) -> None:
    """Refuse a database stamped with revisions this version of suite does not know."""
    script = script_directory()
    for rev in current_revisions(engine):
        try:
            known = script.get_revision(rev)
        except CommandError:
            known = None
        if known is None:
            raise MigrationError(
                f"the database is at revision {rev}, which this version of suite does not know; "
                "upgrade suite or point database_url at another database"
            )


def upgrade(engine: Engine, target: str = "heads") -> None:
    check_known(engine)
    if target == "heads" and is_up_to_date(script_directory(), current_revisions(engine)):
        return
    try:
        command.upgrade(alembic_config(engine), target)
    except CommandError as exc:
        raise MigrationError(f"migration failed: {exc}") from exc


def status(engine: Engine) -> dict[str, Any]:
    check_known(engine)
    script = script_directory()
    current = current_revisions(engine)
    applied = applied_revisions(script, current)
    heads = set(script.get_heads())
    branches = {}
    for head in heads:
        rev = script.get_revision(head)
        label = next(iter(rev.branch_labels), None) if rev and rev.branch_labels else None
        if label is None and rev is not None:
            for base in script.iterate_revisions(head, "base"):
                if base.branch_labels:
                    label = next(iter(base.branch_labels))
                    break
        branches[label or head] = {"head": head, "current": head in applied}
    return {
        "current": sorted(current),
        "heads": sorted(heads),
        "up_to_date": heads <= applied,
        "branches": branches,
    }


def revision(*, domain: str, message: str, autogenerate: bool = True, engine: Engine | None = None) -> str:
    folders = branch_folders()
    if domain not in folders:
        raise UsageError(f"unknown domain {domain!r}; known: {', '.join(sorted(folders))}")
    script = script_directory()
    has_branch = any(
        domain in (rev.branch_labels or ()) for rev in script.walk_revisions() if rev is not None
    )
    folder = folders[domain]
    folder.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"message": message, "autogenerate": autogenerate}
    if has_branch:
        kwargs["head"] = f"{domain}@head"
    else:
        kwargs.update(head="base", branch_label=domain, version_path=str(folder))
        if domain != "core":
            kwargs["depends_on"] = "core@head"
    if autogenerate and engine is not None:
        upgrade(engine)
    cfg = alembic_config(engine, autogenerate_domain=domain)
    result = command.revision(cfg, **kwargs)
    scripts = result if isinstance(result, list) else [result]
    return ", ".join(s.path for s in scripts if s is not None)
