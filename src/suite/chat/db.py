"""Chat's SQL work from async code: one dedicated thread, FIFO order, group commit.

Every `run_db(fn, **kwargs)` call becomes an operation `fn(session, **kwargs)` on the `chat-db` thread. The thread
takes every operation queued meanwhile and runs them in one transaction, each inside its own SAVEPOINT (an
operation that raises rolls back alone and gets its exception), commits once, then hands the results back to
their event loops. Why one thread: on SQLite every transaction takes the write lock up front (`BEGIN IMMEDIATE`,
see suite.core.db), so threads of one process that each open a transaction queue on SQLite's busy handler, which
sleeps 1, 2, 5, 10 ... 100 ms between tries; measured at 20 sockets, a quarter of the server's samples waited
there. One thread never contends with itself, and one commit serves a whole batch. On PostgreSQL the same
batching saves round trips.

Results are delivered only after the commit, so an operation's caller may act on it as durable. `submit()`
returns the future without waiting: writes off the critical path (the worker's start bookkeeping, partial
text) are queued and stay in order with the ones after them, because the thread is FIFO.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
LOCK_RETRIES = 6
MAX_BATCH = 64

log = logging.getLogger("suite.chat.db")


def _locked(exc: BaseException) -> bool:
    text = f"{exc} {getattr(exc, '__cause__', '')}".lower()
    return "database is locked" in text or "database table is locked" in text


def readonly(fn: F) -> F:
    """Mark an operation that only reads: in a batch it runs without a savepoint of its own."""
    fn.chat_db_readonly = True  # type: ignore[attr-defined]
    return fn


def atomic(fn: F) -> F:
    """Mark an operation that opens its own savepoint around its writes (no second one in a batch)."""
    fn.chat_db_readonly = True  # type: ignore[attr-defined]
    return fn


class _Op:
    __slots__ = ("fn", "future", "kwargs", "loop")

    def __init__(
        self,
        fn: Callable[..., Any],
        kwargs: dict[str, Any],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.fn, self.kwargs, self.future, self.loop = fn, kwargs, future, loop


def _deliver(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():  # its awaiting task was cancelled
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class DbThread:
    """The process's chat SQL thread (started on first use, a daemon; restarted after a fork)."""

    def __init__(self) -> None:
        self._queue: deque[_Op] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.batches = 0
        self.operations = 0

    def submit(self, fn: Callable[..., T], kwargs: dict[str, Any]) -> asyncio.Future[T]:
        return self.submit_many([(fn, kwargs)])[0]

    def submit_many(self, ops: list[tuple[Callable[..., Any], dict[str, Any]]]) -> list[asyncio.Future[Any]]:
        """Queue several operations at once: they run in the same batch (one transaction), in order."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        with self._cond:
            for fn, kwargs in ops:
                future: asyncio.Future[Any] = loop.create_future()
                futures.append(future)
                self._queue.append(_Op(fn, kwargs, future, loop))
            self._ensure_thread()
            self._cond.notify()
        return futures

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's thread does not exist here
            self._pid, self._thread = os.getpid(), None
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="chat-db", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
            try:
                self._execute(batch)
            except BaseException as exc:  # never let the thread die with futures unanswered
                log.exception("chat-db: a batch failed outside its transaction")
                self._hand_back([(op, False, exc) for op in batch])

    def _execute(self, batch: list[_Op]) -> None:
        from suite.core.db import session_scope

        outcome: list[tuple[_Op, bool, Any]] = []
        for attempt in range(LOCK_RETRIES):
            outcome = []
            try:
                with session_scope() as session:
                    if len(batch) == 1:  # no savepoint needed: a failure rolls the transaction back
                        op = batch[0]
                        outcome.append((op, True, op.fn(session, **op.kwargs)))
                    else:
                        for i, op in enumerate(batch):
                            if i:  # an earlier operation may have changed rows behind the identity map
                                session.expire_all()
                            try:
                                if getattr(op.fn, "chat_db_readonly", False):
                                    value = op.fn(session, **op.kwargs)
                                else:
                                    with session.begin_nested():
                                        value = op.fn(session, **op.kwargs)
                                outcome.append((op, True, value))
                            except Exception as exc:
                                if _locked(exc):
                                    raise
                                outcome.append((op, False, exc))
                break
            except Exception as exc:
                # SQLite in WAL mode answers SQLITE_BUSY when another process holds the write lock past the
                # busy timeout: the whole transaction was rolled back, so running the batch again is safe.
                if _locked(exc) and attempt < LOCK_RETRIES - 1:
                    time.sleep(0.02 * 2**attempt)
                    continue
                if len(batch) > 1 and not _locked(exc):
                    # The commit itself failed (or the session broke): isolate the culprit.
                    for op in batch:
                        self._execute([op])
                    return
                outcome = [(op, False, exc) for op in batch]
                break
        self.batches += 1
        self.operations += len(batch)
        self._hand_back(outcome)

    @staticmethod
    def _hand_back(outcome: list[tuple[_Op, bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for op, ok, value in outcome:
            by_loop.setdefault(op.loop, []).append((op.future, ok, value))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, results)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass


_db = DbThread()


def db_thread() -> DbThread:
    return _db


async def run_db(fn: Callable[..., T], **kwargs: Any) -> T:
    """`fn(session, **kwargs)` on the chat-db thread; returns once its transaction committed."""
    return await _db.submit(fn, kwargs)


def submit_db(fn: Callable[..., T], **kwargs: Any) -> asyncio.Future[T]:
    """Queue `fn(session, **kwargs)` without waiting (a failure is logged unless the future is awaited)."""
    future = _db.submit(fn, kwargs)
    future.add_done_callback(_log_failure)
    return future


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("chat-db: background write failed: %s", future.exception())


def _noop(session: Any) -> None:
    return None


async def drain_db() -> None:
    """Wait until everything queued before this call has run (FIFO)."""
    await _db.submit(_noop, {})


def _forget_in_child() -> None:
    # A forked child has no chat-db thread, and the parent's queued operations belong to the parent's loops.
    global _db
    _db = DbThread()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
