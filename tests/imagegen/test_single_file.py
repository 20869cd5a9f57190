"""Single-file (.safetensors, original A1111 layout) checkpoints, offline, with config skeletons.

What is tested, precisely:
- the tiny model is written in the original key layout by our own mapping (`suite.imagegen.ldm`), registered
  with `--config <its diffusers folder>` and generated from through the real worker and API: every tensor goes
  through diffusers' single-file converters, and the pixels equal the same model loaded as a folder;
- the bundled skeletons (SD1.5, SD2, SD2-v, SDXL) are instantiated at full size on the `meta` device (no memory):
  their parameter counts equal the published architectures', a checkpoint laid out from them is recognised by
  our family detection and by diffusers' `infer_diffusers_model_type`, and diffusers' converters map it back to
  exactly the modules' keys and shapes. They are materialised offline with the real CLIP tokenizer.
- Not in the test suite (too big for CI): generating from a full-size random-weight SD1.5 and SD2-v single file
  through the bundled skeleton (done by `suite imagegen bench --only single_file`, pixels equal to diffusers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]
API = "/api/v1/imagegen"
# parameter counts of the published SD1.5 / SD2 / SDXL modules (UNet, VAE, text encoders)
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sd2v": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    },
}
DIFFUSERS_TYPE = {"sd15": "v1", "sd2": "v2", "sd2v": "v2", "sdxl": "xl_base"}


@pytest.fixture(scope="module")
def tiny_file(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from suite.imagegen import ml

    out = tmp_path_factory.mktemp("single") / "tiny-a1111.safetensors"
    ml.export_single_file(tiny_dir, out)
    return out


def test_tiny_single_file_generates_the_same_pixels_as_the_folder(
    client: Any, tiny_file: Path, tiny_dir: Path
) -> None:
    from suite.core.db import session_scope
    from suite.imagegen import formats, service, skeletons

    header = formats.read_safetensors_header(tiny_file)
    assert "model.diffusion_model.input_blocks.0.0.weight" in header
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in header
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in header
    with session_scope() as session:
        model = service.add_model(session, path=tiny_file, name="tiny-file", config=tiny_dir)
        assert (model.source, model.family) == ("single_file", "tiny")
        skeleton = skeletons.path_of(model.config_skeleton)
    assert (skeleton / "unet" / "config.json").is_file() and (skeleton / "tokenizer" / "vocab.json").is_file()
    assert not list(skeleton.rglob("*.safetensors")), "weights are never copied into a skeleton"

    images = {}
    for name in ("tiny", "tiny-file"):
        body = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 11, "model": name}
        r = client.post(f"{API}/jobs", json=body)
        assert r.status_code == 202, r.text
        job = _wait(client, r.json()["job_id"])
        assert job["status"] == "succeeded", job
        images[name] = _pixels(client.get(job["images"][0]["url"]).content)
    assert np.array_equal(images["tiny"], images["tiny-file"])
    models = {m["name"]: m for m in client.get(f"{API}/models").json()}
    assert models["tiny-file"]["config_skeleton"].startswith("model-")


def test_single_files_without_a_skeleton_are_refused(
    client: Any, tiny_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUITE_IMAGEGEN__MODEL_ROOTS", json.dumps([str(tmp_path), str(tiny_file.parent)]))
    from suite.core.config import reset_settings

    reset_settings()
    r = client.post(f"{API}/models", json={"path": str(tiny_file), "name": "nofamily"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "not_a_model"
    assert "--config" in r.json()["error"]["message"]
    (tmp_path / "notamodel").mkdir()
    r = client.post(
        f"{API}/models", json={"path": str(tiny_file), "config": str(tmp_path / "notamodel"), "name": "x"}
    )
    assert r.status_code == 422 and "model_index.json" in r.json()["error"]["message"]
    r = client.post(f"{API}/models", json={"path": str(tiny_file), "config": "/etc", "name": "y"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "bad_path"
    r = client.post(f"{API}/models", json={"path": str(tiny_file), "family": "inpaint", "name": "z"})
    assert r.status_code == 422 and "no bundled config skeleton" in r.json()["error"]["message"]
    assert [m["name"] for m in client.get(f"{API}/models").json()] == ["tiny"]


def _meta_modules(family: str) -> dict[str, Any]:
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    from suite.imagegen import skeletons

    folder = skeletons.HERE / family
    index = json.loads((folder / "model_index.json").read_text())
    modules: dict[str, Any] = {}
    with init_empty_weights():
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            if name not in index:
                continue
            library, cls_name = index[name]
            if library == "diffusers":
                cls = getattr(diffusers, cls_name)
                modules[name] = cls.from_config(cls.load_config(str(folder / name)))
            else:
                cls = getattr(transformers, cls_name)
                modules[name] = cls(transformers.CLIPTextConfig.from_pretrained(str(folder / name)))
    return modules


def _shapes(state: dict[str, Any], strip: str = "") -> dict[str, tuple[int, ...]]:
    return {k.removeprefix(strip): tuple(v.shape) for k, v in state.items() if not k.endswith("position_ids")}


@pytest.mark.parametrize("family", ["sd15", "sd2", "sd2v", "sdxl"])
def test_bundled_skeletons_are_the_published_architectures(family: str) -> None:
    from diffusers.loaders import single_file_utils as sfu

    from suite.imagegen import formats, ldm

    modules = _meta_modules(family)
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
    assert counts == PUBLISHED[family]

    checkpoint = ldm.pipeline_to_ldm(modules)
    header = {
        k: {"dtype": "F16", "shape": list(v.shape), "data_offsets": [0, 0]} for k, v in checkpoint.items()
    }
    assert formats.detect_family(header) == ("sd2" if family == "sd2v" else family)
    assert sfu.infer_diffusers_model_type(checkpoint) == DIFFUSERS_TYPE[family]

    unet, vae = modules["unet"], modules["vae"]
    assert _shapes(sfu.convert_ldm_unet_checkpoint(checkpoint, unet.config)) == _shapes(unet.state_dict())
    assert _shapes(sfu.convert_ldm_vae_checkpoint(checkpoint, vae.config)) == _shapes(vae.state_dict())
    text = modules["text_encoder"]
    if family in ("sd2", "sd2v"):
        back = sfu.convert_open_clip_checkpoint(text, checkpoint, prefix=ldm.SD2_OPEN_CLIP)
    else:
        back = sfu.convert_ldm_clip_checkpoint(checkpoint)
    assert _shapes(back, "text_model.") == _shapes(text.state_dict(), "text_model.")
    if family == "sdxl":
        second = modules["text_encoder_2"]
        back = sfu.convert_open_clip_checkpoint(second, checkpoint, prefix=ldm.SDXL_OPEN_CLIP)
        assert _shapes(back) == _shapes(second.state_dict())


def test_bundled_skeletons_materialise_offline_with_the_clip_tokenizer(suite_env: Path) -> None:
    from transformers import CLIPTokenizer

    from suite.imagegen import skeletons

    for family, pads in (("sd15", ["<|endoftext|>"]), ("sdxl", ["<|endoftext|>", "!"])):
        folder = skeletons.ensure(family)
        assert folder == suite_env / "imagegen" / "configs" / family
        for sub, pad in zip(("tokenizer", "tokenizer_2"), pads, strict=False):
            tok = CLIPTokenizer.from_pretrained(str(folder / sub))
            assert len(tok) == 49408 and tok.pad_token == pad
            assert tok("a photo of an astronaut").input_ids == [49406, 320, 1125, 539, 550, 18376, 49407]
        stamp = (folder / skeletons.STAMP).stat().st_mtime_ns
        assert skeletons.ensure(family) == folder and (folder / skeletons.STAMP).stat().st_mtime_ns == stamp
    with pytest.raises(skeletons.ConfigMissing):
        skeletons.ensure("../sd15")
    with pytest.raises(skeletons.ConfigMissing):
        skeletons.ensure("model-0123456789abcdef")


def test_cli_makes_a_single_file_and_generates_from_it(run_cli: Any, tmp_path: Path) -> None:
    folder, single = tmp_path / "tiny", tmp_path / "tiny.safetensors"
    r = run_cli(
        "imagegen", "make-tiny-model", "--out", str(folder), "--no-register", "--single-file", str(single),
        "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["single_file"] == str(single)
    r = run_cli("imagegen", "models", "add", str(single), "--name", "file", "--config", str(folder), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["config"].startswith("model-")
    r = run_cli(
        "imagegen", "run", "--prompt", "x", "--model", "file", "--size", "64x64", "--steps", "1",
        "--out", str(tmp_path / "out"), "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "succeeded"


def _wait(client: Any, job_id: str, timeout: float = 60) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(f"{API}/jobs/{job_id}").json()
        if data["status"] in ("succeeded", "failed", "cancelled", "interrupted"):
            return dict(data)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def _pixels(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
