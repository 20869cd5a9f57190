"""Editor HTML forms (new and edit movie, optimistic locking, CSRF), the import page and the admin settings page
with the encrypted TMDB key, over a real server with a real cookie login."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Server, cli, cookie_login

API = "/api/v1/catalog"


def login(server: Server, user: str, users: dict[str, Any]) -> tuple[httpx.Client, str]:
    return cookie_login(server, user, users[user]["password"])


def movie_row(db: Path, movie_id: int) -> tuple[Any, ...]:
    with sqlite3.connect(db / "suite.db") as conn:
        return conn.execute(
            "SELECT title, overview, overview_source, version, updated_by FROM catalog_movie WHERE id = ?",
            (movie_id,),
        ).fetchone()


def form_of(html: str) -> dict[str, str]:
    """The edit form's current values, as a browser would send them back."""
    values = dict(re.findall(r'<input type="(?:text|number|date|hidden)" name="(\w+)" value="([^"]*)"', html))
    values.update(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))
    values["overview"] = re.search(r'<textarea name="overview"[^>]*>(.*?)</textarea>', html, re.S).group(1)
    values.pop("csrf_token", None)  # each test sends (or leaves out) the token itself
    return {k: v.replace("&#39;", "'").replace("&amp;", "&") for k, v in values.items()}


