"""The catalog's main pages in a real browser: Debian's chromium driven by Playwright (never a downloaded
browser) against a real uvicorn server on the seeded catalog. A screenshot of each page goes to
test-artifacts/ (SUITE_TEST_ARTIFACTS)."""

from __future__ import annotations

import re
from typing import Any

from conftest import artifacts_dir

from .conftest import Server


class Watch:
    """Console errors, page errors and failed responses seen by a page: a main page has none."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        page.on(
            "console", lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None
        )
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on(
            "response", lambda r: self.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
        )


def test_browse_search_review_and_watchlist(
    browser: Any, catalog_server: Server, users: dict[str, Any]
) -> None:
    base, shots = catalog_server.url, artifacts_dir()
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    watch = Watch(page)
    try:
        # Home: counts and the two card lists.
        page.goto(base + "/catalog/", wait_until="load")
        assert page.title() == "Catalog · suite"
        assert page.locator(".cards.movies").count() == 2
        assert page.locator(".card.movie").count() >= 12
        page.screenshot(path=str(shots / "catalog-home.png"), full_page=True)

        # Movie list: sort, filter by genre, next page (keyset cursor).
        page.goto(base + "/catalog/movies", wait_until="load")
        page.select_option("select[name=sort]", "year")
        page.select_option("select[name=genre]", "Drama")
        page.click("form.filters button[type=submit]")
        page.wait_for_url("**/catalog/movies?sort=year&genre=Drama*")
        first = page.locator(".card.movie").all_inner_texts()
        assert first and all("Drama" in card for card in first)
        page.screenshot(path=str(shots / "catalog-movies.png"), full_page=True)
        page.click("#next-page")
        page.wait_for_load_state("load")
        assert set(page.locator(".card.movie").all_inner_texts()).isdisjoint(first)

        # Search with type-ahead: htmx swaps the results in while typing (no page load).
        page.goto(base + "/catalog/search", wait_until="load")
        page.wait_for_function("typeof window.htmx !== 'undefined'")
        page.locator("#q").press_sequentially("the", delay=60)
        page.wait_for_selector("#results .result.movie")
        assert page.url.startswith(base + "/catalog/search?q=the")  # hx-push-url
        target = page.locator("#results .result.movie a").first
        title = target.inner_text()
        page.screenshot(path=str(shots / "catalog-search.png"), full_page=True)
        target.click()
        page.wait_for_url(re.compile(r".*/catalog/movies/\d+$"))
        assert page.inner_text("#title").startswith(title)

        # Movie detail, logged out: credits and stats, a link to log in instead of the review form.
        movie_url = page.url
        assert page.locator("#credits li").count() >= 1 and page.locator("#review-form").count() == 0
        page.screenshot(path=str(shots / "catalog-movie.png"), full_page=True)

        # Log in from the movie page and come back to it.
        page.locator("#reviews a", has_text="Log in").click()
        page.wait_for_url(re.compile(r".*/login\?next=/catalog/movies/\d+$"))
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", users["alice"]["password"])
        page.click("#login-form button[type=submit]")
        page.wait_for_url(movie_url)
        assert page.inner_text("[data-testid=username]") == "alice"

        # Review form (CSRF token from the page): the stats update.
        page.fill("#review-form input[name=score]", "8")
        page.check("#review-form input[name=recommend]")
        page.fill("#review-form textarea[name=comment]", "Seen in a real <b>browser</b>.")
        page.click("#review-form button[type=submit]")
        page.wait_for_url(movie_url + "#reviews")
        assert "Update my review" in page.inner_text("#review-form")
        assert "Users 8.0/10 from 1 reviews, 100.0% recommend" in page.inner_text("#stats")
        assert "Seen in a real <b>browser</b>." in page.inner_text("#reviews")  # escaped, shown as text

        # Add to the watchlist, then find it there.
        page.click("#watchlist-toggle")
        page.wait_for_load_state("load")
        assert page.inner_text("#watchlist-toggle") == "Remove from watchlist"
        page.screenshot(path=str(shots / "catalog-movie-logged-in.png"), full_page=True)
        page.goto(base + "/catalog/me/watchlist", wait_until="load")
        assert page.locator(".card.movie h3 a").all_inner_texts() == [title]
        page.screenshot(path=str(shots / "catalog-watchlist.png"), full_page=True)
    finally:
        context.close()
    assert watch.problems == []


def test_editor_edits_a_movie_in_the_browser(
    browser: Any, catalog_server: Server, users: dict[str, Any]
) -> None:
    base, shots = catalog_server.url, artifacts_dir()
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    watch = Watch(page)
    try:
        page.goto(base + "/login?next=/catalog/movies/3", wait_until="load")
        page.fill("input[name=username]", "editor")
        page.fill("input[name=password]", users["editor"]["password"])
        page.click("#login-form button[type=submit]")
        page.wait_for_url(base + "/catalog/movies/3")
        page.click("#edit-movie")
        page.wait_for_url(base + "/catalog/movies/3/edit")
        page.fill("input[name=tagline]", "Edited in the browser")
        page.fill("textarea[name=overview]", "An overview written by an editor.")
        page.screenshot(path=str(shots / "catalog-edit.png"), full_page=True)
        page.click("#movie-form button[type=submit]")
        page.wait_for_url(base + "/catalog/movies/3")
        assert page.inner_text("#overview") == "An overview written by an editor."  # no "generated" badge
    finally:
        context.close()
    assert watch.problems == []
