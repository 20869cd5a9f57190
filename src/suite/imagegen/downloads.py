"""Model downloads from a URL or the Hugging Face hub, as core background jobs (off by default).

`submit(...)` validates a request without touching the network and enqueues the `download` task
(`suite.imagegen.tasks`); the task calls `run(...)`, which:
- refuses when offline (`HF_HUB_OFFLINE=1`) or when `[imagegen] allow_downloads` is false, at request time and
  again when it runs;
- takes `.safetensors` only (plus the JSON and tokenizer text files of a diffusers folder), never pickles;
- names every file itself: the registry name is checked, a URL's or the hub's file names are reduced to safe
  names or skipped, and every write goes through `formats.contained` under the managed models folder;
- streams into `<models>/.partial/<key>/<file>` and resumes with HTTP Range (guarded by If-Range on the ETag)
  after a dropped connection, within the job (a few attempts) and across jobs for the same source;
- checks free disk (size + 10 %) before the transfer, then the size, the sha256 (given, or the hub's LFS
  sha256) and the safetensors header after it: a mismatch removes the file and fails the job;
- moves the finished file or folder into place atomically and registers it (`source = download`).

A hub folder download fetches `model_index.json`, then only the components it names (configs, tokenizer files
and one `.safetensors` per weight, the non-variant one when both exist). The hub base URL is
`[imagegen] hub_endpoint`, else `HF_ENDPOINT`, else https://huggingface.co.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from suite.core.errors import Conflict, SuiteError, Unavailable, UsageError, ValidationFailed
from suite.imagegen import formats

HUB = "https://huggingface.co"
MAX_ATTEMPTS = 5
DISK_MARGIN = 1.10
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
REL_PATH = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,99})?$")
FOLDER_SUFFIXES = (".json", ".txt", ".safetensors")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".msgpack")


class DownloadFailed(SuiteError):
    code = "download_failed"
    status_code = 502


class ChecksumMismatch(DownloadFailed):
    code = "checksum_mismatch"


class SizeMismatch(DownloadFailed):
    code = "size_mismatch"


class UnsafeFormat(ValidationFailed):
    code = "unsafe_format"


class Offline(Unavailable):
    code = "offline"


class _Retry(Exception):
    """A transfer that may resume (dropped connection, short body, 5xx)."""


@dataclass
class RemoteFile:
    url: str
    rel: str  # where it lands, relative to the download's root
    size: int | None = None
    sha256: str | None = None


def _settings() -> Any:
    from suite.imagegen.service import settings

    return settings()


def check_online() -> None:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise Offline("downloads are refused offline (HF_HUB_OFFLINE is set)")
    if not _settings().allow_downloads:
        raise Offline("downloads are disabled: set [imagegen] allow_downloads = true (it is off by default)")


def hub_endpoint() -> str:
    return (_settings().hub_endpoint or os.environ.get("HF_ENDPOINT") or HUB).rstrip("/")


def models_root() -> Path:
    from suite.imagegen.service import models_root as root

    return root()


def partial_root() -> Path:
    return models_root() / ".partial"


# --- validation (request time, no network) -----------------------------------------------------------------


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed(f"url must be http(s)://host/...: {url[:200]!r}", code="bad_url")
    if parts.username or parts.password:
        raise ValidationFailed(
            "url must not carry credentials (they would be stored with the job)", code="bad_url"
        )
    return url


def _safetensors_name(raw: str) -> str:
    name = formats.sanitise_filename(raw)
    if not name.lower().endswith(".safetensors"):
        raise UnsafeFormat(f"{name!r}: only .safetensors files are downloaded (pickle formats can run code)")
    return name


def prepare(
    *,
    source: str,
    url: str | None = None,
    repo_id: str | None = None,
    filename: str | None = None,
    revision: str = "main",
    name: str | None = None,
    family: str = "auto",
    sha256: str | None = None,
    size: int | None = None,
) -> dict[str, Any]:
    """The task's arguments for a request, or the 4xx/503 it deserves (no network, nothing written)."""
    from sqlalchemy import select

    from suite.core.db import session_scope
    from suite.imagegen.models import ImageModel

    check_online()
    if family not in ("auto", *formats.FAMILIES):
        raise ValidationFailed(f"unknown family {family!r}")
    if sha256 is not None and not SHA256.match(sha256.lower()):
        raise ValidationFailed("sha256 must be 64 hex digits")
    if size is not None and size < 0:
        raise ValidationFailed("size must be >= 0")
    args: dict[str, Any] = {"source": source, "family": family, "revision": revision}
    if source == "url":
        if not url:
            raise ValidationFailed("url is required for source 'url'")
        args["url"] = _check_url(url)
        file = _safetensors_name(filename or unquote(urlsplit(url).path.rsplit("/", 1)[-1]))
        args["filename"] = file
        default_name = Path(file).stem
    elif source == "hub":
        if not repo_id or not REPO_ID.match(repo_id):
            raise ValidationFailed(f"repo_id must look like owner/name: {str(repo_id)[:120]!r}")
        if not REVISION.match(revision):
            raise ValidationFailed(f"bad revision {revision[:80]!r}")
        args["repo_id"] = repo_id
        if filename:
            if not REL_PATH.match(filename) or ".." in filename.split("/"):
                raise UsageError(f"invalid hub file name {filename[:120]!r}", code="bad_path")
            _safetensors_name(filename)
            args["filename"] = filename
            default_name = Path(filename).stem
        else:
            args["filename"] = None  # a diffusers folder
            default_name = repo_id.split("/", 1)[1]
    else:
        raise ValidationFailed(f"unknown source {source!r}: hub or url")
    model_name = formats.check_name(name or re.sub(r"[^A-Za-z0-9._-]", "_", default_name)[:100], "model name")
    with session_scope() as session:
        if session.scalar(select(ImageModel.id).where(ImageModel.name == model_name)) is not None:
            raise Conflict(f"model {model_name!r} already exists", code="model_exists")
    folder = args["source"] == "hub" and args["filename"] is None
    final = models_root() / (model_name if folder else f"{model_name}.safetensors")
    if final.exists():
        raise Conflict(f"{final} already exists", code="model_exists")
    args.update(name=model_name, sha256=sha256.lower() if sha256 else None, size=size)
    return args


