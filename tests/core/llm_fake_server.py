"""A real OpenAI-protocol HTTP server on 127.0.0.1 for the LLM client tests and the LLM benchmark.

A raw ASGI app served by uvicorn (in a thread for tests, or as a process: `python llm_fake_server.py` prints
`PORT <n>`). It speaks `/v1/chat/completions` (JSON and SSE), `/v1/embeddings` and `/v1/models`, and follows a
plan of `Step`s, one per request, to misbehave on purpose: answer a status (429 with Retry-After, 500),
send invalid JSON, close the connection mid-stream, stall mid-stream, or stream slowly. It records every
request and whether the client went away before a stream ended (to prove cancellation reaches the upstream).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_REPLY = "Hello from the fake OpenAI server, one word at a time."


@dataclass
class Step:
    """How to answer one request.

    kind: "ok" | "status" (answer `status` with `headers` and `body`) | "invalid_json" (after `after` tokens
    for a stream; the whole body otherwise) | "close_mid" (drop the connection after `after` tokens) |
    "stall_mid" (send `after` tokens, then nothing for `stall_s`) | "error_event" (an SSE error object after
    `after` tokens) | "no_done" (end the stream after `after` tokens without finish_reason or [DONE]).
    """

    kind: str = "ok"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    after: int = 2
    stall_s: float = 60.0
    reply: str | None = None
    token_delay_s: float = 0.0


@dataclass
class Record:
    path: str
    headers: dict[str, str]
    body: Any
    step: str
    outcome: str | None = None  # streams: "completed", or "disconnected" when the client left before the end
    peer: tuple[str, int] | None = None  # the client's address: one TCP connection per (host, port)


class FakeOpenAI:
    """The ASGI app and its state. `plan(...)` queues steps; requests beyond the plan get `default`."""

    def __init__(self) -> None:
        self.default = Step()
        self.steps: deque[Step] = deque()
        self.requests: list[Record] = []
        self.disconnects = 0  # streams whose client went away before the end (all time; see Record.outcome)
        self.completed = 0  # streams sent to the end
        self.model = "fake-model"
        self._lock = threading.Lock()

    def plan(self, *steps: Step) -> None:
        with self._lock:
            self.steps.extend(steps)

    def reset(self) -> None:
        with self._lock:
            self.default = Step()
            self.steps.clear()
            self.requests.clear()
            self.disconnects = 0
            self.completed = 0

    def _next_step(self) -> Step:
        with self._lock:
            return self.steps.popleft() if self.steps else self.default

    # --- ASGI -------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        if path == "/v1/models" and scope["method"] == "GET":
            self.requests.append(Record(path, headers, None, "models"))
            await _json(send, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
            return
        if path not in ("/v1/chat/completions", "/v1/embeddings") or scope["method"] != "POST":
            await _json(send, 404, {"error": {"message": f"no route {path}", "type": "not_found"}})
            return
        step = self._next_step()
        client = scope.get("client")
        record = Record(path, headers, payload, step.kind, peer=tuple(client) if client else None)
        self.requests.append(record)
        if step.kind == "status":
            extra = [(k.lower().encode(), v.encode()) for k, v in step.headers.items()]
            text = (
                step.body
                if step.body is not None
                else json.dumps({"error": {"message": f"status {step.status}"}})
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": step.status,
                    "headers": [(b"content-type", b"application/json"), *extra],
                }
            )
            await send({"type": "http.response.body", "body": text.encode()})
            return
        if path == "/v1/embeddings":
            texts = (payload or {}).get("input") or []
            data = [
                {"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0, 0.5]}
                for i, t in enumerate(texts)
            ]
            await _json(send, 200, {"object": "list", "data": data, "model": self.model})
            return
        payload = payload or {}
        words = _words(step.reply or _last_user(payload) or DEFAULT_REPLY)
        max_tokens = payload.get("max_tokens")
        finish = "stop"
        if isinstance(max_tokens, int) and len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
        model = str(payload.get("model") or self.model)
        if payload.get("stream"):
            await self._stream(receive, send, step, words, finish, model, payload, record)
        else:
            if step.kind == "invalid_json":
                await _raw(send, 200, b'{"choices": [ this is not json', b"application/json")
                return
            await _json(
                send,
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(words)},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": _usage(payload, words),
                },
            )

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        step: Step,
        words: list[str],
        finish: str,
        model: str,
        payload: dict[str, Any],
        record: Record,
    ) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.create_task(watch())
        completed = False
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
                }
            )

            async def event(obj: Any) -> None:
                data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                await send(
                    {"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True}
                )

            def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
                return {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                }

            await event(chunk({"role": "assistant", "content": ""}))
            for i, word in enumerate(words):
                if step.kind != "ok" and i == step.after:
                    if step.kind == "close_mid":
                        return  # without the end: uvicorn drops the connection
                    if step.kind == "invalid_json":
                        await event(b'{"choices": [{"delta": {"content": oops')
                        await asyncio.sleep(0.5)
                        return
                    if step.kind == "error_event":
                        await event({"error": {"message": "the model crashed", "type": "server_error"}})
                        await asyncio.sleep(0.5)
                        return
                    if step.kind == "no_done":
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        completed = True
                        return
                    if step.kind == "stall_mid":
                        try:
                            await asyncio.wait_for(gone.wait(), step.stall_s)
                        except TimeoutError:
                            pass
                if gone.is_set():
                    return
                delay = step.token_delay_s or self.default.token_delay_s
                if delay and i:
                    try:
                        await asyncio.wait_for(gone.wait(), delay)
                        return
                    except TimeoutError:
                        pass
                await event(chunk({"content": word}))
            await event(chunk({}, finish))
            if (payload.get("stream_options") or {}).get("include_usage"):
                await event({**chunk({}), "choices": [], "usage": _usage(payload, words)})
            await event(b"[DONE]")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            completed = True
        except OSError:  # the client went away while we wrote
            gone.set()
        finally:
            if completed:
                self.completed += 1
                record.outcome = "completed"
            else:
                if not gone.is_set():
                    await asyncio.sleep(0)
                if gone.is_set():
                    self.disconnects += 1
                    record.outcome = "disconnected"
            watcher.cancel()


def _words(text: str) -> list[str]:
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out.append(word if i == 0 else " " + word)
    return [w for w in out if w]


def _last_user(payload: dict[str, Any]) -> str:
    for message in reversed(payload.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def _usage(payload: dict[str, Any], words: list[str]) -> dict[str, int]:
    prompt = sum(
        len(str(m.get("content", "")).split()) for m in payload.get("messages") or [] if isinstance(m, dict)
    )
    return {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words)}


async def _raw(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]}
    )
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, obj: Any) -> None:
    await _raw(send, status, json.dumps(obj).encode(), b"application/json")


class ServerThread:
    """uvicorn serving an app on 127.0.0.1 (a port picked by the OS) in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(
            app, log_level="critical", access_log=False, lifespan="off", timeout_keep_alive=30
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def wait_for(predicate: Callable[[], bool], *, timeout: float = 15.0, interval: float = 0.02) -> bool:
    """Poll `predicate` until true or the deadline passes (no timed assertions in tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def main() -> None:  # pragma: no cover - used by benchmarks/bench_llm.py
    delay = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    app = FakeOpenAI()
    app.default = Step(token_delay_s=delay)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        app, log_level="critical", access_log=False, lifespan="off", timeout_keep_alive=30
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":  # pragma: no cover
    main()
