"""A real HTTP file server on 127.0.0.1 (uvicorn) standing in for a download URL and the Hugging Face hub.

It speaks the protocol the downloader relies on: GET and HEAD, `Range: bytes=N-` -> 206 with Content-Range,
416 past the end, ETag and If-Range, redirects (the hub's resolve URLs redirect to a /cdn path), and the hub's
model listing (`/api/models/{repo}/revision/{rev}` with `siblings[].rfilename`, `size` and `lfs.sha256`).
Fault switches, consumed one per request of a path: `drop` (headers and half the body, then the connection is
cut), `500`, `norange` (ignores Range), `slow` (64 KiB chunks with a pause). Every request is logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from collections import defaultdict
from typing import Any
from urllib.parse import unquote


class DroppedConnection(Exception):
    """Raised inside the app to make uvicorn cut the connection mid-body."""


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}  # /files/<name>
        self.repos: dict[str, dict[str, bytes]] = {}  # repo_id -> rfilename -> content
        self.extra_siblings: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.log: list[dict[str, Any]] = []
        self.url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # --- the ASGI app --------------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        raw = scope.get("raw_path", scope["path"].encode()).decode()
        path = unquote(raw.split("?", 1)[0])
        self.log.append({"method": scope["method"], "path": path, "range": headers.get("range")})
        fault = self.faults[path].pop(0) if self.faults.get(path) else None
        if fault == "500":
            await self._send(send, 500, b"boom")
            return
        if path.startswith("/api/models/"):
            await self._listing(send, path)
            return
        if "/resolve/" in path:
            repo, _, rest = path.lstrip("/").partition("/resolve/")
            _rev, _, rfilename = rest.partition("/")
            if repo in self.repos and rfilename in self.repos[repo]:
                await self._send(send, 302, b"", {"location": f"/cdn/{repo}/{rfilename}"})
            else:
                await self._send(send, 404, b"no such file")
            return
        data = self._content(path)
        if data is None:
            await self._send(send, 404, b"not found")
            return
        await self._file(send, scope["method"], headers, data, fault)

    def _content(self, path: str) -> bytes | None:
        if path.startswith("/files/"):
            return self.files.get(path.removeprefix("/files/"))
        if path.startswith("/cdn/"):
            owner, name, rfilename = path.removeprefix("/cdn/").split("/", 2)
            return self.repos.get(f"{owner}/{name}", {}).get(rfilename)
        return None

    async def _listing(self, send: Any, path: str) -> None:
        repo = path.removeprefix("/api/models/").split("/revision/")[0]
        if repo not in self.repos:
            await self._send(send, 404, b'{"error": "Repository not found"}')
            return
        siblings = []
        for name, data in self.repos[repo].items():
            entry: dict[str, Any] = {"rfilename": name, "size": len(data)}
            if name.endswith(".safetensors"):
                entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            siblings.append(entry)
        siblings += self.extra_siblings[repo]
        body = json.dumps({"id": repo, "sha": "0" * 40, "siblings": siblings}).encode()
        await self._send(send, 200, body, {"content-type": "application/json"})

    async def _file(
        self, send: Any, method: str, headers: dict[str, str], data: bytes, fault: str | None
    ) -> None:
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        start = 0
        status = 200
        wanted = headers.get("range", "")
        if_range = headers.get("if-range")
        if wanted.startswith("bytes=") and fault != "norange" and (if_range is None or if_range == etag):
            start = int(wanted[6:].split("-", 1)[0] or 0)
            if start >= len(data):
                await self._send(send, 416, b"", {"content-range": f"bytes */{len(data)}"})
                return
            status = 206
        body = data[start:]
        extra = {"etag": etag, "accept-ranges": "bytes"}
        if status == 206:
            extra["content-range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/octet-stream"),
                    *[(k.encode(), v.encode()) for k, v in extra.items()],
                ],
            }
        )
        if method == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        if fault == "drop":
            await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            await asyncio.sleep(0.05)
            raise DroppedConnection("cut mid-body (test fault)")
        if fault == "slow":
            for i in range(0, len(body), 64 * 1024):
                await send({"type": "http.response.body", "body": body[i : i + 64 * 1024], "more_body": True})
                await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _send(send: Any, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        hdrs = [(b"content-length", str(len(body)).encode())]
        hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    # --- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> FileServer:
        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = uvicorn.Config(self, host="127.0.0.1", port=port, log_level="critical", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self._server.started, "the file server did not start"
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def gets(self, path: str) -> list[dict[str, Any]]:
        return [e for e in self.log if e["path"] == path and e["method"] == "GET"]