def submit(*, owner_id: int | None = None, **request: Any) -> Any:
    """Validate and enqueue a download job (core_job, domain imagegen, name download). The job row."""
    from suite.core.tasks import enqueue
    from suite.imagegen.tasks import download

    args = prepare(**request)
    shown = {k: v for k, v in args.items() if v is not None}
    if "url" in shown:  # never show a query string (signed URLs carry tokens) in the job's params
        shown["url"] = shown["url"].split("?", 1)[0]
    return enqueue(download, owner_id=owner_id, params=shown, domain="imagegen", flush=True, **args)


# --- transfer --------------------------------------------------------------------------------------------


class _Progress:
    """Bytes across all files of a download, reported through core's progress (which may raise cancel)."""

    def __init__(self, report: Callable[..., None], total: int | None, label: str) -> None:
        self.report = report
        self.total = total
        self.done = 0
        self.label = label

    def add(self, n: int, message: str | None = None) -> None:
        self.done += n
        self.report(self.done, self.total, message or self.label)


def _client() -> Any:
    import httpx

    headers = {"User-Agent": "suite-imagegen-downloader"}
    token = os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(
        follow_redirects=True, timeout=httpx.Timeout(30.0, read=60.0), headers=headers, trust_env=False
    )


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """('bytes 100-199/1000') -> (100, 1000); ('bytes */1000') -> (None, 1000)."""
    m = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not m:
        return None, None
    start = int(m[1]) if m[1] else None
    total = int(m[2]) if m[2] != "*" else None
    return start, total


