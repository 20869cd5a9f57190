"""Catalog: seed throughput against plain Core executemany, search latency at 10^5 against LIKE, HTTP rps/p99.

1. Seed: the full Wikidata set (17,472 films) into a fresh SQLite file through the seeder (validation, dedupe,
   checkpoints, quarantine), then a second run (must insert 0 rows). Baseline in the same run: the same
   prepared rows (the seeder's normalize output, ids assigned in Python) inserted with plain Core executemany
   in batches of 5,000 into another fresh file with the same schema (FTS triggers included).
2. Search: the seeded set expanded to 100,000 films (titles suffixed "(copy k)", FTS filled by the triggers);
   300 fixed terms from a seeded RNG (accented, prefix, multi-word, year-aware, person); p50/p95/p99 through
   `search.search()`, against `LIKE '%q%'` over title/overview/people LIMIT 20 in the same run.
3. HTTP: `uvicorn` with one worker on 127.0.0.1 in a subprocess; a bounded client (fixed N, fixed concurrency,
   timeout) on movie detail, /search and the HTML movie list; baseline: a trivial route on the same server
   returning the same bytes pre-serialised.

`python benchmarks/bench_catalog.py` prints the JSON; SUITE_BENCH_QUICK=1 uses 3,000 films and fewer requests.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

QUICK = os.environ.get("SUITE_BENCH_QUICK") == "1"
SEARCH_TARGET = 20_000 if QUICK else 100_000


def _env(data_dir: Path) -> None:
    os.environ["SUITE_DATA_DIR"] = str(data_dir)
    os.environ.pop("SUITE_DATABASE_URL", None)
    from suite.core import config, db

    db.reset_engine()
    config.reset_settings()


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def _rows_from_records(records: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """The rows the seeder writes, prepared once (ids assigned here) for the plain executemany baseline."""
    from suite.catalog.seed import MOVIE_FIELDS
    from suite.catalog.sources.base import fold
    from suite.core.db import utcnow

    now = utcnow()
    out: dict[str, list[dict[str, Any]]] = {
        k: []
        for k in (
            "catalog_movie",
            "catalog_external_id",
            "catalog_genre",
            "catalog_movie_genre",
            "catalog_language",
            "catalog_movie_language",
            "catalog_country",
            "catalog_movie_country",
            "catalog_person",
            "catalog_job",
            "catalog_credit",
        )
    }
    lookups: dict[str, dict[Any, int]] = {"genre": {}, "language": {}, "country": {}, "job": {}, "person": {}}

    def lookup(kind: str, key: Any, row: dict[str, Any], table: str) -> int:
        ids = lookups[kind]
        if key not in ids:
            ids[key] = len(ids) + 1
            out[table].append({"id": ids[key], **row})
        return ids[key]

    ext_seen: set[tuple[str, str]] = set()
    for movie_id, r in enumerate(records, 1):
        row = {n: r.fields.get(n) for n in MOVIE_FIELDS}
        row.update(
            id=movie_id, seed_key=r.key, version=1, created_at=now, updated_at=now, overview_updated_at=now
        )
        out["catalog_movie"].append(row)
        for src, val in r.ext_ids.items():
            if (src, val) not in ext_seen:  # the seeder drops a second film's shared IMDb id too
                ext_seen.add((src, val))
                out["catalog_external_id"].append(
                    {"entity": "movie", "entity_id": movie_id, "source": src, "value": val}
                )
        for kind, attr, table, col in (
            ("genre", "genres", "catalog_genre", "genre_id"),
            ("language", "languages", "catalog_language", "language_id"),
            ("country", "countries", "catalog_country", "country_id"),
        ):
            for pos, name in enumerate(getattr(r, attr)):
                gid = lookup(kind, name, {"name": name}, table)
                link = {"movie_id": movie_id, col: gid, "position": pos}
                if kind == "genre":
                    link["is_primary"] = pos == 0
                out[f"catalog_movie_{kind}"].append(link)
        seen: set[tuple[int, str]] = set()
        for c in r.credits:
            pid = lookup(
                "person",
                c.person_key,
                {
                    "seed_key": c.person_key,
                    "name": c.person_name,
                    "sort_name": fold(c.person_name),
                    "name_key": fold(c.person_name),
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                },
                "catalog_person",
            )
            job_id = None
            if c.kind == "crew":
                job_id = lookup(
                    "job", (c.department, c.job), {"department": c.department, "name": c.job}, "catalog_job"
                )
            role = f"cast:{c.character or ''}" if c.kind == "cast" else f"crew:{job_id}"
            if (pid, role) in seen:
                continue
            seen.add((pid, role))
            out["catalog_credit"].append(
                {
                    "movie_id": movie_id,
                    "person_id": pid,
                    "kind": c.kind,
                    "character": c.character,
                    "cast_order": c.order,
                    "job_id": job_id,
                    "credited": True,
                    "role_key": role,
                    "source": r.source,
                }
            )
    return out


def bench_seed(root: Path, limit: int | None) -> dict[str, Any]:
    from sqlalchemy import MetaData, insert

    from suite.catalog.seed import SeedOptions, seed, validate
    from suite.catalog.sources.wikidata import WikidataSource
    from suite.core.db import get_engine, prepare_database

    # Ours.
    _env(root / "ours")
    prepare_database()
    started = time.perf_counter()
    first = seed(SeedOptions(limit=limit, batch=5000))
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    second = seed(SeedOptions(limit=limit, batch=5000))
    rerun_s = time.perf_counter() - started
    inserted_rows = sum(v.get("inserted", 0) for v in first["counts"].values() if isinstance(v, dict))
    rerun_inserted = sum(v.get("inserted", 0) for v in second["counts"].values() if isinstance(v, dict))
    rerun_updated = second["counts"].get("movie", {}).get("updated", 0)

    # Baseline: the same prepared rows, plain executemany.
    source = WikidataSource(limit=limit)
    source.check()
    records = [validate(source.normalize(raw)) for _, raw in source.extract(after=None)]
    tables = _rows_from_records(records)
    _env(root / "plain")
    prepare_database()
    engine = get_engine()
    meta = MetaData()
    meta.reflect(engine, only=list(tables))
    baseline_rows = sum(len(v) for v in tables.values())
    order = [
        "catalog_movie",
        "catalog_external_id",
        "catalog_genre",
        "catalog_language",
        "catalog_country",
        "catalog_movie_genre",
        "catalog_movie_language",
        "catalog_movie_country",
        "catalog_person",
        "catalog_job",
        "catalog_credit",
    ]
    started = time.perf_counter()
    for name in order:
        rows = tables[name]
        for i in range(0, len(rows), 5000):
            with engine.begin() as conn:
                conn.execute(insert(meta.tables[name]), rows[i : i + 5000])
    plain_s = time.perf_counter() - started
    engine.dispose()
    return {
        "films": first["processed"],
        "rows": inserted_rows,
        "baseline_rows": baseline_rows,
        "seeder_s": round(ours_s, 2),
        "seeder_rows_per_s": round(inserted_rows / ours_s),
        "plain_executemany_s": round(plain_s, 2),
        "plain_rows_per_s": round(baseline_rows / plain_s),
        "ratio_vs_plain": round((inserted_rows / ours_s) / (baseline_rows / plain_s), 3),
        "target_ratio": 0.5,
        "rerun_s": round(rerun_s, 2),
        "rerun_inserted": rerun_inserted,
        "rerun_updated": rerun_updated,
        "quarantined": first["quarantined"],
        "issues": first["issues"],
        "movies_inserted": first["counts"].get("movie", {}).get("inserted", 0),
    }


def expand(target: int) -> int:
    from sqlalchemy import text

    from suite.core.db import get_engine

    engine = get_engine()
    cols = (
        "title, original_title, sort_title, year, release_date, release_date_precision, runtime_min, overview, "
        "overview_source, mpaa_rating, critic_meter, search_people, version, created_at, updated_at"
    )
    with engine.begin() as conn:
        base = conn.execute(
            text("SELECT count(*) FROM catalog_movie WHERE seed_key NOT LIKE 'copy:%'")
        ).scalar_one()
        k = 1
        while conn.execute(text("SELECT count(*) FROM catalog_movie")).scalar_one() < target:
            need = target - conn.execute(text("SELECT count(*) FROM catalog_movie")).scalar_one()
            conn.execute(
                text(
                    f"INSERT INTO catalog_movie (seed_key, {cols}) SELECT 'copy:' || :k || ':' || id, "
                    f"title || ' (copy ' || :k || ')', original_title, sort_title || ' copy ' || :k, year, release_date, "
                    "release_date_precision, runtime_min, overview, overview_source, mpaa_rating, critic_meter, "
                    f"search_people, version, created_at, updated_at FROM catalog_movie WHERE seed_key NOT LIKE 'copy:%' "
                    "ORDER BY id LIMIT :need"
                ),
                {"k": k, "need": min(need, base)},
            )
            k += 1
        conn.execute(text("INSERT INTO catalog_movie_fts(catalog_movie_fts) VALUES ('optimize')"))
        return int(conn.execute(text("SELECT count(*) FROM catalog_movie")).scalar_one())


def terms(n: int = 300) -> list[str]:
    from sqlalchemy import text

    from suite.catalog.sources.base import fold
    from suite.core.db import get_engine

    rng = random.Random(20261122)
    with get_engine().connect() as conn:
        rows = conn.execute(
            text("SELECT title, year, search_people FROM catalog_movie WHERE seed_key NOT LIKE 'copy:%'")
        ).all()
    accented = [r for r in rows if fold(r.title) != r.title.lower()]
    out: list[str] = []
    while len(out) < n:
        kind = len(out) % 5
        r = rng.choice(accented if kind == 0 and accented else rows)
        words = [w for w in r.title.split() if len(w) > 2] or [r.title]
        if kind == 0:
            out.append(fold(rng.choice(words)))
        elif kind == 1:
            out.append(rng.choice(words)[:4])
        elif kind == 2:
            out.append(" ".join(words[:2]))
        elif kind == 3 and r.year:
            out.append(f"{rng.choice(words)} {r.year}")
        else:
            people = [p for p in (r.search_people or "").split(", ") if p]
            out.append(rng.choice(people).split()[-1] if people else rng.choice(words))
    return out


def bench_search() -> dict[str, Any]:
    from sqlalchemy import text

    from suite.catalog.search import like_escape, search
    from suite.core.db import get_engine, session_scope

    started = time.perf_counter()
    movies = expand(SEARCH_TARGET)
    build_s = time.perf_counter() - started
    queries = terms()
    ours: list[float] = []
    load_before = [round(x, 2) for x in os.getloadavg()]
    with session_scope() as s:
        for q in queries[:20]:
            search(s, query=q, limit=20)  # warm the page cache
        for q in queries:
            t = time.perf_counter()
            search(s, query=q, limit=20)
            ours.append((time.perf_counter() - t) * 1000)
    load_after = [round(x, 2) for x in os.getloadavg()]
    kinds = ("accented", "prefix", "multi_word", "year_aware", "person")
    by_kind = {
        kind: {"p50_ms": _pct(ours[i::5], 0.5), "p99_ms": _pct(ours[i::5], 0.99)}
        for i, kind in enumerate(kinds)
    }
    slowest = sorted(zip(ours, queries, strict=True), reverse=True)[:5]
    like: list[float] = []
    sql = text(
        "SELECT id FROM catalog_movie WHERE lower(title) LIKE :p ESCAPE '\\' OR lower(overview) LIKE :p "
        "ESCAPE '\\' OR lower(search_people) LIKE :p ESCAPE '\\' LIMIT 20"
    )
    with get_engine().connect() as conn:
        for q in queries[: 100 if QUICK else 300]:
            t = time.perf_counter()
            conn.execute(sql, {"p": "%" + like_escape(q.lower()) + "%"}).all()
            like.append((time.perf_counter() - t) * 1000)
    return {
        "movies": movies,
        "expand_s": round(build_s, 2),
        "queries": len(queries),
        "load_average": {"before": load_before, "after": load_after},
        "by_kind": by_kind,
        "slowest": [{"query": q, "ms": round(ms, 3)} for ms, q in slowest],
        "p50_ms": _pct(ours, 0.5),
        "p95_ms": _pct(ours, 0.95),
        "p99_ms": _pct(ours, 0.99),
        "like_p50_ms": _pct(like, 0.5),
        "like_p99_ms": _pct(like, 0.99),
        "speedup_p50": round(_pct(like, 0.5) / max(_pct(ours, 0.5), 1e-6), 1),
        "target": {"p50_ms": 2, "p99_ms": 50, "speedup_p50": 10},
    }


def bench_semantic() -> dict[str, Any]:
    """Report only (brief section 7): encode throughput on movie documents, query encode, and top-20 over 10^5
    x 384 float32 by brute force, against keyword search in the same run. Skipped without the extra."""
    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is None:
        return {"skipped": 'the suite[semantic] extra is not installed: pip install "suite[semantic]"'}
    import numpy as np

    from suite.catalog import ml, semantic
    from suite.catalog.search import search
    from suite.core.db import session_scope

    problem = ml.available(ml.MINILM_MODEL)
    if problem:
        return {"skipped": problem}
    started = time.perf_counter()
    model = ml.get_embedder(ml.MINILM_MODEL)
    load_s = time.perf_counter() - started
    with session_scope() as s:
        docs = [d for _, d in semantic._batch_docs(s, 0, 64 if QUICK else 256)]
    started = time.perf_counter()
    model.encode(docs)
    encode_s = time.perf_counter() - started
    queries = terms(50 if QUICK else 100)
    encode_ms: list[float] = []
    top_ms: list[float] = []
    keyword_ms: list[float] = []
    matrix = np.random.default_rng(1).standard_normal((100_000, 384)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    ids = np.arange(1, 100_001)
    with session_scope() as s:
        for q in queries:
            t = time.perf_counter()
            vector = model.encode([q])[0]
            encode_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            semantic._top(ids, matrix @ vector, 20)
            top_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            search(s, query=q, limit=20)
            keyword_ms.append((time.perf_counter() - t) * 1000)
    return {
        "model_load_s": round(load_s, 2),
        "documents": len(docs),
        "document_chars_mean": round(sum(map(len, docs)) / max(1, len(docs))),
        "encode_docs_per_s": round(len(docs) / encode_s, 1),
        "query_encode_p50_ms": _pct(encode_ms, 0.5),
        "query_encode_p99_ms": _pct(encode_ms, 0.99),
        "top20_of_100k_p50_ms": _pct(top_ms, 0.5),
        "top20_of_100k_p99_ms": _pct(top_ms, 0.99),
        "keyword_p50_ms": _pct(keyword_ms, 0.5),
        "threads": __import__("torch").get_num_threads(),
    }


SERVER = """
import sys, uvicorn
from fastapi.responses import Response
from suite.core.api import create_app
app = create_app(["catalog"])
payload = open(sys.argv[2], "rb").read()
@app.get("/bench/static")
def static() -> Response:
    return Response(payload, media_type="application/json")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), workers=1, log_level="warning", access_log=False)
