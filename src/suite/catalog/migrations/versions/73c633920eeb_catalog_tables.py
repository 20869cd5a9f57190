# ruff: noqa: E501
"""catalog tables, plus the search indexes autogenerate cannot express (FTS5 / tsvector, triggers)

Revision ID: 73c633920eeb
Revises:
Create Date: 2026-11-22 01:45:24.883276
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# --- search objects, written by hand ------------------------------------------------------------------

SQLITE_FTS = [
    """CREATE VIRTUAL TABLE catalog_movie_fts USING fts5(
        title, original_title, search_people, overview,
        content='catalog_movie', content_rowid='id', tokenize='unicode61 remove_diacritics 2')""",
    """CREATE VIRTUAL TABLE catalog_title_trigram USING fts5(
        title, content='catalog_movie', content_rowid='id', tokenize='trigram')""",
    """CREATE TRIGGER catalog_movie_fts_ai AFTER INSERT ON catalog_movie BEGIN
        INSERT INTO catalog_movie_fts(rowid, title, original_title, search_people, overview)
        VALUES (new.id, new.title, new.original_title, new.search_people, new.overview);
        INSERT INTO catalog_title_trigram(rowid, title) VALUES (new.id, new.title);
    END""",
    """CREATE TRIGGER catalog_movie_fts_ad AFTER DELETE ON catalog_movie BEGIN
        INSERT INTO catalog_movie_fts(catalog_movie_fts, rowid, title, original_title, search_people, overview)
        VALUES ('delete', old.id, old.title, old.original_title, old.search_people, old.overview);
        INSERT INTO catalog_title_trigram(catalog_title_trigram, rowid, title) VALUES ('delete', old.id, old.title);
    END""",
    """CREATE TRIGGER catalog_movie_fts_au AFTER UPDATE OF title, original_title, search_people, overview
        ON catalog_movie BEGIN
        INSERT INTO catalog_movie_fts(catalog_movie_fts, rowid, title, original_title, search_people, overview)
        VALUES ('delete', old.id, old.title, old.original_title, old.search_people, old.overview);
        INSERT INTO catalog_movie_fts(rowid, title, original_title, search_people, overview)
        VALUES (new.id, new.title, new.original_title, new.search_people, new.overview);
        INSERT INTO catalog_title_trigram(catalog_title_trigram, rowid, title) VALUES ('delete', old.id, old.title);
        INSERT INTO catalog_title_trigram(rowid, title) VALUES (new.id, new.title);
    END""",
    """CREATE VIRTUAL TABLE catalog_person_fts USING fts5(
        name, also_known_as, content='catalog_person', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2')""",
    """CREATE TRIGGER catalog_person_fts_ai AFTER INSERT ON catalog_person BEGIN
        INSERT INTO catalog_person_fts(rowid, name, also_known_as) VALUES (new.id, new.name, new.also_known_as);
    END""",
    """CREATE TRIGGER catalog_person_fts_ad AFTER DELETE ON catalog_person BEGIN
        INSERT INTO catalog_person_fts(catalog_person_fts, rowid, name, also_known_as)
        VALUES ('delete', old.id, old.name, old.also_known_as);
    END""",
    """CREATE TRIGGER catalog_person_fts_au AFTER UPDATE OF name, also_known_as ON catalog_person BEGIN
        INSERT INTO catalog_person_fts(catalog_person_fts, rowid, name, also_known_as)
        VALUES ('delete', old.id, old.name, old.also_known_as);
        INSERT INTO catalog_person_fts(rowid, name, also_known_as) VALUES (new.id, new.name, new.also_known_as);
    END""",
]
SQLITE_FTS_DROP = [
    "DROP TRIGGER IF EXISTS catalog_movie_fts_ai",
    "DROP TRIGGER IF EXISTS catalog_movie_fts_ad",
    "DROP TRIGGER IF EXISTS catalog_movie_fts_au",
    "DROP TRIGGER IF EXISTS catalog_person_fts_ai",
    "DROP TRIGGER IF EXISTS catalog_person_fts_ad",
    "DROP TRIGGER IF EXISTS catalog_person_fts_au",
    "DROP TABLE IF EXISTS catalog_movie_fts",
    "DROP TABLE IF EXISTS catalog_title_trigram",
    "DROP TABLE IF EXISTS catalog_person_fts",
]