def fetch(client: Any, remote: RemoteFile, part: Path, progress: _Progress, *, sleep: float = 0.2) -> int:
    """Download `remote` into `part`, resuming what is there; returns its size. Retries dropped transfers."""
    import httpx

    etag_file = part.with_name(part.name + ".etag")
    attempts = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if remote.size is not None and have > remote.size:
            part.unlink()
            have = 0
        if remote.size is not None and have == remote.size and have:
            return have
        headers: dict[str, str] = {}
        if have:
            headers["Range"] = f"bytes={have}-"
            if etag_file.is_file():
                headers["If-Range"] = etag_file.read_text().strip()
        try:
            with client.stream("GET", remote.url, headers=headers) as r:
                if r.status_code == 416:  # nothing left to send: complete, or a part that is not this file
                    _start, total = _content_range(r.headers.get("content-range"))
                    if total is not None and total == have:
                        return have
                    part.unlink(missing_ok=True)
                    raise _Retry("range not satisfiable; starting over")
                if r.status_code >= 500 or r.status_code == 429:
                    raise _Retry(f"HTTP {r.status_code}")
                if r.status_code not in (200, 206):
                    raise DownloadFailed(f"{_shown(remote.url)}: HTTP {r.status_code}")
                if r.status_code == 206:
                    start, total = _content_range(r.headers.get("content-range"))
                    if start != have:
                        part.unlink(missing_ok=True)
                        raise _Retry("the server resumed at another offset; starting over")
                    mode = "ab"
                else:  # 200: a full body (no range support, or the file changed: If-Range)
                    if have:
                        progress.add(-have, "restarting")
                    have, mode = 0, "wb"
                    length = r.headers.get("content-length")
                    total = int(length) if length and length.isdigit() else None
                if total is not None and remote.size is not None and total != remote.size:
                    _discard(part)
                    raise SizeMismatch(
                        f"{remote.rel}: the server has {total} bytes, {remote.size} were expected"
                    )
                etag = r.headers.get("etag")
                if etag:
                    etag_file.write_text(etag)
                if total is not None and have == 0:
                    _check_disk(part.parent, total)
                with part.open(mode) as fh:
                    for chunk in r.iter_bytes():
                        fh.write(chunk)
                        have += len(chunk)
                        progress.add(len(chunk))
                    fh.flush()
                    os.fsync(fh.fileno())
                if total is not None and have < total:
                    raise _Retry(f"short body ({have} of {total} bytes)")
                if total is not None and have > total:
                    _discard(part)
                    raise SizeMismatch(f"{remote.rel}: received {have} bytes, the server announced {total}")
                return have
        except (httpx.TransportError, _Retry) as exc:
            attempts += 1
            if attempts >= MAX_ATTEMPTS:
                raise DownloadFailed(
                    f"{_shown(remote.url)}: gave up after {attempts} attempts ({type(exc).__name__}: {exc}); "
                    "run the download again to resume"
                ) from None
            time.sleep(sleep * attempts)


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    part.with_name(part.name + ".etag").unlink(missing_ok=True)


def _shown(url: str) -> str:
    return url.split("?", 1)[0]


