"""TMDB API v3: our own small httpx client (configurable base URL, 429/Retry-After, retries on 5xx and timeouts,
a clear stop on 401) and the `--source tmdb` seed source. Used only when a key is set.

The key never appears in messages, logs, task arguments or the run's params: the Bearer header is preferred
(v4 read tokens); a v3 key goes in `api_key`, and httpx's own request log lines are redacted.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from suite.catalog.sources.base import (
    CreditRecord,
    FileError,
    MovieRecord,
    RowError,
    as_int,
    check_title,
    clean_text,
    parse_date,
    sort_key,
    template_overview,
)
from suite.core.errors import SuiteError, Unavailable

_KEY_IN_URL = re.compile(r"(api_key=)[^&\s]+")


class TmdbError(SuiteError):
    code = "tmdb_error"
    status_code = 502
    exit_code = 1


class TmdbUnconfigured(TmdbError):
    code = "tmdb_unconfigured"
    status_code = 400


class TmdbAuthError(TmdbError):
    code = "tmdb_unauthorized"


class TmdbNotFound(TmdbError):
    code = "tmdb_not_found"
    status_code = 404


class TmdbBadResponse(TmdbError):
    code = "tmdb_bad_response"


class TmdbUnavailable(TmdbError, Unavailable):
    code = "tmdb_unavailable"
    status_code = 503


class _Redact(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                _KEY_IN_URL.sub(r"\1***", str(a)) if "api_key=" in str(a) else a for a in record.args
            )
        if isinstance(record.msg, str) and "api_key=" in record.msg:
            record.msg = _KEY_IN_URL.sub(r"\1***", record.msg)
        return True


_redact = _Redact()
for _name in ("httpx", "httpcore"):
    if _redact not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_redact)


def redact(text: str, key: str | None) -> str:
    text = _KEY_IN_URL.sub(r"\1***", text)
    return text.replace(key, "***") if key else text


class TmdbClient:
    def __init__(
        self,
        *,
        key: str,
        base_url: str,
        timeout_s: float = 20.0,
        retries: int = 3,
        rps: float = 10.0,
        max_wait_s: float = 60.0,
    ) -> None:
        import httpx

        self.key = key
        self.bearer = len(key) > 40 and "." in key  # v4 read access tokens are JWTs
        headers = {"Accept": "application/json", "User-Agent": "suite-catalog"}
        if self.bearer:
            headers["Authorization"] = f"Bearer {key}"
        self.http = httpx.Client(base_url=base_url.rstrip("/") + "/", timeout=timeout_s, headers=headers)
        self.retries = retries
        self.interval = 1.0 / rps if rps > 0 else 0.0
        self.max_wait_s = max_wait_s
        self._last = 0.0

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        import httpx

        if not self.bearer:
            params["api_key"] = self.key
        attempt = 0
        while True:
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()
            try:
                response = self.http.get(path.lstrip("/"), params=params)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                attempt += 1
                if attempt > self.retries:
                    raise TmdbUnavailable(
                        f"TMDB {path}: {type(exc).__name__} after {attempt} tries"
                    ) from None
                time.sleep(min(0.2 * 2**attempt, 5))
                continue
            status = response.status_code
            if status == 429:
                retry_after = response.headers.get("retry-after", "1")
                delay = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 1.0
                if delay > self.max_wait_s:
                    raise TmdbUnavailable(f"TMDB {path}: rate limited for {delay:.0f} s")
                attempt += 1
                if attempt > self.retries + 5:
                    raise TmdbUnavailable(f"TMDB {path}: still rate limited after {attempt} tries")
                time.sleep(delay)
                continue
            if status == 401:
                raise TmdbAuthError(
                    f"TMDB refused the key (HTTP 401{self._status_message(response)}); "
                    "check SUITE_CATALOG__TMDB_API_KEY"
                )
            if status == 404:
                raise TmdbNotFound(f"TMDB {path}: not found{self._status_message(response)}")
            if status >= 500:
                attempt += 1
                if attempt > self.retries:
                    raise TmdbUnavailable(f"TMDB {path}: HTTP {status} after {attempt} tries")
                time.sleep(min(0.2 * 2**attempt, 5))
                continue
            if status >= 400:
                raise TmdbError(f"TMDB {path}: HTTP {status}{self._status_message(response)}")
            try:
                data = response.json()
            except (ValueError, UnicodeDecodeError):
                raise TmdbBadResponse(f"TMDB {path}: the response is not valid JSON") from None
            if not isinstance(data, dict):
                raise TmdbBadResponse(f"TMDB {path}: expected a JSON object")
            return data

    @staticmethod
    def _status_message(response: Any) -> str:
        try:
            body = response.json()
            return f", code {body.get('status_code')}: {str(body.get('status_message', ''))[:100]}"
        except Exception:
            return ""


def client_from_settings() -> TmdbClient:
    from suite.catalog.keys import effective_tmdb_key
    from suite.catalog.settings import catalog_settings

    settings = catalog_settings()
    key = effective_tmdb_key()
    if not key:
        raise TmdbUnconfigured(
            "TMDB key not configured: set SUITE_CATALOG__TMDB_API_KEY or use --source wikidata "
            "(admins can also store one: suite catalog tmdb-key set)"
        )
    return TmdbClient(
        key=key,
        base_url=settings.tmdb_base_url,
        timeout_s=settings.tmdb_timeout_s,
        retries=settings.tmdb_retries,
        rps=settings.tmdb_rps,
    )


def read_ids_file(path: Path) -> list[int]:
    """One id per line, or TMDB's daily export (JSON lines with "id", optionally gzip)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        from suite.catalog.datasets import DatasetError

        raise DatasetError(f"{path}: cannot read the ids file: {exc}") from None
    ids: list[int] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)["id"] if line.startswith("{") else int(line)
            ids.append(int(value))
        except (ValueError, KeyError, TypeError):
            from suite.catalog.datasets import DatasetError

            raise DatasetError(f"{path}:{n}: not an id: {line[:40]!r}") from None
    return ids


