"""The engine on a real (tiny) diffusers pipeline: pixels equal to a direct call, samplers, cancel, faults."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [
    # numpy-2 deprecation noise from diffusers' schedulers and torchsde (thousands per run)
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Should have tb<=t1"),
]
PROMPT = "a photo of an astronaut riding a horse"


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> Any:
    from suite.imagegen import ml

    e = ml.Engine(threads=1)
    e.load(tiny_dir, key="tiny")
    return e


def req(**kw: Any) -> Any:
    from suite.imagegen import ml

    base = {"prompt": PROMPT, "sampler": "DDIM", "steps": 3, "width": 64, "height": 64, "seed": 123}
    base.update(kw)
    return ml.GenRequest(**base)


def pixels(result: Any, i: int = 0) -> np.ndarray:
    return np.asarray(result.images[i])


def test_tiny_model_tokenizer_and_layout(tiny_dir: Path) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tiny_dir / "tokenizer"))
    assert len(tok) in (49408, 514)
    if len(tok) == 49408:
        assert tok.tokenize(PROMPT) == [w + "</w>" for w in PROMPT.split()]
        assert tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        assert (tiny_dir / "tokenizer" / name).is_file()
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"


def test_pixels_equal_direct_diffusers_call(engine: Any, tiny_dir: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    ours = pixels(engine.generate(req(cfg_scale=7.5)))
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    direct = pipe(
        PROMPT,
        num_inference_steps=3,
        width=64,
        height=64,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(123),
    ).images[0]
    assert np.array_equal(ours, np.asarray(direct))
    assert not np.array_equal(ours, pixels(engine.generate(req(cfg_scale=7.5, seed=124))))


def test_batch_seeds_follow_a1111_convention(engine: Any) -> None:
    batch = engine.generate(req(batch_size=2, seed=10))
    assert batch.seeds == [10, 11]
    single = engine.generate(req(seed=11))
    assert np.array_equal(pixels(batch, 1), pixels(single))


SAMPLER_NAMES = [
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2M",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun",
    "DPM++ 3M SDE",
    "DPM++ SDE",
    "DDIM",
    "PLMS",
    "UniPC",
    "LCM",
    "DPM++ 2S",
    "DDPM",
    "DEIS",
    "TCD",
    "DPM++ 2M Karras",
    "DPM++ SDE Karras",
    "DPM++ 2M SDE Karras",
    "LMS Karras",
    "DPM2 Karras",
    "DPM2 a Karras",
]


def test_every_sampler_is_deterministic(engine: Any) -> None:
    for name in SAMPLER_NAMES:
        a = pixels(engine.generate(req(sampler=name, steps=2)))
        b = pixels(engine.generate(req(sampler=name, steps=2)))
        assert np.isfinite(a).all()
        assert np.array_equal(a, b), name


def test_sampler_kwargs_never_stick(engine: Any) -> None:
    plain = pixels(engine.generate(req(sampler="DPM++ 2M")))
    engine.generate(req(sampler="DPM++ 2M", schedule="karras"))
    assert engine.pipe.scheduler.config.use_karras_sigmas is True
    after = pixels(engine.generate(req(sampler="DPM++ 2M")))
    assert engine.pipe.scheduler.config.use_karras_sigmas is False
    assert np.array_equal(plain, after)


def test_schedule_the_class_cannot_take_is_refused(engine: Any) -> None:
    from suite.core.errors import NotFound, ValidationFailed

    with pytest.raises(ValidationFailed, match="cannot use the karras schedule"):
        engine.generate(req(sampler="Euler a", schedule="karras"))
    with pytest.raises(ValidationFailed, match="cannot use the sgm_uniform"):
        engine.generate(req(sampler="DPM++ 2S", schedule="sgm_uniform"))
    with pytest.raises(NotFound, match="Sampler not found"):
        engine.generate(req(sampler="Nope"))


def test_cancel_stops_at_the_next_step_without_decoding(engine: Any) -> None:
    from suite.imagegen import ml

    signals = ml.JobSignals()
    seen: list[int] = []

    def on_step(it: int, step: int, latents: Any) -> None:
        seen.append(step)
        if step == 2:
            signals.cancel.set()

    with pytest.raises(ml.JobCancelled):
        engine.generate(req(steps=20), signals=signals, on_step=on_step)
    assert seen == [1, 2]
    # the pipe is usable right after, with identical pixels to a fresh run
    assert np.array_equal(pixels(engine.generate(req())), pixels(engine.generate(req())))


def test_interrupt_keeps_the_partial_image(engine: Any) -> None:
    from suite.imagegen import ml

    signals = ml.JobSignals()

    def on_step(it: int, step: int, latents: Any) -> None:
        if step == 1:
            signals.interrupt.set()

    result = engine.generate(req(steps=10, n_iter=2), signals=signals, on_step=on_step)
    assert result.interrupted and len(result.images) == 1


def test_preview_is_a_png(engine: Any) -> None:
    from suite.imagegen import ml

    grabbed: list[Any] = []
    engine.generate(req(steps=2), on_step=lambda it, step, lat: grabbed.append(lat))
    png = ml.latents_preview(grabbed[-1])[0]
    assert png.startswith(b"\x89PNG")


def test_out_of_memory_is_recognised_and_the_model_stays(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from suite.imagegen import ml

    def boom(*a: Any, **k: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine.pipe.unet, "forward", boom)
    with pytest.raises(torch.OutOfMemoryError) as info:
        engine.generate(req())
    assert ml.is_oom(info.value)
    assert ml.is_oom(
        RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory")
    )
    monkeypatch.undo()
    assert engine.state == "loaded"
    engine.generate(req())


def test_missing_empty_and_non_model_folders(tmp_path: Path) -> None:
    from suite.core.errors import NotFound
    from suite.imagegen import ml
    from suite.imagegen.formats import NotAModel

    e = ml.Engine(threads=1)
    with pytest.raises(NotFound):
        e.load(tmp_path / "missing", key="m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAModel):
        e.load(tmp_path / "empty", key="e")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model_index.json").write_text("{not json")
    with pytest.raises(NotAModel):
        e.load(tmp_path / "junk", key="j")
    assert e.state == "idle" and e.pipe is None


@pytest.mark.parametrize("damage", ["truncated", "garbage", "huge_header"])
def test_corrupt_weights_leave_nothing_loaded(tiny_dir: Path, tmp_path: Path, damage: str) -> None:
    import shutil
    import struct

    from suite.imagegen import ml
    from suite.imagegen.formats import CorruptWeights

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x00garbage" * 100)
    else:
        weights.write_bytes(struct.pack("<Q", 2**60) + data[8:])
    e = ml.Engine(threads=1)
    with pytest.raises(CorruptWeights):
        e.load(broken, key="broken")
    assert e.state == "idle" and e.pipe is None and e.model_key is None
    e.load(tiny_dir, key="tiny")  # and the engine still loads a good model
    assert e.state == "loaded"


def test_load_refuses_what_does_not_fit(tiny_dir: Path) -> None:
    from suite.imagegen import ml

    e = ml.Engine(threads=1, memory_margin_mb=10**9)
    with pytest.raises(ml.InsufficientMemory, match="needs"):
        e.load(tiny_dir, key="tiny")
    assert e.state == "idle"


def test_load_is_cancellable(tiny_dir: Path) -> None:
    from suite.imagegen import ml

    e = ml.Engine(threads=1)

    def progress(done: int, total: int, phase: str) -> None:
        if done == 1:
            e.load_cancel.set()

    with pytest.raises(ml.LoadCancelled):
        e.load(tiny_dir, key="tiny", progress=progress)
    assert e.state == "idle" and e.pipe is None


def test_unload_and_owner_thread(tiny_dir: Path) -> None:
    from suite.imagegen import ml

    e = ml.Engine(threads=1)
    e.bind_owner()
    e.load(tiny_dir, key="tiny")
    errors: list[BaseException] = []

    def other() -> None:
        try:
            e.generate(req())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors and "does not own" in str(errors[0])
    e.unload()
    assert e.state == "idle" and e.pipe is None


def test_lora_weights_and_incompatible_lora(engine: Any, lora_files: dict[str, Path]) -> None:
    from suite.imagegen import ml

    base = pixels(engine.generate(req()))
    zero = pixels(engine.generate(req(loras=[("style", 0.0, lora_files["good"])])))
    half = pixels(engine.generate(req(loras=[("style", 0.5, lora_files["good"])])))
    full = pixels(engine.generate(req(loras=[("style", 1.0, lora_files["good"])])))
    assert np.array_equal(base, zero)
    assert not np.array_equal(base, half) and not np.array_equal(half, full)
    before = list(engine.describe()["loras"])
    with pytest.raises(ml.LoraIncompatible, match="otherfamily"):
        engine.generate(req(loras=[("otherfamily", 1.0, lora_files["wrong"])]))
    assert engine.describe()["loras"] == before
    assert np.array_equal(pixels(engine.generate(req())), base)


def test_img2img_and_inpaint_share_the_unet(engine: Any) -> None:
    from PIL import Image

    init = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    a = engine.generate(req(mode="img2img", init_image=init, strength=0.6, steps=4))
    b = engine.generate(req(mode="img2img", init_image=init, strength=0.6, steps=4))
    assert np.array_equal(pixels(a), pixels(b))
    c = engine.generate(req(mode="inpaint", init_image=init, mask=mask, strength=0.9, steps=4))
    assert pixels(c).shape == (64, 64, 3)
    assert engine._derived["img2img"].unet is engine.pipe.unet
    assert engine._derived["inpaint"].unet is engine.pipe.unet
