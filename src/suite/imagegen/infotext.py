"""A1111 `parameters` infotext: build it for every PNG, parse it back (png-info). Light module."""

from __future__ import annotations

import re
from typing import Any

from suite import __version__

_PARAM = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _quote(value: Any) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text and '"' not in text:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    schedule: str | None,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model_hash: str | None,
    model_name: str | None,
    clip_skip: int = 1,
    lora_hashes: dict[str, str] | None = None,
    denoising_strength: float | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """`<prompt>\\nNegative prompt: ...\\nSteps: ..., Sampler: ...`; no timestamp, so PNG bytes are stable."""
    params: dict[str, Any] = {"Steps": steps, "Sampler": sampler}
    if schedule and schedule not in ("uniform", "automatic"):
        params["Schedule type"] = schedule.replace("_", " ").title().replace("Sgm", "SGM")
    cfg = int(cfg_scale) if float(cfg_scale).is_integer() else cfg_scale
    params.update({"CFG scale": cfg, "Seed": seed, "Size": f"{width}x{height}"})
    if model_hash:
        params["Model hash"] = model_hash
    if model_name:
        params["Model"] = model_name
    if denoising_strength is not None:
        params["Denoising strength"] = denoising_strength
    if clip_skip > 1:
        params["Clip skip"] = clip_skip
    if lora_hashes:
        params["Lora hashes"] = ", ".join(f"{k}: {v}" for k, v in lora_hashes.items())
    params.update(extra or {})
    params["Version"] = f"suite {__version__}"
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in params.items()))
    return "\n".join(lines)


def parse(text: str) -> dict[str, Any]:
    """A1111 infotext -> {prompt, negative_prompt, <key>: value}; quoted values may hold commas."""
    lines = text.strip().split("\n")
    params_line = ""
    if lines and len(_PARAM.findall(lines[-1])) >= 3:
        params_line = lines.pop()
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    target = prompt_lines
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:") :].strip()
        target.append(line)
    out: dict[str, Any] = {
        "prompt": "\n".join(prompt_lines).strip(),
        "negative_prompt": "\n".join(negative_lines),
    }
    for key, value in _PARAM.findall(params_line):
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[key.strip()] = value
    if "Size" in out and "x" in str(out["Size"]):
        w, _, h = str(out["Size"]).partition("x")
        out["Size-1"], out["Size-2"] = w, h
    return out


LORA_SYNTAX = re.compile(r"<lora:([^:>]+)(?::([-+]?[0-9]*\.?[0-9]+))?>")


def extract_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """`<lora:name:0.8>` tags removed from the prompt and returned as (name, weight)."""
    found = [
        (m.group(1).strip(), float(m.group(2)) if m.group(2) else 1.0) for m in LORA_SYNTAX.finditer(prompt)
    ]
    cleaned = re.sub(r"\s{2,}", " ", LORA_SYNTAX.sub("", prompt)).strip().strip(",").strip()
    return cleaned, found
