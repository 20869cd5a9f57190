"""B5 slow reader: 19 sockets chatting normally, alone, then with a 20th socket that asks for a long reply and
never reads. The 20th is dropped (4408) when its outbound queue passes its cap or a send blocks; the others'
TTFT p95 must stay within 10 % of the 19 alone (rounds alone, with, alone; compared to the mean of the two)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any

from suite.chat.bench.common import Stack, loadavg, pct, scripted
from suite.chat.bench.pipeline import drive


async def _never_reads(
    url: str, port: int, token: str, result: dict[str, Any], release: asyncio.Event
) -> None:
    """A client that stops reading: a small receive buffer, reading paused after the hello (TCP backpressure
    reaches the server, as with a phone whose tab went to the background)."""
    import socket

    import websockets

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    ws = await websockets.connect(  # no compression: the repeated scripted text would deflate 1000:1
        url,
        sock=sock,
        additional_headers={"Authorization": f"Bearer {token}"},
        max_size=None,
        max_queue=1,
        compression=None,
    )
    await ws.recv()  # hello
    await ws.send(
        json.dumps({"type": "send", "request_id": str(uuid.uuid4()), "content": "flood", "model": "flood"})
    )
    ws.transport.pause_reading()
    started = time.perf_counter()
    await release.wait()  # the normal sockets run meanwhile
    result["paused_s"] = round(time.perf_counter() - started, 2)
    ws.transport.resume_reading()
    frames = 0
    try:
        async with asyncio.timeout(20):
            while True:
                text = await ws.recv()
                frames += 1
                if '"type":"done"' in text:
                    result["reply_completed"] = True
    except websockets.ConnectionClosed as exc:
        # 4408 when the close frame got through; None: dropped without one (its buffer never drained)
        result["dropped"] = True
        result["closed_code"] = exc.rcvd.code if exc.rcvd else None
    except TimeoutError:
        result["dropped"] = False
    result["frames_read_after"] = frames
    await ws.close()


async def _with_slow(stack: Stack, sockets: int, messages: int) -> tuple[dict[str, Any], dict[str, Any]]:
    slow: dict[str, Any] = {}
    release = asyncio.Event()
    task = asyncio.create_task(_never_reads(stack.ws_url, stack.port, stack.token, slow, release))
    await asyncio.sleep(0.5)
    row = await drive(stack.ws_url, stack.token, sockets, messages)
    release.set()  # it reads again: the close code the server sent it (4408 expected)
    await task
    return row, slow


def run_slow(*, sockets: int = 19, messages: int = 40, tokens: int = 64) -> dict[str, Any]:
    env = {
        "SUITE_CHAT__DEFAULT_MODEL": "bench",
        "SUITE_CHAT__SEND_TIMEOUT_S": "2",
        "SUITE_CHAT__CONCURRENCY": "128",
        "SUITE_CHAT__MAX_TOKENS": "4096",
        "SUITE_CHAT__CONTEXT_TOKENS": "16384",
        **scripted("bench", tokens=tokens, token_delay_s=0.002),
        # the never-reading socket's reply: about as many frames a second as a normal socket's, 12 MB in all, so
        # it outgrows the kernel's buffers and the server's queue cap (4408) while the others run
        **scripted("flood", tokens=4000, token_delay_s=0.002, reply=" " + "x" * 3000),
    }
    out: dict[str, Any] = {
        "benchmark": "chat slow reader (B5)",
        "cpu_count": os.cpu_count(),
        "sockets": sockets,
        "messages_per_socket": messages,
        "target": "TTFT p95 of the 19 with the slow reader within 10 % of the 19 alone",
        "load_before": loadavg(),
    }
    with Stack(env=env) as stack:
        asyncio.run(drive(stack.ws_url, stack.token, 2, 2))  # warm-up
        alone1 = asyncio.run(drive(stack.ws_url, stack.token, sockets, messages))
        with_slow, slow = asyncio.run(_with_slow(stack, sockets, messages))
        alone2 = asyncio.run(drive(stack.ws_url, stack.token, sockets, messages))
    base = [r["ttft_ms_p95"] for r in (alone1, alone2) if r["ttft_ms_p95"] is not None]
    out.update(alone=[alone1, alone2], with_slow_reader=with_slow, slow_reader=slow)
    if base and with_slow["ttft_ms_p95"] is not None:
        mean = sum(base) / len(base)
        out["ttft_p95_ratio"] = round(with_slow["ttft_ms_p95"] / mean, 3) if mean else None
    out["load_after"] = loadavg()
    return out


__all__ = ["pct", "run_slow"]
