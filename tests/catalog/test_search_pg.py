"""Search and migrations on both dialects: FTS5 and tsvector give the same answers; the branch round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from .test_seed import movie_doc, seed, write_dump

DOCS = [
    movie_doc(1, "Léon: The Professional", release_date="1994-09-14"),
    movie_doc(2, "Amélie", release_date="2001-04-25"),
    movie_doc(3, "Inception", release_date="2010-07-16"),
    movie_doc(4, "Inception of Things", release_date="1999-01-02"),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def dialect_db(
    request: pytest.FixtureRequest, suite_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        monkeypatch.setenv("SUITE_DATABASE_URL", url)
        from conftest import reset_caches

        reset_caches()
    seed(source="tmdb-dump", path=str(write_dump(tmp_path / "d", DOCS)))
    return request.param


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("leon", "Léon: The Professional"),
        ("AMELIE", "Amélie"),
        ("incep", "Inception"),
        ("Inception 2010", "Inception"),
        ("inception 1999", "Inception of Things"),
        ("incepton", "Inception"),
    ],
)
def test_search_both_backends(dialect_db: str, query: str, expected: str) -> None:
    from suite.catalog.search import search
    from suite.core.db import session_scope

    with session_scope() as s:
        result = search(s, query=query, limit=5)
    assert result["movies"], (dialect_db, query)
    assert result["movies"][0]["title"] == expected, (dialect_db, query, result["movies"])


@pytest.mark.parametrize("q", ["%", '"', "NEAR(", "*", "-foo", "x OR", "a:b"])
def test_hostile_queries_both_backends(dialect_db: str, q: str) -> None:
    from suite.catalog.search import search
    from suite.core.db import session_scope

    with session_scope() as s:
        assert "movies" in search(s, query=q, limit=5)


def test_catalog_branch_round_trip_keeps_search(dialect_db: str) -> None:
    from alembic import command

    from suite.core.db import get_engine, reset_engine
    from suite.core.migrations import alembic_config, upgrade

    engine = get_engine()
    command.downgrade(alembic_config(engine), "catalog@base")
    upgrade(engine)
    reset_engine()
    engine = get_engine()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO catalog_movie (title, sort_title, version, created_at, updated_at) "
                "VALUES ('Zażółć Gęślą', 'zazolc gesla', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    from suite.catalog.search import search
    from suite.core.db import session_scope

    with session_scope() as s:
        assert search(s, query="gesla", limit=5)["movies"][0]["title"] == "Zażółć Gęślą"
