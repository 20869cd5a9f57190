"""The shared web layer: the base template, stylesheet and vendored htmx, checked in a real headless
Chromium (Debian's `chromium`, driven by Playwright) against a real uvicorn server; screenshots go to
test-artifacts/."""

from __future__ import annotations

import hashlib
import html
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.testclient import TestClient

from conftest import artifacts_dir, free_port
from suite.core import plugins, web
from suite.core.api import create_app
from suite.core.plugins import DomainSpec

CSRF = "csrf-" + "a1" * 16


# --- a demo domain with one page extending base.html ---------------------------------------------------

demo_pages = APIRouter()


@demo_pages.get("/")
def demo_index(request: Request) -> HTMLResponse:
    request.state.csrf_token = CSRF  # what the auth layer sets for a logged-in session
    user = SimpleNamespace(username="alice")
    return web.render(request, "demo/index.html", {"greeting": "<b>hi</b>", "user": user})


@demo_pages.get("/fragment")
def demo_fragment(request: Request) -> HTMLResponse:
    token = html.escape(request.headers.get("x-csrf-token", "(none)"))
    return HTMLResponse(f'<p id="fragment">fragment loaded with token {token}</p>')


DEMO_PAGE = """\
{% extends "base.html" %}
{% block title %}Demo{% endblock %}
{% block content %}
<h1>Demo page</h1>
<p id="greeting">{{ greeting }}</p>
<button id="load" hx-get="/demo/fragment" hx-target="#out">Load</button>
<div id="out"></div>
{% endblock %}
"""


@pytest.fixture
def demo_domain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DomainSpec]:
    templates = tmp_path / "demo-templates"
    templates.mkdir()
    (templates / "index.html").write_text(DEMO_PAGE)
    static = tmp_path / "demo-static"
    static.mkdir()
    (static / "demo.js").write_text("window.demoLoaded = true;\n")
    spec = DomainSpec(
        name="demo",
        help="A demo domain for the web tests.",
        pages=f"{__name__}:demo_pages",
        extra={"templates": str(templates), "static": str(static)},
    )
    monkeypatch.setattr(plugins, "_cache", [spec])
    web.reset()
    yield spec
    web.reset()


@pytest.fixture
def app(demo_domain: DomainSpec) -> FastAPI:
    return create_app()


# --- without a browser ---------------------------------------------------------------------------------


def test_home_lists_domains_and_links(app: FastAPI) -> None:
    r = TestClient(app).get("/")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"
    page = r.text
    assert '<li class="card" data-domain="demo">' in page
    assert '<a href="/demo/">demo</a>' in page and "A demo domain for the web tests." in page
    assert 'href="/docs"' in page and 'href="/readyz"' in page
    assert '<a href="/login?next=/">Log in</a>' in page  # logged out
    assert re.search(r'<link rel="stylesheet" href="/static/style\.css\?v=[0-9a-f]{10}">', page)
    assert re.search(r'<script src="/static/htmx\.min\.js\?v=[0-9a-f]{10}" defer></script>', page)
    assert "https://" not in page  # nothing from a CDN


def test_home_without_domains() -> None:
    web.reset()
    r = TestClient(create_app([])).get("/")
    assert r.status_code == 200
    assert "No domains are installed in this server yet." in r.text


def test_domain_page_extends_base_and_escapes(app: FastAPI) -> None:
    page = TestClient(app).get("/demo/").text
    assert "<title>Demo · suite</title>" in page
    assert '<p id="greeting">&lt;b&gt;hi&lt;/b&gt;</p>' in page  # autoescape
    assert f'<meta name="csrf-token" content="{CSRF}">' in page
    assert f'hx-headers=\'{{"X-CSRF-Token": "{CSRF}"}}\'' in page
    assert f'<input type="hidden" name="csrf_token" value="{CSRF}">' in page  # the logout form
    assert '<a href="/demo/" title="A demo domain for the web tests." aria-current="page">demo</a>' in page


