"""Server-rendered catalog pages under /catalog/ (shared base template, htmx type-ahead)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from suite.catalog import schemas as s
from suite.catalog import service
from suite.core.db import SessionDep
from suite.core.errors import Forbidden, SuiteError
from suite.core.web import render
from suite.core.web_auth import PageUser, csrf_token, user_from_cookie

pages = APIRouter(include_in_schema=False)


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
        {"recent": recent.items, "top": top.items, "stats": service.coverage_stats(session)},
    )


@pages.get("/movies", response_class=HTMLResponse)
def movies(
    request: Request,
    session: SessionDep,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 24,
    sort: Literal["title", "year", "rating", "added"] = "title",
    genre: Annotated[str | None, Query(max_length=64)] = None,
    year_from: Annotated[int | None, Query(ge=1870, le=2100)] = None,
    year_to: Annotated[int | None, Query(ge=1870, le=2100)] = None,
) -> HTMLResponse:
    page = service.list_movies(
        session,
        cursor=cursor,
        limit=limit,
        sort=sort,
        genre=genre or None,
        year_from=year_from,
        year_to=year_to,
    )
    filters = {"sort": sort, "genre": genre or "", "year_from": year_from or "", "year_to": year_to or ""}
    genres = [g.name for g in service.lookups(session, kind="genres")]
    return _page(request, "movies.html", {"page": page, "filters": filters, "genres": genres, "limit": limit})


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
    cast = [c for c in detail.credits if c.kind == "cast"]
    crew = [c for c in detail.credits if c.kind == "crew"]
    ctx = {
        "movie": detail,
        "cast": cast,
        "crew": crew,
        "reviews": reviews.items,
        "mine": mine,
        "in_watchlist": in_watchlist,
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
    request: Request, session: SessionDep, q: Annotated[str | None, Query(max_length=200)] = None
) -> HTMLResponse:
    from suite.catalog import search as searching

    result = None
    error = None
    if q:
        try:
            result = searching.search(session, query=q, limit=20)
        except SuiteError as exc:
            error = exc.message
    partial = bool(request.headers.get("hx-request"))
    ctx = {"q": q or "", "result": result, "error": error}
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
