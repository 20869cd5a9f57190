"""Semantic search and "more like this" (the `suite[semantic]` extra).

- Each movie's document ("Title (year). Genres. Directed by …, with …. Overview") is embedded once per model
  into `catalog_embedding` with the hash of its text: `build_embeddings` walks the movies in id order, encodes
  only rows whose text changed or that have no vector, and commits each batch, so a stopped run resumes where
  it was and a repeated run encodes nothing. It runs as a job (`tasks.embed_job`) or from the CLI.
- Vectors are searched by brute force (10^5 x 384 float32 is 150 MB; one matrix product), loaded once per
  process and reloaded when the table changes.
- Hybrid ranking is reciprocal rank fusion of the keyword top-50 and the vector top-50.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from suite.catalog import models as m
from suite.core.errors import NotFound

TOP = 50  # candidates from each side before fusion
RRF_K = 60
BATCH = 64


def _ml() -> Any:
    """suite.catalog.ml, or SemanticUnavailable with the install command when numpy is missing."""
    try:
        from suite.catalog import ml
    except ImportError as exc:
        from suite.core.errors import Unavailable

        raise Unavailable(
            f"semantic search needs the suite[semantic] extra ({exc.name} is missing): "
            'pip install "suite[semantic]"',
            code="semantic_unavailable",
        ) from None
    return ml


def model_id() -> str:
    from suite.catalog.settings import catalog_settings

    return str(catalog_settings().embedding_model)


def embedder() -> Any:
    return _ml().get_embedder(model_id())


# --- documents and the resumable build -----------------------------------------------------------------------


def document(row: Any, genres: list[str]) -> str:
    parts = [f"{row.title} ({row.year})" if row.year else row.title]
    if genres:
        parts.append(", ".join(genres))
    if row.search_people:
        parts.append(f"With {row.search_people}")
    if row.overview and row.overview_source != "template":  # template text repeats the facts above
        parts.append(row.overview)
    return ". ".join(parts)[:2000]


def text_hash(model: str, doc: str) -> str:
    return hashlib.sha256(f"{model}\n{doc}".encode()).hexdigest()


def _batch_docs(session: Session, after: int, n: int) -> list[tuple[int, str]]:
    from suite.catalog.service import _names_for

    rows = session.execute(
        select(
            m.Movie.id,
            m.Movie.title,
            m.Movie.year,
            m.Movie.search_people,
            m.Movie.overview,
            m.Movie.overview_source,
        )
        .where(m.Movie.id > after)
        .order_by(m.Movie.id)
        .limit(n)
    ).all()
    genres = _names_for(session, [r.id for r in rows])
    return [(r.id, document(r, genres.get(r.id, []))) for r in rows]


def _upsert(session: Session) -> Any:
    from suite.catalog.seed import _dialect_insert

    stmt = _dialect_insert(session, m.Embedding.__table__)  # type: ignore[arg-type]
    cols = ("dim", "text_hash", "vector", "created_at")
    return stmt.on_conflict_do_update(
        index_elements=["movie_id", "model_id"], set_={c: stmt.excluded[c] for c in cols}
    )


def build_embeddings(
    *, limit: int | None = None, batch: int = BATCH, progress: Callable[..., Any] | None = None
) -> dict[str, Any]:
    """Embed every movie whose document changed (or has no vector) for the configured model.

    Reads happen in read-only sessions and the (slow) encoding outside any transaction; each batch of
    vectors is then written in one short transaction, so SQLite's write lock is never held while the model
    runs. `limit` caps how many vectors this run encodes (the rest is left for the next run).
    `progress(done, total)` after each window of movies; it may raise to cancel (the job layer does so),
    leaving the committed batches in place.
    """
    from suite.core.db import new_session, prepare_database, utcnow

    prepare_database()
    emb = embedder()
    model = emb.model_id
    with new_session(read_only=True) as session:
        total = int(session.scalar(select(func.count()).select_from(m.Movie)) or 0)
    after, seen, encoded, unchanged = 0, 0, 0, 0
    if progress:
        progress(0, total)
    while limit is None or encoded < limit:
        with new_session(read_only=True) as session:
            docs = _batch_docs(session, after, max(batch * 4, 256))
            have = dict(
                session.execute(
                    select(m.Embedding.movie_id, m.Embedding.text_hash).where(
                        m.Embedding.model_id == model, m.Embedding.movie_id.in_([i for i, _ in docs])
                    )
                ).all()
            )
        if not docs:
            break
        changed = [(i, d, h) for i, d in docs if have.get(i) != (h := text_hash(model, d))]
        cut = limit is not None and len(changed) > limit - encoded
        todo = changed[: limit - encoded] if limit is not None else changed
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            vectors = emb.encode([d for _, d, _ in chunk]).astype("<f4")
            rows = [
                {
                    "movie_id": i,
                    "model_id": model,
                    "dim": emb.dim,
                    "text_hash": h,
                    "vector": vectors[k].tobytes(),
                    "created_at": utcnow(),
                }
                for k, (i, _, h) in enumerate(chunk)
            ]
            with new_session() as session:
                session.execute(_upsert(session), rows)
                session.commit()
            encoded += len(chunk)
        # The next window starts after the last movie whose vector is now current.
        after = todo[-1][0] if cut else docs[-1][0]
        done = [i for i, _ in docs if i <= after]
        seen += len(done)
        unchanged += len(done) - sum(1 for i, _, _ in todo if i <= after)
        if progress:
            progress(min(seen, total), total)
        if cut:
            break
    VECTORS.invalidate()
    return {"model": model, "movies": total, "encoded": encoded, "unchanged": unchanged}


# --- the in-process vector index ------------------------------------------------------------------------------


class _Vectors:
    """(ids, matrix) for one model, reloaded when the embedding table changes (count or newest row)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Any, Any, Any]] = {}

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()

    def get(self, session: Session, model: str) -> tuple[Any, Any]:
        import numpy as np

        stamp = tuple(
            session.execute(
                select(func.count(), func.max(m.Embedding.created_at)).where(m.Embedding.model_id == model)
            ).one()
        )
        with self._lock:
            cached = self._cache.get(model)
            if cached and cached[0] == stamp:
                return cached[1], cached[2]
        rows = session.execute(
            select(m.Embedding.movie_id, m.Embedding.vector)
            .where(m.Embedding.model_id == model)
            .order_by(m.Embedding.movie_id)
        ).all()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = (
            np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
            if rows
            else np.zeros((0, 0), dtype=np.float32)
        )
        with self._lock:
            self._cache[model] = (stamp, ids, matrix)
        return ids, matrix