def normalize_movie(doc: Any, *, source: str = "tmdb") -> MovieRecord:
    """A TMDB `/movie/{id}?append_to_response=credits,external_ids` document → MovieRecord."""
    if not isinstance(doc, dict):
        raise RowError("wrong_type", f"expected a JSON object, got {type(doc).__name__}")
    tmdb_id = doc.get("id")
    if isinstance(tmdb_id, bool) or not isinstance(tmdb_id, int) or tmdb_id <= 0:
        raise RowError("invalid_id", f"id {str(tmdb_id)[:20]!r} is not a positive integer")
    title = check_title(doc.get("title"))
    released, precision = parse_date(doc.get("release_date") or None)
    year = as_int(doc.get("year"), "year", lo=1870, hi=2100) if "year" in doc else None
    if year is None and released is not None:
        year = released.year
        if precision == "year":
            precision = "day"  # TMDB dates are real days
    runtime = doc.get("runtime")
    runtime = None if runtime in (0, None) else as_int(runtime, "runtime", lo=1, hi=1000)
    names = [clean_text(g.get("name"), limit=64) for g in doc.get("genres") or [] if isinstance(g, dict)]
    genres = [g for g in names if g]
    langs = [
        clean_text(lang.get("english_name") or lang.get("name"), limit=64)
        for lang in doc.get("spoken_languages") or []
        if isinstance(lang, dict)
    ]
    countries = [
        clean_text(c.get("name"), limit=100)
        for c in doc.get("production_countries") or []
        if isinstance(c, dict)
    ]
    credits_doc = doc.get("credits") or {}
    if not isinstance(credits_doc, dict):
        raise RowError("wrong_type", "credits: expected an object")
    credits: list[CreditRecord] = []
    directors: list[str] = []
    writers: list[str] = []
    cast_names: list[str] = []
    for c in credits_doc.get("cast") or []:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not clean_text(c.get("name")):
            continue
        name = clean_text(c["name"], limit=200) or ""
        character = clean_text(c.get("character"), limit=300)
        order = c.get("order") if isinstance(c.get("order"), int) else None
        credits.append(
            CreditRecord(
                f"tmdb_person:{c['id']}",
                name,
                "cast",
                character=character,
                order=order,
                person_ext={"tmdb": str(c["id"])},
            )
        )
        cast_names.append(name)
    for c in credits_doc.get("crew") or []:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not clean_text(c.get("name")):
            continue
        name = clean_text(c["name"], limit=200) or ""
        job = clean_text(c.get("job"), limit=64) or "Crew"
        dept = clean_text(c.get("department"), limit=64) or "Crew"
        credits.append(
            CreditRecord(
                f"tmdb_person:{c['id']}",
                name,
                "crew",
                department=dept,
                job=job,
                person_ext={"tmdb": str(c["id"])},
            )
        )
        if job == "Director":
            directors.append(name)
        elif dept == "Writing":
            writers.append(name)
    overview = clean_text(doc.get("overview"), limit=20_000)
    overview_source = "tmdb"
    if not overview:
        overview, overview_source = template_overview(genres, directors, cast_names), "template"
    imdb = doc.get("imdb_id") or (doc.get("external_ids") or {}).get("imdb_id")
    ext = {"tmdb": str(tmdb_id)}
    if isinstance(imdb, str) and re.fullmatch(r"tt\d{5,10}", imdb):
        ext["imdb"] = imdb
    fields = {
        "title": title,
        "original_title": clean_text(doc.get("original_title"), limit=300),
        "sort_title": sort_key(title),
        "year": year,
        "release_date": released,
        "release_date_precision": precision if released else None,
        "runtime_min": runtime,
        "overview": overview,
        "overview_source": overview_source if overview else None,
        "tagline": clean_text(doc.get("tagline"), limit=500),
        "status": clean_text(doc.get("status"), limit=32),
        "budget_usd": as_int(doc.get("budget"), "budget", lo=0) or None,
        "revenue_usd": as_int(doc.get("revenue"), "revenue", lo=0) or None,
        "poster_path": clean_text(doc.get("poster_path"), limit=300),
        "search_people": ", ".join(dict.fromkeys([*directors, *writers, *cast_names[:10]]))[:4000] or None,
    }
    return MovieRecord(
        key=f"tmdb:{tmdb_id}",
        source=source,
        ext_ids=ext,
        fields=fields,
        genres=list(dict.fromkeys(genres)),
        languages=[x for x in dict.fromkeys(langs) if x],
        countries=[x for x in dict.fromkeys(countries) if x],
        credits=credits,
    )


