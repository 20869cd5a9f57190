"""The JSON API and pages over a real uvicorn server: paging, permissions, reviews, lists, CSRF, escaping."""

from __future__ import annotations

import concurrent.futures
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, cookie_login

API = "/api/v1/catalog"


@pytest.mark.parametrize(
    "query",
    [
        "limit=abc",
        "limit=-1",
        "limit=0",
        "limit=1000000000",
        "page=-1",
        "page=abc",
        "page=99999999",
        "cursor=abc",
        "cursor=" + "A" * 600,
        "sort=evil",
        "year_from=-5",
    ],
)
def test_paging_rejects_bad_values(catalog_server: Server, query: str) -> None:
    with catalog_server.client() as c:
        r = c.get(f"{API}/movies?{query}")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in ("validation_error", "invalid_cursor")


def test_cursor_paging_and_foreign_cursor(catalog_server: Server) -> None:
    with catalog_server.client() as c:
        first = c.get(f"{API}/movies?limit=5&sort=year").json()
        assert len(first["items"]) == 5 and first["next_cursor"]
        second = c.get(f"{API}/movies?limit=5&sort=year&cursor={first['next_cursor']}").json()
        assert not {m["id"] for m in first["items"]} & {m["id"] for m in second["items"]}
        foreign = c.get(f"{API}/movies?limit=5&sort=title&cursor={first['next_cursor']}")
        assert foreign.status_code == 422
        tampered = first["next_cursor"][:-3] + ("AAA" if not first["next_cursor"].endswith("AAA") else "BBB")
        assert c.get(f"{API}/movies?cursor={tampered}").status_code == 422
        assert c.get(f"{API}/autocomplete/people?q=&limit=5").status_code == 422
        assert c.get(f"{API}/autocomplete/people?q=a&limit=51").status_code == 422
        assert c.get(f"{API}/autocomplete/people?q={'x' * 101}").status_code == 422


@pytest.mark.parametrize(
    "q",
    [
        "%",
        "_",
        '"',
        'a"b',
        "NEAR(",
        "title:",
        "*",
        "AND",
        "x OR",
        "-foo",
        "'; drop table x",
        "🎬",
        "שלום",
        "leon",
    ],
)
def test_search_hostile_input_is_never_syntax(catalog_server: Server, q: str) -> None:
    with catalog_server.client() as c:
        r = c.get(f"{API}/search", params={"q": q})
    assert r.status_code == 200, r.text
    assert set(r.json()) >= {"movies", "people", "took_ms"}


@pytest.mark.parametrize("q", ["", " ", "a\x00b", "x" * 201, "y" * 10_240])
def test_search_bad_queries_are_422(catalog_server: Server, q: str) -> None:
    with catalog_server.client() as c:
        r = c.get(f"{API}/search", params={"q": q})
    assert r.status_code == 422, r.text


