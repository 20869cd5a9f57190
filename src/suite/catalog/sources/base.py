"""Source-independent records, row-level faults and the text helpers every source shares."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any, Protocol

MAX_TITLE = 300
MAX_NAME = 200
MAX_TEXT = 20_000
NAME_SUFFIXES = frozenset({"jr.", "jr", "sr.", "sr", "ii", "iii", "iv", "v", "phd", "ph.d.", "esq."})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACE = re.compile(r"\s+")


class RowError(Exception):
    """A bad row: quarantined with its code; the run continues."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FileError(Exception):
    """A bad file (syntax, encoding, header, checksum): the run aborts before any write."""


@dataclass
class Warning_:
    code: str
    message: str


@dataclass
class CreditRecord:
    person_key: str  # seed key of the person, e.g. "wikidata_name:james w. smith, jr."
    person_name: str
    kind: str  # cast|crew
    character: str | None = None
    order: int | None = None
    department: str | None = None
    job: str | None = None
    person_ext: dict[str, str] = field(default_factory=dict)  # {"tmdb": "123", "imdb": "nm..."}
    person_extra: dict[str, Any] = field(default_factory=dict)  # birth_date, biography, ...

    @property
    def role_key(self) -> str:
        if self.kind == "cast":
            return f"cast:{(self.character or '')[:300]}"
        return f"crew:{self.department}/{self.job}"


@dataclass
class MovieRecord:
    key: str  # "<source>:<source key>", the movie's seed key
    source: str  # wikidata|ml100k|tmdb (text provenance)
    ext_ids: dict[str, str]  # {"wikidata": "372", "imdb": "tt0498329"}
    fields: dict[str, Any]  # catalog_movie columns
    genres: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    countries: list[str] = field(default_factory=list)
    credits: list[CreditRecord] = field(default_factory=list)
    ratings: list[tuple[str, float, Any]] = field(default_factory=list)  # (user, rating, rated_at)
    match_movie_id: int | None = None  # an existing movie this record links to (ML-100K title match)
    warnings: list[Warning_] = field(default_factory=list)


class Source(Protocol):
    name: str

    @property
    def version(self) -> str | None: ...

    @property
    def sha256(self) -> str | None: ...

    def check(self) -> None:
        """File-level checks; raise FileError/DatasetError before anything is written."""

    def total(self) -> int | None: ...

    def extract(self, *, after: str | None) -> Iterator[tuple[str, Any]]:
        """(checkpoint key, raw row) in a stable order, starting after `after`."""

    def normalize(self, raw: Any) -> MovieRecord: ...


def clean_text(value: Any, *, limit: int = MAX_TEXT) -> str | None:
    """NFC, control characters and NUL removed, whitespace collapsed; None when empty."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError("wrong_type", f"expected text, got {type(value).__name__}")
    text = _SPACE.sub(" ", _CONTROL.sub("", unicodedata.normalize("NFC", value))).strip()
    if not text:
        return None
    return text[:limit]


@lru_cache(maxsize=262_144)
def fold(text: str) -> str:
    """Case- and accent-insensitive key: casefold, NFKD, combining marks dropped."""
    if text.isascii():
        return " ".join(text.lower().split())
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return _SPACE.sub(" ", "".join(c for c in decomposed if not unicodedata.combining(c))).strip()


def sort_key(title: str) -> str:
    """Sort title: folded, leading English article dropped."""
    folded = fold(title)
    for article in ("the ", "a ", "an "):
        if folded.startswith(article) and len(folded) > len(article):
            return folded[len(article) :][:MAX_TITLE]
    return folded[:MAX_TITLE]


def split_names(value: Any) -> list[str]:
    """Split "A, B, James W. Smith, Jr., C" into names; suffixes (Jr., Sr., III) stay with their name."""
    text = clean_text(value)
    if not text:
        return []
    names: list[str] = []
    for part in text.split(","):
        token = part.strip()
        if not token:
            continue
        if names and token.casefold() in NAME_SUFFIXES:
            names[-1] = f"{names[-1]}, {token}"
        else:
            names.append(token)
    seen: set[str] = set()
    out = []
    for name in names:
        key = fold(name)
        if key not in seen and len(name) <= MAX_NAME:
            seen.add(key)
            out.append(name)
    return out


def split_list(value: Any) -> list[str]:
    text = clean_text(value)
    if not text:
        return []
    out: list[str] = []
    for part in text.split(","):
        token = part.strip()
        if token and token not in out:
            out.append(token[:64])
    return out


def as_int(value: Any, name: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RowError(f"invalid_{name}", f"{name}: expected a number, got {value!r}")
    try:
        number = float(value) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        raise RowError(f"invalid_{name}", f"{name}: expected a number, got {str(value)[:40]!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise RowError(f"invalid_{name}", f"{name}: not a finite number")
    result = round(number)
    if (lo is not None and result < lo) or (hi is not None and result > hi):
        raise RowError(f"invalid_{name}", f"{name}: {result} is outside {lo}..{hi}")
    return result


def as_float(value: Any, name: str, *, lo: float | None = None, hi: float | None = None) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowError(f"invalid_{name}", f"{name}: expected a number, got {str(value)[:40]!r}") from None
    if number != number or (lo is not None and number < lo) or (hi is not None and number > hi):
        raise RowError(f"invalid_{name}", f"{name}: {number} is outside {lo}..{hi}")
    return number


def parse_date(value: Any) -> tuple[date | None, str | None]:
    """An ISO date (YYYY, YYYY-MM or YYYY-MM-DD) and its precision; Jan 1 counts as year precision."""
    text = clean_text(value) if value is not None else None
    if not text:
        return None, None
    try:
        parts = [int(p) for p in text[:10].split("-")]
        if len(parts) == 1:
            return date(parts[0], 1, 1), "year"
        if len(parts) == 2:
            return date(parts[0], parts[1], 1), "month"
        day = date(parts[0], parts[1], parts[2])
    except (ValueError, TypeError):
        raise RowError("invalid_release_date", f"release date {text[:40]!r} is not a date") from None
    return day, "year" if (day.month, day.day) == (1, 1) else "day"


def check_title(value: Any) -> str:
    if value is not None and not isinstance(value, str):
        raise RowError("wrong_type", f"title: expected text, got {type(value).__name__}")
    title = clean_text(value, limit=MAX_TEXT)
    if not title:
        raise RowError("empty_title", "title is empty")
    if len(title) > MAX_TITLE:
        raise RowError("title_too_long", f"title is {len(title)} characters (at most {MAX_TITLE})")
    return title


def template_overview(genres: list[str], directors: list[str], cast: list[str]) -> str | None:
    """The built-in, non-LLM overview: "A {genres} film directed by {director}, starring {top 3 cast}."."""
    if not (genres or directors or cast):
        return None
    kind = "/".join(g.lower() for g in genres[:3])
    text = f"A {kind} film" if kind else "A film"
    if kind and kind[0] in "aeiou":
        text = "An" + text[1:]
    if directors:
        text += " directed by " + _join(directors[:2])
    if cast:
        text += (", starring " if directors else " starring ") + _join(cast[:3])
    return text + "."


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def person_key(source: str, name: str) -> str:
    return f"{source}_name:{fold(name)}"[:200]
