"""Keyword search behind one interface: SQLite FTS5 (`unicode61 remove_diacritics 2`) or PostgreSQL tsvector,
chosen by dialect.

User text never becomes query syntax: it is split into letter/digit tokens, each quoted (FTS5) or reduced to
`tok:*` terms joined by `&` (PostgreSQL). "Inception 2010" treats 2010 as a year filter; `director:`, `actor:`,
`genre:` and `year:` are filters; the last word is a prefix (type-ahead).
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
CANDIDATES = 200  # movies scored by bm25 before filters and ranking (bounds p99 on frequent terms)
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


def pg_tsquery(tokens: list[str], *, prefix: bool) -> str:
    parts = [t for t in tokens if t.isalnum()]
    out = [f"{t}:*" if prefix and i == len(parts) - 1 else t for i, t in enumerate(parts)]
    return " & ".join(out)


def backend_name(session: Session) -> str:
    from suite.core.config import get_settings

    configured = get_settings().catalog.search_backend
    if configured != "auto":
        return configured
    return session.get_bind().dialect.name


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
            f"EXISTS (SELECT 1 FROM catalog_movie_genre mg JOIN catalog_genre g ON g.id = mg.genre_id "
            f"WHERE mg.movie_id = {alias}.id AND lower(g.name) LIKE :genre ESCAPE '\\')"
        )
        params["genre"] = like_escape(p.genre) + "%"
    return (" AND " + " AND ".join(clauses)) if clauses else ""


def like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


MOVIE_COLS = "m.id, m.title, m.year, m.search_people, m.poster_path, m.overview_source"


def _movie_rows(session: Session, p: ParsedQuery, limit: int, backend: str) -> list[Any]:
    params: dict[str, Any] = {"limit": limit}
    filters = _filters_sql(p, params, backend)
    if not p.tokens:
        if filters:
            sql = f"SELECT {MOVIE_COLS} FROM catalog_movie m WHERE 1=1{filters} ORDER BY m.sort_title, m.id LIMIT :limit"
            return list(session.execute(text(sql), params))
        return []
    if backend == "sqlite":
        params["match"] = fts5_match(p.tokens, prefix=p.prefix)
        params["cand"] = CANDIDATES if not filters else 5000
        sql = (
            f"SELECT {MOVIE_COLS} FROM (SELECT rowid AS id, rank FROM catalog_movie_fts "
            "WHERE catalog_movie_fts MATCH :match AND rank MATCH 'bm25(10.0, 5.0, 3.0, 1.0)' "
            "ORDER BY rank LIMIT :cand) f JOIN catalog_movie m ON m.id = f.id "
            f"WHERE 1=1{filters} ORDER BY f.rank, m.id LIMIT :limit"
        )
        return list(session.execute(text(sql), params))
    if backend == "postgresql":
        params["tsq"] = pg_tsquery(p.tokens, prefix=p.prefix)
        if not params["tsq"]:
            return []
        sql = (
            f"SELECT {MOVIE_COLS} FROM catalog_movie m, to_tsquery('simple', catalog_unaccent(:tsq)) q "
            f"WHERE m.search @@ q{filters} ORDER BY ts_rank(m.search, q, 1) DESC, m.id LIMIT :limit"
        )
        return list(session.execute(text(sql), params))
    # "like": the slow, portable baseline (benchmarks).
    params["like"] = "%" + like_escape(" ".join(p.tokens)) + "%"
    sql = (
        f"SELECT {MOVIE_COLS} FROM catalog_movie m WHERE (lower(m.title) LIKE :like ESCAPE '\\' "
        "OR lower(m.overview) LIKE :like ESCAPE '\\' OR lower(m.search_people) LIKE :like ESCAPE '\\')"
        f"{filters} ORDER BY m.sort_title LIMIT :limit"
    )
    return list(session.execute(text(sql), params))


def _people_rows(session: Session, p: ParsedQuery, limit: int, backend: str) -> list[Any]:
    if not p.tokens or p.year is not None:
        return []
    params: dict[str, Any] = {"limit": limit}
    if backend == "sqlite":
        params["match"] = fts5_match(p.tokens, prefix=p.prefix)
        sql = (
            "SELECT p.id, p.name FROM catalog_person_fts f JOIN catalog_person p ON p.id = f.rowid "
            "WHERE catalog_person_fts MATCH :match ORDER BY f.rank LIMIT :limit"
        )
    elif backend == "postgresql":
        params["tsq"] = pg_tsquery(p.tokens, prefix=p.prefix)
        if not params["tsq"]:
            return []
        sql = (
            "SELECT p.id, p.name FROM catalog_person p, to_tsquery('simple', catalog_unaccent(:tsq)) q "
            "WHERE p.search @@ q ORDER BY ts_rank(p.search, q) DESC, p.id LIMIT :limit"
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