def test_semantic_search_unavailable(catalog_server: Server) -> None:
    with catalog_server.client() as c:
        r = c.get(f"{API}/search", params={"q": "robot", "mode": "semantic"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "semantic_unavailable"


def test_permissions(catalog_server: Server, users: dict[str, Any]) -> None:
    body = {"title": "New Film", "year": 2001}
    with catalog_server.client() as anon:
        assert anon.get(f"{API}/movies/1").status_code == 200
        assert anon.post(f"{API}/movies", json=body).status_code == 401
        assert anon.put(f"{API}/movies/1/review", json={"score": 5}).status_code == 401
    with catalog_server.client(users["alice"]["token"]) as alice:
        assert alice.post(f"{API}/movies", json=body).status_code == 403
        assert alice.patch(f"{API}/movies/1", json={"title": "x"}).status_code == 403
        assert alice.post(f"{API}/seed-runs", json={"source": "wikidata"}).status_code == 403
        assert alice.post(f"{API}/enrich", json={"field": "overview"}).status_code == 403
    with catalog_server.client(users["alice"]["read_only_token"]) as ro:
        assert ro.get(f"{API}/movies/1").status_code == 200
        assert ro.put(f"{API}/movies/1/review", json={"score": 5}).status_code == 403
    with catalog_server.client("st_not_a_token") as bad:
        assert bad.get(f"{API}/me/watchlist").status_code == 401
    with catalog_server.client(users["editor"]["token"]) as editor:
        r = editor.post(f"{API}/movies", json={**body, "imdb_id": "tt0111161"})
        assert r.status_code == 201 and r.headers["location"].endswith(f"/movies/{r.json()['id']}")
        assert editor.post(f"{API}/movies", json={**body, "imdb_id": "tt0111161"}).status_code == 409


def test_if_match_one_wins_one_412(catalog_server: Server, users: dict[str, Any]) -> None:
    with catalog_server.client(users["editor"]["token"]) as c:
        etag = c.get(f"{API}/movies/2").headers["etag"]
        first = c.patch(f"{API}/movies/2", json={"tagline": "one"}, headers={"If-Match": etag})
        second = c.patch(f"{API}/movies/2", json={"tagline": "two"}, headers={"If-Match": etag})
    assert (first.status_code, second.status_code) == (200, 412)
    assert second.json()["error"]["code"] == "precondition_failed"


def test_deletes_with_dependents_conflict(catalog_server: Server, users: dict[str, Any]) -> None:
    with catalog_server.client(users["editor"]["token"]) as c:
        credit = c.get(f"{API}/movies/1/credits").json()[0]
        assert c.delete(f"{API}/people/{credit['person_id']}").status_code == 409
    with catalog_server.client(users["alice"]["token"]) as alice:
        assert alice.put(f"{API}/movies/1/review", json={"score": 8}).status_code == 201
    with catalog_server.client(users["editor"]["token"]) as c:
        assert c.delete(f"{API}/movies/1").status_code == 409
        assert c.delete(f"{API}/movies/1?force=true").status_code == 409  # force is for admins
    with catalog_server.client(users["admin"]["token"]) as admin:
        assert admin.delete(f"{API}/movies/1?force=true").status_code == 204
        assert admin.get(f"{API}/movies/1").status_code == 404


def test_reviews_and_ownership(catalog_server: Server, users: dict[str, Any]) -> None:
    with catalog_server.client(users["alice"]["token"]) as alice:
        assert alice.put(f"{API}/movies/3/review", json={"score": 11}).status_code == 422
        assert alice.put(f"{API}/movies/3/review", json={"score": 7, "recommend": True}).status_code == 201
        assert alice.put(f"{API}/movies/3/review", json={"score": 9, "comment": "x"}).status_code == 200
        review_id = alice.get(f"{API}/movies/3/reviews").json()["items"][0]["id"]
        stats = alice.get(f"{API}/movies/3/stats").json()
        assert stats["review_count"] == 1 and stats["mean"] == 9 and stats["histogram"][9] == 1
    with catalog_server.client(users["bob"]["token"]) as bob:
        assert bob.delete(f"{API}/reviews/{review_id}").status_code == 404
        lst = bob.post(f"{API}/lists", json={"name": "secret", "visibility": "private"}).json()
        assert bob.put(f"{API}/lists/{lst['id']}/items/3").status_code == 204
    with catalog_server.client(users["alice"]["token"]) as alice:
        assert alice.get(f"{API}/lists/{lst['id']}").status_code == 404
        assert alice.delete(f"{API}/lists/{lst['id']}").status_code == 404
        assert alice.put(f"{API}/me/watchlist/3").status_code == 204
        assert alice.put(f"{API}/me/watchlist/3").status_code == 204  # idempotent
        assert [m["id"] for m in alice.get(f"{API}/me/watchlist").json()] == [3]
        assert alice.put(f"{API}/me/watchlist/999999").status_code == 404


def test_fifty_concurrent_review_puts_match_a_recount(
    catalog_server: Server, users: dict[str, Any], catalog_db: Path
) -> None:
    tokens = [users[n]["token"] for n in ("admin", "editor", "alice", "bob")]

    def put(i: int) -> int:
        with catalog_server.client(tokens[i % 4]) as c:
            return c.put(
                f"{API}/movies/4/review", json={"score": i % 11, "recommend": i % 2 == 0}
            ).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(put, range(50)))
    assert set(codes) <= {200, 201}, codes
    with sqlite3.connect(catalog_db / "suite.db") as db:
        stat = db.execute(
            "SELECT review_count, score_sum, recommend_count, "
            + ", ".join(f"hist_{i}" for i in range(11))
            + " FROM catalog_movie_stat WHERE movie_id = 4"
        ).fetchone()
        rows = db.execute("SELECT score, recommend FROM catalog_review WHERE movie_id = 4").fetchall()
    hist = [sum(1 for s, _ in rows if s == i) for i in range(11)]
    assert stat == (len(rows), sum(s for s, _ in rows), sum(1 for _, r in rows if r), *hist)


def test_form_post_without_csrf_is_rejected(
    catalog_server: Server, users: dict[str, Any], catalog_db: Path
) -> None:
    c, csrf = cookie_login(catalog_server, "alice", users["alice"]["password"])
    r = c.post("/catalog/movies/5/review", data={"score": "6"}, follow_redirects=False)
    assert r.status_code == 403
    r = c.post("/catalog/movies/5/review", data={"score": "6", "csrf_token": "wrong"}, follow_redirects=False)
    assert r.status_code == 403
    with sqlite3.connect(catalog_db / "suite.db") as db:
        assert db.execute("SELECT count(*) FROM catalog_review").fetchone() == (0,)
    r = c.put(f"{API}/movies/5/review", json={"score": 6})  # cookie-authenticated JSON needs it too
    assert r.status_code == 403
    ok = c.post(
        "/catalog/movies/5/review",
        data={"score": "6", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert ok.status_code == 303
    page = c.get("/catalog/movies/5").text
    assert "Update my review" in page


def test_script_in_text_is_escaped(catalog_server: Server, users: dict[str, Any]) -> None:
    evil = "<script>alert(1)</script>"
    with catalog_server.client(users["editor"]["token"]) as c:
        movie = c.post(f"{API}/movies", json={"title": f"Evil {evil}", "overview": evil, "year": 2000}).json()
        person = c.post(f"{API}/people", json={"name": f"Mx {evil}", "biography": evil}).json()
        c.post(
            f"{API}/movies/{movie['id']}/credits",
            json={"person_id": person["id"], "kind": "cast", "character": evil},
        )
    with catalog_server.client(users["alice"]["token"]) as alice:
        alice.put(f"{API}/movies/{movie['id']}/review", json={"score": 1, "comment": evil})
    with catalog_server.client() as c:
        pages = [
            c.get(f"/catalog/movies/{movie['id']}").text,
            c.get(f"/catalog/people/{person['id']}").text,
            c.get("/catalog/search", params={"q": "evil"}).text,
            c.get("/catalog/search", params={"q": "evil"}, headers={"HX-Request": "true"}).text,
            c.get("/catalog/movies?sort=added").text,
            c.get("/catalog/").text,
        ]
    for html in pages:
        assert evil not in html
    assert "&lt;script&gt;" in pages[0] and "&lt;script&gt;" in pages[1] and "&lt;script&gt;" in pages[3]


def test_pages_render(catalog_server: Server, users: dict[str, Any]) -> None:
    with catalog_server.client() as c:
        for path in (
            "/catalog/",
            "/catalog/movies",
            "/catalog/movies?sort=rating&genre=Drama",
            "/catalog/movies/1",
            "/catalog/people",
            "/catalog/people/1",
            "/catalog/search?q=the",
            "/catalog/lists",
        ):
            r = c.get(path)
            assert r.status_code == 200, (path, r.text[:300])
        assert c.get("/catalog/me/watchlist", follow_redirects=False).status_code == 303
        assert c.get("/catalog/movies?limit=abc").status_code == 422
        ready = c.get("/readyz").json()
        assert ready["checks"]["catalog"]["ok"] is True


def test_admin_seed_run_via_api(catalog_server: Server, users: dict[str, Any], tmp_path: Path) -> None:
    from .test_seed import movie_doc, write_dump

    folder = write_dump(tmp_path / "dump", [movie_doc(1, "Api Seeded")])
    with catalog_server.client(users["admin"]["token"]) as c:
        r = c.post(f"{API}/seed-runs", json={"source": "tmdb-dump", "path": str(folder)})
        assert r.status_code == 202, r.text
        run = c.get(f"{API}/seed-runs/{r.json()['run_id']}").json()
        assert run["status"] == "succeeded" and run["counts"]["movie"]["inserted"] == 1
        assert (
            c.post(f"{API}/seed-runs", json={"source": "tmdb"}).json()["error"]["code"] == "tmdb_unconfigured"
        )
        assert (
            c.get("/catalog/admin/seed", follow_redirects=False).status_code == 303
        )  # pages need a login cookie
