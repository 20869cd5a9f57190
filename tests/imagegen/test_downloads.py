"""Model downloads as core background jobs, against a real HTTP file server and hub stand-in on 127.0.0.1.

The network guard (conftest) fails any non-loopback connection. Downloads are enabled per test
(`allow_downloads`, HF_HUB_OFFLINE unset); the app runs without the generation worker except where a downloaded
model is generated from.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .download_server import FileServer

API = "/api/v1/imagegen"
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]


def fake_checkpoint(mib: float = 3.0, seed: int = 0) -> bytes:
    """A small .safetensors whose header says SD1.5 (the family key) padded to `mib` MiB of tensor data."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    tensors = {
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": rng.standard_normal(
            (8, 8), dtype=np.float32
        ),
        "model.diffusion_model.input_blocks.0.0.weight": rng.standard_normal((8, 4, 3, 3), dtype=np.float32),
        "padding": rng.standard_normal(int(mib * 2**20 / 4), dtype=np.float32),
    }
    return save(tensors, metadata={"format": "pt"})


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer().start()
    yield server
    server.stop()


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, files: FileServer) -> None:
    from suite.core.config import reset_settings

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("SUITE_IMAGEGEN__ALLOW_DOWNLOADS", "true")
    monkeypatch.setenv("SUITE_IMAGEGEN__HUB_ENDPOINT", files.url)
    reset_settings()


