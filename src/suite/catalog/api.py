"""The catalog JSON API (`/api/v1/catalog/...`); core mounts it. Pages live in `suite.catalog.pages`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Header, Query, Request, Response, UploadFile, status
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from suite.catalog import schemas as s
from suite.catalog import service
from suite.catalog.pages import pages
from suite.core.auth import current_user, optional_user, require_role, require_scope
from suite.core.db import SessionDep
from suite.core.errors import Forbidden, Unauthorized
from suite.core.models import User


def commit_before_response(session: SessionDep) -> Iterator[None]:
    """Commit the request's work when the route returns, before the response is sent.

    Core's request session (a yield dependency of FastAPI's default "request" scope) commits only after the
    response has gone out: a client could see 201 or a 303 to the new page before the write is visible, and
    a failing commit could not change the answer any more. Committing here, in "function" scope, makes the
    answer follow the commit (core's own commit then has nothing left to do).
    """
    yield
    session.commit()


router = APIRouter(dependencies=[Depends(commit_before_response, scope="function")])
__all__ = ["commit_before_response", "pages", "router"]


def _reader(request: Request, user: Annotated[User | None, Depends(optional_user)]) -> User | None:
    from suite.catalog.settings import catalog_settings

    if user is None and not catalog_settings().public_read:
        raise Unauthorized("authentication required: this catalog is not public")
    granted = getattr(request.state, "api_token_scopes", None)
    if user is not None and granted:
        from suite.core.auth import scope_allows

        if not scope_allows(granted, "catalog:read"):
            raise Forbidden("API token lacks scope 'catalog:read'")
    return user


def _editor(
    user: Annotated[User, Depends(require_role("editor"))],
    _scoped: Annotated[User, Depends(require_scope("catalog:write"))],
) -> User:
    return user


def _writer(
    user: Annotated[User, Depends(current_user)],
    _scoped: Annotated[User, Depends(require_scope("catalog:write"))],
) -> User:
    return user


def _admin(
    user: Annotated[User, Depends(require_role())],
    _scoped: Annotated[User, Depends(require_scope("catalog:admin"))],
) -> User:
    return user


Reader = Annotated[User | None, Depends(_reader)]
Writer = Annotated[User, Depends(_writer)]
Editor = Annotated[User, Depends(_editor)]
Admin = Annotated[User, Depends(_admin)]
Limit = Annotated[int, Query(ge=1, le=100, description="1..100")]
Cursor = Annotated[str | None, Query(max_length=500)]


# --- movies -----------------------------------------------------------------------------------------------


@router.get("/movies", response_model=s.MoviePage)
def list_movies(
    session: SessionDep,
    _user: Reader,
    cursor: Cursor = None,
    page: Annotated[int | None, Query(ge=1, le=service.MAX_PAGE)] = None,
    limit: Limit = 20,
    sort: Literal["title", "year", "rating", "added"] = "title",
    genre: Annotated[str | None, Query(max_length=64)] = None,
    year_from: Annotated[int | None, Query(ge=1870, le=2100)] = None,
    year_to: Annotated[int | None, Query(ge=1870, le=2100)] = None,
    language: Annotated[str | None, Query(max_length=64)] = None,
    country: Annotated[str | None, Query(max_length=100)] = None,
    person_id: Annotated[int | None, Query(ge=1)] = None,
) -> s.MoviePage:
    return service.list_movies(
        session,
        cursor=cursor,
        page=page,
        limit=limit,
        sort=sort,
        genre=genre,
        year_from=year_from,
        year_to=year_to,
        language=language,
        country=country,
        person_id=person_id,
    )


@router.get("/movies/random", response_model=s.MovieRead)
def random_movie(
    session: SessionDep, _user: Reader, genre: Annotated[str | None, Query(max_length=64)] = None
) -> s.MovieRead:
    return service.random_movie(session, genre=genre)


@router.get("/movies/{movie_id}", response_model=s.MovieDetail)
def read_movie(movie_id: int, session: SessionDep, _user: Reader, response: Response) -> s.MovieDetail:
    detail = service.movie_detail(session, movie_id=movie_id)
    response.headers["ETag"] = service.etag(detail.version)
    return detail


@router.get("/movies/{movie_id}/credits", response_model=list[s.CreditRead])
def read_credits(movie_id: int, session: SessionDep, _user: Reader) -> list[s.CreditRead]:
    return service.movie_credits(session, movie_id=movie_id)


@router.get("/movies/{movie_id}/stats", response_model=s.ReviewStats)
def read_stats(movie_id: int, session: SessionDep, _user: Reader) -> s.ReviewStats:
    service.get_movie(session, movie_id=movie_id)
    return service.review_stats(session, movie_id=movie_id)


@router.post("/movies", response_model=s.MovieRead, status_code=201)
def create_movie(data: s.MovieCreate, session: SessionDep, user: Editor, response: Response) -> s.MovieRead:
    movie = service.create_movie(session, data=data, user_id=user.id)
    response.headers["Location"] = f"/api/v1/catalog/movies/{movie.id}"
    response.headers["ETag"] = service.etag(movie.version)
    return movie


@router.patch("/movies/{movie_id}", response_model=s.MovieRead)
def update_movie(
    movie_id: int,
    data: s.MovieUpdate,
    session: SessionDep,
    user: Editor,
    response: Response,
    if_match: Annotated[str | None, Header(max_length=200)] = None,
) -> s.MovieRead:
    movie = service.update_movie(session, movie_id=movie_id, data=data, user_id=user.id, if_match=if_match)
    response.headers["ETag"] = service.etag(movie.version)
    return movie


@router.delete("/movies/{movie_id}", status_code=204)
def delete_movie(movie_id: int, session: SessionDep, user: Editor, force: bool = False) -> Response:
    service.delete_movie(session, movie_id=movie_id, force=force, is_admin=user.role == "admin")
    return Response(status_code=204)


@router.post("/movies/{movie_id}/credits", response_model=s.CreditRead, status_code=201)
def add_credit(movie_id: int, data: s.CreditCreate, session: SessionDep, _user: Editor) -> s.CreditRead:
    return service.add_credit(session, movie_id=movie_id, data=data)


@router.delete("/credits/{credit_id}", status_code=204)
def delete_credit(credit_id: int, session: SessionDep, _user: Editor) -> Response:
    service.delete_credit(session, credit_id=credit_id)
    return Response(status_code=204)


# --- people -----------------------------------------------------------------------------------------------


@router.get("/people", response_model=s.PersonPage)
def list_people(
    session: SessionDep,
    _user: Reader,
    cursor: Cursor = None,
    limit: Limit = 20,
    q: Annotated[str | None, Query(max_length=100)] = None,
) -> s.PersonPage:
    return service.list_people(session, cursor=cursor, limit=limit, q=q)


@router.get("/people/{person_id}", response_model=s.PersonDetail)
def read_person(person_id: int, session: SessionDep, _user: Reader) -> s.PersonDetail:
    return service.person_detail(session, person_id=person_id)


@router.get("/people/{person_id}/filmography")
def read_filmography(person_id: int, session: SessionDep, _user: Reader) -> dict[str, Any]:
    filmography: dict[str, Any] = service.person_detail(session, person_id=person_id).model_dump(mode="json")[
        "filmography"
    ]
    return filmography


@router.post("/people", response_model=s.PersonRead, status_code=201)
def create_person(
    data: s.PersonCreate, session: SessionDep, user: Editor, response: Response
) -> s.PersonRead:
    person = service.create_person(session, data=data, user_id=user.id)
    response.headers["Location"] = f"/api/v1/catalog/people/{person.id}"
    return person


@router.patch("/people/{person_id}", response_model=s.PersonRead)
def update_person(person_id: int, data: s.PersonUpdate, session: SessionDep, user: Editor) -> s.PersonRead:
    return service.update_person(session, person_id=person_id, data=data, user_id=user.id)


@router.delete("/people/{person_id}", status_code=204)
def delete_person(person_id: int, session: SessionDep, _user: Editor) -> Response:
    service.delete_person(session, person_id=person_id)
    return Response(status_code=204)


# --- lookups and search -----------------------------------------------------------------------------------


@router.get("/genres", response_model=list[s.Lookup])
def genres(session: SessionDep, _user: Reader) -> list[Any]:
    return service.lookups(session, kind="genres")


@router.get("/jobs", response_model=list[s.JobLookup])
def jobs(session: SessionDep, _user: Reader) -> list[Any]:
    return service.lookups(session, kind="jobs")


@router.get("/languages", response_model=list[s.Lookup])
def languages(session: SessionDep, _user: Reader) -> list[Any]:
    return service.lookups(session, kind="languages")


@router.get("/countries", response_model=list[s.Lookup])
def countries(session: SessionDep, _user: Reader) -> list[Any]:
    return service.lookups(session, kind="countries")


@router.get("/autocomplete/{kind}")
def autocomplete(
    kind: Literal["people", "genres", "jobs"],
    session: SessionDep,
    _user: Reader,
    q: Annotated[str, Query(min_length=1, max_length=100)],
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> list[dict[str, Any]]:
    return service.autocomplete(session, kind=kind, q=q, limit=limit)


@router.get("/search", response_model=s.SearchResult)
def search(
    session: SessionDep,
    _user: Reader,
    q: Annotated[str, Query(min_length=1, max_length=200)],
    kind: Literal["all", "movie", "person"] = "all",
    mode: Literal["keyword", "semantic", "hybrid"] = "keyword",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """Keyword search (FTS5 / tsvector); `mode=semantic` ranks by meaning and `mode=hybrid` fuses both
    (reciprocal rank fusion): they need the suite[semantic] extra and built embeddings, else 503."""
    from suite.catalog import search as searching

    if mode != "keyword":
        from suite.catalog import semantic

        return semantic.search(session, query=q, mode=mode, limit=limit)
    return searching.search(session, query=q, kind=kind, limit=limit)


@router.get("/movies/{movie_id}/similar")
def similar(
    movie_id: int, session: SessionDep, _user: Reader, limit: Annotated[int, Query(ge=1, le=50)] = 10
) -> dict[str, Any]:
    """ "More like this": the nearest movies by embedding (suite[semantic] extra; 503 without it)."""
    from suite.catalog import semantic

    return semantic.similar(session, movie_id=movie_id, limit=limit)


# --- reviews ----------------------------------------------------------------------------------------------


@router.get("/movies/{movie_id}/reviews", response_model=s.ReviewPage)
def list_reviews(
    movie_id: int, session: SessionDep, _user: Reader, cursor: Cursor = None, limit: Limit = 20
) -> s.ReviewPage:
    return service.list_reviews(session, movie_id=movie_id, cursor=cursor, limit=limit)


@router.put("/movies/{movie_id}/review", response_model=s.ReviewRead)
def put_review(movie_id: int, data: s.ReviewIn, session: SessionDep, user: Writer) -> JSONResponse:
    review, created = service.put_review(session, movie_id=movie_id, user_id=user.id, data=data)
    return JSONResponse(review.model_dump(mode="json"), status_code=201 if created else 200)


@router.delete("/movies/{movie_id}/review", status_code=204)
def delete_my_review(movie_id: int, session: SessionDep, user: Writer) -> Response:
    service.delete_my_review(session, movie_id=movie_id, user_id=user.id)
    return Response(status_code=204)


@router.delete("/reviews/{review_id}", status_code=204)
def delete_review(review_id: int, session: SessionDep, user: Writer) -> Response:
    service.delete_review(session, review_id=review_id, user_id=user.id, is_admin=user.role == "admin")
    return Response(status_code=204)


# --- watchlist, lists, history ----------------------------------------------------------------------------


@router.get("/me/watchlist", response_model=list[s.MovieSummary])
def my_watchlist(session: SessionDep, user: Annotated[User, Depends(current_user)]) -> list[s.MovieSummary]:
    return service.watchlist(session, user_id=user.id)


@router.put("/me/watchlist/{movie_id}", status_code=204)
def watchlist_add(movie_id: int, session: SessionDep, user: Writer) -> Response:
    service.watchlist_add(session, user_id=user.id, movie_id=movie_id)
    return Response(status_code=204)


@router.delete("/me/watchlist/{movie_id}", status_code=204)
def watchlist_remove(movie_id: int, session: SessionDep, user: Writer) -> Response:
    service.watchlist_remove(session, user_id=user.id, movie_id=movie_id)
    return Response(status_code=204)


@router.get("/lists", response_model=list[s.ListRead])
def lists(session: SessionDep, user: Reader) -> list[s.ListRead]:
    return service.lists_for(session, user_id=user.id if user else None)


@router.post("/lists", response_model=s.ListRead, status_code=201)
def create_list(data: s.ListCreate, session: SessionDep, user: Writer) -> s.ListRead:
    return service.create_list(session, user_id=user.id, data=data)


@router.get("/lists/{list_id}", response_model=s.ListDetail)
def read_list(list_id: int, session: SessionDep, user: Reader) -> s.ListDetail:
    return service.list_detail(session, list_id=list_id, user_id=user.id if user else None)


@router.patch("/lists/{list_id}", response_model=s.ListRead)
def update_list(list_id: int, data: s.ListUpdate, session: SessionDep, user: Writer) -> s.ListRead:
    return service.update_list(session, list_id=list_id, user_id=user.id, data=data)


@router.delete("/lists/{list_id}", status_code=204)
def delete_list(list_id: int, session: SessionDep, user: Writer) -> Response:
    service.delete_list(session, list_id=list_id, user_id=user.id)
    return Response(status_code=204)


@router.put("/lists/{list_id}/items/{movie_id}", status_code=204)
def list_add(list_id: int, movie_id: int, session: SessionDep, user: Writer) -> Response:
    service.list_add(session, list_id=list_id, user_id=user.id, movie_id=movie_id)
    return Response(status_code=204)


@router.delete("/lists/{list_id}/items/{movie_id}", status_code=204)
def list_remove(list_id: int, movie_id: int, session: SessionDep, user: Writer) -> Response:
    service.list_remove(session, list_id=list_id, user_id=user.id, movie_id=movie_id)
    return Response(status_code=204)


@router.post("/me/history", response_model=s.WatchRead, status_code=201)
def log_watch(data: s.WatchIn, session: SessionDep, user: Writer) -> s.WatchRead:
    return service.log_watch(session, user_id=user.id, data=data)


@router.get("/me/history", response_model=list[s.WatchRead])
def my_history(session: SessionDep, user: Annotated[User, Depends(current_user)]) -> list[s.WatchRead]:
    return service.history(session, user_id=user.id)


@router.get("/me/stats")
def my_stats(session: SessionDep, user: Annotated[User, Depends(current_user)]) -> dict[str, Any]:
    return service.my_stats(session, user_id=user.id)


# --- import / export --------------------------------------------------------------------------------------


@router.post("/imports", status_code=202)
async def create_import(
    request: Request,
    session: SessionDep,
    user: Writer,
    what: Annotated[Literal["movies", "ratings", "watchlist", "lists"], Query()],
    file: Annotated[UploadFile, File()],
) -> dict[str, Any]:
    from suite.catalog import io

    if what == "movies" and user.role not in ("editor", "admin"):
        raise Forbidden("importing movies needs the editor or admin role")
    data = await io.read_upload(file)
    fmt = "json" if (file.filename or "").lower().endswith((".json", ".jsonl")) else "csv"
    # The preview reads and writes the database: off the event loop, or a busy SQLite stalls every request.
    return await run_in_threadpool(io.preview_bytes, session, data=data, what=what, fmt=fmt, owner_id=user.id)


@router.get("/imports/{import_id}")
def read_import(import_id: str, session: SessionDep, user: Writer) -> dict[str, Any]:
    from suite.catalog import io

    return io.import_summary(session, import_id=import_id, owner_id=user.id, is_admin=user.role == "admin")


@router.post("/imports/{import_id}/commit", status_code=202)
def commit_import(import_id: str, session: SessionDep, user: Writer) -> dict[str, Any]:
    from suite.catalog import io

    return io.commit_import(session, import_id=import_id, owner_id=user.id, is_admin=user.role == "admin")


@router.get("/exports/{name}")
def export(name: str, session: SessionDep, user: Reader) -> StreamingResponse:
    from suite.catalog import io

    what, _, fmt = name.partition(".")
    if what not in ("movies", "ratings", "watchlist", "lists") or fmt not in ("csv", "json"):
        from suite.core.errors import NotFound

        raise NotFound("exports are movies|ratings|watchlist|lists .csv|.json")
    if what != "movies" and user is None:
        raise Unauthorized("log in to export your own data")
    chunks = list(io.export_chunks(session, what=what, fmt=fmt, owner_id=user.id if user else None))
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
    return StreamingResponse(iter(chunks), media_type=media)


# --- admin: seed runs, enrich, index, stats ---------------------------------------------------------------


@router.post("/seed-runs", status_code=202)
def start_seed(data: s.SeedRequest, session: SessionDep, user: Admin) -> dict[str, Any]:
    from suite.catalog import seed as seeding
    from suite.catalog.tasks import seed_run
    from suite.core.tasks import enqueue

    # SQLite sessions begin IMMEDIATE: end the request's transaction so the run's own sessions can write.
    session.commit()
    session.close()
    if data.resume:
        run_id = data.resume
        seeding.run_summary(run_id)
    else:
        seeding.check_lock()
        options = seeding.SeedOptions(source=data.source, path=data.path, limit=data.limit, ids=data.ids)
        run_id = seeding.create_run(options, seeding.build_source(options))
    job = enqueue(seed_run, owner_id=user.id, params={"run_id": run_id}, run_id=run_id, flush=True)
    return {"run_id": run_id, "job_id": job.id}


@router.get("/seed-runs")
def seed_runs(session: SessionDep, _user: Admin) -> list[dict[str, Any]]:
    from suite.catalog import seed as seeding

    return seeding.list_runs(session)


@router.get("/seed-runs/{run_id}")
def seed_run(run_id: str, session: SessionDep, _user: Admin) -> dict[str, Any]:
    from suite.catalog import seed as seeding

    return seeding.run_summary(run_id, session)


@router.get("/seed-runs/{run_id}/issues")
def seed_issues(
    run_id: str, session: SessionDep, _user: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    from suite.catalog import seed as seeding

    return seeding.list_issues(session, run_id=run_id, limit=limit)


@router.post("/seed-runs/{run_id}/cancel", status_code=202)
def cancel_seed(run_id: str, session: SessionDep, _user: Admin) -> dict[str, Any]:
    from suite.catalog import seed as seeding

    return seeding.cancel_run(session, run_id=run_id)


@router.post("/enrich", status_code=202)
def start_enrich(data: s.EnrichRequest, session: SessionDep, user: Admin) -> dict[str, Any]:
    from suite.catalog.tasks import enrich_job
    from suite.core.tasks import enqueue

    session.commit()
    session.close()
    job = enqueue(
        enrich_job, owner_id=user.id, field=data.field, force=data.force, limit=data.limit, flush=True
    )
    return {"job_id": job.id}


@router.post("/index/fts", status_code=202)
def rebuild_fts(session: SessionDep, _user: Admin) -> dict[str, Any]:
    from suite.catalog import search as searching

    return searching.rebuild_index(session, rebuild=True)


@router.post("/index/embeddings", status_code=202)
def rebuild_embeddings(
    session: SessionDep, user: Admin, limit: Annotated[int | None, Query(ge=1)] = None
) -> dict[str, Any]:
    """Start the resumable embedding job (503 with the install command when the extra is absent)."""
    from suite.catalog import semantic
    from suite.catalog.tasks import embed_job
    from suite.core.errors import Unavailable
    from suite.core.tasks import enqueue

    problem = semantic.status(session)["problem"]
    if problem:
        raise Unavailable(problem, code="semantic_unavailable")
    session.commit()
    session.close()
    job = enqueue(embed_job, owner_id=user.id, limit=limit, flush=True)
    return {"job_id": job.id}


@router.get("/index/embeddings")
def embeddings_status(session: SessionDep, _user: Reader) -> dict[str, Any]:
    from suite.catalog import semantic

    return semantic.status(session)


@router.get("/settings/tmdb-key")
def tmdb_key_status(session: SessionDep, _user: Admin) -> dict[str, Any]:
    """Whether a TMDB key is set and where from; never the key."""
    from suite.catalog import keys

    return keys.tmdb_key_status(session)


@router.put("/settings/tmdb-key")
def tmdb_key_set(data: s.SecretIn, session: SessionDep, _user: Admin) -> dict[str, Any]:
    """Store the TMDB key encrypted with the keyring (`suite secrets rotate` re-encrypts it)."""
    from suite.catalog import keys

    return keys.set_tmdb_key(session, value=data.value.get_secret_value())


@router.delete("/settings/tmdb-key", status_code=204)
def tmdb_key_clear(session: SessionDep, _user: Admin) -> Response:
    from suite.catalog import keys

    keys.clear_tmdb_key(session)
    return Response(status_code=204)


@router.get("/stats")
def stats(session: SessionDep, _user: Reader) -> dict[str, Any]:
    return service.coverage_stats(session)


@router.post("/stats/rebuild", status_code=200)
def rebuild_stats(session: SessionDep, _user: Admin) -> dict[str, Any]:
    return {"movies": service.recount_stats(session)}


_ = status
