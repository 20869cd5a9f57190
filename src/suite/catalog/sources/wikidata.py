"""`--source wikidata`: the CC0 Wikidata film set (SQLite `movies.db` in bokeh-sampledata), read-only.

Keyed by the set's `ID` (17,472 films). People are names only: keyed `wikidata_name:<folded name>`.
`--scale N` repeats the set with titles suffixed "(copy k)" until N films (benchmarks).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from suite.catalog.datasets import wikidata_path
from suite.catalog.sources.base import (
    CreditRecord,
    FileError,
    MovieRecord,
    RowError,
    as_float,
    as_int,
    check_title,
    clean_text,
    parse_date,
    person_key,
    sort_key,
    split_list,
    split_names,
    template_overview,
)

QUERY = """
SELECT o.ID, o.imdbID, o.Title, o.Year, o.Rating, o.Runtime, o.Genre, o.Released, o.Director, o.Writer,
       o."Cast", o.Metacritic, o.Language, o.Country, o.Oscars,
       t.Rating, t.Meter, t.Reviews, t.BoxOffice
FROM omdb o LEFT JOIN tomatoes t ON t.ID = o.ID
"""
COLUMNS = [
    "ID",
    "imdbID",
    "Title",
    "Year",
    "Rating",
    "Runtime",
    "Genre",
    "Released",
    "Director",
    "Writer",
    "Cast",
    "Metacritic",
    "Language",
    "Country",
    "Oscars",
    "critic_rating",
    "critic_meter",
    "critic_reviews",
    "box_office",
]
REQUIRED = {
    "omdb": {"ID", "imdbID", "Title", "Year", "Genre", "Director", "Writer", "Cast"},
    "tomatoes": {"ID"},
}


class WikidataSource:
    name = "wikidata"

    def __init__(
        self, path: Path | None = None, *, limit: int | None = None, scale: int | None = None
    ) -> None:
        self.path, self.sha256 = wikidata_path(path)
        self.version = "bokeh-sampledata 2026.1"
        self.limit = limit
        self.scale = scale
        self._base_count: int | None = None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)

    def check(self) -> None:
        try:
            with self._connect() as conn:
                for table, cols in REQUIRED.items():
                    have = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
                    missing = cols - have
                    if missing:
                        raise FileError(
                            f"{self.path}: table {table} lacks columns {', '.join(sorted(missing))}"
                        )
                self._base_count = int(conn.execute("SELECT count(*) FROM omdb").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise FileError(f"{self.path}: not a readable SQLite database: {exc}") from None

    def total(self) -> int | None:
        if self._base_count is None:
            self.check()
        count = self.scale or self._base_count or 0
        return min(count, self.limit) if self.limit else count

    def extract(self, *, after: str | None) -> Iterator[tuple[str, Any]]:
        """Rows in (copy, ID) order; the checkpoint key is "<copy>:<ID>" (copy 0 is the real set)."""
        start_copy, start_id = (0, -1)
        if after:
            copy_text, _, id_text = after.partition(":")
            start_copy, start_id = int(copy_text), int(id_text)
        wanted = self.total() or 0
        base = self._base_count or 0
        copies = max(1, -(-wanted // base)) if base else 1
        emitted = start_copy * base
        with self._connect() as conn:
            for copy in range(start_copy, copies):
                low = start_id if copy == start_copy else -1
                cursor = conn.execute(QUERY + " WHERE o.ID > ? ORDER BY o.ID", (low,))
                if copy == start_copy and low >= 0:
                    emitted += int(
                        conn.execute("SELECT count(*) FROM omdb WHERE ID <= ?", (low,)).fetchone()[0]
                    )
                for row in cursor:
                    if emitted >= wanted:
                        return
                    emitted += 1
                    raw = dict(zip(COLUMNS, row, strict=True))
                    raw["copy"] = copy
                    yield f"{copy}:{row[0]}", raw

    def normalize(self, raw: dict[str, Any]) -> MovieRecord:
        copy = raw.get("copy", 0)
        ident = as_int(raw["ID"], "id", lo=0)
        suffix = f"#{copy}" if copy else ""
        title = check_title(raw["Title"])
        if copy:
            title = f"{title} (copy {copy})"[:300]
        year = as_int(raw["Year"], "year", lo=1870, hi=2100)
        runtime = as_int(raw["Runtime"], "runtime", lo=1, hi=1000)
        released, precision = parse_date(raw["Released"])
        if released is not None and precision == "year" and year is not None and released.year != year:
            released, precision = None, None
        genres = split_list(raw["Genre"])
        directors = split_names(raw["Director"])
        writers = split_names(raw["Writer"])
        cast = split_names(raw["Cast"])
        credits: list[CreditRecord] = []
        for i, name in enumerate(cast):
            credits.append(CreditRecord(person_key("wikidata", name), name, "cast", order=i))
        for name in directors:
            credits.append(
                CreditRecord(
                    person_key("wikidata", name), name, "crew", department="Directing", job="Director"
                )
            )
        for name in writers:
            credits.append(
                CreditRecord(person_key("wikidata", name), name, "crew", department="Writing", job="Writer")
            )
        people_text = ", ".join(dict.fromkeys([*directors, *writers, *cast[:10]]))
        overview = template_overview(genres, directors, cast)
        box_office = as_float(raw["box_office"], "box_office", lo=0)
        fields = {
            "title": title,
            "original_title": None,
            "sort_title": sort_key(title),
            "year": year,
            "release_date": released,
            "release_date_precision": precision,
            "runtime_min": runtime,
            "overview": overview,
            "overview_source": "template" if overview else None,
            "mpaa_rating": clean_text(raw["Rating"], limit=16),
            "box_office_usd": int(box_office) if box_office is not None else None,
            "critic_meter": as_int(raw["critic_meter"], "critic_meter", lo=0, hi=100),
            "critic_rating": as_float(raw["critic_rating"], "critic_rating", lo=0, hi=10),
            "critic_reviews": as_int(raw["critic_reviews"], "critic_reviews", lo=0),
            "metacritic": as_int(raw["Metacritic"], "metacritic", lo=0, hi=100),
            "oscars": as_int(raw["Oscars"], "oscars", lo=0, hi=100),
            "search_people": people_text[:4000] or None,
        }
        ext = {"wikidata": f"{ident}{suffix}"}
        imdb = clean_text(raw["imdbID"], limit=64)
        if imdb:
            if not imdb.startswith("tt"):
                raise RowError("invalid_imdb_id", f"imdb id {imdb[:20]!r} does not start with tt")
            ext["imdb"] = imdb + suffix
        return MovieRecord(
            key=f"wikidata:{ident}{suffix}",
            source="wikidata",
            ext_ids=ext,
            fields=fields,
            genres=genres,
            languages=split_list(raw["Language"]),
            countries=split_list(raw["Country"]),
            credits=credits,
        )
