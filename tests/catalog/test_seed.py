"""The seeder: real Wikidata file, TMDB-shaped dumps, quarantine, duplicates, checksums, locks, kill and resume."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from .conftest import cli, db_digest, suite_cmd, table_counts


def movie_doc(ident: int, title: str = "Film", **extra: Any) -> dict[str, Any]:
    doc = {
        "id": ident,
        "title": title,
        "original_title": title,
        "release_date": "1999-05-04",
        "runtime": 100,
        "overview": f"About {title}.",
        "genres": [{"id": 18, "name": "Drama"}],
        "spoken_languages": [{"english_name": "English", "iso_639_1": "en"}],
        "production_countries": [{"iso_3166_1": "FR", "name": "France"}],
        "imdb_id": f"tt{9000000 + ident}",
        "credits": {
            "cast": [
                {"id": 100 + ident, "name": f"Actor {ident}", "character": "A / B", "order": 0},
                {"id": 7, "name": "Shared Star", "character": "(uncredited)", "order": 1},
            ],
            "crew": [{"id": 9, "name": "Dana Director", "department": "Directing", "job": "Director"}],
        },
    }
    doc.update(extra)
    return doc


def write_dump(folder: Path, docs: list[Any], name: str = "movies.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(json.dumps(d) for d in docs) + "\n", encoding="utf-8")
    return folder


def seed(**kwargs: Any) -> dict[str, Any]:
    from suite.catalog.seed import SeedOptions
    from suite.catalog.seed import seed as run
    from suite.core.db import prepare_database

    prepare_database()
    resume = kwargs.pop("resume", None)
    return run(SeedOptions(**kwargs), resume=resume)


def counts(data_dir: Path) -> dict[str, int]:
    found = table_counts(data_dir / "suite.db")
    found.pop("catalog_seed_run", None)
    return found


# --- Wikidata ------------------------------------------------------------------------------------------


def test_wikidata_seed_then_rerun_adds_nothing(suite_env: Path, need_wikidata: None) -> None:
    first = seed(source="wikidata", limit=150, batch=50)
    assert first["status"] == "succeeded"
    assert first["counts"]["movie"]["inserted"] == 150
    before = counts(suite_env)
    from sqlalchemy import text

    from suite.core.db import session_scope

    with session_scope() as s:
        stamp = s.execute(text("SELECT max(updated_at), sum(version) FROM catalog_movie")).one()
    second = seed(source="wikidata", limit=150, batch=50)
    assert second["counts"]["movie"] == {"unchanged": 150}
    assert all("inserted" not in v for k, v in second["counts"].items() if isinstance(v, dict)), second[
        "counts"
    ]
    assert counts(suite_env) == before
    with session_scope() as s:
        assert s.execute(text("SELECT max(updated_at), sum(version) FROM catalog_movie")).one() == stamp


def test_name_splitting_keeps_suffixes(suite_env: Path, need_wikidata: None) -> None:
    from suite.catalog.sources.base import split_names

    assert split_names("A B, James W. Smith, Jr., C D") == ["A B", "James W. Smith, Jr.", "C D"]
    assert split_names("X, Y, Sr., Z, III") == ["X", "Y, Sr.", "Z, III"]
    seed(source="wikidata", limit=300, batch=300)
    db = sqlite3.connect(suite_env / "suite.db")
    bogus = db.execute(
        "SELECT count(*) FROM catalog_person WHERE name IN ('Jr.', 'Sr.', 'III', 'Jr', '')"
    ).fetchone()
    assert bogus == (0,)
    assert db.execute("SELECT count(*) FROM catalog_person WHERE name LIKE '%, Jr.'").fetchone()[0] >= 1


def test_checksum_mismatch_refused_db_unchanged(suite_env: Path, need_wikidata: None, tmp_path: Path) -> None:
    from suite.catalog.datasets import WIKIDATA_FILMS
    from suite.core import packaged

    seed(source="tmdb-dump", path=str(write_dump(tmp_path / "d", [movie_doc(1)])))
    digest = db_digest(suite_env / "suite.db")
    real = packaged.locate(WIKIDATA_FILMS.name)
    bad = tmp_path / "movies.db"
    shutil.copy(real, bad)
    with bad.open("r+b") as fh:
        fh.seek(5000)
        fh.write(b"tampered")
    result = cli("catalog", "seed", "--source", "wikidata", str(bad))
    assert result.returncode == 1
    assert "does not match the pinned Wikidata film set" in result.stderr
    assert db_digest(suite_env / "suite.db") == digest


def test_old_cc_by_nc_file_refused_with_licence_message(
    suite_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from suite.catalog import datasets

    fake = tmp_path / "movies.db"
    fake.write_bytes(b"the old OMDb-derived file")
    monkeypatch.setitem(
        datasets.REFUSED_SHA256, hashlib.sha256(fake.read_bytes()).hexdigest(), "CC-BY-NC-4.0 refused"
    )
    with pytest.raises(datasets.DatasetError, match=r"CC-BY-NC-4\.0"):
        datasets.wikidata_path(fake)
    real = datasets.REFUSED_SHA256
    assert "f3233f214298e92d374c9df019a0fd506c855c76bff11c9411beaaeb02361ea3" in real
    assert "CC-BY-NC-4.0" in real["f3233f214298e92d374c9df019a0fd506c855c76bff11c9411beaaeb02361ea3"]


def test_missing_dataset_names_install_command(suite_env: Path, tmp_path: Path) -> None:
    result = cli("catalog", "seed", "--source", "wikidata", str(tmp_path / "nope.db"))
    assert result.returncode == 1
    assert "no such file" in result.stderr
    assert not (suite_env / "suite.db").exists()


# --- dumps: bad files, bad rows, duplicates ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", b'{"id": 1, "title": ', "invalid JSON"),
        ("bad.jsonl", b'{"id": 1, "title": "ok"}\n{"id": 2,\n', "invalid JSON"),
        ("bad.json.gz", gzip.compress(b'[{"id": 1, "title": "x"}]', mtime=0)[:20], "gzip"),
        ("bad.json", '[{"id": 1, "title": "Caf\u00e9"}]'.encode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_dump_file_aborts_before_any_write(
    suite_env: Path, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    good = write_dump(tmp_path / "good", [movie_doc(1)])
    assert cli("catalog", "seed", "--source", "tmdb-dump", str(good)).returncode == 0
    digest = db_digest(suite_env / "suite.db")
    folder = write_dump(tmp_path / "dump", [movie_doc(2), movie_doc(3)])
    (folder / name).write_bytes(content)
    result = cli("catalog", "seed", "--source", "tmdb-dump", str(folder))
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert db_digest(suite_env / "suite.db") == digest


def test_path_traversal_and_zip_slip_refused(suite_env: Path, tmp_path: Path) -> None:
    outside = write_dump(tmp_path / "outside", [movie_doc(5)])
    folder = write_dump(tmp_path / "dump", [movie_doc(1)])
    os.symlink(outside / "movies.jsonl", folder / "escape.jsonl")
    result = cli("catalog", "seed", "--source", "tmdb-dump", str(folder))
    assert result.returncode == 1 and "symlink out of the dump directory" in result.stderr
    (folder / "escape.jsonl").unlink()
    with zipfile.ZipFile(folder / "evil.zip", "w") as zf:
        zf.writestr("../../etc/movies.json", json.dumps([movie_doc(6)]))
    result = cli("catalog", "seed", "--source", "tmdb-dump", str(folder))
    assert result.returncode == 1 and "zip slip" in result.stderr
    assert not (suite_env / "suite.db").exists()


def test_impossible_values_quarantined_run_continues(suite_env: Path, tmp_path: Path) -> None:
    docs = [
        movie_doc(1, "Good One"),
        movie_doc(2, "Bad Year", year="19xx"),
        movie_doc(3, "Negative", runtime=-5),
        movie_doc(4, "Too Long", runtime=5000),
        movie_doc(5, ""),
        movie_doc(6, "x" * 10_000),
        movie_doc(7, 12345),
        movie_doc(8, None),
        {"id": "nine", "title": "Wrong id type"},
        movie_doc(10, "<script>alert(1)</script>"),
        movie_doc(11, "Empty date", release_date="", runtime=0),
    ]
    summary = seed(source="tmdb-dump", path=str(write_dump(tmp_path / "d", docs)))
    assert summary["status"] == "succeeded"
    assert summary["counts"]["movie"]["inserted"] == 3
    assert summary["quarantined"] == 8
    assert summary["issues"] == {
        "invalid_year": 1,
        "invalid_runtime": 2,
        "empty_title": 2,
        "title_too_long": 1,
        "wrong_type": 1,
        "invalid_id": 1,
    }
    from suite.catalog.seed import list_issues
    from suite.core.db import session_scope

    with session_scope() as s:
        issues = list_issues(s, run_id=summary["id"])
    long_raw = next(i for i in issues if i["code"] == "title_too_long")["raw"]
    assert len(json.dumps(long_raw)) <= 8200


def test_duplicates_within_file_and_across_runs(suite_env: Path, tmp_path: Path) -> None:
    twin = movie_doc(2, "Twin", imdb_id="tt9000001")  # same IMDb id as movie 1: kept, id dropped
    doc = movie_doc(1, "Original")
    doc["credits"]["cast"].append(dict(doc["credits"]["cast"][0]))  # a duplicate credit
    summary = seed(
        source="tmdb-dump", path=str(write_dump(tmp_path / "d", [doc, movie_doc(1, "Original"), twin]))
    )
    assert summary["counts"]["movie"]["inserted"] == 2
    assert summary["issues"].get("duplicate_in_source") == 1
    assert summary["issues"].get("duplicate_external_id") == 1
    db = sqlite3.connect(suite_env / "suite.db")
    assert db.execute("SELECT count(*) FROM catalog_external_id WHERE source='imdb'").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM catalog_person WHERE name='Shared Star'").fetchone() == (1,)
    cast_rows = db.execute("SELECT count(*) FROM catalog_credit WHERE movie_id=1 AND kind='cast'").fetchone()
    assert cast_rows == (2,)
    again = seed(source="tmdb-dump", path=str(write_dump(tmp_path / "d2", [movie_doc(1, "Original")])))
    assert again["counts"]["movie"] == {"unchanged": 1}


def test_shared_imdb_id_across_batches_keeps_both_films(suite_env: Path, tmp_path: Path) -> None:
    docs = [movie_doc(1, "Apocalypse"), movie_doc(2, "Apocalypse Redux", imdb_id="tt9000001")]
    summary = seed(source="tmdb-dump", path=str(write_dump(tmp_path / "d", docs)), batch=1)
    assert summary["counts"]["movie"] == {"inserted": 2}
    assert summary["issues"] == {"duplicate_external_id": 1}
    db = sqlite3.connect(suite_env / "suite.db")
    assert db.execute("SELECT title FROM catalog_movie ORDER BY id").fetchall() == [
        ("Apocalypse",),
        ("Apocalypse Redux",),
    ]


def test_changed_source_row_updates_only_that_movie(suite_env: Path, tmp_path: Path) -> None:
    folder = write_dump(tmp_path / "d", [movie_doc(1, "One"), movie_doc(2, "Two")])
    seed(source="tmdb-dump", path=str(folder))
    write_dump(folder, [movie_doc(1, "One", runtime=111), movie_doc(2, "Two")])
    summary = seed(source="tmdb-dump", path=str(folder))
    assert summary["counts"]["movie"] == {"updated": 1, "unchanged": 1}
    db = sqlite3.connect(suite_env / "suite.db")
    assert db.execute("SELECT runtime_min, version FROM catalog_movie ORDER BY id").fetchall() == [
        (111, 2),
        (100, 1),
    ]


def test_user_edited_overview_never_overwritten(suite_env: Path, tmp_path: Path) -> None:
    from suite.catalog import schemas, service
    from suite.core.db import session_scope

    folder = write_dump(tmp_path / "d", [movie_doc(1, "Keep")])
    seed(source="tmdb-dump", path=str(folder))
    with session_scope() as s:
        service.update_movie(
            s, movie_id=1, data=schemas.MovieUpdate(overview="My own words."), user_id=None, if_match=None
        )
    write_dump(folder, [movie_doc(1, "Keep", overview="TMDB changed this.")])
    seed(source="tmdb-dump", path=str(folder))
    with session_scope() as s:
        movie = service.get_movie(s, movie_id=1)
        assert (movie.overview, movie.overview_source) == ("My own words.", "user")


def test_error_rate_threshold_strict(suite_env: Path, tmp_path: Path) -> None:
    docs = [movie_doc(i, f"Film {i}") if i % 20 else movie_doc(i, "") for i in range(1, 1201)]
    result = cli(
        "catalog",
        "seed",
        "--source",
        "tmdb-dump",
        str(write_dump(tmp_path / "d", docs)),
        "--batch",
        "400",
        "--max-error-rate",
        "0.01",
        "--json",
    )
    assert result.returncode == 1
    assert "above the error-rate limit" in result.stderr
    status = json.loads(cli("catalog", "seed-status", "--json").stdout)
    assert status[0]["status"] == "failed"
    assert status[0]["processed"] == 1200  # committed batches stay: they are valid and idempotent


def test_dry_run_writes_only_the_run_record(suite_env: Path, tmp_path: Path) -> None:
    summary = seed(
        source="tmdb-dump",
        path=str(write_dump(tmp_path / "d", [movie_doc(1), movie_doc(2, "")])),
        dry_run=True,
    )
    assert summary["status"] == "dry_run"
    assert summary["counts"]["movie"] == {"ready": 1, "quarantined": 1}
    assert {k: v for k, v in table_counts(suite_env / "suite.db").items() if v} == {"catalog_seed_run": 1}


# --- one run at a time; kill and resume ----------------------------------------------------------------------


def test_second_concurrent_run_refuses(suite_env: Path, tmp_path: Path) -> None:
    from suite.catalog import models as m
    from suite.catalog.seed import SeedLocked, lock_owner
    from suite.core.db import prepare_database, session_scope

    prepare_database()
    with session_scope() as s:
        s.add(m.SeedLock(name="seed", run_id="held-by-a-live-process", owner=lock_owner()))
    folder = write_dump(tmp_path / "d", [movie_doc(1)])
    with pytest.raises(SeedLocked, match="in progress"):
        seed(source="tmdb-dump", path=str(folder))
    result = cli("catalog", "seed", "--source", "tmdb-dump", str(folder))
    assert result.returncode == 1 and "another seed run" in result.stderr
    assert counts(suite_env)["catalog_movie"] == 0
    with session_scope() as s:  # the holder died: its lock is stale and the next run takes it
        s.get(m.SeedLock, "seed").owner = f"{os.uname().nodename}:999999"
    assert seed(source="tmdb-dump", path=str(folder))["status"] == "succeeded"


def test_killed_mid_run_then_resumed_equals_uninterrupted(
    suite_env: Path, tmp_path: Path, need_wikidata: None
) -> None:
    args = ["catalog", "seed", "--limit", "1200", "--batch", "100"]
    reference = tmp_path / "reference"
    assert suite_cmd(*args, data_dir=reference).returncode == 0
    expected = table_counts(reference / "suite.db")

    env = {k: v for k, v in os.environ.items() if not k.startswith("SUITE_")}
    env.update(SUITE_DATA_DIR=str(suite_env), SUITE_ENV="test")
    proc = subprocess.Popen(
        [sys.executable, "-m", "suite", *args], env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    db = suite_env / "suite.db"
    deadline = time.monotonic() + 120
    processed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as conn:
                row = conn.execute("SELECT processed FROM catalog_seed_run").fetchone()
                processed = row[0] if row else 0
        except sqlite3.Error:
            processed = 0
        if 200 <= processed < 1000:
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the seed finished before it could be killed (processed {processed})")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as conn:
        run_id, done, status = conn.execute("SELECT id, processed, status FROM catalog_seed_run").fetchone()
        movies = conn.execute("SELECT count(*) FROM catalog_movie").fetchone()[0]
    assert status == "running" and 0 < done < 1200
    assert movies == done  # no half batch is visible
    status_now = json.loads(cli("catalog", "seed-status", "--json").stdout)
    assert status_now[0]["status"] == "interrupted"
    resumed = cli("catalog", "seed", "--resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "succeeded"
    got = table_counts(db)
    for name in ("catalog_seed_run", "catalog_seed_lock", "catalog_seed_issue"):
        got.pop(name, None)
        expected.pop(name, None)
    assert got == expected
