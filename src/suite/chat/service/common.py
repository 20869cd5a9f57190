"""Shared by the service modules: the chat settings, Core statements for the hot paths, `Busy`."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, case, func, insert, update

from suite.chat.models import ChatRequest, Conversation, Message
from suite.chat.settings import ChatSettings, chat_settings
from suite.core.errors import Conflict


def settings() -> ChatSettings:
    return chat_settings()


# Tables for Core statements on the hot paths (the ORM unit of work costs ~0.3 ms a flush).
_CONV = cast(Table, Conversation.__table__)
_REQ = cast(Table, ChatRequest.__table__)
_MSG = cast(Table, Message.__table__)
_INSERT_CONV = insert(_CONV)
_INSERT_REQ = insert(_REQ)
_INSERT_MSG = insert(_MSG)
_SET_LEAF = (
    update(_CONV)
    .where(_CONV.c.id == bindparam("cid"))
    .values(active_leaf_id=bindparam("leaf"), updated_at=bindparam("now"))
)
_FINISH_REQ = (
    update(_REQ)
    .where(_REQ.c.id == bindparam("rid"))
    .values(
        state=bindparam("state"),
        finished_at=bindparam("now"),
        first_token_at=func.coalesce(_REQ.c.first_token_at, bindparam("first_token_at")),
        tokens_in=bindparam("tokens_in"),
        tokens_out=bindparam("tokens_out"),
        error_code=bindparam("error_code"),
        error_message=bindparam("error_message"),
    )
)
_FINISH_MSG = (
    update(_MSG)
    .where(_MSG.c.id == bindparam("mid"))
    .values(
        content=bindparam("content"),
        status=bindparam("status"),
        finish_reason=bindparam("finish_reason"),
        tokens_in=bindparam("tokens_in"),
        tokens_out=bindparam("tokens_out"),
        runtime=bindparam("runtime"),
        error_code=bindparam("error_code"),
        completed_at=bindparam("now"),
    )
)
_TOUCH_CONV = update(_CONV).where(_CONV.c.id == bindparam("cid")).values(updated_at=bindparam("now"))
_SAVE_PARTIAL = (
    update(_MSG)
    .where(_MSG.c.id == bindparam("mid"), _MSG.c.status == "streaming")
    .values(content=bindparam("content"))
)
_FIRST_TOKEN = (
    update(_REQ)
    .where(_REQ.c.id == bindparam("rid"), _REQ.c.first_token_at.is_(None))
    .values(first_token_at=bindparam("at"))
)
_MARK_STARTED = (
    update(_REQ)
    .where(_REQ.c.id == bindparam("rid"), _REQ.c.state.in_(("queued", "generating")))
    .values(
        state="generating",
        deliveries=case(
            (_REQ.c.deliveries > bindparam("attempt"), _REQ.c.deliveries), else_=bindparam("attempt")
        ),
        attempt=bindparam("attempt"),
        worker=bindparam("worker"),
        started_at=func.coalesce(_REQ.c.started_at, bindparam("now")),
    )
)
_RESET_REPLY = (
    update(_MSG)
    .where(_MSG.c.request_id == bindparam("rid"), _MSG.c.role == "assistant", _MSG.c.status == "streaming")
    .values(attempt=bindparam("attempt"), content="")
)
MAX_DEPTH = 100_000  # a cycle guard for the branch walk (parent ids never form one; belt and braces)


class Busy(Conflict):
    code = "busy"
