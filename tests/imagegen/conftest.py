"""imagegen fixtures: the micro tiny model built once per session (per xdist worker), a network guard, a
registered model in each test's data dir, a running generation worker and an app client.

No mocks: real diffusers pipelines on the tiny model, real SQLite, real HTTP through the ASGI app.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "OMP_NUM_THREADS": "1",
}.items():
    os.environ.setdefault(_key, _value)

LOOPBACK_PREFIXES = ("127.", "::1", "localhost")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any connection to a non-loopback address fails the test loudly (the engine must stay offline)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = str(address[0])
            if not host.startswith(LOOPBACK_PREFIXES):
                raise AssertionError(f"network access attempted: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro tiny model (real BPE tokenizer when open-clip-torch's merges are installed)."""
    from suite.imagegen import ml

    out = tmp_path_factory.mktemp("tiny") / "tiny-sd"
    ml.build_tiny_model(out)
    return out


@pytest.fixture(scope="session")
def lora_files(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LoRA trained-shape for the tiny UNet (random, non-zero B), and one with the wrong shapes."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("loras")
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_dir), local_files_only=True)
    torch.manual_seed(1)
    pipe.unet.add_adapter(
        LoraConfig(
            r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
        )
    )
    state = get_peft_model_state_dict(pipe.unet)
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers=state, weight_name="style.safetensors"
    )
    good = folder / "style.safetensors"
    wrong = {}
    for key, tensor in load_file(str(good)).items():
        shape = list(tensor.shape)
        shape[-1] = shape[-1] * 3 + 1 if "lora_A" in key or "lora.down" in key else shape[-1]
        wrong[key] = torch.randn(shape)
    bad = folder / "otherfamily.safetensors"
    save_file(wrong, str(bad))
    return {"good": good, "wrong": bad}


@pytest.fixture
def model(tiny_dir: Path, suite_env: Path) -> Any:
    """tiny_dir registered as `tiny` in this test's database."""
    from suite.core.db import session_scope
    from suite.imagegen import service

    with session_scope() as session:
        return service.add_model(session, path=tiny_dir, name="tiny", family="tiny")


@pytest.fixture
def worker(model: Any) -> Iterator[Any]:
    """The process's generation worker for this test (1 torch thread), stopped afterwards."""
    from suite.imagegen import progress, sio
    from suite.imagegen import worker as worker_mod

    w = worker_mod.Worker(threads=1).start(recover=False)
    worker_mod._worker = w
    yield w
    w.stop()
    worker_mod._worker = None
    progress.reset()
    sio.reset()


@pytest.fixture
def app(worker: Any) -> Any:
    from suite.core.api import create_app

    return create_app(["imagegen"])


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
