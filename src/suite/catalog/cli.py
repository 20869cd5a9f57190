"""`suite catalog ...`: light module; the work is imported inside each command body."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from suite.core.cli_options import HostOption, PortOption, ReloadOption, WorkerOption
from suite.core.cli_utils import emit, info

app = typer.Typer(help="Movie catalog.", no_args_is_help=True)


class SourceName(StrEnum):
    wikidata = "wikidata"
    movielens100k = "movielens100k"
    tmdb_dump = "tmdb-dump"
    tmdb = "tmdb"


class Field(StrEnum):
    overview = "overview"
    biography = "biography"
    genre_description = "genre-description"
    job_description = "job-description"


class What(StrEnum):
    movies = "movies"
    ratings = "ratings"
    watchlist = "watchlist"
    lists = "lists"


class Format(StrEnum):
    csv = "csv"
    json = "json"


class Kind(StrEnum):
    all = "all"
    movie = "movie"
    person = "person"


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.command()
def serve(
    host: HostOption = None,
    port: PortOption = None,
    reload: ReloadOption = False,
    worker: WorkerOption = None,
) -> None:
    """Serve the catalog alone: /api/v1/catalog, pages under /catalog/, /healthz, /readyz."""
    from suite.core.server import run_server

    run_server(domains=["catalog"], host=host, port=port, reload=reload, worker=worker)


@app.command()
def seed(
    path: Annotated[
        Path | None, typer.Argument(help="tmdb-dump: the dump directory; movielens100k: the recbole wheel.")
    ] = None,
    source: Annotated[
        SourceName, typer.Option("--source", help="Where the data comes from.")
    ] = SourceName.wikidata,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many source rows.")] = None,
    scale: Annotated[
        int | None,
        typer.Option(min=1, max=10_000_000, help="wikidata: repeat the set up to N films (benchmarks)."),
    ] = None,
    batch: Annotated[int | None, typer.Option(min=1, max=100_000, help="Rows per committed batch.")] = None,
    max_error_rate: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Fail when quarantined/processed exceeds this.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Extract, normalize and validate only.")] = False,
    resume: Annotated[
        str | None, typer.Option("--resume", metavar="RUN_ID", help="Resume a stopped run.")
    ] = None,
    ids: Annotated[list[int] | None, typer.Option("--id", help="tmdb: a TMDB movie id (repeatable).")] = None,
    ids_file: Annotated[Path | None, typer.Option("--ids", help="tmdb: a file of TMDB movie ids.")] = None,
    language: Annotated[str | None, typer.Option(help="tmdb: the language, e.g. en-US.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import real data: stages extract → normalize → validate → load → index, resumable, one run at a time."""
    from suite.catalog.seed import SeedOptions
    from suite.catalog.seed import seed as run_seed
    from suite.catalog.settings import catalog_settings
    from suite.core.cli_utils import progress
    from suite.core.db import prepare_database

    settings = catalog_settings()
    all_ids = list(ids or [])
    if ids_file is not None:
        from suite.catalog.sources.tmdb import read_ids_file

        all_ids += read_ids_file(ids_file)
    options = SeedOptions(
        source=source.value,
        path=str(path) if path else None,
        limit=limit,
        scale=scale,
        batch=batch or settings.seed_batch,
        max_error_rate=settings.seed_max_error_rate if max_error_rate is None else max_error_rate,
        dry_run=dry_run,
        language=language or settings.tmdb_language,
        ids=all_ids,
    )
    if not resume:
        # File-level checks before the database is even opened: a bad file leaves it byte-for-byte unchanged.
        from suite.catalog.seed import build_source

        build_source(options)
    prepare_database()
    with progress(f"seed {source.value}", None, enabled=not as_json) as advance:
        summary = run_seed(options, resume=resume, progress=advance)
    emit(_seed_view(summary) if not as_json else summary, as_json=as_json, title="seed run")


def _seed_view(summary: dict[str, Any]) -> dict[str, Any]:
    counts = summary.get("counts") or {}
    view = {k: summary[k] for k in ("id", "source", "status", "processed", "quarantined", "total")}
    for entity, values in counts.items():
        if isinstance(values, dict):
            view[entity] = ", ".join(f"{k} {v}" for k, v in values.items())
    if summary.get("error"):
        view["error"] = summary["error"]
    return view


