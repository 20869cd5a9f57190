"""Catalog tables (all prefixed `catalog_`). Search indexes (FTS5 / tsvector) are created by the migration."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from suite.core.crypto import register_encrypted_column
from suite.core.db import Base, utcnow

# Provenance ranks: a seed never overwrites a text whose source ranks higher.
SOURCE_RANK = {"user": 6, "tmdb": 5, "wikidata": 4, "ml100k": 3, "ai": 2, "template": 1}
TEXT_SOURCES = tuple(SOURCE_RANK)
EXTERNAL_SOURCES = ("imdb", "tmdb", "wikidata", "ml100k")


class Movie(Base):
    __tablename__ = "catalog_movie"
    __table_args__ = (
        CheckConstraint("runtime_min IS NULL OR (runtime_min >= 1 AND runtime_min <= 1000)", name="runtime"),
        CheckConstraint("critic_meter IS NULL OR (critic_meter >= 0 AND critic_meter <= 100)", name="meter"),
        CheckConstraint("year IS NULL OR (year >= 1870 AND year <= 2100)", name="year"),
        Index("ix_catalog_movie_sort_title", "sort_title", "id"),
        Index("ix_catalog_movie_year", "year", "id"),
        Index("ix_catalog_movie_created_at", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seed_key: Mapped[str | None] = mapped_column(
        String(64), unique=True
    )  # "<source>:<key>" of the first source
    title: Mapped[str] = mapped_column(String(300))
    original_title: Mapped[str | None] = mapped_column(String(300))
    sort_title: Mapped[str] = mapped_column(String(300))
    year: Mapped[int | None] = mapped_column(SmallInteger)
    release_date: Mapped[date | None] = mapped_column(Date)
    release_date_precision: Mapped[str | None] = mapped_column(String(5))  # day|month|year
    runtime_min: Mapped[int | None] = mapped_column(SmallInteger)
    overview: Mapped[str | None] = mapped_column(Text)
    overview_source: Mapped[str | None] = mapped_column(String(16))
    overview_model: Mapped[str | None] = mapped_column(String(100))
    overview_prompt_version: Mapped[str | None] = mapped_column(String(32))
    overview_updated_at: Mapped[datetime | None] = mapped_column(DateTime)
    tagline: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[str | None] = mapped_column(String(32))
    mpaa_rating: Mapped[str | None] = mapped_column(String(16))
    budget_usd: Mapped[int | None] = mapped_column(BigInteger)
    revenue_usd: Mapped[int | None] = mapped_column(BigInteger)
    box_office_usd: Mapped[int | None] = mapped_column(BigInteger)
    critic_meter: Mapped[int | None] = mapped_column(SmallInteger)
    critic_rating: Mapped[float | None] = mapped_column(Float)
    critic_reviews: Mapped[int | None] = mapped_column(Integer)
    metacritic: Mapped[int | None] = mapped_column(SmallInteger)
    oscars: Mapped[int | None] = mapped_column(SmallInteger)
    poster_path: Mapped[str | None] = mapped_column(String(300))
    poster_file: Mapped[str | None] = mapped_column(String(300))
    # Denormalised for search: director, writers and top-10 cast names (refreshed with the credits).
    search_people: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("core_user.id", ondelete="SET NULL"))
    updated_by: Mapped[int | None] = mapped_column(ForeignKey("core_user.id", ondelete="SET NULL"))


class Person(Base):
    __tablename__ = "catalog_person"
    __table_args__ = (Index("ix_catalog_person_sort_name", "sort_name", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seed_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    sort_name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200), index=True)  # casefolded, accents removed
    also_known_as: Mapped[str | None] = mapped_column(Text)
    birth_date: Mapped[date | None] = mapped_column(Date)
    death_date: Mapped[date | None] = mapped_column(Date)
    birth_place: Mapped[str | None] = mapped_column(String(300))
    biography: Mapped[str | None] = mapped_column(Text)
    biography_source: Mapped[str | None] = mapped_column(String(16))
    biography_model: Mapped[str | None] = mapped_column(String(100))
    biography_prompt_version: Mapped[str | None] = mapped_column(String(32))
    biography_updated_at: Mapped[datetime | None] = mapped_column(DateTime)
    profile_path: Mapped[str | None] = mapped_column(String(300))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("core_user.id", ondelete="SET NULL"))
    updated_by: Mapped[int | None] = mapped_column(ForeignKey("core_user.id", ondelete="SET NULL"))


class ExternalId(Base):
    __tablename__ = "catalog_external_id"
    __table_args__ = (
        UniqueConstraint("entity", "source", "value"),
        Index("ix_catalog_external_id_entity", "entity", "entity_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity: Mapped[str] = mapped_column(String(8))  # movie|person
    entity_id: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))  # imdb|tmdb|wikidata|ml100k
    value: Mapped[str] = mapped_column(String(64))


class Genre(Base):
    __tablename__ = "catalog_genre"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    tmdb_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    description_source: Mapped[str | None] = mapped_column(String(16))
    description_model: Mapped[str | None] = mapped_column(String(100))
    description_prompt_version: Mapped[str | None] = mapped_column(String(32))
    description_updated_at: Mapped[datetime | None] = mapped_column(DateTime)


class MovieGenre(Base):
    __tablename__ = "catalog_movie_genre"
    __table_args__ = (Index("ix_catalog_movie_genre_genre", "genre_id", "movie_id"),)

    movie_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_movie.id", ondelete="CASCADE"), primary_key=True
    )
    genre_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_genre.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(SmallInteger, default=0)
    is_primary: Mapped[bool] = mapped_column(Boolean, default=False)


class Job(Base):
    __tablename__ = "catalog_job"
    __table_args__ = (UniqueConstraint("department", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    department: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text)
    description_source: Mapped[str | None] = mapped_column(String(16))
    description_model: Mapped[str | None] = mapped_column(String(100))
    description_prompt_version: Mapped[str | None] = mapped_column(String(32))
    description_updated_at: Mapped[datetime | None] = mapped_column(DateTime)


class Language(Base):
    __tablename__ = "catalog_language"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    iso_639_1: Mapped[str | None] = mapped_column(String(8))


class Country(Base):
    __tablename__ = "catalog_country"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    iso_3166_1: Mapped[str | None] = mapped_column(String(8))


class MovieLanguage(Base):
    __tablename__ = "catalog_movie_language"

    movie_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_movie.id", ondelete="CASCADE"), primary_key=True
    )
    language_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_language.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(SmallInteger, default=0)


class MovieCountry(Base):
    __tablename__ = "catalog_movie_country"

    movie_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_movie.id", ondelete="CASCADE"), primary_key=True
    )
    country_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_country.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(SmallInteger, default=0)


class Credit(Base):
    __tablename__ = "catalog_credit"
    __table_args__ = (
        UniqueConstraint("movie_id", "person_id", "role_key"),
        Index("ix_catalog_credit_person", "person_id", "movie_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    movie_id: Mapped[int] = mapped_column(ForeignKey("catalog_movie.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("catalog_person.id", ondelete="RESTRICT"))
    kind: Mapped[str] = mapped_column(String(8))  # cast|crew
    character: Mapped[str | None] = mapped_column(String(300))
    cast_order: Mapped[int | None] = mapped_column(SmallInteger)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("catalog_job.id", ondelete="RESTRICT"))
    credited: Mapped[bool] = mapped_column(Boolean, default=True)
    role_key: Mapped[str] = mapped_column(String(320))  # cast:<character> | crew:<job_id>
    source: Mapped[str | None] = mapped_column(String(16))


class Review(Base):
    __tablename__ = "catalog_review"
    __table_args__ = (
        UniqueConstraint("user_id", "movie_id"),
        CheckConstraint("score >= 0 AND score <= 10", name="score"),
        Index("ix_catalog_review_movie", "movie_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("core_user.id", ondelete="CASCADE"))
    movie_id: Mapped[int] = mapped_column(ForeignKey("catalog_movie.id", ondelete="CASCADE"))
    score: Mapped[int] = mapped_column(SmallInteger)
    comment: Mapped[str | None] = mapped_column(String(4096))
    recommend: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class MovieStat(Base):
    __tablename__ = "catalog_movie_stat"

    movie_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_movie.id", ondelete="CASCADE"), primary_key=True
    )
    review_count: Mapped[int] = mapped_column(Integer, default=0)
    score_sum: Mapped[int] = mapped_column(Integer, default=0)
    recommend_count: Mapped[int] = mapped_column(Integer, default=0)
    hist_0: Mapped[int] = mapped_column(Integer, default=0)
    hist_1: Mapped[int] = mapped_column(Integer, default=0)
    hist_2: Mapped[int] = mapped_column(Integer, default=0)
    hist_3: Mapped[int] = mapped_column(Integer, default=0)
    hist_4: Mapped[int] = mapped_column(Integer, default=0)
    hist_5: Mapped[int] = mapped_column(Integer, default=0)
    hist_6: Mapped[int] = mapped_column(Integer, default=0)
    hist_7: Mapped[int] = mapped_column(Integer, default=0)
    hist_8: Mapped[int] = mapped_column(Integer, default=0)
    hist_9: Mapped[int] = mapped_column(Integer, default=0)
    hist_10: Mapped[int] = mapped_column(Integer, default=0)
    ext_count: Mapped[int] = mapped_column(Integer, default=0)
    ext_sum: Mapped[float] = mapped_column(Float, default=0.0)


class ExternalRating(Base):
    __tablename__ = "catalog_external_rating"
    __table_args__ = (
        UniqueConstraint("source", "source_user", "movie_id"),
        Index("ix_catalog_external_rating_movie", "movie_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    source_user: Mapped[str] = mapped_column(String(64))
    movie_id: Mapped[int] = mapped_column(ForeignKey("catalog_movie.id", ondelete="CASCADE"))
    rating: Mapped[float] = mapped_column(Float)
    rated_at: Mapped[datetime | None] = mapped_column(DateTime)


class WatchlistItem(Base):
    __tablename__ = "catalog_watchlist_item"

    user_id: Mapped[int] = mapped_column(ForeignKey("core_user.id", ondelete="CASCADE"), primary_key=True)
    movie_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_movie.id", ondelete="CASCADE"), primary_key=True
    )
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    note: Mapped[str | None] = mapped_column(String(500))


class MovieList(Base):
    __tablename__ = "catalog_list"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("core_user.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(String(2000))
    visibility: Mapped[str] = mapped_column(String(8), default="private")  # private|public
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ListItem(Base):
    __tablename__ = "catalog_list_item"

    list_id: Mapped[int] = mapped_column(ForeignKey("catalog_list.id", ondelete="CASCADE"), primary_key=True)
    movie_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_movie.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str | None] = mapped_column(String(500))


class Watch(Base):
    __tablename__ = "catalog_watch"
    __table_args__ = (Index("ix_catalog_watch_user", "user_id", "watched_on"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("core_user.id", ondelete="CASCADE"))
    movie_id: Mapped[int] = mapped_column(ForeignKey("catalog_movie.id", ondelete="CASCADE"))
    watched_on: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SeedRun(Base):
    __tablename__ = "catalog_seed_run"
    __table_args__ = (Index("ix_catalog_seed_run_status", "status", "started_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    source_version: Mapped[str | None] = mapped_column(String(64))
    dataset_sha256: Mapped[str | None] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    stage: Mapped[str] = mapped_column(String(16), default="extract")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    last_key: Mapped[str | None] = mapped_column(String(200))
    processed: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int | None] = mapped_column(Integer)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    lock_owner: Mapped[str | None] = mapped_column(String(100))
    job_id: Mapped[str | None] = mapped_column(String(36))
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class SeedLock(Base):
    """One row (name='seed') while a seed runs: the row's primary key makes a second run refuse."""

    __tablename__ = "catalog_seed_lock"

    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(36))
    owner: Mapped[str] = mapped_column(String(100))
    acquired_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SeedIssue(Base):
    __tablename__ = "catalog_seed_issue"
    __table_args__ = (Index("ix_catalog_seed_issue_run", "run_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("catalog_seed_run.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(16))
    entity: Mapped[str] = mapped_column(String(16))
    source_key: Mapped[str | None] = mapped_column(String(200))
    severity: Mapped[str] = mapped_column(String(8))  # warning|error
    code: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(String(1000))
    raw: Mapped[Any | None] = mapped_column(JSON)


class Generation(Base):
    __tablename__ = "catalog_generation"
    __table_args__ = (
        UniqueConstraint("entity", "entity_id", "field", "prompt_version", "model", "input_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[int] = mapped_column(Integer)
    field: Mapped[str] = mapped_column(String(32))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(100))
    prompt_version: Mapped[str] = mapped_column(String(32))
    input_hash: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Import(Base):
    __tablename__ = "catalog_import"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("core_user.id", ondelete="CASCADE"))
    what: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(8))
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="previewed")  # previewed|committed|discarded
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    committed_at: Mapped[datetime | None] = mapped_column(DateTime)