VECTORS = _Vectors()


def _require_index(session: Session, model: str) -> tuple[Any, Any]:
    ids, matrix = VECTORS.get(session, model)
    if not len(ids):
        raise _ml().SemanticUnavailable(
            f"no embeddings for {model} yet: build them with `suite catalog index embeddings` "
            "or POST /api/v1/catalog/index/embeddings"
        )
    return ids, matrix


def _top(ids: Any, scores: Any, k: int, exclude: int | None = None) -> list[tuple[int, float]]:
    import numpy as np

    if exclude is not None:
        scores = np.where(ids == exclude, -np.inf, scores)
    k = min(k, len(scores))
    if k <= 0:
        return []
    part = np.argpartition(-scores, k - 1)[:k]
    order = part[np.argsort(-scores[part], kind="stable")]
    return [(int(ids[i]), float(scores[i])) for i in order if np.isfinite(scores[i])]


def _summaries(session: Session, ranked: list[tuple[int, float]]) -> list[dict[str, Any]]:
    if not ranked:
        return []
    ids = [i for i, _ in ranked]
    rows = {
        r.id: r
        for r in session.execute(
            select(m.Movie.id, m.Movie.title, m.Movie.year, m.Movie.search_people, m.Movie.poster_path).where(
                m.Movie.id.in_(ids)
            )
        )
    }
    out = []
    for movie_id, score in ranked:
        r = rows.get(movie_id)
        if r is None:
            continue
        people = (r.search_people or "").split(", ")
        out.append(
            {
                "id": r.id,
                "title": r.title,
                "year": r.year,
                "directors": people[0] if people and people[0] else None,
                "poster_path": r.poster_path,
                "score": round(score, 4),
            }
        )
    return out


def search(session: Session, *, query: str, mode: str, limit: int) -> dict[str, Any]:
    """mode "semantic": nearest movies to the query's vector; "hybrid": RRF of keyword and vector top-50."""
    import time

    from suite.catalog import search as keyword

    started = time.perf_counter()
    keyword.check_query(query)
    model = model_id()
    ids, matrix = _require_index(session, model)
    vector = embedder().encode([query])[0]
    semantic = _top(ids, matrix @ vector, max(limit, TOP))
    people: list[dict[str, Any]] = []
    if mode == "hybrid":
        words = keyword.search(session, query=query, limit=TOP)
        people = words["people"][:10]
        fused: dict[int, float] = {}
        for rank, movie in enumerate(words["movies"]):
            fused[movie["id"]] = fused.get(movie["id"], 0.0) + 1.0 / (RRF_K + rank + 1)
        for rank, (movie_id, _) in enumerate(semantic):
            fused[movie_id] = fused.get(movie_id, 0.0) + 1.0 / (RRF_K + rank + 1)
        ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    else:
        ranked = semantic[:limit]
    return {
        "movies": _summaries(session, ranked),
        "people": people,
        "took_ms": round((time.perf_counter() - started) * 1000, 3),
        "fuzzy": False,
        "mode": mode,
        "model": model,
    }


def similar(session: Session, *, movie_id: int, limit: int = 10) -> dict[str, Any]:
    """ "More like this": the movies nearest to this one's vector."""
    import numpy as np

    model = model_id()
    ids, matrix = _require_index(session, model)
    where = np.nonzero(ids == movie_id)[0]
    if not len(where):
        if session.get(m.Movie, movie_id) is None:
            raise NotFound(f"movie {movie_id} not found")
        raise _ml().SemanticUnavailable(
            f"movie {movie_id} has no embedding yet: run `suite catalog index embeddings`"
        )
    ranked = _top(ids, matrix @ matrix[where[0]], limit, exclude=movie_id)
    return {"movie_id": movie_id, "model": model, "movies": _summaries(session, ranked)}


def status(session: Session) -> dict[str, Any]:
    model = model_id()
    count = session.scalar(select(func.count()).where(m.Embedding.model_id == model)) or 0
    movies = session.scalar(select(func.count()).select_from(m.Movie)) or 0
    try:
        problem = _ml().available(model)
    except Exception as exc:  # numpy missing: the same one-line message
        problem = getattr(exc, "message", str(exc))
    return {
        "model": model,
        "embedded": count,
        "movies": movies,
        "available": problem is None,
        "problem": problem,
    }
