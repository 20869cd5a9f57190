"""`--source tmdb-dump DIR`: TMDB-shaped JSON documents on disk (our cache layout, or JSON / JSON lines, plain or
gzip, or zip archives of them). The whole dump is checked and parsed before anything is written: a symlink
leaving the directory, `..` in a name, a zip-slip entry, bad JSON, bad gzip or non-UTF-8 bytes abort the run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from suite.catalog.sources.base import FileError, MovieRecord
from suite.catalog.sources.tmdb import normalize_movie

SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".zip")
MAX_FILE_BYTES = 512 * 1024 * 1024


def _safe_member(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return not path.is_absolute() and ".." not in path.parts and not name.startswith("/")


def _parse(name: str, data: bytes) -> list[Any]:
    if name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise FileError(f"{name}: truncated or corrupt gzip ({exc})") from None
        name = name[:-3]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileError(f"{name}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    docs: list[Any] = []
    if name.endswith(".jsonl"):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    docs.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise FileError(f"{name}:{n}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        return docs
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileError(f"{name}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    return value if isinstance(value, list) else [value]


class TmdbDumpSource:
    name = "tmdb-dump"

    def __init__(self, root: Path, *, limit: int | None = None) -> None:
        self.root = root
        self.limit = limit
        self.version = "tmdb-dump"
        self.sha256: str | None = None
        self.docs: list[tuple[str, Any]] = []

    def _files(self) -> list[Path]:
        if not self.root.is_dir():
            raise FileError(f"{self.root}: not a directory")
        root = self.root.resolve()
        found: list[Path] = []
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root)
            if ".." in rel.parts:
                raise FileError(f"{rel}: '..' in a dump path is refused")
            if path.is_symlink():
                target = path.resolve()
                if target != root and root not in target.parents:
                    raise FileError(f"{rel}: a symlink out of the dump directory is refused")
            if path.is_file() and path.name.endswith(SUFFIXES):
                found.append(path)
        if not found:
            raise FileError(f"{self.root}: no .json, .jsonl, .json.gz or .zip files")
        return found

    def check(self) -> None:
        files = self._files()  # every path checked before any file is read
        for path in files:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise FileError(f"{path.name}: larger than {MAX_FILE_BYTES // 2**20} MB")
            if path.name.endswith(".zip"):
                try:
                    with zipfile.ZipFile(path) as zf:
                        names = zf.namelist()
                        bad = [n for n in names if not _safe_member(n)]
                        if bad:
                            raise FileError(
                                f"{path.name}: archive entry {bad[0]!r} leaves the archive (zip slip)"
                            )
                        for info in zf.infolist():
                            if info.file_size > MAX_FILE_BYTES:
                                raise FileError(f"{path.name}: {info.filename} is too large")
                except zipfile.BadZipFile as exc:
                    raise FileError(f"{path.name}: not a valid zip archive ({exc})") from None
        digest = hashlib.sha256()
        docs: list[tuple[str, Any]] = []
        for path in files:
            rel = path.relative_to(self.root).as_posix()
            data = path.read_bytes()
            digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
            if path.name.endswith(".zip"):
                with zipfile.ZipFile(path) as zf:
                    for member in sorted(zf.namelist()):
                        if member.endswith(SUFFIXES[:-1]):
                            docs += [(f"{rel}!{member}", d) for d in _parse(member, zf.read(member))]
            else:
                docs += [(rel, d) for d in _parse(rel, data)]
        self.sha256 = digest.hexdigest()

        def order(item: tuple[str, Any]) -> tuple[int, str]:
            doc = item[1]
            ident = doc.get("id") if isinstance(doc, dict) else None
            return (ident if isinstance(ident, int) and not isinstance(ident, bool) else 0, item[0])

        # Person documents (biographies) are not movies; movies are ordered by TMDB id for checkpoints.
        self.docs = sorted(
            (d for d in docs if not (isinstance(d[1], dict) and "biography" in d[1])), key=order
        )

    def total(self) -> int | None:
        return min(len(self.docs), self.limit) if self.limit else len(self.docs)

    def extract(self, *, after: str | None) -> Iterator[tuple[str, Any]]:
        start = int(after) if after else -1
        for n, (_name, doc) in enumerate(self.docs):
            if self.limit and n >= self.limit:
                return
            ident = doc.get("id") if isinstance(doc, dict) else None
            key = ident if isinstance(ident, int) and not isinstance(ident, bool) else 0
            if key < start or (key == start and start >= 0):
                continue
            yield str(key), doc

    def normalize(self, raw: Any) -> MovieRecord:
        return normalize_movie(raw, source="tmdb")