"""


def bench_http(root: Path) -> dict[str, Any]:
    import httpx

    from suite.core.db import reset_engine

    reset_engine()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    payload = root / "payload.json"
    server = root / "server.py"
    server.write_text(SERVER)
    env = {**os.environ}
    # The server's log goes to a file: a pipe nobody reads fills up under errors and stalls the server.
    log_path = root / "server.log"
    log = log_path.open("ab")
    # The static payload: the movie detail's own bytes, so the baseline serves the same size.
    payload.write_bytes(b"{}")
    proc = subprocess.Popen(
        [sys.executable, str(server), str(port), str(payload)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        detail = httpx.get(base + "/api/v1/catalog/movies/1", timeout=10).content
        payload.write_bytes(detail)
        proc.terminate()
        proc.wait(10)
        proc = subprocess.Popen(
            [sys.executable, str(server), str(port), str(payload)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        n = 200 if QUICK else 1000
        concurrency = 8
        results: dict[str, Any] = {}
        for name, path in (
            ("static_baseline", "/bench/static"),
            ("movie_detail", "/api/v1/catalog/movies/{id}"),
            ("search", "/api/v1/catalog/search?q={q}"),
            ("movie_list_html", "/catalog/movies?sort=title"),
        ):
            results[name] = _load(base, path, n, concurrency)
        static = results["static_baseline"]["rps"]
        for name in ENDPOINTS:
            results[name]["ratio_to_static"] = round(results[name]["rps"] / static, 3) if static else None
        results["concurrency"] = concurrency
        results["requests_each"] = n
        results["server_log_tail"] = log_path.read_text("utf-8", "replace").strip().splitlines()[-10:]
        return results
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


ENDPOINTS = ("movie_detail", "search", "movie_list_html")


def history_path() -> Path:
    default = Path(__file__).resolve().parent / "results" / "catalog-http-previous.json"
    return Path(os.environ.get("SUITE_BENCH_CATALOG_HISTORY", default))


def compare_http(current: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Each endpoint's rps ratio to the in-run static baseline, against the stored previous run: a ratio more
    than 20% worse is flagged as a regression (ratios, not absolute rps, compare across machine load)."""
    out: dict[str, Any] = {"previous_found": previous is not None, "regressions": []}
    for name in ENDPOINTS:
        now = current.get(name, {}).get("ratio_to_static")
        before = (previous or {}).get(name, {}).get("ratio_to_static")
        change = round(now / before, 3) if now and before else None
        out[name] = {"ratio_now": now, "ratio_previous": before, "change": change}
        if change is not None and change < 0.8:
            out["regressions"].append(name)
    return out


