"""`suite chat repl`: a terminal client over the WebSocket (bearer token on the handshake)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any


async def _session(url: str, token: str, conversation_id: str | None) -> None:
    import websockets
    from rich.console import Console

    console = Console()
    ws_url = url.rstrip("/") + "/api/v1/chat/ws"
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        hello = json.loads(await ws.recv())
        console.print(f"[dim]connected as {hello['user']['username']} (protocol {hello['protocol']})[/dim]")
        last_reply: str | None = None
        current: str | None = None
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, lambda: input("> "))
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                return
            if line == "/new":
                conversation_id = None
                console.print("[dim]new conversation[/dim]")
                continue
            if line == "/export":
                console.print(f"[dim]suite chat conversations export {conversation_id}[/dim]")
                continue
            rid = str(uuid.uuid4())
            frame: dict[str, Any]
            if line == "/regen":
                if not last_reply:
                    console.print("[red]nothing to regenerate[/red]")
                    continue
                frame = {"type": "regenerate", "request_id": rid, "message_id": last_reply}
            else:
                frame = {
                    "type": "send",
                    "request_id": rid,
                    "conversation_id": conversation_id,
                    "content": line,
                }
            await ws.send(json.dumps(frame))
            current = rid
            try:
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("request_id") not in (None, current):
                        continue
                    kind = msg["type"]
                    if kind == "ack":
                        conversation_id = msg["conversation_id"]
                        last_reply = msg["message_id"]
                    elif kind == "delta":
                        console.print(msg["text"], end="", markup=False, highlight=False)
                    elif kind == "reset":
                        console.print("\n[dim](restarting the reply)[/dim]")
                    elif kind == "done":
                        console.print(
                            f"\n[dim]{msg['finish_reason']} · {msg['usage']['completion_tokens']} tokens[/dim]"
                        )
                        break
                    elif kind == "error":
                        console.print(f"\n[red]{msg['code']}: {msg['message']}[/red]")
                        break
            except KeyboardInterrupt:
                await ws.send(json.dumps({"type": "cancel", "request_id": current}))


def run_repl(url: str, token: str, conversation_id: str | None) -> None:
    try:
        asyncio.run(
            _session(url.replace("http://", "ws://").replace("https://", "wss://"), token, conversation_id)
        )
    except (KeyboardInterrupt, EOFError):
        pass
