"""Server-rendered catalog pages under /catalog/ (shared base template, htmx type-ahead)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from suite.catalog import schemas as s
from suite.catalog import service
from suite.core.db import SessionDep
from suite.core.errors import Forbidden, SuiteError, ValidationFailed
from suite.core.web import render
from suite.core.web_auth import PageUser, csrf_token, user_from_cookie


def _commit_before_response(session: SessionDep) -> Iterator[None]:
    """See suite.catalog.api.commit_before_response: a 303 to the new page must follow the commit."""
    yield
    session.commit()


pages = APIRouter(include_in_schema=False, dependencies=[Depends(_commit_before_response, scope="function")])

MOVIE_FORM_FIELDS = (
    "title",
    "original_title",
    "year",
    "release_date",
    "runtime_min",
    "mpaa_rating",
    "tagline",
    "overview",
    "genres",
)


def _require_role(user: Any, *roles: str) -> None:
    if user.role != "admin" and user.role not in roles:
        raise Forbidden(f"one of the roles {', '.join(('admin', *roles))} required")


class _MovieFormModel(BaseModel):
    """The movie form as posted: strings (empty for none); checked by MovieCreate/MovieUpdate afterwards, so
    a bad value re-renders the form with its message instead of a bare 422."""

    model_config = ConfigDict(extra="ignore")
    title: str = Field("", max_length=1000)
    original_title: str = Field("", max_length=1000)
    year: str = Field("", max_length=10)
    release_date: str = Field("", max_length=20)
    runtime_min: str = Field("", max_length=10)
    mpaa_rating: str = Field("", max_length=100)
    tagline: str = Field("", max_length=2000)
    overview: str = Field("", max_length=40_000)
    genres: str = Field("", max_length=2000)
    version_field: str = Field("", alias="version", max_length=20)

    @property
    def version(self) -> int | None:
        v = self.version_field.strip()
        return int(v) if v.isdigit() and int(v) >= 1 else None

    def values(self) -> dict[str, str]:
        return {name: str(getattr(self, name)).strip() for name in MOVIE_FORM_FIELDS}


MovieForm = Annotated[_MovieFormModel, Form()]


def _page(request: Request, name: str, ctx: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    ctx.setdefault("csrf_token", csrf_token(request))
    return render(request, f"catalog/{name}", ctx, status_code=status_code)


@pages.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep) -> HTMLResponse:
    recent = service.list_movies(session, limit=12, sort="added")
    top = service.list_movies(session, limit=12, sort="rating")
    return _page(
        request,
        "home.html",
        {"recent": recent.items, "top": top.items, "stats": service.home_counts(session)},
    )


@pages.get("/movies", response_class=HTMLResponse)
def movies(
    request: Request,
    session: SessionDep,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 24,
    sort: Literal["title", "year", "rating", "added"] = "title",
    genre: Annotated[str | None, Query(max_length=64)] = None,
    year_from: Annotated[str | None, Query(max_length=4, pattern=r"^(\d{4})?$")] = None,
    year_to: Annotated[str | None, Query(max_length=4, pattern=r"^(\d{4})?$")] = None,
) -> HTMLResponse:
    # The filter form sends empty fields ("year_from="): empty means no filter, not a bad value.
    years = {"year_from": int(year_from) if year_from else None, "year_to": int(year_to) if year_to else None}
    for name, value in years.items():
        if value is not None and not 1870 <= value <= 2100:
            raise ValidationFailed(f"{name}: a year between 1870 and 2100")
    page = service.list_movies(
        session,
        cursor=cursor,
        limit=limit,
        sort=sort,
        genre=genre or None,
        year_from=years["year_from"],
        year_to=years["year_to"],
    )
    filters = {"sort": sort, "genre": genre or "", "year_from": year_from or "", "year_to": year_to or ""}
    genres = [g.name for g in service.lookups(session, kind="genres")]
    return _page(request, "movies.html", {"page": page, "filters": filters, "genres": genres, "limit": limit})


# Before /movies/{movie_id}: routes match in order.
@pages.get("/movies/new", response_class=HTMLResponse)
def new_movie_form(request: Request, user: PageUser) -> HTMLResponse:
    _require_role(user, "editor")
    return _edit_page(request, movie_id=None, values=dict.fromkeys(MOVIE_FORM_FIELDS, ""), version=None)


@pages.post("/movies/new")
def new_movie_submit(request: Request, session: SessionDep, user: PageUser, form: MovieForm) -> Response:
    from pydantic import ValidationError

    _require_role(user, "editor")
    values = form.values()
    try:
        movie = service.create_movie(session, data=s.MovieCreate(**_movie_data(values)), user_id=user.id)
    except (ValidationError, SuiteError) as exc:
        code = getattr(exc, "status_code", 422)
        return _edit_page(
            request, movie_id=None, values=values, version=None, errors=_errors(exc), status_code=code
        )
    return RedirectResponse(f"/catalog/movies/{movie.id}", status_code=303)


@pages.get("/movies/{movie_id}", response_class=HTMLResponse)
def movie(movie_id: int, request: Request, session: SessionDep) -> HTMLResponse:
    detail = service.movie_detail(session, movie_id=movie_id)
    user = user_from_cookie(request, session)
    mine = None
    in_watchlist = False
    if user is not None:
        from sqlalchemy import select

        from suite.catalog import models as m

        mine = session.scalar(
            select(m.Review).where(m.Review.user_id == user.id, m.Review.movie_id == movie_id)
        )
        in_watchlist = session.get(m.WatchlistItem, {"user_id": user.id, "movie_id": movie_id}) is not None
    reviews = service.list_reviews(session, movie_id=movie_id, cursor=None, limit=20)
    from suite.catalog.settings import catalog_settings

    cast = [c for c in detail.credits if c.kind == "cast"]
    crew = [c for c in detail.credits if c.kind == "crew"]
    ctx = {
        "movie": detail,
        "cast": cast,
        "crew": crew,
        "reviews": reviews.items,
        "mine": mine,
        "in_watchlist": in_watchlist,
        "semantic": catalog_settings().semantic,
    }
    return _page(request, "movie.html", ctx)


@pages.post("/movies/{movie_id}/review")
def post_review(
    movie_id: int,
    request: Request,
    session: SessionDep,
    user: PageUser,
    score: Annotated[int, Form(ge=0, le=10)],
    comment: Annotated[str, Form(max_length=4096)] = "",
    recommend: Annotated[bool, Form()] = False,
) -> Response:
    service.put_review(
        session,
        movie_id=movie_id,
        user_id=user.id,
        data=s.ReviewIn(score=score, comment=comment or None, recommend=recommend),
    )
    return RedirectResponse(f"/catalog/movies/{movie_id}#reviews", status_code=303)


@pages.post("/movies/{movie_id}/watchlist")
def toggle_watchlist(movie_id: int, request: Request, session: SessionDep, user: PageUser) -> Response:
    from suite.catalog import models as m

    if session.get(m.WatchlistItem, {"user_id": user.id, "movie_id": movie_id}) is None:
        service.watchlist_add(session, user_id=user.id, movie_id=movie_id)
    else:
        service.watchlist_remove(session, user_id=user.id, movie_id=movie_id)
    return RedirectResponse(f"/catalog/movies/{movie_id}", status_code=303)


@pages.get("/movies/{movie_id}/similar", response_class=HTMLResponse)
def similar_partial(movie_id: int, request: Request, session: SessionDep) -> HTMLResponse:
    """ "More like this" for the movie page (loaded by htmx); a note instead when it is not available."""
    from suite.catalog import semantic

    try:
        result, note = semantic.similar(session, movie_id=movie_id, limit=8), None
    except SuiteError as exc:
        if exc.status_code == 404:
            raise
        result, note = None, exc.message
    return _page(request, "_similar.html", {"result": result, "note": note})


@pages.get("/people", response_class=HTMLResponse)
def people(
    request: Request,
    session: SessionDep,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    q: Annotated[str | None, Query(max_length=100)] = None,
) -> HTMLResponse:
    page = service.list_people(session, cursor=cursor, limit=50, q=q or None)
    return _page(request, "people.html", {"page": page, "q": q or ""})


@pages.get("/people/{person_id}", response_class=HTMLResponse)
def person(person_id: int, request: Request, session: SessionDep) -> HTMLResponse:
    return _page(request, "person.html", {"person": service.person_detail(session, person_id=person_id)})


@pages.get("/search", response_class=HTMLResponse)
def search_page(
    request: Request,
    session: SessionDep,
    q: Annotated[str | None, Query(max_length=200)] = None,
    mode: Literal["keyword", "semantic", "hybrid"] = "keyword",
) -> HTMLResponse:
    from suite.catalog import search as searching
    from suite.catalog.settings import catalog_settings

    result = None
    error = None
    if q:
        try:
            if mode == "keyword":
                result = searching.search(session, query=q, limit=20)
            else:
                from suite.catalog import semantic

                result = semantic.search(session, query=q, mode=mode, limit=20)
        except SuiteError as exc:
            error = exc.message
    partial = bool(request.headers.get("hx-request"))
    semantic_on = catalog_settings().semantic
    ctx = {"q": q or "", "result": result, "error": error, "mode": mode, "semantic": semantic_on}
    return _page(
        request,
        "_results.html" if partial else "search.html",
        ctx,
        status_code=422 if error and not partial else 200,
    )


@pages.get("/lists", response_class=HTMLResponse)
def lists_page(request: Request, session: SessionDep) -> HTMLResponse:
    user = user_from_cookie(request, session)
    return _page(
        request, "lists.html", {"lists": service.lists_for(session, user_id=user.id if user else None)}
    )


@pages.post("/lists")
def create_list_form(
    request: Request,
    session: SessionDep,
    user: PageUser,
    name: Annotated[str, Form(min_length=1, max_length=100)],
    visibility: Annotated[Literal["private", "public"], Form()] = "private",
) -> Response:
    lst = service.create_list(session, user_id=user.id, data=s.ListCreate(name=name, visibility=visibility))
    return RedirectResponse(f"/catalog/lists/{lst.id}", status_code=303)


@pages.get("/lists/{list_id}", response_class=HTMLResponse)
def list_page(list_id: int, request: Request, session: SessionDep) -> HTMLResponse:
    user = user_from_cookie(request, session)
    return _page(
        request,
        "list.html",
        {"list": service.list_detail(session, list_id=list_id, user_id=user.id if user else None)},
    )


@pages.get("/me/watchlist", response_class=HTMLResponse)
def watchlist_page(request: Request, session: SessionDep, user: PageUser) -> HTMLResponse:
    return _page(request, "watchlist.html", {"movies": service.watchlist(session, user_id=user.id)})


@pages.get("/me/history", response_class=HTMLResponse)
def history_page(request: Request, session: SessionDep, user: PageUser) -> HTMLResponse:
    ctx = {
        "watches": service.history(session, user_id=user.id),
        "stats": service.my_stats(session, user_id=user.id),
    }
    return _page(request, "history.html", ctx)


@pages.get("/admin/seed", response_class=HTMLResponse)
def admin_seed(request: Request, session: SessionDep, user: PageUser) -> HTMLResponse:
    from suite.catalog import seed as seeding

    if user.role != "admin":
        raise Forbidden("admin role required")
    return _page(request, "admin_seed.html", {"runs": seeding.list_runs(session, limit=50)})


@pages.get("/admin/stats", response_class=HTMLResponse)
def admin_stats(request: Request, session: SessionDep, user: PageUser) -> HTMLResponse:
    if user.role != "admin":
        raise Forbidden("admin role required")
    return _page(request, "admin_stats.html", {"stats": service.coverage_stats(session)})


# --- editors: movie forms ---------------------------------------------------------------------------------


def _movie_data(values: dict[str, str]) -> dict[str, Any]:
    """Form strings to the API's fields: empty means none; genres are comma-separated."""
    data: dict[str, Any] = {k: (v or None) for k, v in values.items() if k != "genres"}
    data["genres"] = [g.strip() for g in values["genres"].split(",") if g.strip()]
    return data


