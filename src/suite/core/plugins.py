"""Domains as plugins: a `DomainSpec` names its parts by import string, so loading a spec imports nothing heavy.

In-tree domains come from a static table; third-party ones from the `suite.domains` entry-point group, filtered
by `[plugins] allow/deny`. A broken plugin prints one warning and is skipped; it never breaks the CLI.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

# In-tree domains; `DOMAIN` in each package's __init__ is its spec. A domain whose package is absent
# (not landed yet, or removed from a slim install) is skipped.
IN_TREE_DOMAINS: tuple[str, ...] = ("recs", "catalog", "chat", "agent", "imagegen")

ENTRY_POINT_GROUP = "suite.domains"


@dataclass(frozen=True)
class DomainSpec:
    name: str
    help: str
    cli: str | None = None  # "suite.chat.cli:app"
    router: str | None = None  # "suite.chat.api:router" mounted at /api/v1/<name>
    pages: str | None = None  # "suite.chat.api:pages" mounted at /<name>/
    root_router: str | None = None  # compatibility routes at the root (/v1, /sdapi/v1)
    settings: str | None = None  # "suite.chat.settings:ChatSettings", the [<name>] table
    models: str | None = None  # module holding the ORM models (imported before migrations)
    tasks: str | None = None  # module holding Huey tasks (imported by the consumer)
    migrations: str | None = None  # package whose folder holds this domain's Alembic versions
    readiness: str | None = None  # "mod:func" returning None when ready, or raising / returning a problem
    startup: str | None = None  # "mod:func" called with the FastAPI app on startup
    shutdown: str | None = None  # "mod:func" called with the FastAPI app on shutdown
    roles: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def load_attr(target: str) -> Any:
        module, _, attr = target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
        return obj


_warned: set[str] = set()


def _warn(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


def _allowed(name: str) -> tuple[list[str] | None, list[str]]:
    # Read the allow/deny lists without loading full settings (settings need the specs first, and pydantic
    # would cost `suite --help` a tenth of a second).
    allow_env = os.environ.get("SUITE_PLUGINS__ALLOW")
    deny_env = os.environ.get("SUITE_PLUGINS__DENY")
    try:
        table = read_toml().get("plugins", {})
    except Exception:
        table = {}
    allow = _parse_list(allow_env) if allow_env is not None else table.get("allow")
    deny = _parse_list(deny_env) if deny_env is not None else table.get("deny", [])
    return allow, list(deny or [])


def read_toml() -> dict[str, Any]:
    """suite.toml as a dict; problems are left for the settings loader to report."""
    try:
        with open(os.environ.get("SUITE_CONFIG", "suite.toml"), "rb") as fh:
            return tomllib.load(fh)
    except (OSError, ValueError):
        return {}


def _parse_list(raw: str) -> list[str]:
    import json

    raw = raw.strip()
    if raw.startswith("["):
        return [str(x) for x in json.loads(raw)]
    return [x.strip() for x in raw.split(",") if x.strip()]


_cache: list[DomainSpec] | None = None


def load_domain_specs(*, quiet: bool = False) -> list[DomainSpec]:
    """In-tree specs, then entry-point specs that pass the allow/deny list. Cached per process."""
    global _cache
    if _cache is not None:
        return _cache
    specs: list[DomainSpec] = []
    for name in IN_TREE_DOMAINS:
        if importlib.util.find_spec(f"suite.{name}") is None:
            continue
        module = importlib.import_module(f"suite.{name}")
        specs.append(module.DOMAIN)
    seen = {s.name for s in specs}
    allow, deny = _allowed("")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen or ep.name in deny or (allow is not None and ep.name not in allow):
            continue
        try:
            spec = ep.load()
            if not isinstance(spec, DomainSpec):
                raise TypeError(f"{ep.value} is not a DomainSpec")
            if spec.settings:
                spec.load_attr(spec.settings)
        except Exception as exc:  # a broken plugin never breaks the CLI
            _warn(f"plugin {ep.name!r} ({ep.value}) skipped: {type(exc).__name__}: {exc}")
            continue
        specs.append(spec)
        seen.add(spec.name)
    _cache = specs
    return specs


def reset_plugin_cache() -> None:
    global _cache
    _cache = None


def domain_roles() -> set[str]:
    return {role for spec in load_domain_specs() for role in spec.roles}