PG_SEARCH = [
    "CREATE EXTENSION IF NOT EXISTS unaccent",
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    # unaccent() is STABLE; an IMMUTABLE wrapper naming its dictionary can be used in generated columns.
    """CREATE OR REPLACE FUNCTION catalog_unaccent(text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
        AS $$ SELECT public.unaccent('public.unaccent'::regdictionary, $1) $$""",
    """ALTER TABLE catalog_movie ADD COLUMN search tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('simple', catalog_unaccent(coalesce(title, ''))), 'A') ||
        setweight(to_tsvector('simple', catalog_unaccent(coalesce(original_title, ''))), 'B') ||
        setweight(to_tsvector('simple', catalog_unaccent(coalesce(search_people, ''))), 'C') ||
        setweight(to_tsvector('simple', catalog_unaccent(coalesce(overview, ''))), 'D')) STORED""",
    "CREATE INDEX ix_catalog_movie_search ON catalog_movie USING gin (search)",
    """CREATE INDEX ix_catalog_movie_title_trgm ON catalog_movie
        USING gin (catalog_unaccent(lower(title)) gin_trgm_ops)""",
    """ALTER TABLE catalog_person ADD COLUMN search tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('simple', catalog_unaccent(coalesce(name, ''))), 'A') ||
        setweight(to_tsvector('simple', catalog_unaccent(coalesce(also_known_as, ''))), 'B')) STORED""",
    "CREATE INDEX ix_catalog_person_search ON catalog_person USING gin (search)",
]
PG_SEARCH_DROP = [
    "DROP INDEX IF EXISTS ix_catalog_movie_title_trgm",
    "DROP INDEX IF EXISTS ix_catalog_movie_search",
    "DROP INDEX IF EXISTS ix_catalog_person_search",
    "ALTER TABLE catalog_movie DROP COLUMN IF EXISTS search",
    "ALTER TABLE catalog_person DROP COLUMN IF EXISTS search",
]


def create_search_objects() -> None:
    dialect = op.get_bind().dialect.name
    statements = SQLITE_FTS if dialect == "sqlite" else PG_SEARCH if dialect == "postgresql" else []
    for statement in statements:
        op.execute(statement)


def drop_search_objects() -> None:
    dialect = op.get_bind().dialect.name
    statements = SQLITE_FTS_DROP if dialect == "sqlite" else PG_SEARCH_DROP if dialect == "postgresql" else []
    for statement in statements:
        op.execute(statement)
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS catalog_unaccent(text)")


revision: str = "73c633920eeb"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("catalog",)
depends_on: str | Sequence[str] | None = "8da487ad0a90"


def upgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    op.create_table(
        "catalog_country",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("iso_3166_1", sa.String(length=8), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_country")),
        sa.UniqueConstraint("name", name=op.f("uq_catalog_country_name")),
    )
    op.create_table(
        "catalog_external_id",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("entity", sa.String(length=8), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_external_id")),
        sa.UniqueConstraint(
            "entity", "source", "value", name=op.f("uq_catalog_external_id_entity_source_value")
        ),
    )
    with op.batch_alter_table("catalog_external_id", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_external_id_entity", ["entity", "entity_id"], unique=False)

    op.create_table(
        "catalog_generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("entity", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("prompt_version", sa.String(length=32), nullable=False),
        sa.Column("input_hash", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_generation")),
        sa.UniqueConstraint(
            "entity",
            "entity_id",
            "field",
            "prompt_version",
            "model",
            "input_hash",
            name=op.f("uq_catalog_generation_entity_entity_id_field_prompt_version_model_input_hash"),
        ),
    )
    op.create_table(
        "catalog_genre",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("tmdb_id", sa.Integer(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("description_source", sa.String(length=16), nullable=True),
        sa.Column("description_model", sa.String(length=100), nullable=True),
        sa.Column("description_prompt_version", sa.String(length=32), nullable=True),
        sa.Column("description_updated_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_genre")),
        sa.UniqueConstraint("name", name=op.f("uq_catalog_genre_name")),
        sa.UniqueConstraint("tmdb_id", name=op.f("uq_catalog_genre_tmdb_id")),
    )
    op.create_table(
        "catalog_job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("department", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("description_source", sa.String(length=16), nullable=True),
        sa.Column("description_model", sa.String(length=100), nullable=True),
        sa.Column("description_prompt_version", sa.String(length=32), nullable=True),
        sa.Column("description_updated_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_job")),
        sa.UniqueConstraint("department", "name", name=op.f("uq_catalog_job_department_name")),
    )
    op.create_table(
        "catalog_language",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("iso_639_1", sa.String(length=8), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_language")),
        sa.UniqueConstraint("name", name=op.f("uq_catalog_language_name")),
    )
    op.create_table(
        "catalog_seed_lock",
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("acquired_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_catalog_seed_lock")),
    )
    op.create_table(
        "catalog_seed_run",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("source_version", sa.String(length=64), nullable=True),
        sa.Column("dataset_sha256", sa.String(length=64), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_key", sa.String(length=200), nullable=True),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.Column("quarantined", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("lock_owner", sa.String(length=100), nullable=True),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_seed_run")),
    )
    with op.batch_alter_table("catalog_seed_run", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_seed_run_status", ["status", "started_at"], unique=False)

    op.create_table(
        "catalog_setting",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value_enc", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_catalog_setting")),
    )
    op.create_table(
        "catalog_tmdb_cache",
        sa.Column("endpoint", sa.String(length=16), nullable=False),
        sa.Column("tmdb_id", sa.Integer(), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("fetched_at", sa.DateTime(), nullable=False),
        sa.Column("http_status", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "tmdb_id", "language", name=op.f("pk_catalog_tmdb_cache")),
    )
    op.create_table(
        "catalog_import",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("what", sa.String(length=16), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("committed_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["core_user.id"],
            name=op.f("fk_catalog_import_owner_id_core_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_import")),
    )
    op.create_table(
        "catalog_list",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=True),
        sa.Column("visibility", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["core_user.id"],
            name=op.f("fk_catalog_list_owner_id_core_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_list")),
        sa.UniqueConstraint("owner_id", "name", name=op.f("uq_catalog_list_owner_id_name")),
    )
    op.create_table(
        "catalog_movie",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seed_key", sa.String(length=64), nullable=True),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("original_title", sa.String(length=300), nullable=True),
        sa.Column("sort_title", sa.String(length=300), nullable=False),
        sa.Column("year", sa.SmallInteger(), nullable=True),
        sa.Column("release_date", sa.Date(), nullable=True),
        sa.Column("release_date_precision", sa.String(length=5), nullable=True),
        sa.Column("runtime_min", sa.SmallInteger(), nullable=True),
        sa.Column("overview", sa.Text(), nullable=True),
        sa.Column("overview_source", sa.String(length=16), nullable=True),
        sa.Column("overview_model", sa.String(length=100), nullable=True),
        sa.Column("overview_prompt_version", sa.String(length=32), nullable=True),
        sa.Column("overview_updated_at", sa.DateTime(), nullable=True),
        sa.Column("tagline", sa.String(length=500), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.Column("mpaa_rating", sa.String(length=16), nullable=True),
        sa.Column("budget_usd", sa.BigInteger(), nullable=True),
        sa.Column("revenue_usd", sa.BigInteger(), nullable=True),
        sa.Column("box_office_usd", sa.BigInteger(), nullable=True),
        sa.Column("critic_meter", sa.SmallInteger(), nullable=True),
        sa.Column("critic_rating", sa.Float(), nullable=True),
        sa.Column("critic_reviews", sa.Integer(), nullable=True),
        sa.Column("metacritic", sa.SmallInteger(), nullable=True),
        sa.Column("oscars", sa.SmallInteger(), nullable=True),
        sa.Column("poster_path", sa.String(length=300), nullable=True),
        sa.Column("poster_file", sa.String(length=300), nullable=True),
        sa.Column("search_people", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("updated_by", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "critic_meter IS NULL OR (critic_meter >= 0 AND critic_meter <= 100)",
            name=op.f("ck_catalog_movie_meter"),
        ),
        sa.CheckConstraint(
            "runtime_min IS NULL OR (runtime_min >= 1 AND runtime_min <= 1000)",
            name=op.f("ck_catalog_movie_runtime"),
        ),
        sa.CheckConstraint(
            "year IS NULL OR (year >= 1870 AND year <= 2100)", name=op.f("ck_catalog_movie_year")
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["core_user.id"],
            name=op.f("fk_catalog_movie_created_by_core_user"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["updated_by"],
            ["core_user.id"],
            name=op.f("fk_catalog_movie_updated_by_core_user"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_movie")),
        sa.UniqueConstraint("seed_key", name=op.f("uq_catalog_movie_seed_key")),
    )
    with op.batch_alter_table("catalog_movie", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_movie_created_at", ["created_at", "id"], unique=False)
        batch_op.create_index("ix_catalog_movie_sort_title", ["sort_title", "id"], unique=False)
        batch_op.create_index("ix_catalog_movie_year", ["year", "id"], unique=False)

    op.create_table(
        "catalog_person",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seed_key", sa.String(length=200), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("sort_name", sa.String(length=200), nullable=False),
        sa.Column("name_key", sa.String(length=200), nullable=False),
        sa.Column("also_known_as", sa.Text(), nullable=True),
        sa.Column("birth_date", sa.Date(), nullable=True),
        sa.Column("death_date", sa.Date(), nullable=True),
        sa.Column("birth_place", sa.String(length=300), nullable=True),
        sa.Column("biography", sa.Text(), nullable=True),
        sa.Column("biography_source", sa.String(length=16), nullable=True),
        sa.Column("biography_model", sa.String(length=100), nullable=True),
        sa.Column("biography_prompt_version", sa.String(length=32), nullable=True),
        sa.Column("biography_updated_at", sa.DateTime(), nullable=True),
        sa.Column("profile_path", sa.String(length=300), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("updated_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["core_user.id"],
            name=op.f("fk_catalog_person_created_by_core_user"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["updated_by"],
            ["core_user.id"],
            name=op.f("fk_catalog_person_updated_by_core_user"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_person")),
        sa.UniqueConstraint("seed_key", name=op.f("uq_catalog_person_seed_key")),
    )
    with op.batch_alter_table("catalog_person", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_catalog_person_name_key"), ["name_key"], unique=False)
        batch_op.create_index("ix_catalog_person_sort_name", ["sort_name", "id"], unique=False)

    op.create_table(
        "catalog_seed_issue",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("entity", sa.String(length=16), nullable=False),
        sa.Column("source_key", sa.String(length=200), nullable=True),
        sa.Column("severity", sa.String(length=8), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("message", sa.String(length=1000), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["catalog_seed_run.id"],
            name=op.f("fk_catalog_seed_issue_run_id_catalog_seed_run"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_seed_issue")),
    )
    with op.batch_alter_table("catalog_seed_issue", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_seed_issue_run", ["run_id", "id"], unique=False)

    op.create_table(
        "catalog_credit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("movie_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("character", sa.String(length=300), nullable=True),
        sa.Column("cast_order", sa.SmallInteger(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("credited", sa.Boolean(), nullable=False),
        sa.Column("role_key", sa.String(length=320), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["catalog_job.id"],
            name=op.f("fk_catalog_credit_job_id_catalog_job"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["movie_id"],
            ["catalog_movie.id"],
            name=op.f("fk_catalog_credit_movie_id_catalog_movie"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["catalog_person.id"],
            name=op.f("fk_catalog_credit_person_id_catalog_person"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_credit")),
        sa.UniqueConstraint(
            "movie_id", "person_id", "role_key", name=op.f("uq_catalog_credit_movie_id_person_id_role_key")
        ),
    )
    with op.batch_alter_table("catalog_credit", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_credit_person", ["person_id", "movie_id"], unique=False)

    op.create_table(
        "catalog_embedding",
        sa.Column("movie_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=100), nullable=False),
        sa.Column("dim", sa.SmallInteger(), nullable=False),
        sa.Column("text_hash", sa.String(length=64), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["movie_id"],
            ["catalog_movie.id"],
            name=op.f("fk_catalog_embedding_movie_id_catalog_movie"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("movie_id", "model_id", name=op.f("pk_catalog_embedding")),
    )
    op.create_table(
        "catalog_external_rating",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_user", sa.String(length=64), nullable=False),
        sa.Column("movie_id", sa.Integer(), nullable=False),
        sa.Column("rating", sa.Float(), nullable=False),
        sa.Column("rated_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["movie_id"],
            ["catalog_movie.id"],
            name=op.f("fk_catalog_external_rating_movie_id_catalog_movie"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_external_rating")),
        sa.UniqueConstraint(
            "source",
            "source_user",
            "movie_id",
            name=op.f("uq_catalog_external_rating_source_source_user_movie_id"),
        ),
    )
    with op.batch_alter_table("catalog_external_rating", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_external_rating_movie", ["movie_id"], unique=False)

    op.create_table(
        "catalog_import_row",
        sa.Column("import_id", sa.String(length=36), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("match_movie_id", sa.Integer(), nullable=True),
        sa.Column("message", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["import_id"],
            ["catalog_import.id"],
            name=op.f("fk_catalog_import_row_import_id_catalog_import"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("import_id", "line_no", name=op.f("pk_catalog_import_row")),
    )
    op.create_table(
        "catalog_list_item",
        sa.Column("list_id", sa.Integer(), nullable=False),
        sa.Column("movie_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["list_id"],
            ["catalog_list.id"],
            name=op.f("fk_catalog_list_item_list_id_catalog_list"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["movie_id"],
            ["catalog_movie.id"],
            name=op.f("fk_catalog_list_item_movie_id_catalog_movie"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("list_id", "movie_id", name=op.f("pk_catalog_list_item")),
    )
    op.create_table(
        "catalog_movie_country",
        sa.Column("movie_id", sa.Integer(), nullable=False),
        sa.Column("country_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["country_id"],
            ["catalog_country.id"],
            name=op.f("fk_catalog_movie_country_country_id_catalog_country"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["movie_id"],
            ["catalog_movie.id"],
            name=op.f("fk_catalog_movie_country_movie_id_catalog_movie"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("movie_id", "country_id", name=op.f("pk_catalog_movie_country")),
    )
    op.create_table(
        "catalog_movie_genre",
        sa.Column("movie_id", sa.Integer(), nullable=False),
        sa.Column("genre_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("is_primary", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["genre_id"],
            ["catalog_genre.id"],
            name=op.f("fk_catalog_movie_genre_genre_id_catalog_genre"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["movie_id"],
            ["catalog_movie.id"],
            name=op.f("fk_catalog_movie_genre_movie_id_catalog_movie"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("movie_id", "genre_id", name=op.f("pk_catalog_movie_genre")),
    )
    with op.batch_alter_table("catalog_movie_genre", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_movie_genre_genre", ["genre_id", "movie_id"], unique=False)

    op.create_table(
        "catalog_movie_language",
        sa.Column("movie_id", sa.Integer(), nullable=False),
        sa.Column("language_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["language_id"],
            ["catalog_language.id"],
            name=op.f("fk_catalog_movie_language_language_id_catalog_language"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["movie_id"],
            ["catalog_movie.id"],
            name=op.f("fk_catalog_movie_language_movie_id_catalog_movie"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("movie_id", "language_id", name=op.f("pk_catalog_movie_language")),
    )
    op.create_table(
        "catalog_movie_stat",
        sa.Column("movie_id", sa.Integer(), nullable=False),
        sa.Column("review_count", sa.Integer(), nullable=False),
        sa.Column("score_sum", sa.Integer(), nullable=False),
        sa.Column("recommend_count", sa.Integer(), nullable=False),
        sa.Column("hist_0", sa.Integer(), nullable=False),
        sa.Column("hist_1", sa.Integer(), nullable=False),
        sa.Column("hist_2", sa.Integer(), nullable=False),
        sa.Column("hist_3", sa.Integer(), nullable=False),
        sa.Column("hist_4", sa.Integer(), nullable=False),
        sa.Column("hist_5", sa.Integer(), nullable=False),
        sa.Column("hist_6", sa.Integer(), nullable=False),
        sa.Column("hist_7", sa.Integer(), nullable=False),
        sa.Column("hist_8", sa.Integer(), nullable=False),
        sa.Column("hist_9", sa.Integer(), nullable=False),
        sa.Column("hist_10", sa.Integer(), nullable=False),
        sa.Column("ext_count", sa.Integer(), nullable=False),
        sa.Column("ext_sum", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["movie_id"],
            ["catalog_movie.id"],
            name=op.f("fk_catalog_movie_stat_movie_id_catalog_movie"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("movie_id", name=op.f("pk_catalog_movie_stat")),
    )
    op.create_table(
        "catalog_review",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("movie_id", sa.Integer(), nullable=False),
        sa.Column("score", sa.SmallInteger(), nullable=False),
        sa.Column("comment", sa.String(length=4096), nullable=True),
        sa.Column("recommend", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("score >= 0 AND score <= 10", name=op.f("ck_catalog_review_score")),
        sa.ForeignKeyConstraint(
            ["movie_id"],
            ["catalog_movie.id"],
            name=op.f("fk_catalog_review_movie_id_catalog_movie"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["core_user.id"],
            name=op.f("fk_catalog_review_user_id_core_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_review")),
        sa.UniqueConstraint("user_id", "movie_id", name=op.f("uq_catalog_review_user_id_movie_id")),
    )
    with op.batch_alter_table("catalog_review", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_review_movie", ["movie_id", "id"], unique=False)

    op.create_table(
        "catalog_watch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("movie_id", sa.Integer(), nullable=False),
        sa.Column("watched_on", sa.Date(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["movie_id"],
            ["catalog_movie.id"],
            name=op.f("fk_catalog_watch_movie_id_catalog_movie"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["core_user.id"], name=op.f("fk_catalog_watch_user_id_core_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_watch")),
    )
    with op.batch_alter_table("catalog_watch", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_watch_user", ["user_id", "watched_on"], unique=False)

    op.create_table(
        "catalog_watchlist_item",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("movie_id", sa.Integer(), nullable=False),
        sa.Column("added_at", sa.DateTime(), nullable=False),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["movie_id"],
            ["catalog_movie.id"],
            name=op.f("fk_catalog_watchlist_item_movie_id_catalog_movie"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["core_user.id"],
            name=op.f("fk_catalog_watchlist_item_user_id_core_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "movie_id", name=op.f("pk_catalog_watchlist_item")),
    )
    # ### end Alembic commands ###
    create_search_objects()


def downgrade() -> None:
    drop_search_objects()
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_table("catalog_watchlist_item")
    with op.batch_alter_table("catalog_watch", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_watch_user")

    op.drop_table("catalog_watch")
    with op.batch_alter_table("catalog_review", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_review_movie")

    op.drop_table("catalog_review")
    op.drop_table("catalog_movie_stat")
    op.drop_table("catalog_movie_language")
    with op.batch_alter_table("catalog_movie_genre", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_movie_genre_genre")

    op.drop_table("catalog_movie_genre")
    op.drop_table("catalog_movie_country")
    op.drop_table("catalog_list_item")
    op.drop_table("catalog_import_row")
    with op.batch_alter_table("catalog_external_rating", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_external_rating_movie")

    op.drop_table("catalog_external_rating")
    op.drop_table("catalog_embedding")
    with op.batch_alter_table("catalog_credit", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_credit_person")

    op.drop_table("catalog_credit")
    with op.batch_alter_table("catalog_seed_issue", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_seed_issue_run")

    op.drop_table("catalog_seed_issue")
    with op.batch_alter_table("catalog_person", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_person_sort_name")
        batch_op.drop_index(batch_op.f("ix_catalog_person_name_key"))

    op.drop_table("catalog_person")
    with op.batch_alter_table("catalog_movie", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_movie_year")
        batch_op.drop_index("ix_catalog_movie_sort_title")
        batch_op.drop_index("ix_catalog_movie_created_at")

    op.drop_table("catalog_movie")
    op.drop_table("catalog_list")
    op.drop_table("catalog_import")
    op.drop_table("catalog_tmdb_cache")
    op.drop_table("catalog_setting")
    with op.batch_alter_table("catalog_seed_run", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_seed_run_status")

    op.drop_table("catalog_seed_run")
    op.drop_table("catalog_seed_lock")
    op.drop_table("catalog_language")
    op.drop_table("catalog_job")
    op.drop_table("catalog_genre")
    op.drop_table("catalog_generation")
    with op.batch_alter_table("catalog_external_id", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_external_id_entity")

    op.drop_table("catalog_external_id")
    op.drop_table("catalog_country")
    # ### end Alembic commands ###
