"""Events and topics: the `Event` model, topic validation and matching, the topic names of jobs and users."""

from __future__ import annotations

import json
import re
import time
import uuid
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from suite.core.errors import SuiteError, ValidationFailed

CHANNEL_PREFIX = "suite:events:"
MAX_TOPIC_LENGTH = 200
#: Frame types of the WebSocket protocol; events may not use them, so clients can tell the two apart.
RESERVED_TYPES = frozenset({"auth", "subscribe", "subscribed", "error"})

_SEGMENT = r"[A-Za-z0-9_:-]+"
TOPIC_RE = re.compile(rf"{_SEGMENT}(\.{_SEGMENT})*")  # used with fullmatch
PATTERN_RE = re.compile(rf"\*|{_SEGMENT}(\.{_SEGMENT})*\.\*")
TYPE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


class SlowConsumer(SuiteError):
    """The subscriber's queue overflowed; it was dropped and receives nothing more."""

    code = "slow_consumer"
    status_code = 503


class Event(BaseModel):
    """One event. `data` must be plain JSON (no NaN, no datetimes): it crosses processes, reaches browsers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    topic: str
    type: str
    data: dict[str, Any] = Field(default_factory=dict)
    ts: float = Field(default_factory=time.time, description="publish time, seconds since the epoch")

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        check_topic(value)
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if not TYPE_RE.fullmatch(value):
            raise ValueError("type must be 1-100 characters of letters, digits and . _ : -")
        if value in RESERVED_TYPES:
            raise ValueError(f"type {value!r} is reserved for the WebSocket protocol")
        return value

    @field_validator("data")
    @classmethod
    def _data(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"data is not JSON-serialisable: {exc}") from None
        return value

    @cached_property
    def json_text(self) -> str:
        """The JSON form sent to Redis and WebSocket clients (computed once per event)."""
        return self.model_dump_json()


def check_topic(topic: str, *, pattern: bool = False) -> None:
    """Raise ValueError unless `topic` is a valid topic (or, with `pattern`, a topic or `prefix.*` / `*`)."""
    if not topic:
        raise ValueError("topic must not be empty")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise ValueError(f"topic longer than {MAX_TOPIC_LENGTH} characters")
    if TOPIC_RE.fullmatch(topic) or (pattern and PATTERN_RE.fullmatch(topic)):
        return
    allowed = "dotted segments of letters, digits and _ : -" + (
        ", optionally ending in .*" if pattern else ""
    )
    raise ValueError(f"invalid topic {topic!r}: {allowed}")


def is_pattern(topic: str) -> bool:
    return topic.endswith("*")


def topic_matches(pattern: str, topic: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic


def job_topic(job_id: str) -> str:
    return f"jobs.{job_id}"


def user_topic(user_id: int) -> str:
    return f"user.{user_id}"


def make_event(topic: str, type: str, data: dict[str, Any] | None = None) -> Event:
    """A validated event, or ValidationFailed naming the problem."""
    try:
        return Event(topic=topic, type=type, data=data if data is not None else {})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "event"
        raise ValidationFailed(f"invalid event {where}: {err['msg'].removeprefix('Value error, ')}") from None