@pytest.fixture
def api(online: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The imagegen app without the generation worker (downloads never touch it)."""
    from fastapi.testclient import TestClient

    from suite.core.api import create_app
    from suite.core.config import reset_settings

    monkeypatch.setenv("SUITE_IMAGEGEN__WORKER", "false")
    reset_settings()
    with TestClient(create_app(["imagegen"]), raise_server_exceptions=False) as c:
        yield c


def models_dir(suite_env: Path) -> Path:
    return suite_env / "imagegen" / "models"


def registered(api: Any) -> dict[str, Any]:
    return {m["name"]: m for m in api.get(f"{API}/models").json()}


def outside_files(suite_env: Path) -> list[Path]:
    """Files written anywhere under the test's folder except the data dir's managed places."""
    root = suite_env.parent
    allowed = (suite_env, root / "hf-home")
    return [p for p in root.rglob("*") if p.is_file() and not any(p.is_relative_to(a) for a in allowed)]


def test_url_download_resumes_after_a_dropped_connection(
    api: Any, files: FileServer, suite_env: Path
) -> None:
    data = fake_checkpoint(3)
    files.files["model.safetensors"] = data
    files.faults["/files/model.safetensors"] = ["drop"]
    sha = hashlib.sha256(data).hexdigest()
    r = api.post(
        f"{API}/downloads",
        json={"source": "url", "url": f"{files.url}/files/model.safetensors", "sha256": sha, "name": "dl"},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "done", job
    assert job["result"]["model"] == "dl" and job["result"]["sha256"] == sha
    assert job["done"] == job["total"] == len(data)
    gets = files.gets("/files/model.safetensors")
    assert gets[0]["range"] is None and len(gets) == 2
    resumed_at = int(gets[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at < len(data)  # the second request resumed where the dropped one stopped
    model = registered(api)["dl"]
    assert (model["source"], model["family"], model["config_skeleton"]) == ("download", "sd15", "sd15")
    final = models_dir(suite_env) / "dl.safetensors"
    assert Path(model["path"]) == final and final.read_bytes() == data
    assert not [p for p in models_dir(suite_env).rglob("*") if p.is_file() and p != final]
    assert api.get(f"{API}/downloads/{job['job_id']}").json()["state"] == "done"
    assert [d["job_id"] for d in api.get(f"{API}/downloads").json()] == [job["job_id"]]
    assert outside_files(suite_env) == []


@pytest.mark.parametrize(
    ("change", "code"),
    [({"sha256": "0" * 64}, "does not match"), ({"size": 123}, "bytes, 123 were expected")],
)
def test_wrong_hash_or_size_fails_and_removes_the_file(
    api: Any, files: FileServer, suite_env: Path, change: dict[str, Any], code: str
) -> None:
    files.files["model.safetensors"] = fake_checkpoint(1)
    body = {"source": "url", "url": f"{files.url}/files/model.safetensors", "name": "bad", **change}
    job = api.post(f"{API}/downloads", json=body).json()
    assert job["state"] == "failed" and code in job["error"], job
    assert "bad" not in registered(api)
    assert not [p for p in models_dir(suite_env).rglob("*") if p.is_file() and p.suffix != ".lock"]


def test_not_enough_disk_is_refused_before_the_transfer(
    api: Any, files: FileServer, suite_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    data = fake_checkpoint(1)
    files.files["model.safetensors"] = data
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10**9, 10**9 - 1000, len(data)))
    body = {"source": "url", "url": f"{files.url}/files/model.safetensors", "size": len(data)}
    job = api.post(f"{API}/downloads", json=body).json()
    assert job["state"] == "failed" and "not enough disk space" in job["error"], job
    assert files.gets("/files/model.safetensors") == []  # refused before any byte was asked for
    assert not [p for p in models_dir(suite_env).rglob("*") if p.is_file()]


def test_only_safetensors_are_downloaded(api: Any, files: FileServer, suite_env: Path) -> None:
    files.files["model.ckpt"] = b"PK\x03\x04 a pickle"
    for url in (f"{files.url}/files/model.ckpt", f"{files.url}/files/model.bin?x=1"):
        r = api.post(f"{API}/downloads", json={"source": "url", "url": url})
        assert r.status_code == 422 and r.json()["error"]["code"] == "unsafe_format", r.text
    r = api.post(f"{API}/downloads", json={"source": "hub", "repo_id": "o/r", "filename": "v1.ckpt"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsafe_format"
    assert api.get(f"{API}/downloads").json() == [] and files.log == []
    # a .safetensors name over pickle bytes: downloaded, refused by the header check, removed
    files.files["fake.safetensors"] = b"\x80\x04\x95" + b"x" * 5000
    job = api.post(
        f"{API}/downloads", json={"source": "url", "url": f"{files.url}/files/fake.safetensors"}
    ).json()
    assert job["state"] == "failed" and "safetensors" in job["error"], job
    assert not [p for p in models_dir(suite_env).rglob("*") if p.is_file() and p.suffix != ".lock"]


def test_filenames_are_sanitised_and_traversal_refused(api: Any, files: FileServer, suite_env: Path) -> None:
    files.files["../../evil.safetensors"] = fake_checkpoint(0.1)
    url = f"{files.url}/files/..%2F..%2Fevil.safetensors"
    job = api.post(f"{API}/downloads", json={"source": "url", "url": url}).json()
    assert job["state"] == "done", job
    assert (models_dir(suite_env) / "evil.safetensors").is_file()
    job = api.post(
        f"{API}/downloads",
        json={"source": "url", "url": url, "filename": "..\\..\\x.safetensors", "name": "x2"},
    ).json()
    assert job["state"] == "done" and (models_dir(suite_env) / "x2.safetensors").is_file()
    for body in (
        {"source": "url", "url": url, "name": "../escape"},
        {"source": "url", "url": url, "name": "%2e%2e"},
        {"source": "hub", "repo_id": "o/r", "filename": "../x.safetensors"},
        {"source": "hub", "repo_id": "o/r", "filename": "/etc/x.safetensors"},
    ):
        r = api.post(f"{API}/downloads", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_path", (body, r.text)
    r = api.post(
        f"{API}/downloads", json={"source": "hub", "repo_id": "../../etc", "filename": "a.safetensors"}
    )
    assert r.status_code == 422
    r = api.post(f"{API}/downloads", json={"source": "url", "url": "http://u:p@127.0.0.1:1/a.safetensors"})
    assert r.status_code == 422 and "credentials" in r.json()["error"]["message"]
    assert outside_files(suite_env) == []


def test_refused_when_offline_or_not_enabled(
    api: Any, monkeypatch: pytest.MonkeyPatch, files: FileServer
) -> None:
    from suite.core.config import reset_settings

    body = {"source": "url", "url": f"{files.url}/files/a.safetensors"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = api.post(f"{API}/downloads", json=body)
    assert r.status_code == 503 and r.json()["error"]["code"] == "offline"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("SUITE_IMAGEGEN__ALLOW_DOWNLOADS", "false")
    reset_settings()
    r = api.post(f"{API}/downloads", json=body)
    assert r.status_code == 503 and "allow_downloads" in r.json()["error"]["message"]
    assert files.log == []


def test_background_job_cancel_and_resume_across_jobs(
    online: None, files: FileServer, monkeypatch: pytest.MonkeyPatch, suite_env: Path
) -> None:
    """A real embedded Huey consumer: the POST returns at once, progress is recorded, a cancel stops the
    transfer at its next chunk and keeps the `.part`; the next job for the same URL resumes with Range."""
    from fastapi.testclient import TestClient

    from suite.core.api import create_app
    from suite.core.config import reset_settings

    monkeypatch.setenv("SUITE_JOBS__IMMEDIATE", "false")
    monkeypatch.setenv("SUITE_JOBS__MAX_POLLING_DELAY", "0.1")
    monkeypatch.setenv("SUITE_IMAGEGEN__WORKER", "false")
    reset_settings()
    data = fake_checkpoint(2)
    files.files["big.safetensors"] = data
    files.faults["/files/big.safetensors"] = ["slow"]
    body = {"source": "url", "url": f"{files.url}/files/big.safetensors", "name": "big"}
    with TestClient(create_app(["imagegen"], embedded_worker=True), raise_server_exceptions=False) as api:
        job = api.post(f"{API}/downloads", json=body).json()
        assert job["state"] in ("queued", "running")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = api.get(f"{API}/downloads/{job['job_id']}").json()
            if job["state"] == "running" and (job["done"] or 0) > 0:
                break
            time.sleep(0.02)
        assert job["state"] == "running" and 0 < job["done"] < len(data), job
        api.delete(f"{API}/downloads/{job['job_id']}")
        while time.monotonic() < deadline and job["state"] == "running":
            time.sleep(0.05)
            job = api.get(f"{API}/downloads/{job['job_id']}").json()
        assert job["state"] == "cancelled", job
        parts = list((models_dir(suite_env) / ".partial").rglob("big.safetensors"))
        assert len(parts) == 1 and 0 < parts[0].stat().st_size < len(data)
        kept = parts[0].stat().st_size

        second = api.post(f"{API}/downloads", json=body).json()
        while time.monotonic() < deadline + 30 and second["state"] in ("queued", "running"):
            time.sleep(0.05)
            second = api.get(f"{API}/downloads/{second['job_id']}").json()
        assert second["state"] == "done", second
        assert files.gets("/files/big.safetensors")[-1]["range"] == f"bytes={kept}-"
        assert (models_dir(suite_env) / "big.safetensors").read_bytes() == data
        assert registered(api)["big"]["source"] == "download"


def test_hub_folder_download_skips_hostile_names_and_generates(
    online: None, files: FileServer, tiny_dir: Path, client: Any, suite_env: Path
) -> None:
    """The tiny model served as a hub repo (plus hostile and pickle siblings): only model_index.json's
    components are fetched, the folder is registered and generates."""
    repo = {
        p.relative_to(tiny_dir).as_posix(): p.read_bytes()
        for p in tiny_dir.rglob("*")
        if p.is_file() and p.name != "tokenizer.json"
    }
    repo["unet/diffusion_pytorch_model.bin"] = b"pickle"
    repo["README.md"] = b"# tiny"
    files.repos["acme/tiny-sd"] = repo
    files.extra_siblings["acme/tiny-sd"] = [
        {"rfilename": "../../outside.json", "size": 2},
        {"rfilename": "unet/../../escape.safetensors", "size": 2},
        {"rfilename": "/abs.json", "size": 2},
    ]
    files.faults["/cdn/acme/tiny-sd/unet/diffusion_pytorch_model.safetensors"] = ["drop"]
    r = client.post(f"{API}/downloads", json={"source": "hub", "repo_id": "acme/tiny-sd", "name": "hubtiny"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "done", job
    skipped = set(job["result"]["skipped"])
    assert {"../../outside.json", "unet/../../escape.safetensors", "/abs.json", "README.md"} <= skipped
    assert "unet/diffusion_pytorch_model.bin" in skipped
    unet = files.gets("/cdn/acme/tiny-sd/unet/diffusion_pytorch_model.safetensors")
    assert len(unet) == 2 and unet[1]["range"] not in (None, "bytes=0-")  # dropped, then resumed
    fetched = {e["path"] for e in files.log if e["path"].startswith("/cdn/")}
    assert "/cdn/acme/tiny-sd/unet/diffusion_pytorch_model.bin" not in fetched
    folder = models_dir(suite_env) / "hubtiny"
    assert (folder / "model_index.json").is_file() and not (
        folder / "unet" / "diffusion_pytorch_model.bin"
    ).exists()
    assert outside_files(suite_env) == []
    r = client.post(
        f"{API}/jobs",
        json={"prompt": "x", "steps": 1, "width": 64, "height": 64, "seed": 1, "model": "hubtiny"},
    )
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = client.get(f"{API}/jobs/{job_id}").json()
        if state["status"] not in ("queued", "running"):
            break
        time.sleep(0.05)
    assert state["status"] == "succeeded", state


def test_cli_download_runs_in_process(run_cli: Any, files: FileServer, suite_env: Path) -> None:
    files.files["cli.safetensors"] = fake_checkpoint(0.5)
    env = {"HF_HUB_OFFLINE": "0", "SUITE_IMAGEGEN__ALLOW_DOWNLOADS": "true"}
    r = run_cli("imagegen", "models", "download", f"{files.url}/files/cli.safetensors", "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["state"] == "done" and out["result"]["model"] == "cli"
    r = run_cli("imagegen", "models", "download", f"{files.url}/files/cli.safetensors", env=env)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = run_cli(
        "imagegen", "models", "download", f"{files.url}/files/cli.safetensors", env={"HF_HUB_OFFLINE": "1"}
    )
    assert r.returncode == 1 and "offline" in r.stderr.lower()