def test_static_files(app: FastAPI) -> None:
    client = TestClient(app)
    js = client.get("/static/htmx.min.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/demo/demo.js").text == "window.demoLoaded = true;\n"  # a domain's own folder
    missing = client.get("/static/nope.css")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_vendored_htmx_matches_its_licence_note() -> None:
    static = Path(web.__file__).parent / "static"
    note = (static / "htmx.LICENSE").read_text()
    digest = hashlib.sha256((static / "htmx.min.js").read_bytes()).hexdigest()
    assert f"sha256 {digest}" in note
    assert "htmx.org 2." in note and "Zero-Clause BSD" in note


def test_autoescape_is_on_for_every_template() -> None:
    env = web.environment()
    assert env.from_string("{{ x }}").render(x="<script>") == "&lt;script&gt;"


# --- in a real browser ---------------------------------------------------------------------------------


@pytest.fixture
def server(app: FastAPI) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_pages_in_a_real_browser(browser: Any, server: str) -> None:
    shots = artifacts_dir()
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None,
    )
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        page.goto(server + "/", wait_until="load")
        assert page.title() == "Home · suite"
        # The stylesheet applied: its custom properties and rules are live.
        assert page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--accent').trim()")
        assert (
            page.evaluate("getComputedStyle(document.querySelector('.topbar')).borderBottomStyle") == "solid"
        )
        assert page.evaluate("getComputedStyle(document.querySelector('.cards')).display") == "grid"
        # htmx loaded from /static.
        page.wait_for_function("typeof window.htmx !== 'undefined'")
        assert page.evaluate("window.htmx.version").startswith("2.")
        assert page.inner_text("[data-domain=demo] h3") == "demo"
        page.screenshot(path=str(shots / "home.png"), full_page=True)

        page.click("nav >> text=demo")
        page.wait_for_url(server + "/demo/")
        assert page.title() == "Demo · suite"
        assert page.inner_text("#greeting") == "<b>hi</b>"  # escaped, shown as text
        assert page.inner_text("[data-testid=username]") == "alice"
        page.click("#load")  # htmx swaps in a fragment, sending the CSRF header from <body hx-headers>
        page.wait_for_selector("#fragment")
        assert page.inner_text("#fragment") == f"fragment loaded with token {CSRF}"
        page.screenshot(path=str(shots / "demo.png"), full_page=True)
    finally:
        context.close()
    assert problems == []
    assert (shots / "home.png").stat().st_size > 0


def test_home_shows_the_logged_in_user_from_the_session_cookie(db_session: Any) -> None:
    from suite.core.auth import create_user
    from suite.core.web_auth import SESSION_COOKIE, create_session

    user = create_user(db_session, username="bob", password="correct horse battery")
    row, plain = create_session(db_session, user=user)
    web.reset()
    client = TestClient(create_app([]), cookies={SESSION_COOKIE: plain})
    page = client.get("/").text
    assert '<span class="muted" data-testid="username">bob</span>' in page
    assert f'<input type="hidden" name="csrf_token" value="{row.csrf_token}">' in page
    assert f'<meta name="csrf-token" content="{row.csrf_token}">' in page
    assert "Log in</a>" not in page


def test_login_and_logout_in_a_real_browser(browser: Any, server: str) -> None:
    from suite.core.auth import create_user
    from suite.core.db import session_scope

    with session_scope() as session:
        create_user(session, username="carol", password="a long enough password")
    context = browser.new_context(viewport={"width": 1200, "height": 700})
    page = context.new_page()
    try:
        page.goto(server + "/", wait_until="load")
        page.click("text=Log in")
        page.wait_for_url(server + "/login?next=/")
        page.fill("input[name=username]", "carol")
        page.fill("input[name=password]", "a long enough password")
        page.click("#login-form button[type=submit]")
        page.wait_for_url(server + "/")
        assert page.inner_text("[data-testid=username]") == "carol"
        page.screenshot(path=str(artifacts_dir() / "home-logged-in.png"), full_page=True)
        page.click("header >> text=Log out")  # the base template's form, with the session's CSRF token
        page.wait_for_url(server + "/login")
        assert page.locator("[data-testid=username]").count() == 0
    finally:
        context.close()