class ImportRow(Base):
    __tablename__ = "catalog_import_row"

    import_id: Mapped[str] = mapped_column(
        ForeignKey("catalog_import.id", ondelete="CASCADE"), primary_key=True
    )
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[str] = mapped_column(String(16))  # ready|exists|duplicate|needs_review|invalid
    data: Mapped[Any | None] = mapped_column(JSON)
    match_movie_id: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(String(500))


class Setting(Base):
    """Encrypted catalog settings (the TMDB key set from the admin page): core's ciphertext token."""

    __tablename__ = "catalog_setting"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value_enc: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# `suite secrets rotate` re-encrypts these (the row's key is the associated data: "catalog_setting:<key>").
SETTING_VALUE = register_encrypted_column("catalog_setting", "value_enc", key="key")


class TmdbCache(Base):
    __tablename__ = "catalog_tmdb_cache"

    endpoint: Mapped[str] = mapped_column(String(16), primary_key=True)
    tmdb_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    language: Mapped[str] = mapped_column(String(16), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    fetched_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    http_status: Mapped[int] = mapped_column(SmallInteger)


class Embedding(Base):
    __tablename__ = "catalog_embedding"

    movie_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_movie.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    dim: Mapped[int] = mapped_column(SmallInteger)
    text_hash: Mapped[str] = mapped_column(String(64))
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
