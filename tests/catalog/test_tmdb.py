"""The TMDB client and `--source tmdb` against a TMDB-shaped server on 127.0.0.1 (hand-written fictional data)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from .conftest import Server, cli, start_server, stop_server

KEY = "v3-secret-key-1234567890"


def fake_tmdb() -> tuple[FastAPI, dict[str, Any]]:
    app = FastAPI()
    state: dict[str, Any] = {"calls": {}, "rate_limited": 0}

    def movie(ident: int) -> dict[str, Any]:
        return {
            "id": ident,
            "title": f"Fictional {ident}",
            "original_title": f"Fictif {ident}",
            "release_date": "",
            "runtime": 0,
            "overview": "",
            "imdb_id": f"tt77{ident:05d}",
            "genres": [{"id": 878, "name": "Science Fiction"}],
            "credits": {
                "cast": [
                    {"id": 5000 + ident, "name": "Ana Actor", "character": "Pilot / Navigator", "order": 0}
                ],
                "crew": [{"id": 6000, "name": "Dee Rector", "department": "Directing", "job": "Director"}],
            },
        }

    @app.get("/3/movie/{ident}")
    async def get_movie(ident: int, request: Request) -> Any:
        state["calls"][ident] = state["calls"].get(ident, 0) + 1
        if (
            request.query_params.get("api_key") != KEY
            and request.headers.get("authorization") != f"Bearer {KEY}"
        ):
            return JSONResponse(
                {"success": False, "status_code": 7, "status_message": "Invalid API key"}, 401
            )
        if ident == 429 and state["calls"][ident] <= 2:
            return JSONResponse(
                {"status_code": 25, "status_message": "rate limited"}, 429, headers={"Retry-After": "1"}
            )
        if ident == 404:
            return JSONResponse({"success": False, "status_code": 34, "status_message": "not found"}, 404)
        if ident == 500:
            return JSONResponse({"status_message": "boom"}, 500)
        if ident == 408:
            import asyncio

            await asyncio.sleep(3)
        if ident == 999:
            return PlainTextResponse('{"id": 999, "title": ', media_type="application/json")
        return movie(ident)

    return app, state


@pytest.fixture
def tmdb(suite_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, dict[str, Any]]]:
    app, state = fake_tmdb()
    srv = start_server(app)
    monkeypatch.setenv("SUITE_CATALOG__TMDB_BASE_URL", srv.url + "/3")
    monkeypatch.setenv("SUITE_CATALOG__TMDB_API_KEY", KEY)
    monkeypatch.setenv("SUITE_CATALOG__TMDB_TIMEOUT_S", "1")
    monkeypatch.setenv("SUITE_CATALOG__TMDB_RETRIES", "2")
    monkeypatch.setenv("SUITE_CATALOG__TMDB_RPS", "50")
    from conftest import reset_caches

    reset_caches()
    yield srv, state
    stop_server(srv)


def test_tmdb_faults_and_key_hygiene(
    tmdb: tuple[Server, dict[str, Any]], suite_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, state = tmdb
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    result = cli(
        "catalog",
        "seed",
        "--source",
        "tmdb",
        *[f"--id={i}" for i in (1, 2, 404, 429, 500, 408, 999)],
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"]["movie"]["inserted"] == 3  # 1, 2 and 429 after two Retry-After waits
    assert summary["issues"] == {"tmdb_not_found": 1, "tmdb_unavailable": 2, "tmdb_bad_response": 1}
    assert state["calls"][429] == 3 and state["calls"][500] == 3 and state["calls"][404] == 1
    assert time.monotonic() - started >= 2  # honoured Retry-After twice
    everything = result.stdout + result.stderr + caplog.text + json.dumps(summary["params"])
    assert KEY not in everything
    import sqlite3

    with sqlite3.connect(suite_env / "suite.db") as db:
        assert KEY not in json.dumps(db.execute("SELECT params FROM catalog_seed_run").fetchall())
        assert KEY not in json.dumps(db.execute("SELECT message, raw FROM catalog_seed_issue").fetchall())
        row = db.execute(
            "SELECT title, year, runtime_min, overview_source FROM catalog_movie WHERE seed_key='tmdb:1'"
        ).fetchone()
    assert row == (
        "Fictional 1",
        None,
        None,
        "template",
    )  # release_date "" and runtime 0 are empty, not errors
    assert (suite_env / "catalog" / "tmdb" / "movie" / "1.en-US.json").is_file()


def test_tmdb_401_aborts_with_key_redacted(
    tmdb: tuple[Server, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUITE_CATALOG__TMDB_API_KEY", "wrong-key-abcdef")
    from conftest import reset_caches

    reset_caches()
    result = cli("catalog", "seed", "--source", "tmdb", "--id", "1")
    assert result.returncode == 1
    assert "TMDB refused the key" in result.stderr and "wrong-key-abcdef" not in result.stderr


def test_tmdb_without_key(suite_env: Path) -> None:
    result = cli("catalog", "seed", "--source", "tmdb", "--id", "1")
    assert result.returncode == 1
    assert (
        "TMDB key not configured: set SUITE_CATALOG__TMDB_API_KEY or use --source wikidata" in result.stderr
    )


def test_httpx_log_lines_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    from suite.catalog.sources.tmdb import _redact

    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        "HTTP Request: %s %s",
        ("GET", f"http://x/3/movie/1?api_key={KEY}"),
        None,
    )
    _redact.filter(record)
    assert KEY not in record.getMessage()


_ = threading
