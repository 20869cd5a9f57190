"""The generate page and the history gallery in a real browser: Debian's Chromium driven by Playwright (never a
downloaded browser) against uvicorn on 127.0.0.1 with the real worker and the tiny model. Screenshots go to
test-artifacts/ (SUITE_TEST_ARTIFACTS overrides)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import artifacts_dir

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


@pytest.fixture
def server(app: Any) -> Iterator[str]:
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(15)


def test_generate_progress_cancel_and_history_in_a_browser(browser: Any, server: str) -> None:
    from playwright.sync_api import expect

    shots = artifacts_dir()
    page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    page.goto(server + "/imagegen/")
    expect(page.locator("#status")).to_have_text("idle")
    expect(page.locator("#model option")).to_contain_text(["(default)", "tiny ["])
    page.fill("#prompt", "a red circle")
    page.select_option("#sampler", "Euler")
    for field, value in (("#steps", "4"), ("#width", "64"), ("#height", "64"), ("#seed", "7")):
        page.fill(field, value)
    page.click("#go")
    expect(page.locator("#status")).to_have_text("succeeded", timeout=60_000)
    image = page.locator("#images img").first
    expect(image).to_have_attribute("alt", "seed 7")
    page.wait_for_function("document.querySelector('#images img').naturalWidth === 64", timeout=10_000)
    assert page.eval_on_selector("#bar", "b => b.value === b.max && b.max === 4")
    expect(page.locator("#cancel")).to_be_disabled()
    page.screenshot(path=str(shots / "imagegen-generate.png"), full_page=True)

    # a long job: live progress from the SSE stream, then Cancel stops it at the next step
    page.fill("#steps", "150")
    page.fill("#seed", "8")
    page.click("#go")
    expect(page.locator("#status")).to_have_text(re.compile(r"sampling \d+/150"), timeout=60_000)
    expect(page.locator("#cancel")).to_be_enabled()
    done_before = page.eval_on_selector("#bar", "b => b.value")
    assert 0 < done_before < 150
    page.screenshot(path=str(shots / "imagegen-progress.png"), full_page=True)
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("cancelled", timeout=20_000)
    expect(page.locator("#images img")).to_have_count(1)  # the cancelled job added no image
    expect(page.locator("#cancel")).to_be_disabled()

    page.goto(server + "/imagegen/history")
    cards = page.locator(".card")
    expect(cards).to_have_count(2)
    expect(cards.nth(0)).to_contain_text("cancelled")
    expect(cards.nth(1)).to_contain_text("succeeded")
    expect(cards.nth(1)).to_contain_text("seed 7")
    thumb = cards.nth(1).locator("img")
    expect(thumb).to_have_count(1)
    page.wait_for_function(
        "[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=10_000,
    )
    page.screenshot(path=str(shots / "imagegen-history.png"), full_page=True)
    assert problems == [], problems
