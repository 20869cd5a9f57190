"""Request and response models (REST, WebSocket frames, /v1). Never ORM objects in responses."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from suite.chat.text import check_text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _checked(value: Any) -> Any:
    if isinstance(value, str):
        check_text(value)
    return value


class ConversationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    title: str
    system_prompt: str | None
    model: str | None
    active_leaf_id: str | None
    created_at: datetime
    updated_at: datetime


class ConversationPage(BaseModel):
    items: list[ConversationRead]
    next_cursor: str | None


class ConversationCreate(_Strict):
    title: str | None = Field(None, max_length=200)
    system_prompt: str | None = Field(None, max_length=16_000)
    model: str | None = Field(None, max_length=100)

    _check = field_validator("title", "system_prompt", "model")(_checked)


class ConversationUpdate(_Strict):
    title: str | None = Field(None, max_length=200)
    system_prompt: str | None = Field(None, max_length=16_000)
    model: str | None = Field(None, max_length=100)
    active_leaf_id: str | None = None

    _check = field_validator("title", "system_prompt", "model")(_checked)


class MessageRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    conversation_id: str
    parent_id: str | None
    role: str
    content: str
    status: str
    attempt: int
    model: str | None
    runtime: str | None
    finish_reason: str | None
    tokens_in: int | None
    tokens_out: int | None
    error_code: str | None
    created_at: datetime
    completed_at: datetime | None


class RequestRead(BaseModel):
    request_id: str
    conversation_id: str | None
    kind: str
    state: str
    attempts: int
    deliveries: int
    model: str
    user_message_id: str | None
    message_id: str | None
    error_code: str | None
    error_message: str | None
    usage: dict[str, int | None]
    timings: dict[str, float | None]
    enqueued_at: datetime
    finished_at: datetime | None


class SendBody(_Strict):
    request_id: str = Field(min_length=1, max_length=64)
    content: str = Field(min_length=1)
    parent_id: str | None = None
    model: str | None = Field(None, max_length=100)
    system_prompt: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)

    _check = field_validator("request_id", "content", "parent_id", "model", "system_prompt")(_checked)


class RegenerateBody(_Strict):
    request_id: str = Field(min_length=1, max_length=64)
    model: str | None = Field(None, max_length=100)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)

    _check = field_validator("request_id", "model")(_checked)


class SendAccepted(BaseModel):
    request_id: str
    conversation_id: str | None
    user_message_id: str | None
    message_id: str | None
    duplicate: bool
    events_url: str


# --- WebSocket frames (client -> server) ------------------------------------------------------------------


class AuthFrame(_Strict):
    type: Literal["auth"]
    token: str = Field(min_length=1, max_length=512)


class SendFrame(_Strict):
    type: Literal["send"]
    request_id: str = Field(min_length=1, max_length=64)
    conversation_id: str | None = None
    content: str = Field(min_length=1)
    parent_id: str | None = None
    model: str | None = Field(None, max_length=100)
    system_prompt: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)


class RegenerateFrame(_Strict):
    type: Literal["regenerate"]
    request_id: str = Field(min_length=1, max_length=64)
    conversation_id: str | None = None
    message_id: str
    model: str | None = Field(None, max_length=100)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)


class CancelFrame(_Strict):
    type: Literal["cancel"]
    request_id: str = Field(min_length=1, max_length=64)


class ResumeFrame(_Strict):
    type: Literal["resume"]
    request_id: str = Field(min_length=1, max_length=64)
    after_seq: int = Field(0, ge=0)


class PingFrame(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["ping"]
    ts: float | int | str | None = None


CLIENT_FRAMES: dict[str, type[BaseModel]] = {
    "auth": AuthFrame,
    "send": SendFrame,
    "regenerate": RegenerateFrame,
    "cancel": CancelFrame,
    "resume": ResumeFrame,
    "ping": PingFrame,
}


# --- OpenAI-compatible /v1 ---------------------------------------------------------------------------------


class OAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class OAIStreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class OAIChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[OAIMessage]
    stream: bool = False
    stream_options: OAIStreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    n: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
