"""Keyword search behind one interface: SQLite FTS5 (`unicode61 remove_diacritics 2`) or PostgreSQL tsvector,
chosen by dialect.

User text never becomes query syntax: it is split into letter/digit tokens, each quoted (FTS5) or reduced to
`tok:*` terms joined by `&` (PostgreSQL). "Inception 2010" treats 2010 as a year filter; `director:`, `actor:`,
`genre:` and `year:` are filters; the last word is a prefix (type-ahead).

The work per query is bounded whatever the words (p99 at 10^5 films): a query with at most CAP matches is
ranked exactly with bm25; a common one ranks titles that start with the words, then titles that hold them,
then bm25 over a window of the first CAP matches; a 1-2 letter prefix never goes through FTS5 (the
sort-title index, or a check on the candidates); filters with common words check the filtered films (when
few) or walk the matches in rowid order (when many). PostgreSQL ranks titles (weights A, B) first, then all
columns, each over at most CAP matches.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from suite.catalog.sources.base import fold
from suite.core.errors import ValidationFailed

MAX_QUERY = 200
MAX_TOKENS = 12
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
_FILTER = re.compile(r"\b(director|actor|genre|year):(\"[^\"]*\"|\S+)", re.IGNORECASE)
YEAR_MIN, YEAR_MAX = 1870, 2100


class InvalidQuery(ValidationFailed):
    code = "invalid_query"


@dataclass
class ParsedQuery:
    tokens: list[str] = field(default_factory=list)
    year: int | None = None
    director: str | None = None
    actor: str | None = None
    genre: str | None = None
    prefix: bool = True

    @property
    def empty(self) -> bool:
        return not (self.tokens or self.director or self.actor or self.genre or self.year)


def check_query(query: str) -> str:
    if query is None or not query.strip():
        raise InvalidQuery("q: the query is empty")
    if "\x00" in query:
        raise InvalidQuery("q: the query contains a NUL character")
    if len(query) > MAX_QUERY:
        raise InvalidQuery(f"q: the query is {len(query)} characters (at most {MAX_QUERY})")
    return query


def tokens_of(value: str) -> list[str]:
    return [fold(t) for t in _TOKEN.findall(value)][:MAX_TOKENS]


def parse(query: str) -> ParsedQuery:
    check_query(query)
    parsed = ParsedQuery(prefix=not query.endswith(" "))
    rest = query

    def take(match: re.Match[str]) -> str:
        name, value = match.group(1).lower(), match.group(2).strip('"')
        words = " ".join(tokens_of(value))
        if name == "year" and words.isdigit() and YEAR_MIN <= int(words) <= YEAR_MAX:
            parsed.year = int(words)
        elif words and name != "year":
            setattr(parsed, name, words)
        return " "

    rest = _FILTER.sub(take, rest)
    tokens = tokens_of(rest)
    if parsed.year is None and (len(tokens) > 1 or parsed.director or parsed.actor or parsed.genre):
        for i in range(len(tokens) - 1, -1, -1):
            tok = tokens[i]
            if len(tok) == 4 and tok.isdigit() and YEAR_MIN <= int(tok) <= YEAR_MAX:
                parsed.year = int(tok)
                del tokens[i]
                break
    parsed.tokens = tokens
    return parsed


def fts5_match(tokens: list[str], *, prefix: bool) -> str:
    """A MATCH string where every token is a quoted string (doubled quotes), the last one a prefix."""
    parts = ['"' + t.replace('"', '""') + '"' for t in tokens]
    if prefix and parts:
        parts[-1] += "*"
    return " ".join(parts)


def pg_tsquery(tokens: list[str], *, prefix: bool, weights: str = "") -> str:
    """`a & b & c:*`; `weights` ("AB") restricts every term to those weights (title and original title)."""
    parts = [t for t in tokens if t.isalnum()]
    out = []
    for i, t in enumerate(parts):
        star = "*" if prefix and i == len(parts) - 1 else ""
        out.append(f"{t}:{star}{weights}" if star or weights else t)
    return " & ".join(out)


def backend_name(session: Session) -> str:
    from suite.catalog.settings import catalog_settings

    configured = catalog_settings().search_backend
    if configured != "auto":
        return configured
    return str(session.get_bind().dialect.name)


def _filters_sql(p: ParsedQuery, params: dict[str, Any], backend: str, alias: str = "m") -> str:
    clauses = []
    if p.year is not None:
        clauses.append(f"{alias}.year = :year")
        params["year"] = p.year
    for name, kind in (("director", "crew"), ("actor", "cast")):
        value = getattr(p, name)
        if not value:
            continue
        if backend == "sqlite":
            people = f"SELECT rowid FROM catalog_person_fts WHERE catalog_person_fts MATCH :{name}"
            params[name] = fts5_match(value.split(), prefix=True)
        elif backend == "postgresql":
            people = f"SELECT id FROM catalog_person WHERE search @@ to_tsquery('simple', catalog_unaccent(:{name}))"
            params[name] = pg_tsquery(value.split(), prefix=True) or "-"
        else:
            people = f"SELECT id FROM catalog_person WHERE name_key LIKE :{name} ESCAPE '\\'"
            params[name] = "%" + like_escape(value) + "%"
        job = (
            " AND c.job_id IN (SELECT id FROM catalog_job WHERE name = 'Director')"
            if name == "director"
            else ""
        )
        clauses.append(
            f"{alias}.id IN (SELECT c.movie_id FROM catalog_credit c WHERE c.kind = '{kind}'{job} "
            f"AND c.person_id IN ({people}))"
        )
    if p.genre:
        clauses.append(
            f"{alias}.id IN (SELECT mg.movie_id FROM catalog_movie_genre mg JOIN catalog_genre g "
            "ON g.id = mg.genre_id WHERE lower(g.name) LIKE :genre ESCAPE '\\')"
        )
        params["genre"] = like_escape(p.genre) + "%"
    return (" AND " + " AND ".join(clauses)) if clauses else ""


def like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


MOVIE_COLS = "m.id, m.title, m.year, m.search_people, m.poster_path, m.overview_source"
TEXT_COLS = MOVIE_COLS + ", m.original_title, m.overview"
BM25 = "rank MATCH 'bm25(10.0, 5.0, 3.0, 1.0)'"

# Bounded work per query. bm25 costs 1-2 µs per matching row and FTS5 scores every match before it can sort,
# so a word found in most films ("and" in every template overview, "the", "star*" → "starring") cost
# 100-700 ms at 10^5 films. A query with at most CAP matches is ranked exactly; above that it is "common"
# and only bounded candidate sets are ranked: titles that start with the words, titles that hold them, then
# bm25 over a window of the first CAP matches.
CAP = 500
TITLE_CAP = 300  # title matches read per tier and ordered in Python
FILTER_CAP = 300  # movies a filter may select and still be checked one by one
SHORT_PREFIX = 2  # a last word of 1-2 letters typed as a prefix expands to thousands of terms in FTS5
TITLE_COLS = "{title original_title}"


def _split_short(p: ParsedQuery) -> tuple[list[str], str | None]:
    """(whole words, a 1-2 letter trailing prefix or None): the short prefix is matched without FTS."""
    if p.prefix and p.tokens and len(p.tokens[-1]) <= SHORT_PREFIX:
        return list(p.tokens[:-1]), p.tokens[-1]
    return list(p.tokens), None


def _next_key(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _words(value: str | None) -> list[str]:
    return _TOKEN.findall(fold(value)) if value else []


def _has(words: list[str], token: str, prefix: bool) -> bool:
    return token in words or (prefix and any(w.startswith(token) for w in words))


def _quote(token: str) -> str:
    return '"' + token.replace('"', '""') + '"'


class _Matcher:
    """FTS5's word semantics in Python for bounded candidate sets: each token a whole word of the folded
    text, the last one a word prefix when the query is a prefix."""

    def __init__(self, tokens: list[str], prefix: bool) -> None:
        last = len(tokens) - 1
        self.tokens = tokens
        self.terms = [(t, prefix and i == last) for i, t in enumerate(tokens)]
        self.query = " ".join(tokens)

    def _hits(self, words: list[str]) -> list[bool]:
        return [any(w.startswith(t) for w in words) if pre else t in words for t, pre in self.terms]

    def count(self, value: str | None) -> int:
        return sum(self._hits(_words(value))) if value else 0

    def matches(self, row: Any) -> bool:
        """Every token in some indexed column (title, original title, people, overview), as FTS5 does."""
        words: list[str] = []
        for column in ("title", "original_title", "search_people", "overview"):
            words += _words(getattr(row, column, None))
        return all(self._hits(words))

    def rank(self, rows: list[Any], *, titles_only: bool = False) -> list[Any]:
        """Order a bounded candidate set without bm25: title > original title > people > overview; then the
        exact title, a title that starts with the words, whole words before prefixes, the shorter title."""

        def key(row: Any) -> tuple[Any, ...]:
            words = _words(row.title)
            title = " ".join(words)
            score = 100 * sum(self._hits(words))
            if not titles_only:
                score += (
                    50 * self.count(getattr(row, "original_title", None))
                    + 10 * self.count(row.search_people)
                    + self.count(getattr(row, "overview", None))
                )
            whole = sum(1 for t in self.tokens if t in words)
            return (-score, title != self.query, not title.startswith(self.query), -whole, len(title), row.id)

        return sorted(rows, key=key)


def _by_ids(session: Session, ids: list[int]) -> list[Any]:
    rows: list[Any] = []
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        params = {f"i{n}": v for n, v in enumerate(chunk)}
        marks = ", ".join(f":i{n}" for n in range(len(chunk)))
        rows += session.execute(
            text(f"SELECT {TEXT_COLS} FROM catalog_movie m WHERE m.id IN ({marks})"), params
        )
    return rows


def _sqlite_ranked(
    session: Session, tokens: list[str], prefix: bool, want: int, filters: str, params: dict[str, Any]
) -> list[Any]:
    """Movies matching every token, best first, at most `want`; the work is bounded by CAP, TITLE_CAP and
    FILTER_CAP whatever the words."""
    match = fts5_match(tokens, prefix=prefix)
    matcher = _Matcher(tokens, prefix)
    cap = max(CAP, want)
    probe = list(
        session.execute(
            text("SELECT rowid FROM catalog_movie_fts WHERE catalog_movie_fts MATCH :match LIMIT :n"),
            {"match": match, "n": cap + 1},
        ).scalars()
    )
    common = len(probe) > cap
    if common and filters:
        # Common words and a filter: when the filter is selective, check its movies one by one ...
        ids = list(
            session.execute(
                text(f"SELECT m.id FROM catalog_movie m WHERE 1=1{filters} LIMIT :n"),
                {**params, "n": FILTER_CAP + 1},
            ).scalars()
        )
        if len(ids) <= FILTER_CAP:
            return matcher.rank([r for r in _by_ids(session, ids) if matcher.matches(r)])[:want]
        # ... else both are broad: walk the matches in rowid order until enough pass the filter.
        sql = (
            f"SELECT {TEXT_COLS} FROM catalog_movie_fts f CROSS JOIN catalog_movie m ON m.id = f.rowid "
            f"WHERE catalog_movie_fts MATCH :match{filters} LIMIT :want"
        )
        return matcher.rank(list(session.execute(text(sql), {**params, "match": match, "want": want})))[:want]

    out: list[Any] = []
    seen: set[int] = set()

    def add(rows: list[Any]) -> None:
        for row in rows:
            if row.id not in seen and len(out) < want:
                seen.add(row.id)
                out.append(row)

    def titles(title_match: str) -> list[Any]:
        sql = (
            f"SELECT {MOVIE_COLS} FROM catalog_movie_fts f CROSS JOIN catalog_movie m ON m.id = f.rowid "
            f"WHERE catalog_movie_fts MATCH :tm{filters} LIMIT :n"
        )
        rows = list(session.execute(text(sql), {**params, "tm": title_match, "n": TITLE_CAP}))
        return matcher.rank(rows, titles_only=True)

    # 1. Titles that start with the words, in order: what type-ahead is after ("the godf" → The Godfather).
    add(titles(f"{TITLE_COLS} : ^{_quote(' '.join(tokens))}{'*' if prefix else ''}"))
    q = {**params, "match": match}
    if not common:
        # 2. Selective words: bm25 over every match (title 10, original title 5, people 3, overview 1).
        q["cand"] = want + len(seen) if not filters else cap
        sql = (
            f"SELECT {MOVIE_COLS} FROM (SELECT rowid AS id, rank FROM catalog_movie_fts "
            f"WHERE catalog_movie_fts MATCH :match AND {BM25} ORDER BY rank LIMIT :cand) f "
            f"JOIN catalog_movie m ON m.id = f.id WHERE 1=1{filters} ORDER BY f.rank, m.id"
        )
        add(list(session.execute(text(sql), q)))
        return out
    # 2. Common words: titles that hold them anywhere ...
    if len(out) < want:
        add(titles(f"{TITLE_COLS} : ({match})"))
    # 3. ... then bm25 over the first CAP matches (a rowid window, so FTS5 scores only those).
    if len(out) < want:
        q.update(last=probe[cap - 1], cand=want + len(seen))
        sql = (
            f"SELECT {MOVIE_COLS} FROM (SELECT rowid AS id, rank FROM catalog_movie_fts "
            f"WHERE catalog_movie_fts MATCH :match AND {BM25} AND rowid <= :last ORDER BY rank LIMIT :cand) f "
            "JOIN catalog_movie m ON m.id = f.id ORDER BY f.rank, m.id"
        )
        add(list(session.execute(text(sql), q)))
    return out


def _sqlite_movies(
    session: Session, p: ParsedQuery, limit: int, filters: str, params: dict[str, Any]
) -> list[Any]:
    tokens, short = _split_short(p)
    if short is None:
        return _sqlite_ranked(session, tokens, p.prefix, limit, filters, params)
    if not tokens:
        # Only 1-2 letters typed: titles that start with them (the sort-title index; leading articles dropped).
        sql = (
            f"SELECT {MOVIE_COLS} FROM catalog_movie m WHERE m.sort_title >= :lo AND m.sort_title < :hi"
            f"{filters} ORDER BY m.sort_title, m.id LIMIT :limit"
        )
        return list(
            session.execute(text(sql), {**params, "lo": short, "hi": _next_key(short), "limit": limit})
        )
    # Candidates for the whole words, then the short prefix checked on their words and all of them ranked
    # together ("star w": titles holding "star" and a word starting with "w" first).
    rows = _sqlite_ranked(session, tokens, False, max(5 * limit, 100), filters, params)
    matcher = _Matcher([*tokens, short], True)
    return matcher.rank([r for r in _by_ids(session, [r.id for r in rows]) if matcher.matches(r)])[:limit]


def _pg_movies(
    session: Session, p: ParsedQuery, limit: int, filters: str, params: dict[str, Any]
) -> list[Any]:
    """Titles first (weights A and B), then every column; each tier ranks at most CAP matches."""
    out: list[Any] = []
    for weights in ("AB", ""):
        tsq = pg_tsquery(p.tokens, prefix=p.prefix, weights=weights)
        if not tsq:
            return []
        seen = {r.id for r in out}
        # The second tier leaves out what the first one found (they could fill its CAP).
        exclude = " AND NOT (m.id = ANY(:seen))" if seen else ""
        sql = (
            f"SELECT * FROM (SELECT {MOVIE_COLS}, ts_rank(m.search, q, 1) AS r FROM catalog_movie m, "
            f"to_tsquery('simple', catalog_unaccent(:tsq)) q WHERE m.search @@ q{filters}{exclude} "
            "LIMIT :cap) c ORDER BY c.r DESC, c.id LIMIT :limit"
        )
        q = {**params, "tsq": tsq, "seen": sorted(seen), "cap": max(CAP, limit), "limit": limit}
        rows = session.execute(text(sql), q)
        out += [r for r in rows if r.id not in seen][: limit - len(out)]
        if len(out) >= limit:
            break
    return out


def _movie_rows(session: Session, p: ParsedQuery, limit: int, backend: str) -> list[Any]:
    params: dict[str, Any] = {"limit": limit}
    filters = _filters_sql(p, params, backend)
    if not p.tokens:
        if filters:
            sql = f"SELECT {MOVIE_COLS} FROM catalog_movie m WHERE 1=1{filters} ORDER BY m.sort_title, m.id LIMIT :limit"
            return list(session.execute(text(sql), params))
        return []
    if backend == "sqlite":
        return _sqlite_movies(session, p, limit, filters, params)
    if backend == "postgresql":
        return _pg_movies(session, p, limit, filters, params)
    # "like": the slow, portable baseline (benchmarks).
    params["like"] = "%" + like_escape(" ".join(p.tokens)) + "%"
    sql = (
        f"SELECT {MOVIE_COLS} FROM catalog_movie m WHERE (lower(m.title) LIKE :like ESCAPE '\\' "
        "OR lower(m.overview) LIKE :like ESCAPE '\\' OR lower(m.search_people) LIKE :like ESCAPE '\\')"
        f"{filters} ORDER BY m.sort_title LIMIT :limit"
    )
    return list(session.execute(text(sql), params))


def _sqlite_people(session: Session, p: ParsedQuery, limit: int) -> list[Any]:
    tokens, short = _split_short(p)
    if not tokens and short is not None:
        sql = (
            "SELECT p.id, p.name FROM catalog_person p WHERE p.name_key >= :lo AND p.name_key < :hi "
            "ORDER BY p.name_key, p.id LIMIT :limit"
        )
        return list(session.execute(text(sql), {"lo": short, "hi": _next_key(short), "limit": limit}))
    match = fts5_match(tokens, prefix=p.prefix and short is None)
    params: dict[str, Any] = {"match": match, "cand": limit if short is None else max(10 * limit, 200)}
    params["cap"] = max(CAP, params["cand"])
    # bm25 over at most the first CAP matches: the window ends at the CAP-th match's rowid (all of them when
    # there are fewer), found in the same statement.
    sql = (
        "SELECT p.id, p.name FROM (SELECT rowid AS id, rank FROM catalog_person_fts "
        "WHERE catalog_person_fts MATCH :match AND rowid <= coalesce((SELECT rowid FROM catalog_person_fts "
        "WHERE catalog_person_fts MATCH :match LIMIT 1 OFFSET :cap), 9223372036854775807) "
        "ORDER BY rank LIMIT :cand) f JOIN catalog_person p ON p.id = f.id ORDER BY f.rank, p.id"
    )
    rows = list(session.execute(text(sql), params))
    if short is not None:
        rows = [r for r in rows if _has(_words(r.name), short, True)]
    return rows[:limit]


def _people_rows(session: Session, p: ParsedQuery, limit: int, backend: str) -> list[Any]:
    if not p.tokens or p.year is not None:
        return []
    if backend == "sqlite":
        return _sqlite_people(session, p, limit)
    params: dict[str, Any] = {"limit": limit}
    if backend == "postgresql":
        params["tsq"] = pg_tsquery(p.tokens, prefix=p.prefix)
        params["cap"] = CAP
        if not params["tsq"]:
            return []
        sql = (
            "SELECT * FROM (SELECT p.id, p.name, ts_rank(p.search, q) AS r FROM catalog_person p, "
            "to_tsquery('simple', catalog_unaccent(:tsq)) q WHERE p.search @@ q LIMIT :cap) c "
            "ORDER BY c.r DESC, c.id LIMIT :limit"
        )
    else:
        params["like"] = "%" + like_escape(" ".join(p.tokens)) + "%"
        sql = "SELECT p.id, p.name FROM catalog_person p WHERE p.name_key LIKE :like ESCAPE '\\' LIMIT :limit"
    return list(session.execute(text(sql), params))


def _typo_rows(session: Session, p: ParsedQuery, limit: int, backend: str) -> list[Any]:
    """No keyword hit: titles similar to the query (pg_trgm similarity; SQLite trigram candidates)."""
    joined = " ".join(p.tokens)
    if len(joined) < 4:
        return []
    params: dict[str, Any] = {"limit": limit, "q": joined}
    if backend == "postgresql":
        sql = (
            f"SELECT {MOVIE_COLS} FROM catalog_movie m WHERE catalog_unaccent(lower(m.title)) % :q "
            "ORDER BY similarity(catalog_unaccent(lower(m.title)), :q) DESC, m.id LIMIT :limit"
        )
        return list(session.execute(text(sql), params))
    if backend != "sqlite":
        return []
    grams = sorted({joined[i : i + 3] for i in range(len(joined) - 2) if " " not in joined[i : i + 3]})[:24]
    if not grams:
        return []
    match = " OR ".join('"' + g.replace('"', '""') + '"' for g in grams)
    rows = list(
        session.execute(
            text(
                f"SELECT {MOVIE_COLS} FROM catalog_title_trigram t JOIN catalog_movie m ON m.id = t.rowid "
                "WHERE catalog_title_trigram MATCH :match ORDER BY t.rank LIMIT 200"
            ),
            {"match": match},
        )
    )
    wanted = set(grams)

    def score(row: Any) -> float:
        title = fold(row.title)
        have = {title[i : i + 3] for i in range(len(title) - 2)}
        return len(wanted & have) / max(1, len(wanted | have))

    ranked = sorted(rows, key=score, reverse=True)
    return [r for r in ranked if score(r) >= 0.3][:limit]


def _movie_dict(row: Any) -> dict[str, Any]:
    people = (row.search_people or "").split(", ")
    return {
        "id": row.id,
        "title": row.title,
        "year": row.year,
        "directors": people[0] if people and people[0] else None,
        "poster_path": row.poster_path,
    }


def search(session: Session, *, query: str, kind: str = "all", limit: int = 20) -> dict[str, Any]:
    """Movies and people for a query: {"movies", "people", "took_ms", "query": {...parsed}}."""
    started = time.perf_counter()
    if not 1 <= limit <= 100:
        raise ValidationFailed("limit must be between 1 and 100")
    if kind not in ("all", "movie", "person"):
        raise ValidationFailed("kind must be all, movie or person")
    p = parse(query)
    backend = backend_name(session)
    movies: list[Any] = []
    people: list[Any] = []
    fuzzy = False
    if kind in ("all", "movie") and not p.empty:
        movies = _movie_rows(session, p, limit, backend)
        if not movies and p.year is not None and p.tokens and not (p.director or p.actor or p.genre):
            # "1984": the number was a title word, not a year.
            retry = ParsedQuery(tokens=[*p.tokens, str(p.year)], prefix=p.prefix)
            movies = _movie_rows(session, retry, limit, backend)
        if not movies and p.tokens and not (p.director or p.actor or p.genre or p.year):
            movies = _typo_rows(session, p, limit, backend)
            fuzzy = bool(movies)
    if kind in ("all", "person") and not (p.director or p.actor or p.genre):
        people = _people_rows(session, p, min(limit, 10) if kind == "all" else limit, backend)
    return {
        "movies": [_movie_dict(r) for r in movies],
        "people": [{"id": r.id, "name": r.name} for r in people],
        "took_ms": round((time.perf_counter() - started) * 1000, 3),
        "fuzzy": fuzzy,
        "query": {
            "tokens": p.tokens,
            "year": p.year,
            "director": p.director,
            "actor": p.actor,
            "genre": p.genre,
        },
    }


def rebuild_index(session: Session, *, rebuild: bool = False) -> dict[str, Any]:
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        if rebuild:
            for table in ("catalog_movie_fts", "catalog_title_trigram", "catalog_person_fts"):
                session.execute(text(f"INSERT INTO {table}({table}) VALUES ('rebuild')"))
        for table in ("catalog_movie_fts", "catalog_person_fts"):
            session.execute(text(f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 1)"))
        movies = session.execute(text("SELECT count(*) FROM catalog_movie")).scalar_one()
        return {"backend": "sqlite-fts5", "rebuilt": rebuild, "movies": movies, "ok": True}
    if dialect == "postgresql":
        session.execute(text("ANALYZE catalog_movie"))
        movies = session.execute(text("SELECT count(*) FROM catalog_movie")).scalar_one()
        return {"backend": "postgresql-tsvector", "rebuilt": False, "movies": movies, "ok": True}
    return {"backend": dialect, "ok": False}


def readiness() -> str | None:
    """The catalog is ready when the database answers and the search index exists (never checks TMDB)."""
    from suite.core.db import get_engine

    engine = get_engine()
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            found = conn.execute(
                text(
                    "SELECT count(*) FROM sqlite_master WHERE name IN ('catalog_movie_fts', 'catalog_person_fts')"
                )
            ).scalar_one()
            return None if found == 2 else "catalog search index (FTS5) is missing: run suite db upgrade"
        if engine.dialect.name == "postgresql":
            found = conn.execute(
                text(
                    "SELECT count(*) FROM information_schema.columns "
                    "WHERE table_name = 'catalog_movie' AND column_name = 'search'"
                )
            ).scalar_one()
            return None if found == 1 else "catalog search column is missing: run suite db upgrade"
    return None
