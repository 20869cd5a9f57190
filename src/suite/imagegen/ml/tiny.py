# mypy: disable-error-code="no-untyped-call"
"""The built-in tiny model: a real Stable Diffusion pipeline built offline from configs, its CLIP tokenizer
(BPE merges from the open-clip-torch wheel, or a generated vocabulary), and export as an A1111 single file."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path
from typing import Any

from suite.core.errors import Unavailable, ValidationFailed
from suite.imagegen.formats import check_model_dir
from suite.imagegen.ml.loading import component_class
from suite.imagegen.ml.runtime import diffusers, torch, transformers  # runtime first: warnings, logs

TINY_NAME = "tiny-sd"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> unicode map (the 256 base symbols of CLIP's vocabulary)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def write_clip_tokenizer(out: Path, *, kind: str = "bpe", strict: bool = False) -> str:
    """vocab.json + merges.txt (+ tokenizer.json) in `out`: CLIP's 49,408-token BPE, or 514 char-level tokens.

    A `tokenizer_config.json` already in `out` is honoured (SD2's pad token `!`). Returns the kind written:
    "char" when the BPE file is not installed, or Unavailable naming the install command when `strict`
    (a real checkpoint needs the real vocabulary).
    """
    from suite.imagegen.packaged import CLIP_BPE, locate

    merges: list[str] = []
    if kind == "bpe":
        path = locate()
        if path is None and strict:
            raise Unavailable(
                f"the CLIP BPE merges are not installed; run: {CLIP_BPE.install_command}", code="missing_file"
            )
        if path is None:
            kind = "char"
        else:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                lines = fh.read().split("\n")
            merges = lines[1 : 49152 - 256 - 2 + 1]
    base = list(bytes_to_unicode().values())
    vocab_list = base + [v + "</w>" for v in base] + ["".join(m.split()) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab_list)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""))
    tok = transformers.CLIPTokenizer.from_pretrained(str(out), model_max_length=77)
    expected = 49408 if kind == "bpe" else 514
    if len(tok) != expected:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, expected {expected}")
    tok.save_pretrained(str(out))
    return kind


def build_tiny_model(
    out: Path, *, tokenizer: str = "bpe", size: str = "micro", seed: int = 0
) -> dict[str, Any]:
    """A small real Stable Diffusion pipeline from configs with random weights, offline; save_pretrained."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    kind = write_clip_tokenizer(tok_dir, kind=tokenizer)
    tok = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=77)
    if size == "micro":
        channels, layers, groups = (4, 8), 1, 2
    elif size == "small":
        channels, layers, groups = (32, 64), 2, 32
    else:
        raise ValidationFailed(f"unknown tiny model size {size!r}: micro or small")
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=channels,
        layers_per_block=layers,
        norm_num_groups=groups,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        block_out_channels=channels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=groups,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-5,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=len(tok),
            max_position_embeddings=77,
        )
    )
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe: Any = diffusers.StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out))
    # save_pretrained (transformers 5) writes only tokenizer.json: keep vocab.json/merges.txt beside it.
    write_clip_tokenizer(tok_dir, kind=kind)
    return {"path": str(out), "tokenizer": kind, "size": size, "seconds": round(time.perf_counter() - t0, 3)}


def export_single_file(folder: Path, out: Path) -> dict[str, Any]:
    """A diffusers folder (SD1.x, SD2 or SDXL architecture) as one .safetensors in the original (A1111) layout."""
    from safetensors.torch import save_file

    from suite.imagegen import ldm

    index = check_model_dir(folder)
    components: dict[str, Any] = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        spec = index.get(name)
        if isinstance(spec, list) and spec[0] and spec[1]:
            cls = component_class(spec[0], spec[1])
            components[name] = cls.from_pretrained(str(folder), subfolder=name, local_files_only=True)
    state = {k: v.detach().contiguous() for k, v in ldm.pipeline_to_ldm(components).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        save_file(state, str(tmp), metadata={"format": "pt", "exported_by": "suite imagegen"})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(out), "tensors": len(state), "bytes": out.stat().st_size}
