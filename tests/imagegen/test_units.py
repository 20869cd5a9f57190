"""Light parts (no torch): sampler table, infotext, safetensors headers, paths, CLI."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from suite.core.errors import NotFound, UsageError, ValidationFailed
from suite.imagegen import formats, infotext, samplers


def test_sampler_names_aliases_and_schedules() -> None:
    assert samplers.resolve("k_dpmpp_2m").sampler.name == "DPM++ 2M"
    legacy = samplers.resolve("DPM++ 2M Karras")
    assert legacy.schedule == "karras" and legacy.kwargs == {"use_karras_sigmas": True}
    assert samplers.resolve("DPM++ 2M SDE Karras").kwargs == {
        "algorithm_type": "sde-dpmsolver++",
        "use_karras_sigmas": True,
    }
    assert samplers.resolve("DPM++ 2M", "automatic", a1111=True).schedule == "karras"
    assert samplers.resolve("DPM++ 2M SDE", "automatic", a1111=True).schedule == "exponential"
    assert samplers.resolve("DPM++ 2M").kwargs == {}
    assert samplers.resolve("Euler a", "automatic", a1111=True).schedule == "uniform"
    assert samplers.resolve("Euler", "sgm_uniform").kwargs == {"timestep_spacing": "trailing"}
    assert samplers.resolve("DPM++ 1M").sampler.cls == "DPMSolverSinglestepScheduler"
    assert samplers.resolve("PLMS").kwargs == {"skip_prk_steps": True}
    with pytest.raises(NotFound, match="Sampler not found"):
        samplers.resolve("Nope")
    with pytest.raises(ValidationFailed):
        samplers.resolve("DDIM", "karras")
    names = {s["name"] for s in samplers.describe()}
    assert len([s for s in samplers.SAMPLERS if s.a1111]) >= 16 and "DPM++ 2M SDE" in names


def test_sampler_needing_a_missing_package_is_422(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(samplers, "package_available", lambda name: name != "torchsde")
    with pytest.raises(ValidationFailed, match="torchsde"):
        samplers.resolve("DPM++ SDE")
    row = next(s for s in samplers.describe() if s["name"] == "DPM++ SDE")
    assert row["available"] is False and row["requires"] == ["torchsde"]


def test_infotext_round_trip_with_quoted_commas() -> None:
    text = infotext.build(
        prompt="a cat, sitting",
        negative_prompt="blurry",
        steps=20,
        sampler="DPM++ 2M",
        schedule="karras",
        cfg_scale=7,
        seed=123,
        width=512,
        height=512,
        model_hash="abcdef0123",
        model_name="sd15",
        clip_skip=2,
        lora_hashes={"a": "h1", "b": "h2"},
    )
    assert text.splitlines()[0] == "a cat, sitting"
    assert (
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x512" in text
    )
    parsed = infotext.parse(text)
    assert parsed["prompt"] == "a cat, sitting" and parsed["negative_prompt"] == "blurry"
    assert parsed["Lora hashes"] == "a: h1, b: h2" and parsed["Clip skip"] == "2"
    assert parsed["Size-1"] == "512"


def test_lora_prompt_syntax() -> None:
    prompt, loras = infotext.extract_loras("a cat <lora:style:0.8>, <lora:other>")
    assert prompt == "a cat" and loras == [("style", 0.8), ("other", 1.0)]


def write_st(path: Path, header: dict[str, Any], data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_safetensors_headers_and_families(tmp_path: Path) -> None:
    good = write_st(
        tmp_path / "a.safetensors", {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"0" * 8
    )
    assert formats.tensor_bytes(formats.read_safetensors_header(good)) == 8
    for name, content in {
        "short": b"\x01",
        "huge": struct.pack("<Q", 2**62) + b"{}",
        "garbage": struct.pack("<Q", 4) + b"\xff\xfe\x00x",
        "truncated": None,
    }.items():
        path = tmp_path / f"{name}.safetensors"
        if content is None:
            write_st(path, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"0" * 3)
        else:
            path.write_bytes(content)
        with pytest.raises(formats.CorruptWeights):
            formats.read_safetensors_header(path)
    sd15 = {"model.diffusion_model.output_blocks.11.0.skip_connection.weight": {"shape": [1]}}
    assert formats.detect_family(sd15) == "sd15"
    sdxl = {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": {}}
    assert formats.detect_family(sdxl) == "sdxl"
    sd2 = {
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": {
            "shape": [320, 1024]
        }
    }
    assert formats.detect_family(sd2) == "sd2"
    inpaint = {"model.diffusion_model.input_blocks.0.0.weight": {"shape": [320, 9, 3, 3]}}
    assert formats.detect_family(inpaint) == "inpaint"


@pytest.mark.parametrize(
    "rel",
    ["../x", "../../etc/passwd", "/etc/passwd", "a/../../x", "a\0b", "x" * 2000, "", "%2e%2e/x"],
)
def test_contained_refuses_escapes(tmp_path: Path, rel: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    if rel.startswith("%2e"):
        assert formats.contained(root, rel).is_relative_to(root)  # literal name, never decoded into ..
        return
    with pytest.raises(NotFound):
        formats.contained(root, rel)


def test_contained_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("x")
    (root / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(NotFound):
        formats.contained(root, "link")


@pytest.mark.parametrize("name", ["../a", "a/b", "a\\b", "%2e%2e", "%252e", ".hidden", "", "a" * 101, "a\0"])
def test_names_are_checked(name: str) -> None:
    with pytest.raises(UsageError):
        formats.check_name(name)


@pytest.mark.parametrize(
    ("raw", "safe"),
    [("../../evil.safetensors", "evil.safetensors"), ("..%2F..%2Fx.bin", "x.bin"), ("a b\0c.st", "a_bc.st")],
)
def test_download_filenames_are_sanitised(raw: str, safe: str) -> None:
    assert formats.sanitise_filename(raw) == safe


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\nfrom suite.cli import main\n"
        "try:\n    main(['imagegen', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'sqlalchemy', 'fastapi')\n"
        "         if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert "make-tiny-model" in out.stdout


def test_cli_bad_inputs(run_cli: Any, tmp_path: Path) -> None:
    r = run_cli("imagegen", "models", "add", str(tmp_path / "missing"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("imagegen", "models", "add", str(tmp_path / "empty"))
    assert r.returncode == 2 and "model_index.json" in r.stderr
    r = run_cli("imagegen", "run", "--prompt", "x", "--size", "65x64", "--model", "none")
    assert r.returncode in (1, 2) and "error" in r.stderr
    r = run_cli("imagegen", "run", "--prompt", "x", "--size", "big")
    assert r.returncode == 2 and "512x512" in r.stderr
    r = run_cli("imagegen", "bench", "--only", "b1", "--rounds", "2")  # too few for a median of pairs
    assert r.returncode == 2 and "--rounds" in r.stderr


def test_cli_run_models_history(run_cli: Any, tiny_dir: Path, tmp_path: Path) -> None:
    r = run_cli("imagegen", "models", "add", str(tiny_dir), "--name", "tiny", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["family"] == "tiny"
    out = tmp_path / "out"
    r = run_cli(
        "imagegen", "run", "--prompt", "a red circle", "--size", "64x64", "--steps", "2", "--seed", "3",
        "--sampler", "DPM++ 2M", "--schedule", "karras", "--out", str(out), "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["status"] == "succeeded" and result["seed"] == 3 and len(result["files"]) == 1
    r = run_cli("imagegen", "png-info", result["files"][0], "--json")
    assert json.loads(r.stdout)["parameters"]["Schedule type"] == "Karras"
    r = run_cli("imagegen", "history", "--json")
    assert [j["id"] for j in json.loads(r.stdout)] == [result["id"]]
    r = run_cli("imagegen", "models", "verify", "tiny", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True
    r = run_cli("imagegen", "history", "rm", result["id"])
    assert r.returncode == 0
    r = run_cli("imagegen", "models", "rm", "tiny")
    assert r.returncode == 0
    assert json.loads(run_cli("imagegen", "models", "list", "--json").stdout) == []


def test_cli_unwritable_output_folder(run_cli: Any, tiny_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run_cli("imagegen", "models", "add", str(tiny_dir), "--name", "tiny")
    r = run_cli(
        "imagegen", "run", "--prompt", "x", "--size", "64x64", "--steps", "1", "--out", str(blocker / "sub")
    )
    assert r.returncode == 1 and "cannot create output folder" in r.stderr
    assert json.loads(run_cli("imagegen", "history", "--json").stdout) == []
