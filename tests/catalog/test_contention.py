"""Two writers on one database, through a real server (brief §8.12).

SQLite: another process's writer holds the write lock; reads keep working (they begin DEFERRED); a write
that waits out the busy timeout answers 503 `database_busy` with Retry-After and writes nothing; the other
writer's work commits whole; the same write succeeds once the lock is free.
PostgreSQL: row locks make the second writer wait instead; both commit and the counters equal a recount.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Server, cookie_login, start_server, stop_server
from .test_seed import movie_doc, seed, write_dump

API = "/api/v1/catalog"


def _stat_and_recount(rows: list[tuple[int, bool]], stat: tuple[Any, ...] | None) -> None:
    expected = (len(rows), sum(s for s, _ in rows), sum(1 for _, r in rows if r))
    expected += tuple(sum(1 for s, _ in rows if s == i) for i in range(11))
    assert tuple(stat or (0,) * 14) == expected


def test_sqlite_second_writer_gets_503_database_busy_and_writes_nothing(
    catalog_server: Server, users: dict[str, Any], catalog_db: Path
) -> None:
    from suite.core.db import SQLITE_BUSY_TIMEOUT_MS

    path = catalog_db / "suite.db"
    movie = 6
    # A cookie session for the HTML form, made before the lock is taken (login writes too).
    browser, csrf = cookie_login(catalog_server, "bob", users["bob"]["password"])

    other = sqlite3.connect(path, isolation_level=None, timeout=10)  # another process writing (a seed)
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE catalog_movie SET tagline = 'held by the other writer' WHERE id = ?", (movie,))
    try:
        with catalog_server.client() as anon:
            started = time.monotonic()
            read = anon.get(f"{API}/movies/{movie}")
            assert read.status_code == 200 and time.monotonic() - started < SQLITE_BUSY_TIMEOUT_MS / 2000
            assert read.json()["tagline"] != "held by the other writer"  # not committed yet

        def api_write() -> httpx.Response:
            with catalog_server.client(users["alice"]["token"]) as c:
                return c.put(f"{API}/movies/{movie}/review", json={"score": 9, "recommend": True})

        def form_write() -> httpx.Response:
            return browser.post(
                f"/catalog/movies/{movie}/watchlist", data={"csrf_token": csrf}, follow_redirects=False
            )

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            api, form = pool.submit(api_write).result(), pool.submit(form_write).result()
        waited = time.monotonic() - started
    finally:
        other.execute("COMMIT")
        other.close()

    for r in (api, form):
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "database_busy"
        assert r.headers["retry-after"] == "1"
    assert waited >= SQLITE_BUSY_TIMEOUT_MS / 1000 * 0.9  # they waited out the busy timeout, then gave up

    with sqlite3.connect(path) as db:
        assert db.execute("SELECT tagline FROM catalog_movie WHERE id = ?", (movie,)).fetchone() == (
            "held by the other writer",
        )
        assert db.execute("SELECT count(*) FROM catalog_review WHERE movie_id = ?", (movie,)).fetchone() == (
            0,
        )
        assert db.execute("SELECT count(*) FROM catalog_watchlist_item").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM catalog_movie_stat WHERE movie_id = ?", (movie,)).fetchone()[
            0
        ] in (0, 1)

    # Retrying after the lock is gone works, and the counters match the rows. The answers follow the commits
    # (catalog commits before responding), so the rows are there as soon as the 2xx/303 arrives.
    with catalog_server.client(users["alice"]["token"]) as c:
        assert c.put(f"{API}/movies/{movie}/review", json={"score": 9, "recommend": True}).status_code == 201
    assert form_write().status_code == 303
    browser.close()

    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM catalog_watchlist_item").fetchone() == (1,)
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT score, recommend FROM catalog_review WHERE movie_id = ?", (movie,)
        ).fetchall()
        stat = db.execute(
            "SELECT review_count, score_sum, recommend_count, "
            + ", ".join(f"hist_{i}" for i in range(11))
            + " FROM catalog_movie_stat WHERE movie_id = ?",
            (movie,),
        ).fetchone()
    assert rows == [(9, 1)]
    _stat_and_recount([(s, bool(r)) for s, r in rows], stat)


@pytest.fixture
def pg_server(postgres_url: str, suite_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from conftest import reset_caches
    from suite.core import auth
    from suite.core.api import create_app
    from suite.core.db import session_scope

    monkeypatch.setenv("SUITE_DATABASE_URL", postgres_url)
    reset_caches()
    seed(source="tmdb-dump", path=str(write_dump(tmp_path / "d", [movie_doc(7001, "Contended Film")])))
    tokens = {}
    suffix = uuid.uuid4().hex[:8]
    with session_scope() as session:
        for name in ("alice", "bob"):
            user = auth.create_user(session, username=f"{name}-{suffix}", password="correct horse 1")
            tokens[name] = auth.create_token(session, user=user, name="test")[1]
        from sqlalchemy import text

        movie_id = session.execute(
            text("SELECT id FROM catalog_movie WHERE title = 'Contended Film'")
        ).scalar()
    srv = start_server(create_app(["catalog"]))
    yield srv, tokens, movie_id, postgres_url
    stop_server(srv)


def test_postgres_second_writer_waits_then_both_commit(pg_server: Any) -> None:
    import psycopg

    srv, tokens, movie, url = pg_server
    with srv.client(tokens["bob"]) as bob:
        assert bob.put(f"{API}/movies/{movie}/review", json={"score": 4}).status_code == 201
    other = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        # The other writer: a review of its own, counters moved in its transaction, not committed yet.
        carol = other.execute(
            "INSERT INTO core_user (username, password_hash, role, is_active, created_at) "
            "VALUES (%s, 'x', 'user', true, now()) RETURNING id",
            (f"carol-{uuid.uuid4().hex[:8]}",),
        ).fetchone()[0]
        other.execute(
            "INSERT INTO catalog_review (user_id, movie_id, score, recommend, created_at, updated_at) "
            "VALUES (%s, %s, 7, true, now(), now())",
            (carol, movie),
        )
        other.execute(
            "UPDATE catalog_movie_stat SET review_count = review_count + 1, score_sum = score_sum + 7, "
            "recommend_count = recommend_count + 1, hist_7 = hist_7 + 1 WHERE movie_id = %s",
            (movie,),
        )
        with concurrent.futures.ThreadPoolExecutor(1) as pool, srv.client(tokens["alice"]) as alice:
            pending = pool.submit(
                alice.put, f"{API}/movies/{movie}/review", json={"score": 9, "recommend": True}
            )
            time.sleep(1.0)
            assert not pending.done()  # waiting on the other writer's row lock, not failing
            with srv.client() as anon:  # reads are not blocked meanwhile
                assert anon.get(f"{API}/movies/{movie}").status_code == 200
            other.commit()
            assert pending.result(timeout=30).status_code == 201
    finally:
        other.close()
    dsn = url.replace("postgresql+psycopg://", "postgresql://")

    with psycopg.connect(dsn) as db:
        rows = db.execute(
            "SELECT score, recommend FROM catalog_review WHERE movie_id = %s ORDER BY score", (movie,)
        ).fetchall()
        stat = db.execute(
            "SELECT review_count, score_sum, recommend_count, "
            + ", ".join(f"hist_{i}" for i in range(11))
            + " FROM catalog_movie_stat WHERE movie_id = %s",
            (movie,),
        ).fetchone()
    assert [s for s, _ in rows] == [4, 7, 9]
    _stat_and_recount(rows, stat)