def _check_disk(folder: Path, need: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need * DISK_MARGIN > free:
        raise DownloadFailed(
            f"not enough disk space under {folder}: {need / 2**20:.0f} MiB (+10 %) needed, "
            f"{free / 2**20:.0f} MiB free",
            code="insufficient_disk",
        )


def _verify(path: Path, remote: RemoteFile) -> None:
    """Size, sha256 and (for weights) the safetensors header; the file is removed when any check fails."""
    try:
        if remote.size is not None and path.stat().st_size != remote.size:
            raise SizeMismatch(f"{remote.rel}: {path.stat().st_size} bytes, {remote.size} expected")
        if remote.sha256 is not None:
            digest = formats.sha256_file(path)
            if digest != remote.sha256:
                raise ChecksumMismatch(f"{remote.rel}: sha256 {digest} does not match {remote.sha256}")
        if remote.rel.endswith(".safetensors"):
            formats.read_safetensors_header(path)
    except BaseException:
        _discard(path)
        raise


# --- sources -------------------------------------------------------------------------------------------


def _hub_listing(client: Any, repo_id: str, revision: str) -> dict[str, Any]:
    import httpx

    url = f"{hub_endpoint()}/api/models/{repo_id}/revision/{quote(revision)}?blobs=true"
    try:
        r = client.get(url)
    except httpx.TransportError as exc:
        raise DownloadFailed(f"the hub does not answer ({type(exc).__name__}: {exc})") from None
    if r.status_code == 404:
        raise DownloadFailed(f"{repo_id}@{revision} not found on the hub", code="not_found")
    if r.status_code != 200:
        raise DownloadFailed(f"the hub answered HTTP {r.status_code} for {repo_id}")
    data = r.json()
    if not isinstance(data, dict) or not isinstance(data.get("siblings"), list):
        raise DownloadFailed(f"the hub listing of {repo_id} has no files")
    return data


def _hub_file(repo_id: str, revision: str, rfilename: str, sibling: dict[str, Any] | None) -> RemoteFile:
    size = sha = None
    if sibling:
        lfs = sibling.get("lfs") or {}
        size = lfs.get("size", sibling.get("size"))
        sha = lfs.get("sha256")
    url = f"{hub_endpoint()}/{repo_id}/resolve/{quote(revision)}/{quote(rfilename)}"
    return RemoteFile(
        url=url,
        rel=rfilename,
        size=int(size) if isinstance(size, int) else None,
        sha256=str(sha).lower() if sha and SHA256.match(str(sha).lower()) else None,
    )


def _folder_files(
    client: Any, repo_id: str, revision: str, listing: dict[str, Any], part_dir: Path, progress: _Progress
) -> tuple[list[RemoteFile], list[str]]:
    """The files of a diffusers repo to fetch (model_index.json first), and the names skipped."""
    siblings = {
        s["rfilename"]: s
        for s in listing["siblings"]
        if isinstance(s, dict) and isinstance(s.get("rfilename"), str)
    }
    skipped = [n for n in siblings if not REL_PATH.match(n) or ".." in n.split("/")]
    safe = {n: s for n, s in siblings.items() if n not in skipped}
    if "model_index.json" not in safe:
        raise DownloadFailed(
            f"{repo_id} is not a diffusers repository (no model_index.json)", code="not_a_model"
        )
    index_remote = _hub_file(repo_id, revision, "model_index.json", safe["model_index.json"])
    index_part = formats.contained(part_dir, "model_index.json")
    fetch(client, index_remote, index_part, progress)
    try:
        index = json.loads(index_part.read_text())
    except (OSError, ValueError):
        raise DownloadFailed(f"{repo_id}: model_index.json is not JSON", code="not_a_model") from None
    components = {
        k
        for k, v in index.items()
        if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None
    }
    files: list[RemoteFile] = []
    for component in sorted(components):
        names = [n for n in safe if n.startswith(component + "/")]
        weights = [n for n in names if n.endswith(".safetensors")]
        plain = [n for n in weights if not re.search(r"\.(fp16|bf16|fp32)\.safetensors$", n)]
        chosen = set(plain or weights[:1])
        if not weights and any(n.endswith(PICKLE_SUFFIXES) for n in names):
            raise UnsafeFormat(f"{repo_id}: component {component} has only pickle weights; refused")
        for n in names:
            if n.endswith((".json", ".txt")) or n in chosen:
                files.append(_hub_file(repo_id, revision, n, safe[n]))
    skipped += [n for n in safe if n != "model_index.json" and n not in {f.rel for f in files}]
    return [index_remote, *files], skipped


# --- the job -------------------------------------------------------------------------------------------


def _key(args: dict[str, Any]) -> str:
    identity = json.dumps(
        [args.get("source"), args.get("url"), args.get("repo_id"), args.get("revision"), args.get("filename")]
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _exclusive(lock: Path) -> Any:
    """One transfer per source at a time, across threads and processes (an advisory file lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise Conflict("the same download is already running", code="download_running") from None
        yield


def run(
    job_id: str,
    *,
    source: str,
    name: str,
    family: str = "auto",
    revision: str = "main",
    url: str | None = None,
    repo_id: str | None = None,
    filename: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    progress: Callable[..., None],
    sleep: float = 0.2,
) -> dict[str, Any]:
    """The download job: fetch (resumable), verify, move into place, register. Its result."""
    check_online()
    args = {"source": source, "url": url, "repo_id": repo_id, "revision": revision, "filename": filename}
    key = _key(args)
    folder = source == "hub" and not filename
    root = models_root()
    final = formats.contained(root, name if folder else f"{name}.safetensors")
    if final.exists():
        raise Conflict(f"{final} already exists", code="model_exists")
    part_dir = partial_root() / key
    try:
        return _run(
            part_dir,
            key,
            final,
            source=source,
            name=name,
            family=family,
            revision=revision,
            url=url,
            repo_id=repo_id,
            filename=filename,
            sha256=sha256,
            size=size,
            progress=progress,
            sleep=sleep,
            folder=folder,
        )
    finally:  # a failed or cancelled job keeps its partial files for a resume, nothing else
        with contextlib.suppress(OSError):
            if not part_dir.is_dir() or not any(p.is_file() for p in part_dir.rglob("*")):
                shutil.rmtree(part_dir, ignore_errors=True)
                (partial_root() / f"{key}.lock").unlink(missing_ok=True)


def _run(
    part_dir: Path,
    key: str,
    final: Path,
    *,
    source: str,
    name: str,
    family: str,
    revision: str,
    url: str | None,
    repo_id: str | None,
    filename: str | None,
    sha256: str | None,
    size: int | None,
    progress: Callable[..., None],
    sleep: float,
    folder: bool,
) -> dict[str, Any]:
    with _exclusive(partial_root() / f"{key}.lock"), _client() as client:
        skipped: list[str] = []
        if source == "url":
            assert url is not None
            remotes = [
                RemoteFile(
                    url=url, rel=_safetensors_name(filename or "model.safetensors"), size=size, sha256=sha256
                )
            ]
        elif not folder:
            assert repo_id is not None and filename is not None
            listing = _hub_listing(client, repo_id, revision)
            sibling = next((s for s in listing["siblings"] if s.get("rfilename") == filename), None)
            if sibling is None:
                raise DownloadFailed(f"{repo_id}@{revision} has no file {filename!r}", code="not_found")
            remote = _hub_file(repo_id, revision, filename, sibling)
            remote.rel = formats.sanitise_filename(filename)
            remote.sha256 = sha256 or remote.sha256
            remote.size = size if size is not None else remote.size
            remotes = [remote]
        else:
            assert repo_id is not None
            listing = _hub_listing(client, repo_id, revision)
            part_dir.mkdir(parents=True, exist_ok=True)
            meter = _Progress(progress, None, "model_index.json")
            remotes, skipped = _folder_files(client, repo_id, revision, listing, part_dir, meter)
        sizes = [r.size for r in remotes if r.size is not None]
        total = sum(sizes) if len(sizes) == len(remotes) else None
        part_dir.mkdir(parents=True, exist_ok=True)
        have = sum(p.stat().st_size for r in remotes if (p := formats.contained(part_dir, r.rel)).is_file())
        if total is not None:
            _check_disk(part_dir, max(0, total - have))
        meter = _Progress(progress, total, f"downloading {name}")
        meter.done = have
        for remote in remotes:  # `fetch` reports the bytes it writes on top of what the parts held
            path = formats.contained(part_dir, remote.rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            meter.label = f"downloading {remote.rel}"
            fetch(client, remote, path, meter, sleep=sleep)
            _verify(path, remote)
        progress(meter.done, total or meter.done, "verifying")
    return _install(part_dir, remotes, final, name=name, family=family, folder=folder, skipped=skipped)


def _install(
    part_dir: Path,
    remotes: list[RemoteFile],
    final: Path,
    *,
    name: str,
    family: str,
    folder: bool,
    skipped: list[str],
) -> dict[str, Any]:
    from suite.core.db import session_scope
    from suite.imagegen import service

    staging = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}")
    if folder:
        shutil.copytree(part_dir, staging, ignore=shutil.ignore_patterns("*.etag"))
    else:
        os.replace(formats.contained(part_dir, remotes[0].rel), staging)
    try:
        if final.exists():
            raise Conflict(f"{final} already exists", code="model_exists")
        os.replace(staging, final)
        try:
            with service.write_lock, session_scope() as session:
                model = service.add_model(session, path=final, name=name, family=family, source="download")
                result = {
                    "model": model.name,
                    "family": model.family,
                    "sha256": model.sha256,
                    "bytes": model.size_bytes,
                    "files": len(remotes),
                    "skipped": skipped[:50],
                }
        except BaseException:
            shutil.rmtree(final) if final.is_dir() else final.unlink(missing_ok=True)
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging) if staging.is_dir() else staging.unlink()
    shutil.rmtree(part_dir, ignore_errors=True)
    return result