def _load(base: str, path: str, n: int, concurrency: int) -> dict[str, Any]:
    import httpx

    rng = random.Random(7)
    words = ["leon", "amelie", "star", "love", "night", "inception 2010", "dark", "king", "the", "war"]
    latencies: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=base, timeout=10) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                url = path.format(id=rng.randint(1, 3000), q=words[i % len(words)])
                t = time.perf_counter()
                try:
                    r = client.get(url)
                    ok, kind = r.status_code in (200, 404), f"http_{r.status_code}"
                    if r.status_code >= 400 and "json" in r.headers.get("content-type", ""):
                        kind += ":" + str(r.json().get("error", {}).get("code", ""))
                except httpx.HTTPError as exc:
                    ok, kind = False, type(exc).__name__
                dt = (time.perf_counter() - t) * 1000
                with lock:
                    latencies.append(dt)
                    errors += 0 if ok else 1
                    if not ok:
                        kinds[kind] = kinds.get(kind, 0) + 1

    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "rps": round(n / wall, 1),
        "p50_ms": _pct(latencies, 0.5),
        "p99_ms": _pct(latencies, 0.99),
        "errors": errors,
        "error_kinds": kinds,
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
    }


def run() -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-catalog-"))
    load_before = [round(x, 2) for x in os.getloadavg()]
    history = history_path()
    previous = json.loads(history.read_text()) if history.is_file() else None
    try:
        seed_result = bench_seed(root, 3000 if QUICK else None)
        _env(root / "ours")
        search_result = bench_search()
        http_result = bench_http(root)
        semantic_result = bench_semantic()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    http_result["against_previous"] = compare_http(http_result, previous)
    if not QUICK:
        history.parent.mkdir(parents=True, exist_ok=True)
        history.write_text(json.dumps({k: http_result[k] for k in ("static_baseline", *ENDPOINTS)}, indent=2))
    summary = {
        "seed_ratio_vs_plain": seed_result["ratio_vs_plain"],
        "seed_rerun_inserted": seed_result["rerun_inserted"],
        "search_p50_ms": search_result["p50_ms"],
        "search_p99_ms": search_result["p99_ms"],
        "search_speedup_p50_vs_like": search_result["speedup_p50"],
        "meets_search_target": search_result["p50_ms"] < 2 and search_result["p99_ms"] < 50,
        **{f"http_{n}_rps": http_result[n]["rps"] for n in ("static_baseline", *ENDPOINTS)},
        **{f"http_{n}_p99_ms": http_result[n]["p99_ms"] for n in ENDPOINTS},
        "http_errors": sum(http_result[n]["errors"] for n in ("static_baseline", *ENDPOINTS)),
        "http_regressions": http_result["against_previous"]["regressions"],
        "semantic_query_p50_ms": semantic_result.get("query_encode_p50_ms"),
    }
    return {
        "summary": summary,
        "seed": seed_result,
        "search": search_result,
        "http": http_result,
        "semantic": semantic_result,
        "quick": QUICK,
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, default=str))
