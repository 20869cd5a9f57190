"""Secrets stay out of jobs: task arguments are checked before they are stored, error texts and log lines
are redacted (settings' secrets, bearer tokens, `sk-...` keys, `password=...`, passwords in URLs)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any, cast

from pydantic import SecretStr

from suite.core.config import get_settings, iter_leaves
from suite.core.errors import UsageError

ERROR_MAX_CHARS = 4000
SECRET_KEY_RE = re.compile(r"(?i)^(.*[_-])?(password|passwd|secret|api[_-]?key|token|pat|private[_-]?key)$")


def check_no_secrets(values: dict[str, Any], what: str) -> dict[str, Any]:
    """`values` as JSON-safe data; UsageError when a value is a SecretStr or a key names a secret."""
    if not values:
        return {}
    _walk(values, "", what)
    return cast(dict[str, Any], json_safe(values))


def _walk(value: Any, path: str, what: str) -> None:
    # A module function: a nested one that calls itself is a reference cycle, left for the garbage collector
    # on every enqueue (whose full passes then cost a busy producer tens of microseconds per job).
    if isinstance(value, SecretStr):
        raise UsageError(
            f"{what} are stored in plain form: {path} is a secret; pass an id and read it inside"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and SECRET_KEY_RE.match(key) and item not in (None, ""):
                raise UsageError(f"{what} are stored in plain form: {key!r} looks like a secret")
            _walk(item, f"{path}.{key}" if path else str(key), what)
    elif isinstance(value, list | tuple | set):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", what)


def json_safe(value: Any) -> Any:
    """`value` as plain JSON data (unknown types as their str), or its repr when it cannot be."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return repr(value)


_REDACTIONS = (
    (re.compile(r"(?i)\bBearer\s+[^\s,;'\"]+"), "Bearer ***"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{4,}"), "sk-***"),
    (re.compile(r"\bst_[A-Za-z0-9_\-]{6,}"), "st_***"),
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|secret|api[_-]?key|token|access[_-]?token)"
            r"([\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&'\"}]+)"
        ),
        r"\1\2***",
    ),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]*:)([^\s@/]+)@"), r"\1***@"),
)


def _settings_secrets() -> list[str]:
    try:
        leaves = iter_leaves(get_settings())
    except Exception:
        return []
    values = [v.get_secret_value() for _, v in leaves if isinstance(v, SecretStr)]
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def redact(text: str) -> str:
    """`text` without secrets: settings' SecretStr values, bearer tokens, `sk-...` keys, `password=...`."""
    for secret in _settings_secrets():
        text = text.replace(secret, "***")
    for pattern, repl in _REDACTIONS:
        text = pattern.sub(repl, text)
    return text


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = redact(text)
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 1] + "…"


class RedactingFormatter(logging.Formatter):
    """Log lines (tracebacks included) with secrets redacted: a failing task's message can carry one."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
