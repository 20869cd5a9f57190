"""The transformers runtime in a child process, so loading it never stalls the server's event loop.

Loading holds the GIL in single C calls of 0.1-0.5 s that no thread can interrupt: the dlopen and static
initialisers of libtorch, marshal of big `.pyc` files, the Rust tokenizer parsing tokenizer.json, `json.loads`
of it, and the first-use GGUF conversion (dequantizing whole tensors). On the engine's thread they showed as
event-loop lag (p99 79 ms, max 0.3 s during load). Here the parent only moves JSON lines over two pipes:
`{"op": "load" | "render" | "count" | "generate" | "stop"}` in, `{"ev": "ok" | "text" | "done" | "error"}` out.
The child exits when its stdin closes (within `EXIT_GRACE_S`, even mid-load), so it never outlives the server,
even one killed with SIGKILL.
`ChildRuntime` has the interface of `ml.TransformersRuntime`; the engine calls it on its dedicated thread.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from suite.core.llm.base import ContextTooLong, GenerationResult, ProviderError

POLL_S = 0.02  # how often a waiting generate() looks at should_stop
EXIT_GRACE_S = 2.0  # the parent gone, the child exits within this long even in the middle of a load


class ChildRuntime:
    name = "transformers"

    def __init__(self, gguf: Path, copy_dir: Path, *, sha256: str, threads: int) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "suite.core.llm.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._generation = 0
        threading.Thread(target=self._read, name="suite-llm-child-reader", daemon=True).start()
        try:
            info = self._call(
                {
                    "op": "load",
                    "gguf": str(gguf),
                    "copy_dir": str(copy_dir),
                    "sha256": sha256,
                    "threads": threads,
                }
            )
        except BaseException:
            self.close()
            raise
        self.copy_info: dict[str, Any] = info["copy"]
        self.load_seconds = float(info["load_seconds"])
        self.context_tokens = int(info["context_tokens"])
        self.threads = threads
        self.pid = self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self._events.put(json.loads(line))
            except ValueError:
                continue
        self._events.put(None)

    def _send(self, message: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(message).encode() + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise self._gone() from None

    def _gone(self) -> ProviderError:
        code = self._proc.poll()
        return ProviderError(f"the local model process exited (code {code})")

    def _next(self, timeout: float | None = None) -> dict[str, Any]:
        event = self._events.get(timeout=timeout)
        if event is None:
            self._events.put(None)  # every later call sees the end too
            raise self._gone()
        if event.get("ev") == "error":
            kind, message = event.get("type", "Error"), str(event.get("message", ""))
            if kind == "ImportError":
                raise ImportError(message)
            if kind == "ContextTooLong":
                raise ContextTooLong(message)
            raise ProviderError(f"{kind}: {message}")
        return event

    def _call(self, message: dict[str, Any]) -> Any:
        with self._lock:
            self._send(message)
            return self._next().get("value")

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        return str(self._call({"op": "render", "messages": list(messages)}))

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return int(self._call({"op": "count", "messages": list(messages)}))

    def generate(
        self,
        messages: Sequence[dict[str, str]],
        *,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
        **options: Any,
    ) -> GenerationResult:
        with self._lock:
            self._generation += 1
            gid = self._generation
            self._send({"op": "generate", "id": gid, "messages": list(messages), **options})
            stop_sent = False
            while True:
                if not stop_sent and should_stop():
                    self._send({"op": "stop", "id": gid})
                    stop_sent = True
                try:
                    event = self._next(timeout=POLL_S)
                except queue.Empty:
                    continue
                if event["ev"] == "text":
                    on_text(event["text"])
                elif event["ev"] == "done":
                    return GenerationResult(
                        int(event["prompt_tokens"]), int(event["completion_tokens"]), str(event["finish"])
                    )

    def close(self) -> None:
        if self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)


# --- the child ---------------------------------------------------------------------------------------------


def _serve() -> None:  # pragma: no cover - runs in the child process (covered by the local model tests)
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
    stopped: set[int] = set()  # generation ids the parent stopped (set.add is atomic)
    closed = threading.Event()
    done = threading.Event()

    def read() -> None:
        for line in sys.stdin.buffer:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("op") == "stop":
                stopped.add(int(message.get("id", 0)))
            else:
                inbox.put(message)
        closed.set()  # the parent is gone: stop decoding, and never outlive it by more than a moment
        inbox.put(None)
        if not done.wait(EXIT_GRACE_S):  # busy loading (one long C call): leave without waiting for it
            os._exit(0)

    def emit(event: dict[str, Any]) -> None:
        out.write(json.dumps(event) + "\n")

    threading.Thread(target=read, daemon=True).start()
    runtime: Any = None
    while (message := inbox.get()) is not None:
        op = message.pop("op")
        try:
            if op == "load":
                from suite.core.llm import ml

                built = ml.build_cached_copy(
                    Path(message["gguf"]), Path(message["copy_dir"]), source_sha256=message["sha256"]
                )
                runtime = ml.TransformersRuntime(Path(message["copy_dir"]), threads=int(message["threads"]))
                value = {
                    "copy": built,
                    "load_seconds": runtime.load_seconds,
                    "context_tokens": runtime.context_tokens,
                }
                emit({"ev": "ok", "value": value})
            elif op == "render":
                emit({"ev": "ok", "value": runtime.render(message["messages"])})
            elif op == "count":
                emit({"ev": "ok", "value": runtime.count_prompt_tokens(message["messages"])})
            elif op == "generate":
                gid = int(message.pop("id"))
                result = runtime.generate(
                    message.pop("messages"),
                    on_text=lambda text: emit({"ev": "text", "text": text}),
                    should_stop=lambda gid=gid: gid in stopped or closed.is_set(),
                    **message,
                )
                stopped.discard(gid)
                emit(
                    {
                        "ev": "done",
                        "prompt_tokens": result.prompt_tokens,
                        "completion_tokens": result.completion_tokens,
                        "finish": result.finish_reason,
                    }
                )
        except Exception as exc:
            kind = "ImportError" if isinstance(exc, ImportError) else type(exc).__name__
            message_text = getattr(exc, "message", None) or str(exc)
            emit({"ev": "error", "type": kind, "message": message_text})
    done.set()


if __name__ == "__main__":  # pragma: no cover
    _serve()
