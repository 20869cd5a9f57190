"""`suite chat conversations|models|dlq|doctor` in subprocesses, on real SQLite files and a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import redis

from .helpers import fast_env, free_port, make_user, reset_chat, scripted_options


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_env(monkeypatch)
    scripted_options(monkeypatch, tokens=12)


def stored_reply(user_id: int, content: str, *, conversation_id: str | None = None, finish: bool = True):  # type: ignore[no-untyped-def]
    """A turn stored the way the worker stores it: create_send, then finish_job (or left generating)."""
    from suite.chat import service
    from suite.chat.models import new_id
    from suite.core.db import session_scope

    rid = new_id()
    with session_scope() as s:
        sub = service.create_send(
            s,
            request_id=rid,
            user_id=user_id,
            client_request_id=new_id(),
            fingerprint=content,
            conversation_id=conversation_id or new_id(),
            new_conversation=conversation_id is None,
            content=content,
        )
    if finish:
        with session_scope() as s:
            service.finish_job(
                s,
                request_id=rid,
                state="done",
                content=f"answer to {content}",
                finish_reason="stop",
                usage={"prompt_tokens": 5, "completion_tokens": 4},
            )
    return sub


def out_json(result) -> object:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


# --- conversations ----------------------------------------------------------------------------------------


def test_conversations_list_show_export_delete(cli_env: None, run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice, _ = make_user("alice")
    make_user("bob")
    first = stored_reply(alice, "first question")
    stored_reply(alice, "follow-up ✨ 你好", conversation_id=first.conversation_id)
    other = stored_reply(alice, "another chat")

    rows = out_json(run_cli("chat", "conversations", "list", "--user", "alice", "--json"))
    assert [r["id"] for r in rows] == [other.conversation_id, first.conversation_id]  # newest first
    assert rows[1]["title"] == "first question"
    assert out_json(run_cli("chat", "conversations", "list", "--user", "bob", "--json")) == []
    limited = out_json(run_cli("chat", "conversations", "list", "--user", "alice", "--limit", "1", "--json"))
    assert len(limited) == 1
    # two users: the user must be named
    ambiguous = run_cli("chat", "conversations", "list")
    assert ambiguous.returncode == 2 and "--user" in ambiguous.stderr + ambiguous.stdout

    msgs = out_json(
        run_cli("chat", "conversations", "show", first.conversation_id, "--user", "alice", "--json")
    )
    assert [(m["role"], m["content"]) for m in msgs] == [
        ("user", "first question"),
        ("assistant", "answer to first question"),
        ("user", "follow-up ✨ 你好"),
        ("assistant", "answer to follow-up ✨ 你好"),
    ]
    assert all(m["status"] == "complete" for m in msgs)

    md = tmp_path / "c.md"
    r = run_cli(
        "chat",
        "conversations",
        "export",
        first.conversation_id,
        "--user",
        "alice",
        "--format",
        "md",
        "--out",
        str(md),
    )
    assert r.returncode == 0, r.stderr
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# first question") and "**assistant**" in text and "follow-up ✨ 你好" in text
    exported = out_json(run_cli("chat", "conversations", "export", first.conversation_id, "--user", "alice"))
    assert exported["conversation"]["id"] == first.conversation_id and len(exported["messages"]) == 4
    bad = run_cli(
        "chat", "conversations", "export", first.conversation_id, "--user", "alice", "--format", "xml"
    )
    assert bad.returncode == 2 and "json or md" in bad.stderr + bad.stdout

    # another user's conversation does not exist for bob
    foreign = run_cli("chat", "conversations", "show", first.conversation_id, "--user", "bob")
    assert foreign.returncode == 1 and "not found" in foreign.stderr + foreign.stdout

    r = run_cli("chat", "conversations", "delete", first.conversation_id, "--user", "alice")
    assert r.returncode == 0, r.stderr
    gone = run_cli("chat", "conversations", "show", first.conversation_id, "--user", "alice")
    assert gone.returncode == 1 and "not found" in gone.stderr + gone.stdout
    rows = out_json(run_cli("chat", "conversations", "list", "--user", "alice", "--json"))
    assert [r["id"] for r in rows] == [other.conversation_id]
    from sqlalchemy import func, select

    from suite.chat.models import ChatRequest, Message
    from suite.core.db import session_scope

    with session_scope() as s:  # cascaded, nothing half-deleted
        assert (
            s.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.conversation_id == first.conversation_id)
            )
            == 0
        )
        assert (
            s.scalar(
                select(func.count())
                .select_from(ChatRequest)
                .where(ChatRequest.conversation_id == first.conversation_id)
            )
            == 0
        )


def test_delete_refused_while_a_reply_runs(cli_env: None, run_cli) -> None:  # type: ignore[no-untyped-def]
    alice, _ = make_user("alice")
    running = stored_reply(alice, "still generating", finish=False)
    r = run_cli("chat", "conversations", "delete", running.conversation_id)
    assert r.returncode == 1 and "cancel it first" in r.stderr + r.stdout
    msgs = out_json(run_cli("chat", "conversations", "show", running.conversation_id, "--json"))
    assert len(msgs) == 2  # nothing deleted


# --- models --------------------------------------------------------------------------------------------------


def test_models(cli_env: None, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__REMOTE__KIND", "openai")
    monkeypatch.setenv("SUITE_LLM__PROVIDERS__REMOTE__BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    reset_chat()
    rows = out_json(run_cli("chat", "models", "--json"))
    by_name = {r["name"]: r for r in rows}
    assert by_name["scripted"]["default"] is True and by_name["scripted"]["ready"] is True
    assert by_name["scripted"]["kind"] == "scripted"
    assert by_name["remote"]["kind"] == "openai" and by_name["remote"]["ready"] is False  # nothing listens
    assert rows[0]["name"] == "scripted"  # the default first
    same = out_json(run_cli("chat", "models", "list", "--json"))
    assert [r["name"] for r in same] == [r["name"] for r in rows]
    table = run_cli("chat", "models")
    assert table.returncode == 0 and "scripted" in table.stdout


# --- dead letters, against a real redis-server -------------------------------------------------------------


def test_dlq_list_and_retry(cli_env: None, run_cli, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SUITE_REDIS_URL", redis_url)
    reset_chat()
    alice, _ = make_user("alice")
    sub = stored_reply(alice, "poison", finish=False)

    async def dead_letter() -> None:
        from suite.chat import service
        from suite.chat.broker import build_broker
        from suite.chat.db import run_db

        broker = build_broker()
        await broker.start()
        await broker.submit(
            sub.request_id, {"user_id": str(alice), "conversation_id": sub.conversation_id or ""}
        )
        (entry,) = await broker.claim("w", block_ms=100)
        await run_db(
            service.fail_request,
            request_id=sub.request_id,
            state="dead",
            code="provider_error",
            message="boom",
        )
        await broker.dead_letter(entry, "boom")
        await broker.close()

    asyncio.run(dead_letter())
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    rows = out_json(run_cli("chat", "dlq", "list", "--json"))
    assert [(r["request_id"], r["error"]) for r in rows] == [(sub.request_id, "boom")]

    assert run_cli("chat", "dlq", "retry").returncode == 2  # neither --request nor --all
    missing = run_cli("chat", "dlq", "retry", "--request", "no-such-request")
    assert missing.returncode == 1 and "no dead letter" in missing.stderr + missing.stdout

    done = out_json(run_cli("chat", "dlq", "retry", "--request", sub.request_id, "--json"))
    assert done == [{"request_id": sub.client_request_id, "id": sub.request_id, "state": "queued"}]
    assert out_json(run_cli("chat", "dlq", "list", "--json")) == []
    assert client.xlen("chat:req:dead") == 0
    queued = [f for _, f in client.xrange("chat:req") if f["request_id"] == sub.request_id]
    assert len(queued) == 2  # the original delivery (acked) and the retry
    from suite.chat.models import ChatRequest, Message
    from suite.core.db import session_scope

    with session_scope() as s:
        req = s.get(ChatRequest, sub.request_id)
        assert req.state == "queued" and req.deliveries == 0 and req.error_code is None
        assert s.get(Message, sub.message_id).status == "streaming"
    assert out_json(run_cli("chat", "dlq", "retry", "--all", "--json")) == []
    client.close()


# --- doctor --------------------------------------------------------------------------------------------------


def test_doctor_against_redis(
    cli_env: None, run_cli, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SUITE_REDIS_URL", redis_url)
    reset_chat()
    make_user("alice")
    r = run_cli("chat", "doctor", "--json")
    rows = {row["check"]: row for row in json.loads(r.stdout)}
    assert r.returncode == 1  # no consumer group, no worker yet
    assert rows["redis"]["ok"] is True and rows["redis"]["detail"].startswith("version ")
    assert rows["consumer group"]["ok"] is False and rows["worker heartbeats"]["ok"] is False
    assert rows["provider scripted"]["ok"] is True and rows["database"]["ok"] is True

    async def a_worker_was_here() -> None:
        from suite.chat.broker import build_broker

        broker = build_broker()
        await broker.start()  # the group
        await broker.worker_beat("w1", {"pid": 1}, 60)
        await broker.close()

    asyncio.run(a_worker_was_here())
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.config_set("maxmemory-policy", "noeviction")
    r = run_cli("chat", "doctor", "--json")
    rows = {row["check"]: row for row in json.loads(r.stdout)}
    assert r.returncode == 0, r.stdout
    assert rows["consumer group"]["ok"] and rows["worker heartbeats"]["detail"] == "1 live worker(s)"
    assert rows["redis maxmemory-policy"]["ok"] is True
    assert rows["dead letters"]["ok"] is True and rows["pending"]["ok"] is True

    client.config_set("maxmemory-policy", "allkeys-lru")  # evicts streams and locks: a failure
    try:
        r = run_cli("chat", "doctor", "--json")
        rows = {row["check"]: row for row in json.loads(r.stdout)}
        assert r.returncode == 1 and rows["redis maxmemory-policy"]["ok"] is False
        assert "noeviction" in rows["redis maxmemory-policy"]["detail"]
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()

    # Redis down: one clear failing row, exit 1
    down = run_cli("chat", "doctor", "--json", env={"SUITE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    rows = {row["check"]: row for row in json.loads(down.stdout)}
    assert down.returncode == 1 and rows["redis"]["ok"] is False
    table = run_cli("chat", "doctor")
    assert table.returncode == 0 and "consumer group" in table.stdout


# --- housekeeping (a core Huey job) ---------------------------------------------------------------------------


def test_purge_old_requests_and_reply_streams(cli_env: None, run_cli, redis_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from sqlalchemy import select, update

    from suite.chat.models import ChatRequest, Message
    from suite.core.db import session_scope, utcnow

    monkeypatch.setenv("SUITE_REDIS_URL", redis_url)
    reset_chat()
    alice, _ = make_user("alice")
    old = stored_reply(alice, "old turn")
    recent = stored_reply(alice, "recent turn", conversation_id=old.conversation_id)
    running = stored_reply(alice, "still running", finish=False)
    with session_scope() as s:
        s.execute(
            update(ChatRequest)
            .where(ChatRequest.id.in_([old.request_id, running.request_id]))
            .values(finished_at=utcnow() - timedelta(days=40), enqueued_at=utcnow() - timedelta(days=40))
        )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.xadd("chat:reply:lost-its-ttl", {"type": "delta", "data": "{}"})
    client.xadd("chat:reply:has-a-ttl", {"type": "delta", "data": "{}"})
    client.expire("chat:reply:has-a-ttl", 100)
    client.xadd("chat:req:dead", {"request_id": "ancient"}, id=f"{int((time.time() - 41 * 86400) * 1000)}-0")
    client.xadd("chat:req:dead", {"request_id": "fresh"})

    result = out_json(run_cli("chat", "purge", "--now", "--json"))
    assert result == {"requests": 1, "reply_streams_expired": 1, "dead_letters_trimmed": 1}
    assert 0 < client.ttl("chat:reply:lost-its-ttl") <= 3600 and client.ttl("chat:reply:has-a-ttl") <= 100
    assert [f["request_id"] for _, f in client.xrange("chat:req:dead")] == ["fresh"]
    with session_scope() as s:
        ids = set(s.scalars(select(ChatRequest.id)))
        assert ids == {recent.request_id, running.request_id}  # unfinished requests are never purged
        kept = s.get(Message, old.message_id)
        assert kept is not None and kept.content == "answer to old turn" and kept.request_id is None
    # as a background job (the tests' Huey runs jobs at once)
    from suite.chat.tasks import purge
    from suite.core.tasks import enqueue, get_job

    job = enqueue(purge, keep_days=0)
    with session_scope() as s:
        done = get_job(s, job_id=job.id)
        assert done.state == "done", done.error
        assert done.result["requests"] == 1  # `recent`; the running one stays
    client.close()


# --- bench -----------------------------------------------------------------------------------------------------


def test_bench_pipeline_embedded_redis_and_a_bad_broker(cli_env: None, run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The B1 pipeline for real, smallest shape, on `serve` with Redis and its embedded worker (its own
    redis-server); an unknown broker name exits 2 in one line."""
    bad = run_cli("chat", "bench", "pipeline", "--broker", "memory,rabbit")
    assert bad.returncode == 2 and "unknown rabbit" in bad.stderr and "Traceback" not in bad.stderr
    out = tmp_path / "b1.json"
    done = run_cli(
        "chat", "bench", "pipeline", "--broker", "redis-embedded", "--sockets", "1", "--messages", "2",
        "--tokens", "4", "--coalesced", "", "--out", str(out), timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())["brokers"]
    assert row["broker"] == "redis-embedded" and "skipped" not in row
    (one,) = row["frame_per_token"]
    assert one["replies"] == 2 and one["errors"] == 0 and one["ttft_ms_p50"] > 0
