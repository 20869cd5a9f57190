"""Request and response models (never ORM objects in responses)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from suite.catalog.sources.base import clean_text


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Provenance(Out):
    source: str | None
    model: str | None = None
    prompt_version: str | None = None
    updated_at: datetime | None = None
    generated: bool = False


class MovieSummary(Out):
    id: int
    title: str
    year: int | None
    runtime_min: int | None = None
    poster_path: str | None = None
    critic_meter: int | None = None
    genres: list[str] = []


class MoviePage(Out):
    items: list[MovieSummary]
    next_cursor: str | None
    total: int | None = None


class CreditRead(Out):
    id: int
    person_id: int
    person_name: str
    kind: str
    character: str | None
    cast_order: int | None
    department: str | None = None
    job: str | None = None


class ReviewStats(Out):
    review_count: int = 0
    mean: float | None = None
    recommend_pct: float | None = None
    histogram: list[int] = Field(default_factory=lambda: [0] * 11)
    external_count: int = 0
    external_mean: float | None = None


class MovieRead(Out):
    id: int
    title: str
    original_title: str | None
    sort_title: str
    year: int | None
    release_date: date | None
    release_date_precision: str | None
    runtime_min: int | None
    overview: str | None
    overview_provenance: Provenance
    tagline: str | None
    mpaa_rating: str | None
    box_office_usd: int | None
    critic_meter: int | None
    critic_rating: float | None
    critic_reviews: int | None
    metacritic: int | None
    oscars: int | None
    poster_path: str | None
    genres: list[str] = []
    languages: list[str] = []
    countries: list[str] = []
    external_ids: dict[str, str] = {}
    version: int
    created_at: datetime
    updated_at: datetime


class MovieDetail(MovieRead):
    credits: list[CreditRead] = []
    stats: ReviewStats


def _text(value: str | None, limit: int) -> str | None:
    cleaned = clean_text(value, limit=limit + 1) if value is not None else None
    if cleaned is not None and len(cleaned) > limit:
        raise ValueError(f"at most {limit} characters")
    return cleaned


class MovieCreate(In):
    title: str = Field(min_length=1, max_length=300)
    original_title: str | None = Field(None, max_length=300)
    year: int | None = Field(None, ge=1870, le=2100)
    release_date: date | None = None
    runtime_min: int | None = Field(None, ge=1, le=1000)
    overview: str | None = Field(None, max_length=20_000)
    tagline: str | None = Field(None, max_length=500)
    mpaa_rating: str | None = Field(None, max_length=16)
    genres: list[str] = Field(default_factory=list, max_length=20)
    imdb_id: str | None = Field(None, pattern=r"^tt\d{5,10}$")
    tmdb_id: int | None = Field(None, ge=1)

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        cleaned = _text(value, 300)
        if not cleaned:
            raise ValueError("title is empty")
        return cleaned


class MovieUpdate(In):
    title: str | None = Field(None, min_length=1, max_length=300)
    original_title: str | None = Field(None, max_length=300)
    year: int | None = Field(None, ge=1870, le=2100)
    release_date: date | None = None
    runtime_min: int | None = Field(None, ge=1, le=1000)
    overview: str | None = Field(None, max_length=20_000)
    tagline: str | None = Field(None, max_length=500)
    mpaa_rating: str | None = Field(None, max_length=16)
    genres: list[str] | None = Field(None, max_length=20)


class PersonRead(Out):
    id: int
    name: str
    birth_date: date | None
    death_date: date | None
    age: int | None = None
    birth_place: str | None
    biography: str | None
    biography_provenance: Provenance
    profile_path: str | None
    external_ids: dict[str, str] = {}
    version: int


class FilmographyItem(Out):
    movie_id: int
    title: str
    year: int | None
    kind: str
    character: str | None = None
    job: str | None = None


class PersonDetail(PersonRead):
    filmography: dict[str, list[FilmographyItem]] = {}


class PersonSummary(Out):
    id: int
    name: str


class PersonPage(Out):
    items: list[PersonSummary]
    next_cursor: str | None


class PersonCreate(In):
    name: str = Field(min_length=1, max_length=200)
    birth_date: date | None = None
    death_date: date | None = None
    birth_place: str | None = Field(None, max_length=300)
    biography: str | None = Field(None, max_length=20_000)


class PersonUpdate(In):
    name: str | None = Field(None, min_length=1, max_length=200)
    birth_date: date | None = None
    death_date: date | None = None
    birth_place: str | None = Field(None, max_length=300)
    biography: str | None = Field(None, max_length=20_000)


class CreditCreate(In):
    person_id: int = Field(ge=1)
    kind: Literal["cast", "crew"]
    character: str | None = Field(None, max_length=300)
    cast_order: int | None = Field(None, ge=0, le=10_000)
    department: str | None = Field(None, max_length=64)
    job: str | None = Field(None, max_length=64)


class ReviewIn(In):
    score: int = Field(ge=0, le=10)
    comment: str | None = Field(None, max_length=4096)
    recommend: bool = False


class ReviewRead(Out):
    id: int
    user_id: int
    username: str | None = None
    movie_id: int
    score: int
    comment: str | None
    recommend: bool
    created_at: datetime
    updated_at: datetime


class ReviewPage(Out):
    items: list[ReviewRead]
    next_cursor: str | None


class ListCreate(In):
    name: str = Field(min_length=1, max_length=100)
    description: str | None = Field(None, max_length=2000)
    visibility: Literal["private", "public"] = "private"


class ListUpdate(In):
    name: str | None = Field(None, min_length=1, max_length=100)
    description: str | None = Field(None, max_length=2000)
    visibility: Literal["private", "public"] | None = None


class ListRead(Out):
    id: int
    owner_id: int
    name: str
    description: str | None
    visibility: str
    item_count: int = 0
    created_at: datetime


class ListDetail(ListRead):
    items: list[MovieSummary] = []


class WatchIn(In):
    movie_id: int = Field(ge=1)
    watched_on: date | None = None


class WatchRead(Out):
    id: int
    movie_id: int
    title: str
    watched_on: date


class SearchMovie(Out):
    id: int
    title: str
    year: int | None
    directors: str | None
    poster_path: str | None
    score: float | None = None  # cosine similarity (semantic mode)


class SearchResult(Out):
    movies: list[SearchMovie]
    people: list[PersonSummary]
    took_ms: float
    fuzzy: bool = False
    mode: Literal["keyword", "semantic", "hybrid"] = "keyword"
    model: str | None = None  # the embedding model (semantic and hybrid)


class Lookup(Out):
    id: int
    name: str
    description: str | None = None
    description_source: str | None = None


class JobLookup(Out):
    id: int
    department: str
    name: str


class SeedRequest(In):
    source: Literal["wikidata", "movielens100k", "tmdb-dump", "tmdb"] = "wikidata"
    path: str | None = Field(None, max_length=1000)
    limit: int | None = Field(None, ge=1, le=10_000_000)
    ids: list[int] = Field(default_factory=list, max_length=10_000)
    dry_run: bool = False
    resume: str | None = Field(None, max_length=36)


class EnrichRequest(In):
    field: Literal["overview", "biography", "genre_description", "job_description"] = "overview"
    force: bool = False
    limit: int | None = Field(None, ge=1, le=1_000_000)


class SecretIn(In):
    value: SecretStr = Field(min_length=1, max_length=512)
