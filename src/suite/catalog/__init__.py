"""suite catalog: a movie catalog with a resumable real-data seeder, fast search, reviews and lists.

Only the domain spec lives here: nothing heavy is imported while building `suite --help`.
"""

from __future__ import annotations

from suite.core.plugins import DomainSpec

DOMAIN = DomainSpec(
    name="catalog",
    help="Movie catalog: seed real data offline, search, reviews, watchlists and lists.",
    cli="suite.catalog.cli:app",
    router="suite.catalog.api:router",
    pages="suite.catalog.api:pages",
    settings="suite.catalog.settings:CatalogSettings",
    models="suite.catalog.models",
    tasks="suite.catalog.tasks",
    migrations="suite.catalog.migrations",
    readiness="suite.catalog.search:readiness",
    roles=("editor",),
    extra={
        # CSV/JSON imports are bigger than the server's default body limit (catalog.import_max_bytes).
        "body_limits": {
            "/api/v1/catalog/imports": 10 * 1024 * 1024 + 64 * 1024,
            "/catalog/admin/import": 10 * 1024 * 1024 + 64 * 1024,  # the import page's upload form
        },
        # Search objects written by hand in the migration.
        "autogenerate_ignore": (
            "catalog_movie_fts*",
            "catalog_person_fts*",
            "catalog_title_trigram*",
            "catalog_*.search",
            "ix_catalog_*_search*",
            "ix_catalog_movie_sort_rating",
            "ix_catalog_movie_sort_year",
        ),
    },
)
