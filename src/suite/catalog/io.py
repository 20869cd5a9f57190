"""Import and export: CSV and JSON for movies, ratings (reviews), watchlists and lists.

An import first previews: every row lands in one bucket (ready, exists, duplicate, needs_review, invalid), kept in
`catalog_import_row`; catalog data is written only by `commit`, once (a second commit is 409). A wrong header,
bad JSON or bad encoding refuses the whole file with nothing written. Exports stream, and CSV cells that a
spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR) get a `'` prefix.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io as _io
import json
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from suite.catalog import models as m
from suite.catalog import schemas as s
from suite.catalog.datasets import DatasetError
from suite.catalog.sources.base import fold
from suite.core.db import utcnow
from suite.core.errors import Conflict, NotFound, TooLarge, ValidationFailed

WHATS = ("movies", "ratings", "watchlist", "lists")
MOVIE_REF = ("movie_id", "imdb_id", "title", "year")
HEADERS: dict[str, tuple[set[str], set[str]]] = {
    # what: (required columns, optional columns); ratings/watchlist/lists also need a movie reference
    "movies": (
        {"title"},
        {"year", "imdb_id", "tmdb_id", "runtime_min", "genres", "original_title", "overview"},
    ),
    "ratings": ({"score"}, {"comment", "recommend", *MOVIE_REF}),
    "watchlist": (set(), {"note", "added_at", *MOVIE_REF}),
    "lists": ({"list_name"}, {"visibility", "position", *MOVIE_REF}),
}
BUCKETS = ("ready", "exists", "duplicate", "needs_review", "invalid")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
ROW_BATCH = 1000


class ImportFormatError(DatasetError):
    status_code = 422
    code = "invalid_import"


def safe_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


# --- reading ------------------------------------------------------------------------------------------------


def _rows_csv(stream: Iterable[str], what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(stream)
    try:
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ImportFormatError(f"cannot read the CSV header: {exc}") from None
    _check_header(header, what)
    reader.fieldnames = header
    try:
        for n, row in enumerate(reader, 2):
            yield n, {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}
    except UnicodeDecodeError as exc:
        raise ImportFormatError(f"the file is not UTF-8 ({exc.reason})") from None
    except csv.Error as exc:
        raise ImportFormatError(f"CSV error at line {reader.line_num}: {exc}") from None


def _check_header(header: list[str], what: str) -> None:
    required, optional = HEADERS[what]
    if not header:
        raise ImportFormatError("the file has no header row")
    missing = required - set(header)
    unknown = set(header) - required - optional
    needs_ref = what != "movies" and not ({"movie_id", "imdb_id", "title"} & set(header))
    if missing or unknown or needs_ref:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(sorted(missing))}")
        if unknown:
            parts.append(f"unknown {', '.join(sorted(unknown))}")
        if needs_ref:
            parts.append("no movie reference (movie_id, imdb_id or title)")
        allowed = ", ".join(sorted(required | optional))
        raise ImportFormatError(f"wrong header for {what}: {'; '.join(parts)} (columns: {allowed})")


def _rows_json(data: bytes, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ImportFormatError(f"the file is not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ImportFormatError(f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if isinstance(value, dict) and isinstance(value.get(what), list):
        value = value[what]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ImportFormatError(f"expected a JSON array of objects (or {{{what!r}: [...]}})")
    keys = sorted({k.lower() for v in value for k in v})
    _check_header(keys or list(HEADERS[what][0]) or ["title"], what)
    for n, row in enumerate(value, 1):
        yield n, {k.lower(): v for k, v in row.items()}


# --- classification -------------------------------------------------------------------------------------------


def _int(value: Any, name: str, lo: int, hi: int) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValidationFailed(f"{name}: {str(value)[:30]!r} is not a whole number") from None
    if not lo <= number <= hi:
        raise ValidationFailed(f"{name}: {number} is outside {lo}..{hi}")
    return number


def _find_movie(session: Session, row: dict[str, Any]) -> tuple[int | None, str | None]:
    """(movie id, problem): by id, then IMDb id, then exact title + year."""
    movie_id = _int(row.get("movie_id"), "movie_id", 1, 2**31)
    if movie_id is not None:
        return (movie_id, None) if session.get(m.Movie, movie_id) is not None else (None, "no such movie id")
    imdb = str(row.get("imdb_id") or "").strip()
    if imdb:
        found = session.scalar(
            select(m.ExternalId.entity_id).where(
                m.ExternalId.entity == "movie", m.ExternalId.source == "imdb", m.ExternalId.value == imdb
            )
        )
        return (found, None) if found else (None, f"no movie with imdb id {imdb}")
    title = str(row.get("title") or "").strip()
    year = _int(row.get("year"), "year", 1870, 2100)
    if not title:
        raise ValidationFailed("no movie reference")
    stmt = select(m.Movie.id, m.Movie.year).where(m.Movie.sort_title == _sort(title))
    rows = session.execute(stmt.limit(20)).all()
    exact = [r.id for r in rows if year is None or r.year == year]
    if len(exact) == 1:
        return exact[0], None
    if len(exact) > 1:
        return None, f"{len(exact)} movies are titled {title!r}; give the year or imdb_id"
    near = [r.id for r in rows if year is not None and r.year is not None and abs(r.year - year) == 1]
    return None, (f"only a year ±1 match (movie {near[0]})" if near else f"no movie titled {title!r}")


def _sort(title: str) -> str:
    from suite.catalog.sources.base import sort_key

    return sort_key(title)


def classify(
    session: Session, what: str, row: dict[str, Any], seen: set[Any], owner_id: int | None
) -> tuple[str, Any, int | None, str | None]:
    """(bucket, cleaned data, matched movie id, message) for one row."""
    try:
        if what == "movies":
            title = str(row.get("title") or "").strip()
            if not title or len(title) > 300:
                raise ValidationFailed("title must be 1-300 characters")
            year = _int(row.get("year"), "year", 1870, 2100)
            runtime = _int(row.get("runtime_min"), "runtime_min", 1, 1000)
            imdb = str(row.get("imdb_id") or "").strip() or None
            if imdb and not (imdb.startswith("tt") and imdb[2:].isdigit()):
                raise ValidationFailed(f"imdb_id {imdb[:20]!r} is not tt<digits>")
            genres = [
                g.strip() for g in str(row.get("genres") or "").replace("|", ",").split(",") if g.strip()
            ]
            data = {
                "title": title,
                "year": year,
                "runtime_min": runtime,
                "imdb_id": imdb,
                "genres": genres[:20],
            }
            key = ("imdb", imdb) if imdb else ("title", fold(title), year)
            if key in seen:
                return "duplicate", data, None, "same movie earlier in the file"
            seen.add(key)
            if imdb:
                found = session.scalar(
                    select(m.ExternalId.entity_id).where(
                        m.ExternalId.entity == "movie",
                        m.ExternalId.source == "imdb",
                        m.ExternalId.value == imdb,
                    )
                )
                if found:
                    return "exists", data, found, f"movie {found} has imdb id {imdb}"
            rows = session.execute(
                select(m.Movie.id, m.Movie.year).where(m.Movie.sort_title == _sort(title)).limit(20)
            ).all()
            same = [r.id for r in rows if r.year == year]
            if same:
                return "exists", data, same[0], f"movie {same[0]} has this title and year"
            near = [r.id for r in rows if year and r.year and abs(r.year - year) <= 1]
            if near:
                return "needs_review", data, near[0], f"movie {near[0]} has this title at year ±1"
            return "ready", data, None, None
        movie_id, problem = _find_movie(session, row)
        data = {k: v for k, v in row.items() if v not in (None, "")}
        if what == "ratings":
            score = _int(row.get("score"), "score", 0, 10)
            if score is None:
                raise ValidationFailed("score is required")
            data["score"] = score
            data["recommend"] = str(row.get("recommend") or "").strip().lower() in ("1", "true", "yes", "y")
            if len(str(row.get("comment") or "")) > 4096:
                raise ValidationFailed("comment is over 4096 characters")
        if what == "lists" and not str(row.get("list_name") or "").strip():
            raise ValidationFailed("list_name is empty")
        if movie_id is None:
            return "needs_review", data, None, problem
        key = (what, str(row.get("list_name") or ""), movie_id)
        if key in seen:
            return "duplicate", data, movie_id, "same movie earlier in the file"
        seen.add(key)
        if owner_id is not None:
            if (
                what == "ratings"
                and session.scalar(
                    select(m.Review.score).where(m.Review.user_id == owner_id, m.Review.movie_id == movie_id)
                )
                == data["score"]
            ):
                return "exists", data, movie_id, "you already rated it the same"
            if (
                what == "watchlist"
                and session.get(m.WatchlistItem, {"user_id": owner_id, "movie_id": movie_id}) is not None
            ):
                return "exists", data, movie_id, "already on your watchlist"
        return "ready", data, movie_id, None
    except ValidationFailed as exc:
        return "invalid", _json_safe(row), None, exc.message


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = json.loads(json.dumps(row, default=str))
    return safe


# --- preview and commit -----------------------------------------------------------------------------------------


def _preview(
    session: Session,
    *,
    rows: Iterator[tuple[int, dict[str, Any]]],
    what: str,
    fmt: str,
    sha: str,
    owner_id: int | None,
) -> dict[str, Any]:
    # Classify the whole file first: a file-level fault anywhere (a bad line) refuses it with nothing written.
    import_id = str(uuid.uuid4())
    counts = dict.fromkeys(BUCKETS, 0)
    seen: set[Any] = set()
    pending: list[dict[str, Any]] = []
    record = m.Import(
        id=import_id, owner_id=owner_id, what=what, format=fmt, sha256=sha, status="previewed", counts={}
    )
    session.add(record)
    session.flush()
    for line_no, row in rows:
        bucket, data, movie_id, message = classify(session, what, row, seen, owner_id)
        counts[bucket] += 1
        pending.append(
            {
                "import_id": import_id,
                "line_no": line_no,
                "bucket": bucket,
                "data": data,
                "match_movie_id": movie_id,
                "message": (message or "")[:500] or None,
            }
        )
        if len(pending) >= ROW_BATCH:
            session.execute(cast(Table, m.ImportRow.__table__).insert(), pending)
            pending = []
    if pending:
        session.execute(cast(Table, m.ImportRow.__table__).insert(), pending)
    record.counts = counts
    session.flush()
    return import_summary(session, import_id=import_id, owner_id=owner_id, is_admin=True)


def preview_bytes(
    session: Session, *, data: bytes, what: str, fmt: str, owner_id: int | None
) -> dict[str, Any]:
    if what not in WHATS:
        raise ValidationFailed(f"what must be one of {', '.join(WHATS)}")
    sha = hashlib.sha256(data).hexdigest()
    if fmt == "json":
        rows = _rows_json(data, what)
    else:
        stream = codecs.getreader("utf-8-sig")(_io.BytesIO(data), "strict")
        rows = _rows_csv(stream, what)
    with session.begin_nested():
        return _preview(session, rows=rows, what=what, fmt=fmt, sha=sha, owner_id=owner_id)


def import_file(
    session: Session,
    *,
    path: Path,
    what: str,
    fmt: str,
    owner_id: int | None,
    commit: bool,
    report: Path | None = None,
) -> dict[str, Any]:
    from suite.catalog.settings import catalog_settings

    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if path.stat().st_size > catalog_settings().import_max_bytes:
        raise TooLarge(f"{path}: larger than {catalog_settings().import_max_bytes} bytes")
    if what != "movies" and owner_id is None:
        raise ValidationFailed(f"importing {what} needs --user NAME (whose {what} they are)")
    summary = preview_bytes(session, data=path.read_bytes(), what=what, fmt=fmt, owner_id=owner_id)
    if report is not None:
        write_report(session, import_id=summary["id"], path=report)
    if commit:
        summary = commit_import(session, import_id=summary["id"], owner_id=owner_id, is_admin=True)
    return summary


def write_report(session: Session, *, import_id: str, path: Path) -> None:
    rows = session.execute(
        select(m.ImportRow)
        .where(m.ImportRow.import_id == import_id, m.ImportRow.bucket != "ready")
        .order_by(m.ImportRow.line_no)
    ).scalars()
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["line", "bucket", "message", "data"])
        for r in rows:
            writer.writerow(
                [
                    r.line_no,
                    r.bucket,
                    safe_cell(r.message or ""),
                    safe_cell(json.dumps(r.data, ensure_ascii=False)),
                ]
            )


def _get_import(session: Session, import_id: str, owner_id: int | None, is_admin: bool) -> m.Import:
    record = session.get(m.Import, import_id)
    if record is None or (not is_admin and record.owner_id != owner_id):
        raise NotFound(f"import {import_id} not found")
    return record


def import_summary(
    session: Session, *, import_id: str, owner_id: int | None, is_admin: bool
) -> dict[str, Any]:
    record = _get_import(session, import_id, owner_id, is_admin)
    attention = session.execute(
        select(m.ImportRow.line_no, m.ImportRow.bucket, m.ImportRow.message)
        .where(m.ImportRow.import_id == import_id, m.ImportRow.bucket != "ready")
        .order_by(m.ImportRow.line_no)
        .limit(50)
    ).all()
    return {
        "id": record.id,
        "what": record.what,
        "format": record.format,
        "status": record.status,
        "sha256": record.sha256,
        "counts": record.counts,
        "attention": [{"line": n, "bucket": b, "message": msg} for n, b, msg in attention],
    }


def commit_import(
    session: Session, *, import_id: str, owner_id: int | None, is_admin: bool
) -> dict[str, Any]:
    from suite.catalog import service

    record = _get_import(session, import_id, owner_id, is_admin)
    if record.status != "previewed":
        raise Conflict(f"import {import_id} is already {record.status}")
    # Claim it first (compare-and-set), so two commits of the same import cannot both write.
    from sqlalchemy import update

    claimed = session.execute(
        update(m.Import)
        .where(m.Import.id == import_id, m.Import.status == "previewed")
        .values(status="committed", committed_at=utcnow())
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"import {import_id} is already committed")
    written = 0
    rows = (
        session.execute(
            select(m.ImportRow)
            .where(m.ImportRow.import_id == import_id, m.ImportRow.bucket == "ready")
            .order_by(m.ImportRow.line_no)
        )
        .scalars()
        .all()
    )
    lists: dict[str, int] = {}
    for row in rows:
        data = row.data or {}
        if record.what == "movies":
            service.create_movie(
                session,
                data=s.MovieCreate(
                    title=data["title"],
                    year=data.get("year"),
                    runtime_min=data.get("runtime_min"),
                    imdb_id=data.get("imdb_id"),
                    genres=data.get("genres") or [],
                ),
                user_id=owner_id,
            )
        elif record.what == "ratings":
            assert owner_id is not None and row.match_movie_id is not None
            service.put_review(
                session,
                movie_id=row.match_movie_id,
                user_id=record.owner_id or owner_id,
                data=s.ReviewIn(
                    score=data["score"], comment=data.get("comment"), recommend=bool(data.get("recommend"))
                ),
            )
        elif record.what == "watchlist":
            assert row.match_movie_id is not None
            service.watchlist_add(
                session, user_id=record.owner_id or owner_id or 0, movie_id=row.match_movie_id
            )
        else:
            name = str(data.get("list_name"))[:100]
            user = record.owner_id or owner_id or 0
            if name not in lists:
                existing = session.scalar(
                    select(m.MovieList.id).where(m.MovieList.owner_id == user, m.MovieList.name == name)
                )
                if existing is None:
                    visibility = (
                        "public" if str(data.get("visibility", "")).lower() == "public" else "private"
                    )
                    existing = service.create_list(
                        session, user_id=user, data=s.ListCreate(name=name, visibility=visibility)
                    ).id
                lists[name] = existing
            assert row.match_movie_id is not None
            service.list_add(session, list_id=lists[name], user_id=user, movie_id=row.match_movie_id)
        written += 1
    session.flush()
    session.refresh(record)
    record.counts = {**record.counts, "written": written}
    session.flush()
    return import_summary(session, import_id=import_id, owner_id=owner_id, is_admin=True)


async def read_upload(file: Any) -> bytes:
    from suite.catalog.settings import catalog_settings

    limit = catalog_settings().import_max_bytes
    chunks: list[bytes] = []
    size = 0
    while chunk := await file.read(1024 * 1024):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"upload larger than {limit // (1024 * 1024)} MB")
        chunks.append(chunk)
    return b"".join(chunks)


# --- export ---------------------------------------------------------------------------------------------------


def _export_rows(session: Session, what: str, owner_id: int | None) -> tuple[list[str], Iterator[list[Any]]]:
    imdb = (
        select(m.ExternalId.value)
        .where(
            m.ExternalId.entity == "movie",
            m.ExternalId.source == "imdb",
            m.ExternalId.entity_id == m.Movie.id,
        )
        .limit(1)
        .scalar_subquery()
    )
    if what == "movies":
        cols = ["movie_id", "title", "year", "imdb_id", "runtime_min", "overview"]
        stmt = select(
            m.Movie.id, m.Movie.title, m.Movie.year, imdb, m.Movie.runtime_min, m.Movie.overview
        ).order_by(m.Movie.id)
    elif owner_id is None:
        raise ValidationFailed(f"exporting {what} needs a user")
    elif what == "ratings":
        cols = ["movie_id", "title", "year", "imdb_id", "score", "comment", "recommend"]
        stmt = (
            select(
                m.Movie.id,
                m.Movie.title,
                m.Movie.year,
                imdb,
                m.Review.score,
                m.Review.comment,
                m.Review.recommend,
            )
            .join(m.Review, m.Review.movie_id == m.Movie.id)
            .where(m.Review.user_id == owner_id)
            .order_by(m.Review.id)
        )
    elif what == "watchlist":
        cols = ["movie_id", "title", "year", "imdb_id", "note"]
        stmt = (
            select(m.Movie.id, m.Movie.title, m.Movie.year, imdb, m.WatchlistItem.note)
            .join(m.WatchlistItem, m.WatchlistItem.movie_id == m.Movie.id)
            .where(m.WatchlistItem.user_id == owner_id)
            .order_by(m.WatchlistItem.added_at)
        )
    else:
        cols = ["list_name", "visibility", "position", "movie_id", "title", "year", "imdb_id"]
        stmt = (
            select(
                m.MovieList.name,
                m.MovieList.visibility,
                m.ListItem.position,
                m.Movie.id,
                m.Movie.title,
                m.Movie.year,
                imdb,
            )
            .join(m.ListItem, m.ListItem.list_id == m.MovieList.id)
            .join(m.Movie, m.Movie.id == m.ListItem.movie_id)
            .where(m.MovieList.owner_id == owner_id)
            .order_by(m.MovieList.name, m.ListItem.position)
        )
    result = session.execute(stmt.execution_options(yield_per=2000))
    return cols, (list(r) for r in result)


def export_chunks(session: Session, *, what: str, fmt: str, owner_id: int | None) -> Iterator[str]:
    if what not in WHATS:
        raise ValidationFailed(f"what must be one of {', '.join(WHATS)}")
    cols, rows = _export_rows(session, what, owner_id)
    if fmt == "csv":
        buf = _io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(cols)
        for n, row in enumerate(rows, 1):
            writer.writerow([safe_cell(v) for v in row])
            if n % 1000 == 0:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()
        return
    yield "["
    for n, row in enumerate(rows):
        yield ("," if n else "") + json.dumps(
            dict(zip(cols, row, strict=True)), ensure_ascii=False, default=str
        )
    yield "]\n"


def user_id_for(session: Session, username: str) -> int:
    from suite.core.models import User

    found = session.scalar(select(User.id).where(func.lower(User.username) == username.strip().lower()))
    if found is None:
        raise NotFound(f"user {username!r} not found")
    return int(found)
