"""diffusers state dicts -> the original (LDM / A1111 / Civitai) single-file key layout.

The reverse of diffusers' `single_file_utils` converters, written from the layouts themselves: the UNet
(`model.diffusion_model.input_blocks/middle_block/output_blocks`), the VAE (`first_stage_model.encoder/decoder`),
the OpenAI CLIP text encoder (`cond_stage_model.transformer.text_model.*`, SDXL's `conditioner.embedders.0`) and
the OpenCLIP one (`cond_stage_model.model.*`, SDXL's `conditioner.embedders.1.model.*`, q/k/v fused).

Used to make single-file checkpoints from diffusers folders (the tiny model's `--single-file`, the tests and the
benchmarks); it works on any tensor type with `reshape`, `.T` and `torch.cat` (meta tensors included), so the
bundled config skeletons can be checked at full size without allocating a byte.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD_CLIP = "cond_stage_model.transformer."
SD2_OPEN_CLIP = "cond_stage_model.model."
SDXL_CLIP = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP = "conditioner.embedders.1.model."

UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
UNET_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
VAE_FIXED = {
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_norm_out": "decoder.norm_out",
}
VAE_SAME = {
    "encoder.conv_in",
    "encoder.conv_out",
    "decoder.conv_in",
    "decoder.conv_out",
    "quant_conv",
    "post_quant_conv",
}
VAE_ATTENTION = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)


class UnmappedKey(KeyError):
    """A diffusers key this mapping does not know (an architecture outside SD1.x/2.x/XL)."""


def _split(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def _rename(module: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if module == old or module.startswith(old + "."):
            return new + module[len(old) :]
    return module


def _layers_per_block(config: Mapping[str, Any]) -> int:
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise UnmappedKey(f"layers_per_block {lpb!r} per block is not supported")
    return lpb


def unet_to_ldm(state: Mapping[str, Any], config: Mapping[str, Any], prefix: str = UNET) -> dict[str, Any]:
    """A UNet2DConditionModel state dict in the LDM layout (the inverse of `convert_ldm_unet_checkpoint`)."""
    lpb = _layers_per_block(config)
    up_types = list(config["up_block_types"])
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        module, param = _split(key)
        ldm: str | None = None
        if module in UNET_FIXED:
            ldm = UNET_FIXED[module]
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", module):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + block * (lpb + 1) + layer
            ldm = (
                f"input_blocks.{index}.0.{_rename(rest, UNET_RESNET)}"
                if kind == "resnets"
                else f"input_blocks.{index}.1.{rest}"
            )
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", module):
            ldm = f"input_blocks.{1 + int(m[1]) * (lpb + 1) + lpb}.0.op"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", module):
            ldm = f"middle_block.{2 * int(m[1])}.{_rename(m[2], UNET_RESNET)}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", module):
            ldm = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", module):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = block * (lpb + 1) + layer
            ldm = (
                f"output_blocks.{index}.0.{_rename(rest, UNET_RESNET)}"
                if kind == "resnets"
                else f"output_blocks.{index}.1.{rest}"
            )
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", module):
            block = int(m[1])
            slot = 2 if "CrossAttn" in up_types[block] else 1
            ldm = f"output_blocks.{block * (lpb + 1) + lpb}.{slot}.conv"
        if ldm is None:
            raise UnmappedKey(f"unet key {key!r} has no LDM equivalent")
        out[f"{prefix}{ldm}.{param}"] = tensor
    return out


def vae_to_ldm(state: Mapping[str, Any], config: Mapping[str, Any], prefix: str = VAE) -> dict[str, Any]:
    """An AutoencoderKL state dict in the LDM layout (attention projections as 1x1 convolutions)."""
    n_up = len(config["up_block_types"])
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        module, param = _split(key)
        ldm: str | None = None
        if module in VAE_FIXED:
            ldm = VAE_FIXED[module]
        elif module in VAE_SAME:
            ldm = module
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", module):
            ldm = f"encoder.down.{m[1]}.block.{m[2]}.{_rename(m[3], (('conv_shortcut', 'nin_shortcut'),))}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv", module):
            ldm = f"encoder.down.{m[1]}.downsample.conv"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", module):
            rest = _rename(m[3], (("conv_shortcut", "nin_shortcut"),))
            ldm = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{rest}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv", module):
            ldm = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", module):
            rest = _rename(m[3], (("conv_shortcut", "nin_shortcut"),))
            ldm = f"{m[1]}.mid.block_{int(m[2]) + 1}.{rest}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", module):
            ldm = f"{m[1]}.mid.attn_1.{_rename(m[2], VAE_ATTENTION)}"
            if param == "weight" and len(tensor.shape) == 2:
                tensor = tensor.reshape(*tensor.shape, 1, 1)
        if ldm is None:
            raise UnmappedKey(f"vae key {key!r} has no LDM equivalent")
        out[f"{prefix}{ldm}.{param}"] = tensor
    return out


def _text_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """transformers >= 5.6 flattened CLIPTextModel (no `text_model.` prefix); WithProjection keeps it."""
    return {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}


def clip_to_ldm(state: Mapping[str, Any], prefix: str = SD_CLIP) -> dict[str, Any]:
    """OpenAI CLIP text encoder (SD1.x, SDXL's first): the transformers keys under `<prefix>text_model.`."""
    return {
        f"{prefix}text_model.{k}": v for k, v in _text_keys(state).items() if k != "text_projection.weight"
    }


OPEN_CLIP_LAYER = (
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
    ("self_attn.out_proj", "attn.out_proj"),
)


def open_clip_to_ldm(state: Mapping[str, Any], prefix: str = SD2_OPEN_CLIP) -> dict[str, Any]:
    """OpenCLIP text encoder (SD2, SDXL's second): q/k/v fused into `in_proj`, projection transposed."""
    import torch

    keys = _text_keys(state)
    out: dict[str, Any] = {}
    fused: dict[tuple[str, str], dict[str, Any]] = {}
    for key, tensor in keys.items():
        module, param = _split(key)
        if module == "embeddings.token_embedding":
            out[f"{prefix}token_embedding.weight"] = tensor
        elif module == "embeddings.position_embedding":
            out[f"{prefix}positional_embedding"] = tensor
        elif module == "final_layer_norm":
            out[f"{prefix}ln_final.{param}"] = tensor
        elif module == "text_projection":
            out[f"{prefix}text_projection"] = tensor.T.contiguous()
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj", module):
            fused.setdefault((m[1], param), {})[m[2]] = tensor
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", module):
            renamed = _rename(m[2], OPEN_CLIP_LAYER)
            if renamed == m[2]:
                raise UnmappedKey(f"text encoder key {key!r} has no OpenCLIP equivalent")
            out[f"{prefix}transformer.resblocks.{m[1]}.{renamed}.{param}"] = tensor
        else:
            raise UnmappedKey(f"text encoder key {key!r} has no OpenCLIP equivalent")
    for (layer, param), parts in fused.items():
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


def pipeline_to_ldm(components: Mapping[str, Any], *, open_clip: bool | None = None) -> dict[str, Any]:
    """A whole SD1.x/SD2/SDXL pipeline's modules (`unet`, `vae`, `text_encoder`[, `text_encoder_2`]) in the
    single-file layout. `open_clip` picks the SD2 text layout for the first encoder (default: when its hidden
    size is 1024, as in SD2)."""
    unet, vae, text = components["unet"], components["vae"], components["text_encoder"]
    out = unet_to_ldm(unet.state_dict(), unet.config)
    out.update(vae_to_ldm(vae.state_dict(), vae.config))
    second = components.get("text_encoder_2")
    if second is not None:  # SDXL: CLIP-L then OpenCLIP bigG
        out.update(clip_to_ldm(text.state_dict(), SDXL_CLIP))
        out.update(open_clip_to_ldm(second.state_dict(), SDXL_OPEN_CLIP))
        return out
    if open_clip is None:
        open_clip = getattr(text.config, "hidden_size", 0) == 1024
    if open_clip:
        out.update(open_clip_to_ldm(text.state_dict(), SD2_OPEN_CLIP))
    else:
        out.update(clip_to_ldm(text.state_dict(), SD_CLIP))
    return out
