"""Chat notifications on the core event bus: request state changes and conversation updates.

Each goes to the owner's topic `user.<id>` (core events: in-process, or Redis pub/sub across processes), so a
page, another tab or another service sees "this reply is generating / done" and "this conversation changed"
without polling. Types:

- `chat.request` `{request_id, conversation_id, state, kind}`: queued, generating, done, cancelled, error, dead,
  interrupted (`request_id` is the client's id, as in every chat frame);
- `chat.conversation` `{conversation_id, action: created|updated|deleted, title?}`.

Tokens never travel here: they stay in the broker's per-reply streams (replay from a seq, bounded, outliving a
subscriber's absence; see the brief's section 9). Delivery is the bus's: at most once, nothing when nobody
listens. Publishing is off the reply's path: events are queued, and one task per event loop publishes them in
batches after a 20 ms gathering window (`events.publish_many`: one Redis round trip, from a thread; in-process
fan-out on the loop), in order. A failure is logged, never raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

log = logging.getLogger("suite.chat.notify")

REQUEST = "chat.request"
GATHER_S = 0.02
CONVERSATION = "chat.conversation"


class Notifier:
    def __init__(self) -> None:
        self._pending: deque[tuple[int, str, dict[str, Any]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.failed = 0

    def notify(self, user_id: int, type: str, data: dict[str, Any]) -> None:
        """Queue one event (call from the event loop)."""
        self._pending.append((user_id, type, data))
        task = self._task
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.get_running_loop().create_task(self._flush(), name="chat-notify")

    async def _flush(self) -> None:
        from suite.core import events

        # A short gathering window: the events of a request's first milliseconds go out together, and never
        # compete with its first token for the interpreter.
        await asyncio.sleep(GATHER_S)
        while self._pending:
            batch = list(self._pending)
            self._pending.clear()
            try:
                if isinstance(events.get_bus(), events.RedisBus):
                    await asyncio.to_thread(_publish, batch)  # a network round trip: off the loop
                else:
                    _publish(batch)  # in-process fan-out: cheap, no thread needed
                self.published += len(batch)
            except Exception as exc:  # the bus is best effort: Redis down, a bad shape
                self.failed += len(batch)
                log.warning("chat: %d notification(s) not published: %s", len(batch), exc)

    async def drain(self) -> None:
        """Wait until everything queued so far is published (shutdown, tests)."""
        while self._task is not None and not self._task.done():
            if self._task.get_loop() is not asyncio.get_running_loop():
                break
            await asyncio.shield(self._task)


def _publish(batch: list[tuple[int, str, dict[str, Any]]]) -> None:
    from suite.core import events

    events.publish_many([events.make_event(events.user_topic(uid), type, data) for uid, type, data in batch])


_notifier = Notifier()


def notifier() -> Notifier:
    return _notifier


def request_state(
    user_id: int, *, request_id: str, conversation_id: str | None, state: str, kind: str | None = None
) -> None:
    data: dict[str, Any] = {"request_id": request_id, "conversation_id": conversation_id, "state": state}
    if kind:
        data["kind"] = kind
    _notifier.notify(user_id, REQUEST, data)


def conversation(user_id: int, *, conversation_id: str, action: str, title: str | None = None) -> None:
    data: dict[str, Any] = {"conversation_id": conversation_id, "action": action}
    if title is not None:
        data["title"] = title
    _notifier.notify(user_id, CONVERSATION, data)


def publish_now(user_id: int, type: str, data: dict[str, Any]) -> None:
    """Publish at once from sync code (routes in the threadpool, the CLI); a failure is logged."""
    try:
        _publish([(user_id, type, data)])
    except Exception as exc:
        log.warning("chat: notification %s not published: %s", type, exc)
