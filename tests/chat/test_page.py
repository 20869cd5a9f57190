"""The chat page in headless Chromium (Debian's, via Playwright; never a downloaded browser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import artifacts_dir

from .helpers import Server, db_rows, fast_env, make_user, scripted_options


@pytest.fixture
def page_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    fast_env(monkeypatch, messages_per_minute=1000)
    scripted_options(monkeypatch, tokens=40, token_delay_s=0.05)
    user_id, _ = make_user("pat")
    from suite.core import web_auth
    from suite.core.db import session_scope
    from suite.core.models import User

    with session_scope() as s:
        _, cookie = web_auth.create_session(s, user=s.get(User, user_id))
    server = Server(tmp_path / "server.log").start()
    yield server, cookie
    server.stop()


def test_chat_page(browser, page_server) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    server, cookie = page_server
    artifacts = artifacts_dir()
    context = browser.new_context()
    try:
        context.add_cookies([{"name": "suite_session", "value": cookie, "url": server.url}])
        page = context.new_page()
        page.goto(server.url + "/chat/")
        page.fill("#input", "Hello from the browser 👋")
        page.click("[data-testid=send]")
        reply = page.locator(".msg.assistant").last
        expect(reply).to_contain_text("scripted reply", timeout=15000)
        expect(page.locator("[data-testid=send]")).to_be_enabled(timeout=15000)
        assert "/chat/c/" in page.url
        expect(page.locator("#conversations li")).to_have_count(1)
        page.screenshot(path=str(artifacts / "chat-page.png"), full_page=True)

        # stop mid-stream
        page.fill("#input", "a second question")
        page.click("[data-testid=send]")
        expect(page.locator("[data-testid=stop]")).to_be_visible()
        page.wait_for_timeout(400)
        page.click("[data-testid=stop]")
        expect(page.locator("[data-testid=status]")).to_have_text("stopped", timeout=10000)

        # regenerate, then reload mid-stream: the page resumes and shows the whole reply
        page.click("[data-testid=regen]")
        page.wait_for_timeout(500)
        inflight = json.loads(page.evaluate("localStorage.getItem('suite-chat-inflight')"))
        page.reload()
        expect(page.locator("[data-testid=send]")).to_be_enabled(timeout=20000)
        page.wait_for_function("localStorage.getItem('suite-chat-inflight') === null", timeout=20000)
        _, msgs = db_rows(inflight["id"])
        stored = next(m for m in msgs if m["role"] == "assistant")
        assert stored["status"] == "complete"
        expect(page.locator(".msg.assistant").last).to_have_text(stored["content"])
        page.screenshot(path=str(artifacts / "chat-page-resumed.png"), full_page=True)
    finally:
        context.close()