class TmdbSource:
    """Live TMDB by ids: each response is also cached as a dump file (`<data_dir>/catalog/tmdb/movie/`)."""

    name = "tmdb"
    sha256 = None

    def __init__(self, *, ids: list[int], limit: int | None = None, language: str = "en-US") -> None:
        self.ids = sorted(dict.fromkeys(i for i in ids if i > 0))
        self.limit = limit
        self.language = language
        self.version = f"TMDB v3 ({language})"
        self.client: TmdbClient | None = None

    def check(self) -> None:
        self.client = client_from_settings()
        if not self.ids:
            self.client.close()
            raise FileError("--source tmdb needs movie ids: --id N (repeatable) or --ids FILE")

    def total(self) -> int | None:
        return min(len(self.ids), self.limit) if self.limit else len(self.ids)

    def extract(self, *, after: str | None) -> Iterator[tuple[str, Any]]:
        assert self.client is not None
        start = int(after) if after else 0
        todo = [i for i in self.ids if i > start][: self.total()]
        for tmdb_id in todo:
            try:
                doc: Any = self.client.get(
                    f"movie/{tmdb_id}", append_to_response="credits,external_ids", language=self.language
                )
                self._cache(tmdb_id, doc)
            except TmdbAuthError:
                raise
            except TmdbError as exc:
                doc = {"_error": exc.code, "_message": redact(exc.message, self.client.key), "id": tmdb_id}
            yield f"{tmdb_id:012d}"[-12:].lstrip("0") or "0", doc

    def _cache(self, tmdb_id: int, doc: dict[str, Any]) -> None:
        from suite.core.config import get_settings

        folder = get_settings().data_dir / "catalog" / "tmdb" / "movie"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{tmdb_id}.{self.language}.json").write_text(json.dumps(doc, ensure_ascii=False), "utf-8")

    def normalize(self, raw: Any) -> MovieRecord:
        if isinstance(raw, dict) and raw.get("_error"):
            raise RowError(str(raw["_error"]), str(raw.get("_message", "TMDB error")))
        return normalize_movie(raw)
