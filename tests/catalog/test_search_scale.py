"""Search stays bounded on common words (the 10^5-film p99 fix) and still answers correctly, on SQLite and
PostgreSQL.

The thresholds that switch search to its bounded paths (more than CAP matches, TITLE_CAP titles read per
tier, a filter that selects more than FILTER_CAP films) are lowered here, so that 60 real films in a real
database take the paths that a word like "the" takes at 10^5 films. Nothing else is replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .test_seed import movie_doc, seed, write_dump

NIGHT_TITLES = [
    "Night",
    "Night Train",
    "The Night",
    "A Night at the Opera",
    "Nightcrawler",
    "Long Night's Journey",
    "Night of the Hunter",
    "Tender Is the Night",
]


def _docs() -> list[dict[str, Any]]:
    docs = [
        movie_doc(i + 1, title, release_date="1999-05-04" if i % 2 else "1977-05-04")
        for i, title in enumerate(NIGHT_TITLES)
    ]
    # "night" only in the overview (and one in a cast name): never ranked above a title that holds it.
    for k in range(40):
        doc = movie_doc(100 + k, f"Unrelated Story {k}", release_date="1999-01-01" if k % 3 else "1985-01-01")
        doc["overview"] = f"A long night in town number {k}."
        docs.append(doc)
    knight = movie_doc(200, "Armour", release_date="1999-03-03")
    knight["credits"]["cast"][0]["name"] = "Gladys Night"
    docs.append(knight)
    docs += [movie_doc(300 + k, f"Star {name}") for k, name in enumerate(["Wars", "Trek", "Dust", "Kid"])]
    return docs


@pytest.fixture(params=["sqlite", "postgresql"])
def scale_db(
    request: pytest.FixtureRequest, suite_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    from conftest import reset_caches
    from suite.catalog import search

    if request.param == "postgresql":
        monkeypatch.setenv("SUITE_DATABASE_URL", request.getfixturevalue("postgres_url"))
        reset_caches()
    seed(source="tmdb-dump", path=str(write_dump(tmp_path / "d", _docs())))
    monkeypatch.setattr(search, "CAP", 12)
    monkeypatch.setattr(search, "TITLE_CAP", 10)
    monkeypatch.setattr(search, "FILTER_CAP", 4)
    return request.param


def run(query: str, limit: int = 5) -> dict[str, Any]:
    from suite.catalog.search import search
    from suite.core.db import session_scope

    with session_scope() as s:
        return search(s, query=query, limit=limit, kind="movie")


def titles(result: dict[str, Any]) -> list[str]:
    return [m["title"] for m in result["movies"]]


def test_common_word_ranks_titles_first(scale_db: str) -> None:
    got = titles(run("night", limit=8))
    assert len(got) == 8
    assert all("night" in t.lower() for t in got), got  # titles holding it before overview-only films
    if scale_db == "sqlite":
        # the exact title, titles starting with the word (whole word before prefix), then the others
        assert got[:4] == ["Night", "Night Train", "Night of the Hunter", "Nightcrawler"], got
    more = titles(run("night", limit=10))
    assert len(more) == 10 and set(got) <= set(more)
    assert all(t.startswith("Unrelated Story") for t in more[8:])  # then the overview matches fill up


def test_common_prefix_and_short_prefix(scale_db: str) -> None:
    got = titles(run("nigh"))
    assert len(got) == 5 and all("nigh" in t.lower() for t in got), got
    if scale_db == "sqlite":
        # 1-2 letters: titles starting with them, in title order (no FTS prefix expansion)
        assert titles(run("st", limit=10)) == ["Star Dust", "Star Kid", "Star Trek", "Star Wars"]
        # whole words plus a 1-2 letter prefix: both in the title first
        assert titles(run("night tr"))[0] == "Night Train"
        assert titles(run("star w"))[0] == "Star Wars"
    assert titles(run("the godfather")) == []


def test_common_word_with_filters(scale_db: str) -> None:
    from suite.catalog.search import search
    from suite.core.db import session_scope

    # A broad year filter (more films than FILTER_CAP): the matches are walked in order.
    result = run("night 1999", limit=20)
    assert result["query"]["year"] == 1999 and result["movies"]
    assert all(m["year"] == 1999 for m in result["movies"])
    # A selective filter (at most FILTER_CAP films): each film is checked one by one.
    result = run("night 1985", limit=20)
    assert {m["year"] for m in result["movies"]} == {1985}
    assert len(result["movies"]) == 14  # Unrelated Story k for k % 3 == 0
    with session_scope() as s:
        by_director = search(s, query="director:dana night", limit=50, kind="movie")
    assert len(by_director["movies"]) == 8 + 40 + 1  # every film has Dana Director; all hold "night"


def test_selective_words_keep_exact_ranking(scale_db: str) -> None:
    assert titles(run("opera"))[0] == "A Night at the Opera"
    assert titles(run("hunter night"))[0] == "Night of the Hunter"
