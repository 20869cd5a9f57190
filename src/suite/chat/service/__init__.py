"""Conversations, messages and requests in SQL: functions that take the session and keyword-only arguments.

Every lookup is scoped to the user: another user's conversation, message or request is NotFound. Split by
responsibility: `conversations` (the tree, export, stats), `requests` (send, regenerate, /v1, idempotency),
`jobs` (the worker side); `common` holds the settings accessor and the Core statements of the hot paths.
"""

from __future__ import annotations

from suite.chat.service.common import MAX_DEPTH, Busy, settings
from suite.chat.service.conversations import (
    branch_of,
    create_conversation,
    delete_conversation,
    export_conversation,
    get_conversation,
    get_message,
    list_conversations,
    list_messages,
    running_request,
    stats,
    update_conversation,
)
from suite.chat.service.jobs import (
    Job,
    decode_job,
    done_frame,
    encode_job,
    finish_job,
    load_job,
    mark_started,
    request_timings,
    save_partial,
    start_job,
    trim_context,
)
from suite.chat.service.requests import (
    Submitted,
    check_budget,
    check_duplicate,
    create_api_request,
    create_regenerate,
    create_send,
    fail_request,
    find_request,
    get_request,
    interrupt_unfinished,
    send_fingerprint,
)
from suite.chat.text import sha256_of, title_from

__all__ = [
    "MAX_DEPTH",
    "Busy",
    "Job",
    "Submitted",
    "branch_of",
    "check_budget",
    "check_duplicate",
    "create_api_request",
    "create_conversation",
    "create_regenerate",
    "create_send",
    "decode_job",
    "delete_conversation",
    "done_frame",
    "encode_job",
    "export_conversation",
    "fail_request",
    "find_request",
    "finish_job",
    "get_conversation",
    "get_message",
    "get_request",
    "interrupt_unfinished",
    "list_conversations",
    "list_messages",
    "load_job",
    "mark_started",
    "request_timings",
    "running_request",
    "save_partial",
    "send_fingerprint",
    "settings",
    "sha256_of",
    "start_job",
    "stats",
    "title_from",
    "trim_context",
    "update_conversation",
]
