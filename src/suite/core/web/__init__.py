"""Shared web layer: one Jinja2 environment and base template, one stylesheet, vendored htmx, static files.

Domain pages extend `base.html` and are rendered with `render(request, "<domain>/<page>.html", context)`:
core templates first (`base.html`, `home.html`, `login.html`), then `<domain>/templates/<page>.html`, then
`<domain>/templates/<domain>/<page>.html` (either folder layout works). Every page gets `request`, `user`,
`csrf_token`, `nav`, `static_url(...)`, `url_for(...)`, `login_url`, `logout_url` and `version`.

`user` and `csrf_token` come from the context when the caller passes them, else from `request.state.user`
and `request.state.csrf_token` (set by the auth layer), else from the session cookie through
`suite.core.web_auth.user_from_cookie`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import BaseLoader, ChoiceLoader, Environment, FileSystemLoader, PrefixLoader, select_autoescape
from starlette.templating import Jinja2Templates

from suite import __version__
from suite.core.plugins import DomainSpec, load_domain_specs

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
STATIC_PREFIX = "/static"
LOGIN_URL = "/login"
LOGOUT_URL = "/logout"
CSRF_HEADER = "X-CSRF-Token"  # htmx sends it on every request (hx-headers on <body>)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

log = logging.getLogger("suite.web")
router = APIRouter(include_in_schema=False)


# --- templates -----------------------------------------------------------------------------------------


def domain_dir(spec: DomainSpec) -> Path | None:
    """The folder of the package a domain lives in (found without importing its modules)."""
    target = spec.pages or spec.router or spec.cli or spec.settings
    if not target:
        return None
    module = target.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.origin:
        return None
    return Path(found.origin).resolve().parent


def _domain_folder(spec: DomainSpec, kind: str) -> Path | None:
    override = spec.extra.get(kind)
    folder = Path(override) if override else (domain_dir(spec) or Path("/nonexistent")) / kind
    return folder if folder.is_dir() else None


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The one Jinja2 environment (autoescape on for every template)."""
    prefixed: dict[str, BaseLoader] = {}
    folders: list[Path] = []
    for spec in load_domain_specs():
        folder = _domain_folder(spec, "templates")
        if folder is not None:
            prefixed[spec.name] = FileSystemLoader(folder)
            folders.append(folder)
    # Core first (a domain cannot replace base.html), then "<domain>/x.html" from <domain>/templates/x.html,
    # then from <domain>/templates/<domain>/x.html (a namespaced folder works too).
    env = Environment(
        loader=ChoiceLoader(
            [FileSystemLoader(TEMPLATES_DIR), PrefixLoader(prefixed), FileSystemLoader(folders)]
        ),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=True,
    )
    env.globals.update(
        static_url=static_url,
        login_url=LOGIN_URL,
        logout_url=LOGOUT_URL,
        csrf_header=CSRF_HEADER,
        version=__version__,
    )
    return env


@lru_cache(maxsize=1)
def templates() -> Jinja2Templates:
    return Jinja2Templates(env=environment())


@lru_cache(maxsize=256)
def _asset_version(path: str) -> str:
    file = STATIC_DIR / path
    try:
        return hashlib.sha256(file.read_bytes()).hexdigest()[:10]
    except OSError:
        return __version__


def static_url(path: str) -> str:
    """`/static/<path>?v=<content hash>` for core assets, so a new version is never served from cache."""
    path = path.lstrip("/")
    return f"{STATIC_PREFIX}/{path}?v={_asset_version(path)}"


def current_user(request: Request) -> Any | None:
    """The logged-in web user or None (cached on `request.state.user`). Never raises: a page still renders
    when the database does not answer."""
    state = request.state
    if hasattr(state, "user"):
        return state.user
    user = None
    if request.cookies:
        try:
            from suite.core.db import new_session
            from suite.core.web_auth import user_from_cookie

            with new_session() as session:
                user = user_from_cookie(request, session)
                session.commit()  # the auth layer may touch the session's last-seen time
        except Exception as exc:  # the page renders logged out; the error is in the log
            log.warning("could not resolve the web user: %s: %s", type(exc).__name__, exc)
    state.user = user
    return user


def nav_items(request: Request) -> list[dict[str, Any]]:
    path = request.url.path
    items = []
    for spec in getattr(request.app.state, "domain_specs", []):
        if spec.pages:
            href = f"/{spec.name}/"
            items.append(
                {"name": spec.name, "help": spec.help, "href": href, "active": path.startswith(href)}
            )
    return items


def render(
    request: Request,
    template_name: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """Render a page extending `base.html`, with the shared context filled in."""
    ctx: dict[str, Any] = dict(context or {})
    if "user" not in ctx:
        ctx["user"] = current_user(request)
    if "csrf_token" not in ctx:
        ctx["csrf_token"] = getattr(request.state, "csrf_token", "") or ""
    ctx.setdefault("nav", nav_items(request))
    response = templates().TemplateResponse(
        request, template_name, ctx, status_code=status_code, headers={**SECURITY_HEADERS, **(headers or {})}
    )
    return response


def reset() -> None:
    """Forget the environment and asset hashes (tests; after the domain specs change)."""
    environment.cache_clear()
    templates.cache_clear()
    _asset_version.cache_clear()


# --- static files --------------------------------------------------------------------------------------


def mount_static(app: FastAPI) -> None:
    """Core assets at /static; a domain's own `static/` folder (if it has one) at /static/<domain>."""
    for spec in getattr(app.state, "domain_specs", []):
        folder = _domain_folder(spec, "static")
        if folder is not None:
            app.mount(
                f"{STATIC_PREFIX}/{spec.name}", StaticFiles(directory=folder), name=f"static-{spec.name}"
            )
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="static")


# --- pages ---------------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    """The landing page: the domains this server runs, with links to their pages and the API docs."""
    domains = [
        {
            "name": spec.name,
            "help": spec.help,
            "pages": f"/{spec.name}/" if spec.pages else None,
            "api": f"/api/v1/{spec.name}" if spec.router else None,
        }
        for spec in getattr(request.app.state, "domain_specs", [])
    ]
    return render(request, "home.html", {"domains": domains})
