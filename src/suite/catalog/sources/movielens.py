"""`--source movielens100k [WHEEL]`: MovieLens-100K items and ratings from the recbole 1.2.1 wheel, read at run
time with `zipfile` (MovieLens terms: research, non-commercial, no redistribution; never committed).

Items matching a stored film on (normalized title, year) link to it (an `ml100k` external id and the ratings);
a match only at year ±1 is a `needs_review` issue and is not merged; the rest become movies keyed
`ml100k:<item_id>`. Items 267 (`unkonwn`) and 1412 (year `V`) are quarantined.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from suite.catalog.datasets import movielens_files
from suite.catalog.sources.base import (
    FileError,
    MovieRecord,
    RowError,
    Warning_,
    check_title,
    fold,
    sort_key,
    template_overview,
)

ITEM_HEADER = ["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"]
INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
_ARTICLE = re.compile(r"^(?P<title>.+), (?P<article>The|A|An|Les|Le|La|L'|Il|Das|Der|Die|El)$")
_YEAR_SUFFIX = re.compile(r"\s*\((\d{4})\)\s*$")


def front_article(title: str) -> str:
    """ "Usual Suspects, The" → "The Usual Suspects" (also before a trailing "(aka ...)")."""
    head, sep, tail = title.partition(" (")
    match = _ARTICLE.match(head)
    if match:
        article = match.group("article")
        joiner = "" if article.endswith("'") else " "
        head = f"{article}{joiner}{match.group('title')}"
    return head + (sep + tail if sep else "")


def _tsv(data: bytes, header: list[str], name: str) -> list[list[str]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileError(f"{name}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    lines = text.splitlines()
    if not lines or lines[0].split("\t") != header:
        got = lines[0][:120] if lines else "(empty file)"
        raise FileError(f"{name}: unexpected header {got!r}; expected {chr(9).join(header)!r}")
    return [line.split("\t") for line in lines[1:] if line.strip()]


class MovieLensSource:
    name = "movielens100k"

    def __init__(self, wheel: Path | None = None, *, limit: int | None = None) -> None:
        self.files, self.sha256 = movielens_files(wheel)
        self.version = "recbole 1.2.1 ml-100k"
        self.limit = limit
        self.items: list[list[str]] = []
        self.ratings: dict[str, list[tuple[str, float, Any]]] = defaultdict(list)
        self._index: dict[tuple[str, int], int] | None = None

    def check(self) -> None:
        self.items = _tsv(self.files["ml-100k.item"], ITEM_HEADER, "ml-100k.item")
        for row in _tsv(self.files["ml-100k.inter"], INTER_HEADER, "ml-100k.inter"):
            if len(row) != 4:
                raise FileError(f"ml-100k.inter: a row has {len(row)} fields, expected 4")
            user, item, rating, ts = row
            try:
                when = datetime.fromtimestamp(float(ts), UTC).replace(tzinfo=None)
                self.ratings[item].append((user, float(rating), when))
            except ValueError:
                raise FileError(f"ml-100k.inter: bad rating row {row!r}") from None
        self.items.sort(key=lambda r: int(r[0]) if r[0].isdigit() else 0)

    def total(self) -> int | None:
        return min(len(self.items), self.limit) if self.limit else len(self.items)

    def extract(self, *, after: str | None) -> Iterator[tuple[str, Any]]:
        start = int(after) if after else 0
        for n, row in enumerate(self.items):
            if self.limit and n >= self.limit:
                return
            if not row[0].isdigit() or int(row[0]) <= start:
                continue
            yield row[0], {"fields": row, "ratings": self.ratings.get(row[0], [])}

    def _match_index(self) -> dict[tuple[str, int], int]:
        if self._index is None:
            from sqlalchemy import select

            from suite.catalog import models as m
            from suite.core.db import new_session

            index: dict[tuple[str, int], int] = {}
            with new_session() as s:
                rows = s.execute(
                    select(m.Movie.id, m.Movie.title, m.Movie.year).where(
                        m.Movie.year.is_not(None), ~m.Movie.seed_key.like("ml100k:%")
                    )
                )
                for movie_id, title, year in rows:
                    if year is not None:
                        index.setdefault((fold(title), int(year)), movie_id)
            self._index = index
        return self._index

    def normalize(self, raw: dict[str, Any]) -> MovieRecord:
        fields = raw["fields"]
        if len(fields) != 4:
            raise RowError("wrong_field_count", f"expected 4 fields, got {len(fields)}")
        item_id, title_raw, year_raw, classes = fields
        if not (year_raw.isdigit() and len(year_raw) == 4 and 1870 <= int(year_raw) <= 2100):
            raise RowError("invalid_year", f"item {item_id}: year {year_raw[:20]!r} is not a year")
        year = int(year_raw)
        title = front_article(_YEAR_SUFFIX.sub("", check_title(title_raw)))
        genres = [g.replace("_", " ") for g in classes.split() if g and g != "unknown"]
        record = MovieRecord(
            key=f"ml100k:{item_id}",
            source="ml100k",
            ext_ids={"ml100k": item_id},
            fields={
                "title": title,
                "sort_title": sort_key(title),
                "year": year,
                "overview": template_overview(genres, [], []),
                "overview_source": "template",
            },
            genres=genres,
            ratings=[(u, r, t) for u, r, t in raw["ratings"]],
        )
        index = self._match_index()
        key = fold(title)
        exact = index.get((key, year))
        if exact is not None:
            record.match_movie_id = exact
        else:
            near = index.get((key, year - 1)) or index.get((key, year + 1))
            if near is not None:
                record.warnings.append(
                    Warning_(
                        "needs_review", f"item {item_id} {title!r} ({year}) matches movie {near} at year ±1"
                    )
                )
        return record