def _errors(exc: Any) -> list[str]:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return [f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors()]
    return [getattr(exc, "message", str(exc))]


def _edit_page(
    request: Request,
    *,
    movie_id: int | None,
    values: dict[str, str],
    version: int | None,
    errors: list[str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    ctx = {"movie_id": movie_id, "values": values, "version": version, "errors": errors or []}
    return _page(request, "movie_edit.html", ctx, status_code=status_code)


@pages.get("/movies/{movie_id}/edit", response_class=HTMLResponse)
def edit_movie_form(movie_id: int, request: Request, session: SessionDep, user: PageUser) -> HTMLResponse:
    _require_role(user, "editor")
    movie = service.movie_read(session, service.get_movie(session, movie_id=movie_id))
    values = {
        name: "" if getattr(movie, name, None) is None else str(getattr(movie, name))
        for name in MOVIE_FORM_FIELDS
        if name != "genres"
    }
    values["genres"] = ", ".join(movie.genres)
    return _edit_page(request, movie_id=movie_id, values=values, version=movie.version)


@pages.post("/movies/{movie_id}/edit")
def edit_movie_submit(
    movie_id: int, request: Request, session: SessionDep, user: PageUser, form: MovieForm
) -> Response:
    """Save the edit form with the version it was loaded at: an edit made meanwhile answers 412 with the
    form kept, never a silent overwrite."""
    from pydantic import ValidationError

    _require_role(user, "editor")
    values = form.values()
    current = service.movie_read(session, service.get_movie(session, movie_id=movie_id))
    data = _movie_data(values)
    if data["genres"] == current.genres:
        del data["genres"]  # unchanged: leave them (and the version) alone
    try:
        update = s.MovieUpdate(**{k: v for k, v in data.items() if k == "genres" or v != getattr(current, k)})
        if form.version is None:
            raise service.PreconditionFailed("the form has no version; reload it")
        service.update_movie(
            session, movie_id=movie_id, data=update, user_id=user.id, if_match=service.etag(form.version)
        )
    except (ValidationError, SuiteError) as exc:
        code = getattr(exc, "status_code", 422)
        return _edit_page(
            request,
            movie_id=movie_id,
            values=values,
            version=form.version,
            errors=_errors(exc),
            status_code=code,
        )
    return RedirectResponse(f"/catalog/movies/{movie_id}", status_code=303)


# --- admin: import, settings ------------------------------------------------------------------------------


@pages.get("/admin/import", response_class=HTMLResponse)
def import_page(request: Request, user: PageUser) -> HTMLResponse:
    return _page(request, "admin_import.html", {"summary": None, "whats": _import_whats(user)})


def _import_whats(user: Any) -> list[str]:
    whats = ["ratings", "watchlist", "lists"]
    return ["movies", *whats] if user.role in ("admin", "editor") else whats


@pages.post("/admin/import", response_class=HTMLResponse)
async def import_upload(
    request: Request,
    session: SessionDep,
    user: PageUser,
    what: Annotated[Literal["movies", "ratings", "watchlist", "lists"], Form()],
    file: Annotated[UploadFile, File()],
) -> HTMLResponse:
    """Preview an upload: every row sorted into ready / exists / duplicate / needs review / invalid; nothing is
    written to the catalog before Commit."""
    from suite.catalog import io

    if what not in _import_whats(user):
        raise Forbidden("importing movies needs the editor or admin role")
    data = await io.read_upload(file)
    fmt = "json" if (file.filename or "").lower().endswith((".json", ".jsonl")) else "csv"
    try:  # database work off the event loop (a busy SQLite would stall every request)
        summary = await run_in_threadpool(
            io.preview_bytes, session, data=data, what=what, fmt=fmt, owner_id=user.id
        )
    except SuiteError as exc:
        ctx = {"summary": None, "whats": _import_whats(user), "error": exc.message}
        return _page(request, "admin_import.html", ctx, status_code=exc.status_code)
    return _page(request, "admin_import.html", {"summary": summary, "whats": _import_whats(user)})


@pages.post("/admin/import/{import_id}/commit", response_class=HTMLResponse)
def import_commit(import_id: str, request: Request, session: SessionDep, user: PageUser) -> HTMLResponse:
    from suite.catalog import io

    summary = io.commit_import(session, import_id=import_id, owner_id=user.id, is_admin=user.role == "admin")
    return _page(request, "admin_import.html", {"summary": summary, "whats": _import_whats(user)})


@pages.get("/admin/settings", response_class=HTMLResponse)
def settings_page(request: Request, session: SessionDep, user: PageUser) -> HTMLResponse:
    from suite.catalog import keys

    _require_role(user)
    return _page(request, "admin_settings.html", {"tmdb": keys.tmdb_key_status(session)})


@pages.post("/admin/settings/tmdb-key", response_class=HTMLResponse)
def settings_tmdb_key(
    request: Request,
    session: SessionDep,
    user: PageUser,
    value: Annotated[str, Form(max_length=1024)] = "",
    action: Annotated[Literal["set", "clear"], Form()] = "set",
) -> Response:
    """Store the TMDB key encrypted (or clear it); the page never shows it back."""
    from suite.catalog import keys

    _require_role(user)
    try:
        if action == "clear":
            keys.clear_tmdb_key(session)
        else:
            keys.set_tmdb_key(session, value=value)
    except SuiteError as exc:
        ctx = {"tmdb": keys.tmdb_key_status(session), "error": exc.message}
        return _page(request, "admin_settings.html", ctx, status_code=exc.status_code)
    return RedirectResponse("/catalog/admin/settings?saved=1", status_code=303)