@app.command("seed-status")
def seed_status(
    run_id: Annotated[str | None, typer.Argument(help="A run id; all recent runs when omitted.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Seed runs: stage, counts per entity, last key, issues, heartbeat."""
    from suite.catalog import seed as seeding
    from suite.core.db import session_scope

    with session_scope() as session:
        if run_id:
            summary = seeding.run_summary(run_id, session)
            emit(summary if as_json else _seed_view(summary), as_json=as_json, title="seed run")
        else:
            emit(seeding.list_runs(session), as_json=as_json, title="seed runs")


@app.command("seed-issues")
def seed_issues(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write JSON lines to this file.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The rows a run quarantined or warned about, with their codes."""
    import json

    from suite.catalog import seed as seeding
    from suite.core.db import session_scope

    with session_scope() as session:
        issues = seeding.list_issues(session, run_id=run_id)
    if output is not None:
        with output.open("w", encoding="utf-8") as fh:
            for issue in issues:
                fh.write(json.dumps(issue, ensure_ascii=False, default=str) + "\n")
        info(f"wrote {len(issues)} issues to {output}")
        return
    emit(issues, as_json=as_json, title="issues", columns=["severity", "code", "source_key", "message"])


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="Words, a year, director:NAME, actor:NAME, genre:NAME.")],
    kind: Annotated[Kind, typer.Option(help="What to search.")] = Kind.all,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Search movies and people (accent-insensitive, prefix type-ahead, year-aware)."""
    from suite.catalog import search as searching
    from suite.core.db import session_scope

    with session_scope() as session:
        result = searching.search(session, query=query, kind=kind.value, limit=limit)
    if as_json:
        emit(result, as_json=True)
        return
    rows = [
        {
            "kind": "movie",
            "id": mv["id"],
            "title": mv["title"],
            "year": mv["year"],
            "people": mv.get("directors"),
        }
        for mv in result["movies"]
    ] + [
        {"kind": "person", "id": p["id"], "title": p["name"], "year": None, "people": None}
        for p in result["people"]
    ]
    emit(rows, title=f"results ({result['took_ms']} ms)", columns=["kind", "id", "title", "year", "people"])


@app.command()
def show(
    kind: Annotated[str, typer.Argument(help="movie or person")],
    entity_id: Annotated[int, typer.Argument(help="The id.")],
    as_json: JsonOpt = False,
) -> None:
    """One movie (with credits and review stats) or one person (with filmography)."""
    from suite.catalog import service
    from suite.core.db import session_scope
    from suite.core.errors import UsageError

    with session_scope() as session:
        if kind == "movie":
            data: Any = service.movie_detail(session, movie_id=entity_id).model_dump(mode="json")
        elif kind == "person":
            data = service.person_detail(session, person_id=entity_id).model_dump(mode="json")
        else:
            raise UsageError("show: kind must be movie or person")
    emit(data, as_json=as_json, title=kind)


@app.command()
def stats(as_json: JsonOpt = False) -> None:
    """Counts, coverage (% of movies with overview, genres, credits, poster), text sources, index freshness."""
    from suite.catalog import service
    from suite.core.db import session_scope

    with session_scope() as session:
        emit(service.coverage_stats(session), as_json=as_json, title="catalog")


@app.command()
def enrich(
    field: Annotated[Field, typer.Option("--field", help="Which text to write.")] = Field.overview,
    force: Annotated[
        bool,
        typer.Option("--force/--only-empty", help="Also replace template/imported text (never user text)."),
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many entities.")] = None,
    rps: Annotated[float | None, typer.Option(min=0.01, max=100.0, help="Provider calls per second.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be written.")] = False,
    provider: Annotated[str | None, typer.Option(help="Override [catalog].enrich_provider.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write missing overviews, biographies or descriptions, grounded on stored facts, with provenance."""
    from suite.catalog import enrich as enriching
    from suite.core.cli_utils import progress
    from suite.core.db import prepare_database

    prepare_database()
    with progress(f"enrich {field.value}", None, enabled=not as_json) as advance:
        result = enriching.enrich(
            field=field.value.replace("-", "_"),
            force=force,
            limit=limit,
            rps=rps,
            dry_run=dry_run,
            provider_name=provider,
            progress=advance,
        )
    emit(result, as_json=as_json, title="enrich")


@app.command("index")
def index(
    what: Annotated[str, typer.Argument(help="fts (keyword index) or embeddings (semantic search)")] = "fts",
    rebuild: Annotated[bool, typer.Option("--rebuild", help="fts: rebuild from the tables.")] = False,
    limit: Annotated[
        int | None, typer.Option(min=1, help="embeddings: encode at most N movies this run.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check or rebuild the keyword index, or build embeddings (resumable: unchanged movies are skipped)."""
    from suite.core.errors import UsageError

    if what == "fts":
        from suite.catalog import search as searching
        from suite.core.db import session_scope

        with session_scope() as session:
            emit(searching.rebuild_index(session, rebuild=rebuild), as_json=as_json, title="index")
        return
    if what != "embeddings":
        raise UsageError("index: fts or embeddings")
    from suite.catalog import semantic
    from suite.core.cli_utils import progress

    with progress("embeddings", None, enabled=not as_json) as advance:
        result = semantic.build_embeddings(limit=limit, progress=lambda d, t: advance(d, total=t))
    emit(result, as_json=as_json, title="embeddings")


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="CSV or JSON file.")],
    what: Annotated[What, typer.Option("--what", help="What the file holds.")] = What.movies,
    fmt: Annotated[Format | None, typer.Option("--format", help="Default: from the file name.")] = None,
    commit: Annotated[
        bool, typer.Option("--commit", help="Write the ready rows (default: preview only).")
    ] = False,
    user: Annotated[str | None, typer.Option("--user", help="Owner of ratings/watchlist/lists rows.")] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the rows that need attention (CSV).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Preview (ready, exists, duplicate, needs review, invalid) and optionally commit an import."""
    from suite.catalog import io
    from suite.core.db import session_scope

    fmt_value = fmt.value if fmt else ("json" if file.suffix.lower() in (".json", ".jsonl") else "csv")
    with session_scope() as session:
        owner_id = io.user_id_for(session, user) if user else None
        result = io.import_file(
            session,
            path=file,
            what=what.value,
            fmt=fmt_value,
            owner_id=owner_id,
            commit=commit,
            report=report,
        )
    emit(result, as_json=as_json, title="import")


@app.command()
def export(
    what: Annotated[What, typer.Option("--what", help="What to export.")] = What.movies,
    fmt: Annotated[Format, typer.Option("--format")] = Format.csv,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Default: stdout.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Whose ratings/watchlist/lists.")] = None,
) -> None:
    """Export movies, ratings, a watchlist or lists as CSV or JSON (cells safe against formula injection)."""
    import sys

    from suite.catalog import io
    from suite.core.db import session_scope

    with session_scope() as session:
        owner_id = io.user_id_for(session, user) if user else None
        chunks = io.export_chunks(session, what=what.value, fmt=fmt.value, owner_id=owner_id)
        if output is None:
            for chunk in chunks:
                sys.stdout.write(chunk)
        else:
            with output.open("w", encoding="utf-8", newline="") as fh:
                for chunk in chunks:
                    fh.write(chunk)
            info(f"wrote {output}")


tmdb_key_app = typer.Typer(
    help="The TMDB key kept in the database, encrypted with the keyring (a configured key wins).",
    no_args_is_help=True,
)
app.add_typer(tmdb_key_app, name="tmdb-key")


@tmdb_key_app.command("set")
def tmdb_key_set(
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the key from standard input (else a hidden prompt).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Store the TMDB key encrypted (never as an argument: it would land in the shell history)."""
    from suite.catalog import keys
    from suite.core.auth_cli import read_hidden
    from suite.core.crypto import load_keyring
    from suite.core.db import session_scope

    load_keyring()  # no keyring: say so (`suite secrets init`) before asking for the key
    value = read_hidden("TMDB key", from_stdin=stdin, confirm=False, flag="--stdin")
    with session_scope() as session:
        status = keys.set_tmdb_key(session, value=value)
    emit(status, as_json=as_json, title="tmdb key")


@tmdb_key_app.command("clear")
def tmdb_key_clear(as_json: JsonOpt = False) -> None:
    """Delete the stored TMDB key."""
    from suite.catalog import keys
    from suite.core.db import session_scope

    with session_scope() as session:
        removed = keys.clear_tmdb_key(session)
        status = {**keys.tmdb_key_status(session), "removed": removed}
    emit(status, as_json=as_json, title="tmdb key")


@tmdb_key_app.command("status")
def tmdb_key_status(as_json: JsonOpt = False) -> None:
    """Whether a TMDB key is set and where from (configuration or database); never the key."""
    from suite.catalog import keys
    from suite.core.db import session_scope

    with session_scope() as session:
        emit(keys.tmdb_key_status(session), as_json=as_json, title="tmdb key")
