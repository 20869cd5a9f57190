"""The seeder: stages extract → normalize → validate → load → index, a run record with a checkpoint, one run at
a time, bad rows quarantined, batched Core upserts (SQLite and PostgreSQL dialects).

Every batch commits its rows, its issues, the run's `last_key` and counts in one transaction, so a killed run
resumes from the last committed batch and a repeated run inserts nothing.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from suite.catalog import models as m
from suite.catalog.models import SOURCE_RANK
from suite.catalog.sources.base import FileError, MovieRecord, RowError, Source, Warning_, fold, sort_key
from suite.core.db import new_session, utcnow
from suite.core.errors import Conflict, NotFound, SuiteError, UsageError

Progress = Callable[..., None]
STAGES = ("extract", "normalize", "validate", "load", "index")
MIN_ROWS_FOR_RATE = 1000
RAW_LIMIT = 8000
CHUNK = 900  # bound parameters per IN list (SQLite's limit is 32766; stay far below)

MOVIE_T: Table = m.Movie.__table__  # type: ignore[assignment]
PERSON_T: Table = m.Person.__table__  # type: ignore[assignment]
EXT_T: Table = m.ExternalId.__table__  # type: ignore[assignment]
CREDIT_T: Table = m.Credit.__table__  # type: ignore[assignment]
MOVIE_FIELDS = [
    "title",
    "original_title",
    "sort_title",
    "year",
    "release_date",
    "release_date_precision",
    "runtime_min",
    "overview",
    "overview_source",
    "overview_model",
    "overview_prompt_version",
    "tagline",
    "status",
    "mpaa_rating",
    "budget_usd",
    "revenue_usd",
    "box_office_usd",
    "critic_meter",
    "critic_rating",
    "critic_reviews",
    "metacritic",
    "oscars",
    "poster_path",
    "search_people",
]
OVERVIEW_FIELDS = ("overview", "overview_source", "overview_model", "overview_prompt_version")
PERSON_FIELDS = ("birth_date", "death_date", "birth_place", "biography", "biography_source", "profile_path")


class SeedFailed(SuiteError):
    code = "seed_failed"
    status_code = 500
    exit_code = 1


class SeedLocked(Conflict):
    code = "seed_locked"


@dataclass
class SeedOptions:
    source: str = "wikidata"
    path: str | None = None
    limit: int | None = None
    scale: int | None = None
    batch: int = 5000
    max_error_rate: float = 0.01
    dry_run: bool = False
    language: str = "en-US"
    ids: list[int] = field(default_factory=list)

    def params(self) -> dict[str, Any]:
        """What the run record keeps (never a key or a secret)."""
        return {
            "source": self.source,
            "path": self.path,
            "limit": self.limit,
            "scale": self.scale,
            "batch": self.batch,
            "max_error_rate": self.max_error_rate,
            "dry_run": self.dry_run,
            "language": self.language,
            "ids": list(self.ids),
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SeedOptions:
        known = {k: v for k, v in params.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def lock_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _dialect_insert(session: Session, table: Table) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise UsageError(f"the seeder supports SQLite and PostgreSQL, not {name}")


def _insert_ignore(session: Session, table: Table, rows: list[dict[str, Any]]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING for many rows; the number actually inserted.

    SQLite reports the real executemany rowcount; psycopg reports -1, so PostgreSQL counts RETURNING rows.
    """
    stmt = _dialect_insert(session, table).on_conflict_do_nothing()
    if session.get_bind().dialect.name == "sqlite":
        return int(session.execute(stmt, rows).rowcount)  # type: ignore[attr-defined]
    pk = next(iter(table.primary_key.columns))
    return len(session.execute(stmt.returning(pk), rows).all())


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _raw_json(raw: Any) -> Any:
    try:
        text_ = json.dumps(raw, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        text_ = repr(raw)
    if len(text_) > RAW_LIMIT:
        return {"truncated": text_[:RAW_LIMIT]}
    return json.loads(text_)


# --- the lock and the run record ------------------------------------------------------------------------


def _owner_alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: trust the heartbeat
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def heartbeat_timeout() -> timedelta:
    from suite.catalog.settings import catalog_settings

    return timedelta(seconds=catalog_settings().seed_heartbeat_timeout_s)


def _stale(lock: m.SeedLock) -> bool:
    return utcnow() - lock.heartbeat_at > heartbeat_timeout() or not _owner_alive(lock.owner)


def acquire_lock(run_id: str) -> None:
    """Take the one seed lock; a live holder makes this refuse (409 `seed_locked`, exit 1)."""
    owner = lock_owner()
    for _ in range(3):
        with new_session() as s:
            s.add(m.SeedLock(name="seed", run_id=run_id, owner=owner))
            try:
                s.commit()
                return
            except IntegrityError:
                s.rollback()
        with new_session() as s:
            held = s.get(m.SeedLock, "seed")
            if held is None:
                continue
            if not _stale(held):
                raise SeedLocked(
                    f"another seed run ({held.run_id}) is in progress (owner {held.owner}); "
                    "wait for it or cancel it",
                )
            run = s.get(m.SeedRun, held.run_id)
            if run is not None and run.status in ("running", "queued"):
                run.status = "interrupted"
                run.error = "the process stopped (no heartbeat)"
                run.finished_at = utcnow()
            result = s.execute(
                update(m.SeedLock)
                .where(m.SeedLock.name == "seed", m.SeedLock.run_id == held.run_id)
                .values(run_id=run_id, owner=owner, acquired_at=utcnow(), heartbeat_at=utcnow())
            )
            s.commit()
            if result.rowcount == 1:  # type: ignore[attr-defined]
                return
    raise SeedLocked("could not take the seed lock; another run is starting")


def check_lock() -> None:
    """409 `seed_locked` when a live run holds the lock (the API checks before queueing a job)."""
    with new_session() as s:
        held = s.get(m.SeedLock, "seed")
        if held is not None and not _stale(held):
            raise SeedLocked(f"another seed run ({held.run_id}) is in progress (owner {held.owner})")


def release_lock(run_id: str) -> None:
    with new_session() as s:
        s.execute(delete(m.SeedLock).where(m.SeedLock.name == "seed", m.SeedLock.run_id == run_id))
        s.commit()


def mark_stale_runs(session: Session) -> None:
    """Runs whose process stopped without a heartbeat are `interrupted` (resumable)."""
    runs = session.scalars(select(m.SeedRun).where(m.SeedRun.status == "running")).all()
    if not runs:
        return
    lock = session.get(m.SeedLock, "seed")
    for run in runs:
        holder = lock is not None and lock.run_id == run.id
        if holder and lock is not None and not _stale(lock):
            continue
        if not holder and run.heartbeat_at and utcnow() - run.heartbeat_at < heartbeat_timeout():
            continue
        run.status = "interrupted"
        run.error = run.error or "the process stopped (no heartbeat)"
        run.finished_at = utcnow()
    session.flush()


def _merge_counts(total: dict[str, Any], part: dict[str, dict[str, int]]) -> dict[str, Any]:
    out = {k: dict(v) for k, v in total.items()}
    for entity, values in part.items():
        slot = out.setdefault(entity, {})
        for key, value in values.items():
            slot[key] = slot.get(key, 0) + value
    return out


def _bump(counts: dict[str, dict[str, int]], entity: str, key: str, n: int = 1) -> None:
    if n:
        slot = counts.setdefault(entity, {})
        slot[key] = slot.get(key, 0) + n


# --- the run ----------------------------------------------------------------------------------------------


def build_source(options: SeedOptions) -> Source:
    """The source object; file-level checks (checksum, header, syntax) run here, before any write."""
    from pathlib import Path

    path = Path(options.path) if options.path else None
    if options.source == "wikidata":
        from suite.catalog.sources.wikidata import WikidataSource

        source: Source = WikidataSource(path, limit=options.limit, scale=options.scale)
    elif options.source == "movielens100k":
        from suite.catalog.sources.movielens import MovieLensSource

        source = MovieLensSource(path, limit=options.limit)
    elif options.source == "tmdb-dump":
        if path is None:
            raise UsageError(
                "--source tmdb-dump needs the dump directory: suite catalog seed --source tmdb-dump DIR"
            )
        from suite.catalog.sources.tmdb_dump import TmdbDumpSource

        source = TmdbDumpSource(path, limit=options.limit)
    elif options.source == "tmdb":
        from suite.catalog.sources.tmdb import TmdbSource

        source = TmdbSource(ids=options.ids, limit=options.limit, language=options.language)
    else:
        raise UsageError(f"unknown source {options.source!r}: use wikidata, movielens100k, tmdb-dump or tmdb")
    try:
        source.check()
    except FileError as exc:
        from suite.catalog.datasets import DatasetError

        raise DatasetError(str(exc), code="bad_file") from None
    return source


def create_run(options: SeedOptions, source: Source, *, job_id: str | None = None) -> str:
    run_id = str(uuid.uuid4())
    with new_session() as s:
        s.add(
            m.SeedRun(
                id=run_id,
                source=options.source,
                source_version=source.version,
                dataset_sha256=source.sha256,
                params=options.params(),
                stage="extract",
                status="dry_run" if options.dry_run else "queued",
                total=source.total(),
                counts={},
                job_id=job_id,
            )
        )
        s.commit()
    return run_id


def seed(
    options: SeedOptions,
    *,
    resume: str | None = None,
    progress: Progress | None = None,
    job_id: str | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a seed to the end; returns the run's summary. Raises SeedFailed above the error rate."""
    if resume:
        with new_session() as s:
            mark_stale_runs(s)
            s.commit()
            run = s.get(m.SeedRun, resume)
            if run is None:
                raise NotFound(f"seed run {resume} not found")
            if run.status == "succeeded":
                raise Conflict(f"seed run {resume} already succeeded; start a new run to re-check the data")
            if run.status == "dry_run":
                raise Conflict(f"seed run {resume} was a dry run; start a new run")
            if run.status == "running":
                raise SeedLocked(f"seed run {resume} is still running (heartbeat {run.heartbeat_at})")
            options = SeedOptions.from_params(run.params)
        source = build_source(options)
        with new_session() as s:
            run = s.get(m.SeedRun, resume)
            assert run is not None
            if run.dataset_sha256 and source.sha256 and run.dataset_sha256 != source.sha256:
                raise Conflict(
                    f"the data set changed since run {resume} started (sha256 differs); start a new run"
                )
        run_id = resume
    else:
        source = build_source(options)
        if options.dry_run:
            return dry_run(options, source, progress=progress)
        run_id = create_run(options, source, job_id=job_id)
    acquire_lock(run_id)
    try:
        return _run(run_id, source, options, progress=progress, cancelled=cancelled, job_id=job_id)
    finally:
        release_lock(run_id)


def dry_run(options: SeedOptions, source: Source, *, progress: Progress | None = None) -> dict[str, Any]:
    """extract → normalize → validate; counts only; writes the run record and nothing else."""
    counts: dict[str, dict[str, int]] = {}
    issues: dict[str, int] = {}
    processed = 0
    total = source.total()
    keys: set[str] = set()
    for _key, raw in source.extract(after=None):
        processed += 1
        try:
            record = validate(source.normalize(raw))
        except RowError as exc:
            _bump(counts, "movie", "quarantined")
            issues[exc.code] = issues.get(exc.code, 0) + 1
            continue
        _bump(counts, "movie", "duplicate" if record.key in keys else "ready")
        keys.add(record.key)
        _bump(counts, "credit", "ready", len(record.credits))
        if progress and processed % 500 == 0:
            progress(processed, total, "validate")
    run_id = create_run(options, source)
    with new_session() as s:
        run = s.get(m.SeedRun, run_id)
        assert run is not None
        run.stage, run.processed, run.counts = "validate", processed, {**counts, "issues": issues}
        run.quarantined = counts.get("movie", {}).get("quarantined", 0)
        run.finished_at = utcnow()
        s.commit()
    return run_summary(run_id)


def _run(
    run_id: str,
    source: Source,
    options: SeedOptions,
    *,
    progress: Progress | None,
    cancelled: Callable[[], bool] | None,
    job_id: str | None,
) -> dict[str, Any]:
    with new_session() as s:
        run = s.get(m.SeedRun, run_id)
        assert run is not None
        run.status, run.stage, run.error, run.finished_at = "running", "extract", None, None
        run.heartbeat_at = utcnow()
        run.lock_owner = lock_owner()
        if job_id:
            run.job_id = job_id
        after, processed, quarantined = run.last_key, run.processed, run.quarantined
        counts: dict[str, Any] = dict(run.counts or {})
        s.commit()
    total = source.total()
    loader = Loader()
    cancelled = cancelled or (lambda: cancel_requested(run_id))
    batch_size = max(1, options.batch)
    if progress:
        progress(processed, total, "extract")
    try:
        for chunk in _batches(source.extract(after=after), batch_size):
            if cancelled():
                _finish(run_id, "cancelled", "cancelled by a user")
                return run_summary(run_id)
            records: list[MovieRecord] = []
            issues: list[dict[str, Any]] = []
            for key, raw in chunk:
                try:
                    record = validate(source.normalize(raw))
                except RowError as exc:
                    issues.append(_issue(run_id, "normalize", key, "error", exc.code, exc.message, raw))
                    continue
                records.append(record)
            records, merged = dedupe(records)
            issues += [_issue(run_id, "validate", k, "warning", w.code, w.message, None) for k, w in merged]
            bad = sum(1 for i in issues if i["severity"] == "error")
            with new_session() as s:
                part = loader.load(s, records, run_id=run_id)
                for r in records:
                    issues += [
                        _issue(run_id, "load", r.key, "warning", w.code, w.message, None) for w in r.warnings
                    ]
                if issues:
                    s.execute(insert(m.SeedIssue), issues)
                _bump(part, "movie", "quarantined", bad)
                counts = _merge_counts(counts, part)
                processed += len(chunk)
                quarantined += bad
                s.execute(
                    update(m.SeedRun)
                    .where(m.SeedRun.id == run_id)
                    .values(
                        stage="load",
                        last_key=chunk[-1][0],
                        processed=processed,
                        quarantined=quarantined,
                        counts=counts,
                        heartbeat_at=utcnow(),
                    )
                )
                s.execute(update(m.SeedLock).where(m.SeedLock.run_id == run_id).values(heartbeat_at=utcnow()))
                s.commit()
            loader.commit()
            if progress:
                movie = counts.get("movie", {})
                progress(
                    processed,
                    total,
                    f"load: {movie.get('inserted', 0)} new, {quarantined} quarantined",
                )
            _publish(run_id, job_id, processed, total, counts, quarantined)
            if processed >= MIN_ROWS_FOR_RATE and quarantined / processed > options.max_error_rate:
                message = (
                    f"{quarantined} of {processed} rows quarantined ({quarantined / processed:.1%}), above the "
                    f"error-rate limit {options.max_error_rate:.1%}; see: suite catalog seed-issues {run_id}"
                )
                _finish(run_id, "failed", message)
                raise SeedFailed(message)
        if processed and quarantined / processed > options.max_error_rate and processed >= MIN_ROWS_FOR_RATE:
            raise SeedFailed("error rate above the limit")
        _set_stage(run_id, "index")
        if progress:
            progress(processed, total, "index")
        with new_session() as s:
            refresh_search(s)
            s.commit()
        _finish(run_id, "succeeded", None)
    except SeedFailed:
        raise
    except SuiteError as exc:
        _finish(run_id, "failed", exc.message)
        raise
    except KeyboardInterrupt:
        _finish(run_id, "interrupted", "interrupted (Ctrl-C); resume with --resume")
        raise
    except Exception as exc:
        _finish(run_id, "failed", f"{type(exc).__name__}: {str(exc)[:500]}")
        raise
    return run_summary(run_id)


def _publish(
    run_id: str, job_id: str | None, done: int, total: int | None, counts: dict[str, Any], quarantined: int
) -> None:
    try:
        from suite.core import events

        movie = counts.get("movie", {})
        data = {
            "run_id": run_id,
            "job_id": job_id,
            "done": done,
            "total": total,
            "stage": "load",
            "entity": "movie",
            "inserted": movie.get("inserted", 0),
            "quarantined": quarantined,
            "message": f"{done} rows",
        }
        events.publish(f"catalog.seed.{run_id}", "catalog.seed.progress", data)
        if job_id:
            events.publish(events.job_topic(job_id), "job.progress", data)
    except Exception:  # progress events are best effort; the run record is the truth
        pass


def _issue(
    run_id: str, stage: str, key: str | None, severity: str, code: str, message: str, raw: Any
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "stage": stage,
        "entity": "movie",
        "source_key": (key or "")[:200] or None,
        "severity": severity,
        "code": code[:64],
        "message": message[:1000],
        "raw": _raw_json(raw) if raw is not None else None,
    }


def _batches(rows: Iterable[tuple[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
    batch: list[tuple[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _set_stage(run_id: str, stage: str) -> None:
    with new_session() as s:
        s.execute(update(m.SeedRun).where(m.SeedRun.id == run_id).values(stage=stage, heartbeat_at=utcnow()))
        s.commit()


def _finish(run_id: str, status: str, error: str | None) -> None:
    with new_session() as s:
        s.execute(
            update(m.SeedRun)
            .where(m.SeedRun.id == run_id)
            .values(status=status, error=error, finished_at=utcnow(), heartbeat_at=utcnow())
        )
        s.commit()


def validate(record: MovieRecord) -> MovieRecord:
    """Cross-field rules (the single-field ones run while normalizing)."""
    f = record.fields
    date_ = f.get("release_date")
    if date_ is not None and f.get("year") is not None and abs(date_.year - f["year"]) > 1:
        f["release_date"], f["release_date_precision"] = None, None
        record.warnings.append(
            Warning_("release_date_mismatch", f"release date {date_} ignored: year {f['year']}")
        )
    if not record.key or len(record.key) > 64:
        raise RowError("invalid_key", "the record has no usable key")
    return record


def dedupe(records: list[MovieRecord]) -> tuple[list[MovieRecord], list[tuple[str, Warning_]]]:
    """Records with the same key inside a batch merge into the first (missing fields and lists filled)."""
    by_key: dict[str, MovieRecord] = {}
    warnings: list[tuple[str, Warning_]] = []
    for r in records:
        first = by_key.get(r.key)
        if first is None:
            by_key[r.key] = r
            continue
        warnings.append((r.key, Warning_("duplicate_in_source", f"{r.key} appears more than once; merged")))
        for name, value in r.fields.items():
            if first.fields.get(name) is None and value is not None:
                first.fields[name] = value
        for attr in ("genres", "languages", "countries"):
            merged = list(dict.fromkeys([*getattr(first, attr), *getattr(r, attr)]))
            setattr(first, attr, merged)
        first.credits += r.credits
        first.ratings += r.ratings
        for src, val in r.ext_ids.items():
            first.ext_ids.setdefault(src, val)
    return list(by_key.values()), warnings


# --- the load stage ----------------------------------------------------------------------------------------


class Loader:
    """Batched upserts. Lookup caches (names → ids) are kept only for committed batches."""

    def __init__(self) -> None:
        self.lookups: dict[str, dict[Any, int]] = {"genre": {}, "language": {}, "country": {}, "job": {}}
        self.people: dict[str, int] = {}
        self._pending: dict[str, dict[Any, int]] = {}
        self._pending_people: dict[str, int] = {}

    def commit(self) -> None:
        for kind, values in self._pending.items():
            self.lookups[kind].update(values)
        self.people.update(self._pending_people)
        self._pending, self._pending_people = {}, {}

    # lookups ---------------------------------------------------------------------------------------------
    def _names(self, s: Session, kind: str, names: set[str]) -> dict[str, int]:
        model = {"genre": m.Genre, "language": m.Language, "country": m.Country}[kind]
        table: Table = model.__table__  # type: ignore[assignment]
        cache = {**self.lookups[kind], **self._pending.get(kind, {})}
        missing = sorted(n for n in names if n not in cache)
        if missing:
            s.execute(_dialect_insert(s, table).on_conflict_do_nothing(), [{"name": n} for n in missing])
            found = {}
            for part in _chunks(missing):
                found.update(
                    dict(s.execute(select(table.c.name, table.c.id).where(table.c.name.in_(part))).all())
                )
            self._pending.setdefault(kind, {}).update(found)
            cache.update(found)
        return cache

    def _jobs(self, s: Session, jobs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        table: Table = m.Job.__table__  # type: ignore[assignment]
        cache = {**self.lookups["job"], **self._pending.get("job", {})}
        missing = sorted(j for j in jobs if j not in cache)
        if missing:
            s.execute(
                _dialect_insert(s, table).on_conflict_do_nothing(),
                [{"department": d, "name": n} for d, n in missing],
            )
            for d, n in missing:
                job_id = s.scalar(select(table.c.id).where(table.c.department == d, table.c.name == n))
                assert job_id is not None
                self._pending.setdefault("job", {})[(d, n)] = job_id
                cache[(d, n)] = job_id
        return cache

    # movies ----------------------------------------------------------------------------------------------
    def _existing_ext(
        self, s: Session, entity: str, pairs: set[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        by_source: dict[str, list[str]] = {}
        for src, val in pairs:
            by_source.setdefault(src, []).append(val)
        for src, values in by_source.items():
            for part in _chunks(sorted(values)):
                rows = s.execute(
                    select(EXT_T.c.value, EXT_T.c.entity_id).where(
                        EXT_T.c.entity == entity, EXT_T.c.source == src, EXT_T.c.value.in_(part)
                    )
                ).all()
                out.update({(src, v): eid for v, eid in rows})
        return out

    def load(
        self, s: Session, records: list[MovieRecord], *, run_id: str | None = None
    ) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        if not records:
            return counts
        now = utcnow()
        existing = self._existing_ext(s, "movie", {(src, v) for r in records for src, v in r.ext_ids.items()})
        # Resolve each record to a movie id (own key first, then other external ids), drop conflicting ids.
        resolved: dict[str, int] = {}
        claimed: dict[tuple[str, str], str] = {}
        new_records: list[MovieRecord] = []
        # A movie found through another source's id (TMDB → IMDb id of a Wikidata film) links only when it
        # has no id of the record's own source yet: two Wikidata films sharing an IMDb id stay two films.
        cross = {
            existing[(k, v)]
            for r in records
            for k, v in r.ext_ids.items()
            if k != r.source and (k, v) in existing
        }
        own_sources: dict[int, set[str]] = {}
        for part in _chunks(sorted(cross)):
            for eid, src in s.execute(
                select(EXT_T.c.entity_id, EXT_T.c.source).where(
                    EXT_T.c.entity == "movie", EXT_T.c.entity_id.in_(part)
                )
            ):
                own_sources.setdefault(eid, set()).add(src)
        for r in records:
            movie_id = r.match_movie_id
            if movie_id is None and r.source in r.ext_ids:
                movie_id = existing.get((r.source, r.ext_ids[r.source]))
            for src in r.ext_ids:
                candidate = existing.get((src, r.ext_ids[src]))
                linkable = candidate is not None and r.source not in own_sources.get(candidate, set())
                if movie_id is None and src != r.source and linkable:
                    movie_id = candidate
            for src in list(r.ext_ids):
                pair = (src, r.ext_ids[src])
                owner = existing.get(pair)
                other = claimed.get(pair)
                if (owner is not None and owner != movie_id) or (other is not None and other != r.key):
                    r.warnings.append(
                        Warning_(
                            "duplicate_external_id",
                            f"{src} id {pair[1]} already belongs to another movie; kept the film, dropped the id",
                        )
                    )
                    del r.ext_ids[src]
                else:
                    claimed[pair] = r.key
            if movie_id is None:
                new_records.append(r)
            else:
                resolved[r.key] = movie_id
        if new_records:
            rows = []
            for r in new_records:
                row = {name: r.fields.get(name) for name in MOVIE_FIELDS}
                row.update(seed_key=r.key, version=1, created_at=now, updated_at=now)
                row["overview_updated_at"] = now if row["overview"] is not None else None
                rows.append(row)
            result = s.execute(insert(MOVIE_T).returning(MOVIE_T.c.id, MOVIE_T.c.seed_key), rows)
            resolved.update({key: mid for mid, key in result.all()})
            _bump(counts, "movie", "inserted", len(rows))
        fresh = {id(r) for r in new_records}
        self._update_movies(s, [r for r in records if id(r) not in fresh], resolved, counts, now)
        ext_rows = [
            {"entity": "movie", "entity_id": resolved[r.key], "source": src, "value": val}
            for r in records
            for src, val in r.ext_ids.items()
            if (src, val) not in existing
        ]
        self._insert_count(s, EXT_T, ext_rows, counts, "external_id")
        self._links(s, records, resolved, counts)
        self._credits(s, records, resolved, counts, now)
        self._ratings(s, records, resolved, counts)
        return counts

    def _update_movies(
        self,
        s: Session,
        records: list[MovieRecord],
        resolved: dict[str, int],
        counts: dict[str, dict[str, int]],
        now: Any,
    ) -> None:
        if not records:
            return
        ids = sorted({resolved[r.key] for r in records})
        cols = [MOVIE_T.c.id, MOVIE_T.c.seed_key, *[MOVIE_T.c[n] for n in MOVIE_FIELDS]]
        current: dict[int, dict[str, Any]] = {}
        for part in _chunks(ids):
            for row in s.execute(select(*cols).where(MOVIE_T.c.id.in_(part))).mappings():
                current[row["id"]] = dict(row)
        changes = []
        for r in records:
            cur = current.get(resolved[r.key])
            if cur is None:
                continue
            data_source = (cur["seed_key"] or "user:").split(":", 1)[0]
            rank = SOURCE_RANK.get(r.source, 0)
            data_rank = SOURCE_RANK.get(data_source, SOURCE_RANK["user"])
            new = merge_fields(cur, r.fields, rank=rank, data_rank=data_rank)
            if new:
                if "overview" in new:
                    new["overview_updated_at"] = now
                changes.append((cur["id"], new))
        unchanged = len(records) - len(changes)
        _bump(counts, "movie", "unchanged", unchanged)
        _bump(counts, "movie", "updated", len(changes))
        # One executemany per set of changed columns.
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for movie_id, new in changes:
            keys = tuple(sorted(new))
            groups.setdefault(keys, []).append({"b_id": movie_id, **{f"b_{k}": v for k, v in new.items()}})
        for keys, params in groups.items():
            stmt = (
                update(MOVIE_T)
                .where(MOVIE_T.c.id == bindparam("b_id"))
                .values(
                    {
                        **{k: bindparam(f"b_{k}") for k in keys},
                        "version": MOVIE_T.c.version + 1,
                        "updated_at": now,
                    }
                )
            )
            s.connection().execute(stmt, params)

    def _insert_count(
        self,
        s: Session,
        table: Table,
        rows: list[dict[str, Any]],
        counts: dict[str, dict[str, int]],
        entity: str,
    ) -> None:
        if not rows:
            return
        inserted = _insert_ignore(s, table, rows)
        _bump(counts, entity, "inserted", inserted)
        _bump(counts, entity, "unchanged", len(rows) - inserted)

    def _links(
        self,
        s: Session,
        records: list[MovieRecord],
        resolved: dict[str, int],
        counts: dict[str, dict[str, int]],
    ) -> None:
        for kind, attr, model, col in (
            ("genre", "genres", m.MovieGenre, "genre_id"),
            ("language", "languages", m.MovieLanguage, "language_id"),
            ("country", "countries", m.MovieCountry, "country_id"),
        ):
            names = {n for r in records for n in getattr(r, attr)}
            if not names:
                continue
            ids = self._names(s, kind, names)
            rows = []
            for r in records:
                for pos, name in enumerate(getattr(r, attr)):
                    row = {"movie_id": resolved[r.key], col: ids[name], "position": pos}
                    if kind == "genre":
                        row["is_primary"] = pos == 0
                    rows.append(row)
            table: Table = model.__table__  # type: ignore[assignment]
            if rows:
                inserted = _insert_ignore(s, table, rows)
                _bump(counts, f"movie_{kind}", "inserted", inserted)
                _bump(counts, f"movie_{kind}", "unchanged", len(rows) - inserted)

    def _person_ids(
        self, s: Session, records: list[MovieRecord], counts: dict[str, dict[str, int]], now: Any
    ) -> dict[str, int]:
        wanted: dict[str, Any] = {}
        for r in records:
            for c in r.credits:
                wanted.setdefault(c.person_key, c)
        cache = {**self.people, **self._pending_people}
        ids = {k: cache[k] for k in wanted if k in cache}
        lookup = sorted(k for k in wanted if k not in ids)
        for part in _chunks(lookup):
            ids.update(
                dict(
                    s.execute(
                        select(PERSON_T.c.seed_key, PERSON_T.c.id).where(PERSON_T.c.seed_key.in_(part))
                    ).all()
                )
            )
        missing = [k for k in lookup if k not in ids]
        if missing:
            rows = []
            for k in missing:
                c = wanted[k]
                row = {
                    "seed_key": k,
                    "name": c.person_name,
                    "sort_name": fold(c.person_name),
                    "name_key": fold(c.person_name)[:200],
                    "created_at": now,
                    "updated_at": now,
                    "version": 1,
                }
                row.update({f: c.person_extra.get(f) for f in PERSON_FIELDS})
                rows.append(row)
            result = s.execute(insert(PERSON_T).returning(PERSON_T.c.id, PERSON_T.c.seed_key), rows)
            ids.update({key: pid for pid, key in result.all()})
            _bump(counts, "person", "inserted", len(rows))
            ext_rows = [
                {"entity": "person", "entity_id": ids[k], "source": src, "value": val}
                for k in missing
                for src, val in wanted[k].person_ext.items()
            ]
            self._insert_count(s, EXT_T, ext_rows, counts, "external_id")
        _bump(counts, "person", "unchanged", len(wanted) - len(missing))
        self._pending_people.update(ids)
        return ids

    def _credits(
        self,
        s: Session,
        records: list[MovieRecord],
        resolved: dict[str, int],
        counts: dict[str, dict[str, int]],
        now: Any,
    ) -> None:
        if not any(r.credits for r in records):
            return
        people = self._person_ids(s, records, counts, now)
        jobs = self._jobs(
            s, {(c.department or "", c.job or "") for r in records for c in r.credits if c.kind == "crew"}
        )
        rows: dict[tuple[int, int, str], dict[str, Any]] = {}
        duplicates = 0
        for r in records:
            movie_id = resolved[r.key]
            for c in r.credits:
                job_id = jobs[(c.department or "", c.job or "")] if c.kind == "crew" else None
                role_key = f"cast:{(c.character or '')[:300]}" if c.kind == "cast" else f"crew:{job_id}"
                key = (movie_id, people[c.person_key], role_key)
                if key in rows:
                    duplicates += 1
                    continue
                rows[key] = {
                    "movie_id": movie_id,
                    "person_id": key[1],
                    "kind": c.kind,
                    "character": c.character,
                    "cast_order": c.order,
                    "job_id": job_id,
                    "credited": True,
                    "role_key": role_key,
                    "source": r.source,
                }
        _bump(counts, "credit", "merged", duplicates)
        self._insert_count(s, CREDIT_T, list(rows.values()), counts, "credit")

    def _ratings(
        self,
        s: Session,
        records: list[MovieRecord],
        resolved: dict[str, int],
        counts: dict[str, dict[str, int]],
    ) -> None:
        rows = [
            {
                "source": r.source,
                "source_user": user,
                "movie_id": resolved[r.key],
                "rating": rating,
                "rated_at": rated_at,
            }
            for r in records
            for user, rating, rated_at in r.ratings
        ]
        if not rows:
            return
        table: Table = m.ExternalRating.__table__  # type: ignore[assignment]
        self._insert_count(s, table, rows, counts, "rating")
        movie_ids = sorted({row["movie_id"] for row in rows})
        refresh_external_stats(s, movie_ids)


def merge_fields(cur: dict[str, Any], new: dict[str, Any], *, rank: int, data_rank: int) -> dict[str, Any]:
    """The columns to change: text by its provenance rank, other fields when the source ranks at least as high
    as the movie's own source or the stored value is empty. Empty incoming values never erase."""
    changes: dict[str, Any] = {}
    new_src = new.get("overview_source")
    if new.get("overview") is not None and new_src:
        cur_rank = SOURCE_RANK.get(cur.get("overview_source") or "", 0)
        new_rank = SOURCE_RANK.get(new_src, 0)
        better = new_rank > cur_rank or (new_rank == cur_rank and rank >= data_rank)
        if better and new["overview"] != cur.get("overview"):
            for name in OVERVIEW_FIELDS:
                if new.get(name) != cur.get(name):
                    changes[name] = new.get(name)
    for name, value in new.items():
        if name in OVERVIEW_FIELDS or value is None:
            continue
        if cur.get(name) != value and (cur.get(name) is None or rank >= data_rank):
            changes[name] = value
    if "title" in changes:
        changes["sort_title"] = sort_key(changes["title"])
        if changes["sort_title"] == cur.get("sort_title"):
            del changes["sort_title"]
    return changes


def refresh_external_stats(s: Session, movie_ids: Sequence[int]) -> None:
    """Recompute the external-rating mean (ML-100K) for these movies into catalog_movie_stat."""
    stat: Table = m.MovieStat.__table__  # type: ignore[assignment]
    rating: Table = m.ExternalRating.__table__  # type: ignore[assignment]
    for part in _chunks(list(movie_ids)):
        agg = s.execute(
            select(rating.c.movie_id, func.count(), func.sum(rating.c.rating))
            .where(rating.c.movie_id.in_(part))
            .group_by(rating.c.movie_id)
        ).all()
        if not agg:
            continue
        rows = [{"movie_id": mid, "ext_count": n, "ext_sum": float(total or 0)} for mid, n, total in agg]
        ins = _dialect_insert(s, stat)
        stmt = ins.on_conflict_do_update(
            index_elements=[stat.c.movie_id],
            set_={"ext_count": ins.excluded.ext_count, "ext_sum": ins.excluded.ext_sum},
        )
        s.execute(stmt, rows)


def refresh_search(s: Session) -> None:
    """The index stage: FTS5 merges its segments (SQLite); PostgreSQL refreshes planner statistics."""
    dialect = s.get_bind().dialect.name
    if dialect == "sqlite":
        s.execute(text("INSERT INTO catalog_movie_fts(catalog_movie_fts) VALUES ('optimize')"))
        s.execute(text("INSERT INTO catalog_person_fts(catalog_person_fts) VALUES ('optimize')"))
    elif dialect == "postgresql":
        s.execute(text("ANALYZE catalog_movie"))
        s.execute(text("ANALYZE catalog_person"))


# --- status -------------------------------------------------------------------------------------------------


def run_summary(run_id: str, session: Session | None = None) -> dict[str, Any]:
    own = session is None
    s = session or new_session()
    try:
        run = s.get(m.SeedRun, run_id)
        if run is None:
            raise NotFound(f"seed run {run_id} not found")
        issues = dict(
            s.execute(
                select(m.SeedIssue.code, func.count())
                .where(m.SeedIssue.run_id == run_id)
                .group_by(m.SeedIssue.code)
            ).all()
        )
        return {
            "id": run.id,
            "source": run.source,
            "source_version": run.source_version,
            "dataset_sha256": run.dataset_sha256,
            "status": run.status,
            "stage": run.stage,
            "params": run.params,
            "last_key": run.last_key,
            "processed": run.processed,
            "quarantined": run.quarantined,
            "total": run.total,
            "counts": run.counts,
            "issues": issues,
            "error": run.error,
            "heartbeat_at": run.heartbeat_at,
            "job_id": run.job_id,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
        }
    finally:
        if own:
            s.close()


def list_runs(session: Session, *, limit: int = 20) -> list[dict[str, Any]]:
    mark_stale_runs(session)
    runs = session.scalars(select(m.SeedRun).order_by(m.SeedRun.started_at.desc()).limit(limit)).all()
    return [
        {
            "id": r.id,
            "source": r.source,
            "status": r.status,
            "stage": r.stage,
            "processed": r.processed,
            "quarantined": r.quarantined,
            "total": r.total,
            "movies_inserted": (r.counts or {}).get("movie", {}).get("inserted", 0),
            "started_at": r.started_at,
            "finished_at": r.finished_at,
        }
        for r in runs
    ]


def list_issues(session: Session, *, run_id: str, limit: int | None = None) -> list[dict[str, Any]]:
    if session.get(m.SeedRun, run_id) is None:
        raise NotFound(f"seed run {run_id} not found")
    stmt = select(m.SeedIssue).where(m.SeedIssue.run_id == run_id).order_by(m.SeedIssue.id)
    if limit:
        stmt = stmt.limit(limit)
    return [
        {
            "stage": i.stage,
            "entity": i.entity,
            "source_key": i.source_key,
            "severity": i.severity,
            "code": i.code,
            "message": i.message,
            "raw": i.raw,
        }
        for i in session.scalars(stmt)
    ]


def cancel_run(session: Session, *, run_id: str) -> dict[str, Any]:
    run = session.get(m.SeedRun, run_id)
    if run is None:
        raise NotFound(f"seed run {run_id} not found")
    if run.status not in ("queued", "running"):
        raise Conflict(f"seed run {run_id} is {run.status}; only queued or running runs can be cancelled")
    run.params = {**run.params, "cancel": True}
    session.flush()
    return {"id": run_id, "cancel_requested": True}


def cancel_requested(run_id: str) -> bool:
    with new_session() as s:
        run = s.get(m.SeedRun, run_id)
        return bool(run and (run.params or {}).get("cancel"))
