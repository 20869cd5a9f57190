"""Text rules shared by every entry point: strict UTF-8 (no lone surrogates), no NUL, token estimates."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any


class BadText(ValueError):
    pass


def check_text(value: str, *, field: str = "content") -> str:
    """Refuse what SQL or UTF-8 cannot hold, identically on SQLite and PostgreSQL."""
    if "\x00" in value:
        raise BadText(f"{field} contains a NUL character")
    try:
        value.encode("utf-8", "strict")
    except UnicodeEncodeError:
        raise BadText(f"{field} contains a lone surrogate (not valid UTF-8)")
    return value


def check_tree(value: Any, *, field: str = "frame") -> None:
    """Every string (keys too) in a parsed JSON value passes `check_text`."""
    if isinstance(value, str):
        check_text(value, field=field)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, field=field)
            check_tree(v, field=f"{field}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_tree(v, field=f"{field}[{i}]")


def estimate_tokens(text: str) -> int:
    """A conservative estimate (UTF-8 bytes / 3): English BPE gives ~4 chars a token, CJK ~1-2 a character."""
    return math.ceil(len(text.encode("utf-8", "replace")) / 3)


def message_tokens(message: dict[str, str]) -> int:
    return estimate_tokens(message.get("content") or "") + 4


def sha256_of(value: Any) -> str:
    raw = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def title_from(content: str, limit: int = 60) -> str:
    line = " ".join(content.split())
    return (line[: limit - 1] + "…") if len(line) > limit else (line or "New chat")