def test_edit_movie_form_with_version_and_csrf(
    catalog_server: Server, users: dict[str, Any], catalog_db: Path
) -> None:
    before = movie_row(catalog_db, 7)
    with catalog_server.client() as anon:
        r = anon.get("/catalog/movies/7/edit", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    alice, alice_csrf = login(catalog_server, "alice", users)
    assert alice.get("/catalog/movies/7/edit").status_code == 403
    assert "edit-movie" not in alice.get("/catalog/movies/7").text  # no Edit link for plain users
    assert (
        alice.post("/catalog/movies/7/edit", data={"title": "x", "csrf_token": alice_csrf}).status_code == 403
    )

    editor, csrf = login(catalog_server, "editor", users)
    assert 'id="edit-movie"' in editor.get("/catalog/movies/7").text
    page = editor.get("/catalog/movies/7/edit")
    assert page.status_code == 200
    form = form_of(page.text)
    assert form["version"] == str(before[3]) and form["title"] == before[0]

    # Without the CSRF token: 403, nothing written.
    r = editor.post("/catalog/movies/7/edit", data={**form, "title": "No Token"}, follow_redirects=False)
    assert r.status_code == 403 and movie_row(catalog_db, 7) == before
    # A bad value re-renders the form with the message (422), nothing written.
    r = editor.post("/catalog/movies/7/edit", data={**form, "year": "3000", "csrf_token": csrf})
    assert r.status_code == 422 and "year" in r.text and 'name="title"' in r.text
    assert movie_row(catalog_db, 7) == before
    # A real edit: title and overview, stored as the user's text; the version moves on.
    evil = "<script>alert(1)</script>"
    data = {**form, "title": f"Edited {evil}", "overview": "Written by an editor.", "csrf_token": csrf}
    r = editor.post("/catalog/movies/7/edit", data=data, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/catalog/movies/7"
    title, overview, source, version, updated_by = movie_row(catalog_db, 7)
    assert (title, overview, source) == (f"Edited {evil}", "Written by an editor.", "user")
    assert version == before[3] + 1 and updated_by == users["editor"]["id"]
    assert evil not in editor.get("/catalog/movies/7/edit").text
    # The same stale form again (version it was loaded at): 412, the form kept, nothing overwritten.
    r = editor.post("/catalog/movies/7/edit", data={**data, "title": "Stale"})
    assert r.status_code == 412 and "changed" in r.text and "Stale" in r.text
    assert movie_row(catalog_db, 7)[0] == f"Edited {evil}"
    # The API sees the edit and its provenance.
    movie = editor.get(f"{API}/movies/7").json()
    assert (
        movie["overview_provenance"]["source"] == "user"
        and movie["overview_provenance"]["generated"] is False
    )
    hits = editor.get(f"{API}/search", params={"q": "edited"}).json()["movies"]
    assert [m["id"] for m in hits] == [7]  # the search index followed the row


def test_new_movie_form(catalog_server: Server, users: dict[str, Any], catalog_db: Path) -> None:
    editor, csrf = login(catalog_server, "editor", users)
    assert editor.get("/catalog/movies/new").status_code == 200
    r = editor.post("/catalog/movies/new", data={"title": "", "csrf_token": csrf})
    assert r.status_code == 422 and "title" in r.text
    r = editor.post(
        "/catalog/movies/new",
        data={"title": "Form Film", "year": "2001", "genres": "Drama, Comedy", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303
    movie = editor.get(API + r.headers["location"].removeprefix("/catalog")).json()
    assert (movie["title"], movie["year"], movie["genres"]) == ("Form Film", 2001, ["Drama", "Comedy"])
    alice, alice_csrf = login(catalog_server, "alice", users)
    assert alice.post("/catalog/movies/new", data={"title": "x", "csrf_token": alice_csrf}).status_code == 403


def test_import_page_preview_then_commit(
    catalog_server: Server, users: dict[str, Any], catalog_db: Path
) -> None:
    csv = b"title,year,imdb_id\nImported One,1999,tt9900001\nImported One,1999,tt9900001\n=cmd(),oops,\n"
    editor, csrf = login(catalog_server, "editor", users)
    assert editor.get("/catalog/admin/import").status_code == 200
    before = movie_row(catalog_db, 1)
    r = editor.post(
        "/catalog/admin/import",
        data={"what": "movies", "csrf_token": csrf},
        files={"file": ("movies.csv", csv, "text/csv")},
    )
    assert r.status_code == 200, r.text
    import_id = re.search(r'data-import-id="([^"]+)"', r.text).group(1)
    with sqlite3.connect(catalog_db / "suite.db") as db:
        assert db.execute("SELECT count(*) FROM catalog_movie WHERE title = 'Imported One'").fetchone() == (
            0,
        )
    assert "<td>duplicate</td><td>1</td>" in r.text and "<td>ready</td><td>1</td>" in r.text
    r = editor.post(f"/catalog/admin/import/{import_id}/commit", data={"csrf_token": csrf})
    assert r.status_code == 200 and "Committed: 1 rows written." in r.text
    assert (
        editor.post(f"/catalog/admin/import/{import_id}/commit", data={"csrf_token": csrf}).status_code == 409
    )
    with sqlite3.connect(catalog_db / "suite.db") as db:
        assert db.execute("SELECT count(*) FROM catalog_movie WHERE title = 'Imported One'").fetchone() == (
            1,
        )
    assert movie_row(catalog_db, 1) == before
    # Movies need the editor role; users import their own ratings/watchlist/lists.
    alice, alice_csrf = login(catalog_server, "alice", users)
    r = alice.post(
        "/catalog/admin/import",
        data={"what": "movies", "csrf_token": alice_csrf},
        files={"file": ("movies.csv", csv, "text/csv")},
    )
    assert r.status_code == 403
    # The page takes uploads up to the import limit (not the server's 1 MB default: this one is parsed and
    # refused for its 1.2 MB cell); above the limit, 413.
    big = b"title,overview\nLong One," + b"x" * 1_200_000 + b"\n"
    r = editor.post(
        "/catalog/admin/import",
        data={"what": "movies", "csrf_token": csrf},
        files={"file": ("big.csv", big, "text/csv")},
    )
    assert r.status_code == 422 and "field larger than field limit" in r.text  # read and parsed, not 413
    huge = b"title\n" + b"y" * (11 * 1024 * 1024)
    r = editor.post(
        "/catalog/admin/import",
        data={"what": "movies", "csrf_token": csrf},
        files={"file": ("huge.csv", huge, "text/csv")},
    )
    assert r.status_code == 413
    # Without the CSRF token nothing is previewed.
    r = editor.post(
        "/catalog/admin/import", data={"what": "movies"}, files={"file": ("m.csv", csv, "text/csv")}
    )
    assert r.status_code == 403


# --- the TMDB key: stored encrypted, rotated, used ----------------------------------------------------------


def suite_stdin(*args: str, data: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_") or k == "SUITE_REQUIRE_SERVICES"}
    env.update(SUITE_DATA_DIR=str(data_dir), SUITE_ENV="test")
    return subprocess.run(
        [sys.executable, "-m", "suite", *args],
        input=data,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_tmdb_key_cli_admin_page_rotate_and_use(
    catalog_server: Server, users: dict[str, Any], catalog_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .conftest import start_server, stop_server
    from .test_tmdb import KEY, fake_tmdb

    db = catalog_db / "suite.db"

    def stored() -> str | None:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT value_enc FROM catalog_setting WHERE key = 'tmdb_api_key'").fetchone()
        return row[0] if row else None

    # No keyring yet: a clear message and exit 2, nothing stored.
    r = suite_stdin("catalog", "tmdb-key", "set", "--stdin", data=KEY + "\n", data_dir=catalog_db)
    assert r.returncode == 2 and "suite secrets init" in r.stderr and stored() is None
    assert cli("secrets", "init").returncode == 0
    r = suite_stdin(
        "catalog", "tmdb-key", "set", "--stdin", "--json", data="wrong-one\n", data_dir=catalog_db
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["source"] == "database" and "wrong-one" not in r.stdout
    first = stored()
    assert first and first.startswith("v1:k1:") and "wrong-one" not in first

    # The admin page replaces it (CSRF form), never shows it; only admins may.
    editor, _ = login(catalog_server, "editor", users)
    assert editor.get("/catalog/admin/settings").status_code == 403
    admin, csrf = login(catalog_server, "admin", users)
    r = admin.post("/catalog/admin/settings/tmdb-key", data={"value": KEY}, follow_redirects=False)
    assert r.status_code == 403 and stored() == first  # no CSRF token
    r = admin.post(
        "/catalog/admin/settings/tmdb-key", data={"value": KEY, "csrf_token": csrf}, follow_redirects=True
    )
    assert r.status_code == 200 and "Stored encrypted (key id k1" in r.text and KEY not in r.text
    assert stored() != first and KEY not in (stored() or "")
    with catalog_server.client(users["admin"]["token"]) as api:
        status = api.get(f"{API}/settings/tmdb-key").json()
    assert (
        status["source"] == "database"
        and status["stored"]["key_id"] == "k1"
        and KEY not in json.dumps(status)
    )

    # `suite secrets rotate` re-encrypts it under a new key id; it still decrypts.
    r = cli("secrets", "rotate", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reencrypted"] >= 1
    assert (stored() or "").startswith("v1:k2:")
    r = cli("secrets", "status", "--json")
    columns = {c["column"]: c for c in json.loads(r.stdout)["columns"]}
    assert columns["catalog_setting.value_enc"]["by_key"] == {"k2": 1}

    # The TMDB client uses the stored key (no key in the configuration).
    app, _ = fake_tmdb()
    tmdb = start_server(app)
    try:
        monkeypatch.setenv("SUITE_CATALOG__TMDB_BASE_URL", tmdb.url + "/3")
        monkeypatch.setenv("SUITE_CATALOG__TMDB_RPS", "50")
        from conftest import reset_caches

        reset_caches()
        r = cli("catalog", "seed", "--source", "tmdb", "--id", "1", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["counts"]["movie"]["inserted"] == 1 and KEY not in r.stdout + r.stderr
    finally:
        stop_server(tmdb)
    with sqlite3.connect(db) as conn:
        assert KEY not in json.dumps(conn.execute("SELECT params FROM catalog_seed_run").fetchall())

    # Cleared from the page: gone, and TMDB is unconfigured again.
    r = admin.post(
        "/catalog/admin/settings/tmdb-key",
        data={"action": "clear", "csrf_token": csrf},
        follow_redirects=True,
    )
    assert r.status_code == 200 and stored() is None and "Not set" in r.text
    r = cli("catalog", "seed", "--source", "tmdb", "--id", "1")
    assert r.returncode == 1 and "TMDB key not configured" in r.stderr
