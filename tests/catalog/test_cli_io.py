"""The CLI: light help, search/show/stats, import preview and commit, export with formula-safe cells."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import cli, db_digest


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\nfrom suite.cli import main\n"
        "try:\n    main(['catalog', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('sqlalchemy', 'fastapi', 'torch', 'sentence_transformers', 'httpx') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert "seed-status" in out.stdout and "enrich" in out.stdout


def test_search_show_stats(catalog_db: Path) -> None:
    found = json.loads(cli("catalog", "search", "the", "--json").stdout)
    assert found["movies"]
    movie_id = found["movies"][0]["id"]
    shown = json.loads(cli("catalog", "show", "movie", str(movie_id), "--json").stdout)
    assert shown["id"] == movie_id and shown["credits"]
    stats = json.loads(cli("catalog", "stats", "--json").stdout)
    assert stats["movies"] == 300 and stats["pct_with_overview"] > 90
    assert cli("catalog", "search", "x" * 300).returncode == 2
    assert cli("catalog", "show", "movie", "999999").returncode == 1


def test_import_wrong_header_leaves_db_unchanged(catalog_db: Path, tmp_path: Path) -> None:
    digest = db_digest(catalog_db / "suite.db")
    bad = tmp_path / "movies.csv"
    bad.write_text("name,released\nFoo,1999\n", encoding="utf-8")
    result = cli("catalog", "import", str(bad), "--what", "movies", "--commit")
    assert result.returncode == 1
    assert "wrong header for movies" in result.stderr
    latin = tmp_path / "latin.csv"
    latin.write_bytes("title,year\nCaf\u00e9,1999\n".encode("latin-1"))
    assert cli("catalog", "import", str(latin), "--what", "movies", "--commit").returncode == 1
    assert db_digest(catalog_db / "suite.db") == digest


def test_import_preview_commit_twice_and_export(
    catalog_db: Path, tmp_path: Path, users: dict[str, Any]
) -> None:
    existing = json.loads(cli("catalog", "show", "movie", "1", "--json").stdout)
    rows = [
        "title,year,imdb_id",
        "Brand New Film,2020,",
        "Brand New Film,2020,",
        f"{existing['title']},{existing['year']},",
        "Bad Year,19xx,",
        '=HYPERLINK("http://evil"),2021,',
    ]
    path = tmp_path / "movies.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    preview = json.loads(cli("catalog", "import", str(path), "--what", "movies", "--json").stdout)
    assert preview["counts"] == {"ready": 2, "exists": 1, "duplicate": 1, "needs_review": 0, "invalid": 1}
    assert preview["status"] == "previewed"
    from suite.catalog import io
    from suite.core.db import session_scope
    from suite.core.errors import Conflict

    with session_scope() as s:
        done = io.commit_import(s, import_id=preview["id"], owner_id=None, is_admin=True)
    assert done["counts"]["written"] == 2
    with session_scope() as s:
        try:
            io.commit_import(s, import_id=preview["id"], owner_id=None, is_admin=True)
            raise AssertionError("a second commit must be refused")
        except Conflict:
            pass
    out = tmp_path / "export.csv"
    assert (
        cli("catalog", "export", "--what", "movies", "--format", "csv", "--output", str(out)).returncode == 0
    )
    text = out.read_text(encoding="utf-8")
    assert "'=HYPERLINK" in text and "\n=HYPERLINK" not in text
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("movie_id,score,comment\n1,8,great\n2,11,too high\n999999,5,\n", encoding="utf-8")
    res = json.loads(
        cli(
            "catalog", "import", str(ratings), "--what", "ratings", "--user", "alice", "--commit", "--json"
        ).stdout
    )
    assert (
        res["counts"]["ready"] == 1 and res["counts"]["invalid"] == 1 and res["counts"]["needs_review"] == 1
    )
    exported = json.loads(subprocess_free_export("ratings", "alice"))
    assert [r["score"] for r in exported] == [8]


def subprocess_free_export(what: str, user: str) -> str:
    return cli("catalog", "export", "--what", what, "--format", "json", "--user", user).stdout
