"""Event bus (in-process and Redis) and the events WebSocket, against real servers and clients.

Servers are real uvicorn instances on 127.0.0.1 serving `create_app()`; clients are `websockets` clients;
Redis is the conftest's redis-server. Waits poll with deadlines, nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from suite.core import events
from suite.core.errors import Unavailable, ValidationFailed
from suite.core.web_auth import SESSION_COOKIE

DEADLINE = 20.0  # safety net for waits that should end almost at once


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def take(sub: events.Subscription, n: int) -> list[events.Event]:
    return [await asyncio.wait_for(sub.get(), DEADLINE) for _ in range(n)]


def assert_empty(sub: events.Subscription) -> None:
    assert sub.qsize() == 0


# --- the bus -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "type_", "data", "problem"),
    [
        ("", "job.status", {}, "topic must not be empty"),
        ("jobs 1", "job.status", {}, "invalid topic"),
        ("jobs.*", "job.status", {}, "invalid topic"),
        ("jobs.1", "", {}, "type must be"),
        ("jobs.1", "subscribed", {}, "reserved"),
        ("jobs.1", "job.status", {"x": {1, 2}}, "not JSON-serialisable"),
        ("jobs.1", "job.status", {"x": float("nan")}, "not JSON-serialisable"),
        ("jobs.1", "job.status", ["not", "a", "dict"], "valid dictionary"),
    ],
)
def test_publish_refuses_bad_shapes(topic: str, type_: str, data: Any, problem: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        events.publish(topic, type_, data)
    assert problem in exc.value.message


def test_subscribe_refuses_bad_patterns() -> None:
    async def main() -> None:
        for bad in ("", "jobs*", "jobs.*.x", "*.jobs", "a..b"):
            with pytest.raises(ValidationFailed):
                events.subscribe(bad)

    run(main())


def test_event_shape_and_json() -> None:
    event = events.make_event(
        "jobs.abc", "job.progress", {"job_id": "abc", "done": 1, "total": 2, "message": None}
    )
    assert event.id and event.ts > 0
    assert json.loads(event.json_text) == event.model_dump()
    assert events.Event.model_validate_json(event.json_text) == event


def test_in_process_fanout_to_several_subscribers_and_wildcards() -> None:
    async def main() -> None:
        assert type(events.get_bus()) is events.LocalBus
        async with (
            events.subscribe("jobs.1") as a,
            events.subscribe("jobs.1") as b,
            events.subscribe("jobs.2") as other,
            events.subscribe("jobs.*") as jobs,
            events.subscribe("*") as everything,
        ):
            sent = [
                events.publish("jobs.1", "job.progress", {"done": 1}),
                await events.apublish("jobs.1", "job.status", {"state": "done"}),
                events.publish("jobs.9.log", "job.log", {"line": "x"}),
                events.publish("jobsx.1", "job.status", {}),
                events.publish("user.7", "note", {"text": "hi"}),
            ]
            assert await take(a, 2) == sent[:2]
            assert await take(b, 2) == sent[:2]
            assert await take(jobs, 3) == sent[:3]
            assert await take(everything, 5) == sent
            for sub in (a, b, other, jobs, everything):
                assert_empty(sub)
            assert events.get_bus().subscriber_count("jobs.1") == 2
        assert events.get_bus().subscriber_count() == 0

    run(main())


def test_publish_from_other_threads_keeps_each_threads_order() -> None:
    async def main() -> None:
        async with events.subscribe("work.*") as sub:

            def worker(n: int) -> None:
                for i in range(50):
                    events.publish(f"work.{n}", "tick", {"n": n, "i": i})

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            got = await take(sub, 200)
            for t in threads:
                t.join()
            for n in range(4):
                assert [e.data["i"] for e in got if e.data["n"] == n] == list(range(50))

    run(main())


def test_overflowing_subscriber_is_dropped_without_blocking_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_EVENTS__CLIENT_QUEUE_SIZE", "4")
    events.reset()
    from suite.core.config import reset_settings

    reset_settings()

    async def main() -> None:
        async with events.subscribe("t.x") as slow, events.subscribe("t.x") as fast:
            for i in range(10):
                events.publish("t.x", "tick", {"i": i})  # never blocks, even with a full subscriber
                assert (await fast.get()).data == {"i": i}
            assert slow.dropped
            with pytest.raises(events.SlowConsumer):
                await slow.get()
            assert events.get_bus().subscriber_count("t.x") == 1

    run(main())


def test_closing_the_bus_ends_subscriptions() -> None:
    async def main() -> None:
        sub = events.subscribe("t.y")
        waiter = asyncio.create_task(take(sub, 1))
        await asyncio.sleep(0)
        await events.aclose()
        with pytest.raises(StopAsyncIteration):
            await waiter
        assert sub.closed and not sub.dropped

    run(main())


def test_progress_helper_publishes_job_progress() -> None:
    async def main() -> None:
        async with events.subscribe(events.job_topic("j1")) as sub:
            events.progress("j1")(3, 10, "indexing")
            (event,) = await take(sub, 1)
            assert event.type == "job.progress"
            assert event.data == {"job_id": "j1", "done": 3, "total": 10, "message": "indexing"}

    run(main())


@pytest.mark.redis
def test_redis_fanout_to_several_subscribers(redis_url: str) -> None:
    async def main() -> None:
        assert type(events.get_bus()) is events.RedisBus
        async with (
            events.subscribe("jobs.1") as a,
            events.subscribe("jobs.1") as b,
            events.subscribe("jobs.*") as jobs,
        ):
            sent = [events.publish("jobs.1", "job.progress", {"done": i}) for i in range(3)]
            sent.append(await events.apublish("jobs.2", "job.status", {"state": "running"}))
            from_thread: list[events.Event] = []
            thread = threading.Thread(target=lambda: from_thread.append(events.publish("jobs.1", "x", {})))
            thread.start()
            thread.join()
            assert await take(a, 4) == [*sent[:3], from_thread[0]]
            assert await take(b, 4) == [*sent[:3], from_thread[0]]
            assert await take(jobs, 5) == [*sent, from_thread[0]]

    run(main())


@pytest.mark.redis
def test_redis_publisher_in_another_process_reaches_this_one(redis_url: str) -> None:
    script = (
        "from suite.core import events\n"
        "for i in range(3):\n"
        "    events.publish('jobs.remote', 'job.progress', {'job_id': 'remote', 'done': i, 'total': 3})\n"
        "events.publish('jobs.remote', 'job.status', {'job_id': 'remote', 'state': 'done'})\n"
    )

    async def main() -> None:
        async with events.subscribe("jobs.remote") as sub:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, env=dict(os.environ))
            assert await asyncio.wait_for(proc.wait(), 60) == 0
            got = await take(sub, 4)
        assert [e.type for e in got] == ["job.progress"] * 3 + ["job.status"]
        assert [e.data.get("done") for e in got[:3]] == [0, 1, 2]

    run(main())


@pytest.mark.parametrize("backend", ["local", "redis"])
def test_publish_many_delivers_in_order(request: pytest.FixtureRequest, backend: str) -> None:
    """A batch (the job events a worker publishes together): one Redis round trip, the order kept."""
    if backend == "redis":
        request.getfixturevalue("redis_url")

    async def main() -> None:
        async with events.subscribe("jobs.*") as sub:
            batch = [events.make_event(f"jobs.{i % 2}", "job.progress", {"done": i}) for i in range(5)]
            await asyncio.to_thread(events.publish_many, batch)
            assert await take(sub, 5) == batch

    run(main())


def test_redis_down_publish_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SUITE_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    from suite.core.config import reset_settings

    reset_settings()
    events.reset()
    with pytest.raises(Unavailable) as exc:
        events.publish("jobs.1", "job.status", {"state": "done"})
    assert f"redis redis://127.0.0.1:{port}/0: cannot publish event to jobs.1" in exc.value.message
    with pytest.raises(Unavailable, match="cannot publish events"):
        events.publish_many([events.make_event("jobs.1", "job.status", {"state": "done"})])


# --- the WebSocket endpoint ----------------------------------------------------------------------------


@dataclass
class Served:
    port: int
    alice: int
    bob: int
    admin: int
    tokens: dict[str, str]  # alice, bob, admin; alice's expired, scoped and session cookie
    alice_job: str

    def url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/events/ws" + (f"?{query}" if query else "")

    @property
    def origin(self) -> Origin:
        return Origin(f"http://127.0.0.1:{self.port}")

    def bearer(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


def _accounts() -> tuple[dict[str, int], dict[str, str], str]:
    """Users, tokens and a job of alice's, committed to the test's file database."""
    from suite.core.auth import create_token, create_user
    from suite.core.db import prepare_database, session_scope, utcnow
    from suite.core.models import Job
    from suite.core.web_auth import create_session

    prepare_database()
    ids: dict[str, int] = {}
    tokens: dict[str, str] = {}
    with session_scope() as session:
        for name, role in (("alice", "user"), ("bob", "user"), ("admin", "admin")):
            user = create_user(session, username=name, password="correct horse", role=role)
            ids[name] = user.id
            tokens[name] = create_token(session, user=user, name="ws")[1]
            if name == "alice":
                expired, tokens["expired"] = create_token(
                    session, user=user, name="old", expires_in=timedelta(days=1)
                )
                expired.expires_at = utcnow() - timedelta(seconds=1)
                tokens["cookie"] = create_session(session, user=user)[1]
                tokens["scoped"] = create_token(session, user=user, name="jobs only", scopes=["jobs:read"])[1]
        job_id = str(uuid.uuid4())
        session.add(Job(id=job_id, name="test.job", owner_id=ids["alice"]))
    return ids, tokens, job_id


@pytest.fixture
def serve() -> Iterator[Callable[[], Served]]:
    """Start the real app (core routers only) under uvicorn in a thread; call after setting env."""
    started: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start() -> Served:
        from suite.core.api import create_app

        ids, tokens, job_id = _accounts()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(create_app(domains=[]), log_level="warning", timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        started.append((server, thread))
        deadline = time.monotonic() + DEADLINE
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        port = sock.getsockname()[1]
        return Served(port, ids["alice"], ids["bob"], ids["admin"], tokens, job_id)

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(15)


async def read_json(ws: ClientConnection) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), DEADLINE))


async def expect_subscribed(ws: ClientConnection, topic: str) -> None:
    assert await read_json(ws) == {"type": "subscribed", "topic": topic}


async def close_of(ws: ClientConnection) -> tuple[int | None, str]:
    """Read until the server closes the connection: its close code and reason."""
    try:
        async with asyncio.timeout(DEADLINE):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")


async def closed_with(url: str, frames: Sequence[Any] = (), **kw: Any) -> tuple[int | None, str]:
    """Connect, send `frames` (dicts as JSON, str/bytes as they are) and return how the server closed."""
    async with connect(url, open_timeout=DEADLINE, **kw) as ws:
        for frame in frames:
            try:
                await ws.send(json.dumps(frame) if isinstance(frame, dict | list) else frame)
            except ConnectionClosed:
                break
        return await close_of(ws)


def test_ws_authentication(serve: Callable[[], Served]) -> None:
    s = serve()
    topic = f"jobs.{s.alice_job}"

    async def main() -> None:
        # No credentials: the first frame must authenticate.
        code, reason = await closed_with(s.url(f"topic={topic}"), [{"type": "subscribe", "topic": topic}])
        assert code == 4401 and "authentication required" in reason
        # A token in the query string is ignored, never accepted.
        code, _ = await closed_with(s.url(f"topic={topic}&token={s.tokens['alice']}"), [{"type": "ping"}])
        assert code == 4401
        # Bad, expired and malformed credentials.
        assert (
            await closed_with(s.url(f"topic={topic}"), additional_headers={"Authorization": "Bearer st_nope"})
        )[0] == 4401
        code, reason = await closed_with(s.url(f"topic={topic}"), additional_headers=s.bearer("expired"))
        assert (code, reason) == (4401, "API token expired")
        assert (await closed_with(s.url(), [{"type": "auth", "token": 42}]))[0] == 4401
        assert (await closed_with(s.url(), [{"type": "auth", "token": "st_nope"}]))[0] == 4401

        # Token in the first frame, topic in a subscribe frame.
        async with connect(s.url(), open_timeout=DEADLINE) as ws:
            await ws.send(json.dumps({"type": "auth", "token": s.tokens["alice"]}))
            await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
            await expect_subscribed(ws, topic)
            sent = await events.apublish(topic, "job.status", {"job_id": s.alice_job, "state": "running"})
            assert await read_json(ws) == sent.model_dump()

        # Bearer header on the handshake, topic in the query.
        async with connect(s.url(f"topic={topic}"), additional_headers=s.bearer("alice")) as ws:
            await expect_subscribed(ws, topic)
            sent = events.publish(topic, "job.progress", {"job_id": s.alice_job, "done": 1, "total": 2})
            assert await read_json(ws) == sent.model_dump()

        # The web session cookie, from a page on the same host.
        cookie = {"Cookie": f"{SESSION_COOKIE}={s.tokens['cookie']}"}
        async with connect(s.url(f"topic={topic}"), additional_headers=cookie, origin=s.origin) as ws:
            await expect_subscribed(ws, topic)
        # An unknown cookie is no login: the first frame must authenticate.
        bad_cookie = {"Cookie": f"{SESSION_COOKIE}=nope"}
        assert (await closed_with(s.url(f"topic={topic}"), [{"type": "x"}], additional_headers=bad_cookie))[
            0
        ] == 4401

        # A scoped token needs the events:read scope.
        code, reason = await closed_with(s.url(f"topic={topic}"), additional_headers=s.bearer("scoped"))
        assert (code, reason) == (4403, "API token lacks scope 'events:read'")

    run(main())


def test_ws_topic_authorisation(serve: Callable[[], Served]) -> None:
    s = serve()
    job = f"jobs.{s.alice_job}"
    cases = [
        ("bob", job, 4403),  # someone else's job
        ("alice", f"jobs.{uuid.uuid4()}", 4403),  # no such job
        ("alice", f"user.{s.bob}", 4403),
        ("admin", f"user.{s.alice}", 4403),  # private notifications: that user only
        ("alice", "jobs.*", 4403),  # spans owners: admins only
        ("admin", "user.*", 4403),
        ("admin", "*", 4403),  # spans every user's private topics
        ("bob", f"{job}.*", 4403),
        ("alice", job, None),
        ("alice", f"{job}.*", None),
        ("admin", job, None),
        ("alice", f"user.{s.alice}", None),
        ("admin", "jobs.*", None),
        ("bob", "catalog.imports", None),  # other namespaces: any signed-in user
        ("bob", "catalog.*", None),
    ]

    async def main() -> None:
        for who, topic, expected in cases:
            async with connect(s.url(), additional_headers=s.bearer(who)) as ws:
                await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
                if expected is None:
                    await expect_subscribed(ws, topic)
                else:
                    code, reason = await close_of(ws)
                    assert (code, reason) == (expected, f"topic {topic} not allowed"), (who, topic)

    run(main())


def test_ws_bad_frames_and_handshake_deadline(
    serve: Callable[[], Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    from suite.core import events_api

    monkeypatch.setattr(events_api, "HANDSHAKE_TIMEOUT_S", 0.3)  # 5 s in production
    s = serve()
    auth = {"type": "auth", "token": s.tokens["alice"]}
    topic = f"jobs.{s.alice_job}"

    async def main() -> None:
        cases: list[tuple[list[Any], str]] = [
            ([b"\x00binary"], "frames must be JSON text"),
            (["not json"], "not valid JSON"),
            ([[1, 2]], 'string "type"'),
            ([{"token": "x"}], 'string "type"'),
            ([auth, {"type": "bogus"}], "expected subscribe"),
            ([auth, auth], "already authenticated"),
            ([auth, {"type": "subscribe"}], 'needs a string "topic"'),
            ([auth, {"type": "subscribe", "topic": "jobs 1"}], "invalid topic"),
            (
                [auth, {"type": "subscribe", "topic": topic}, {"type": "subscribe", "topic": topic}],
                "no frames",
            ),
            ([auth, json.dumps({"type": "subscribe", "topic": "x" * 5000})], "frame too large"),
        ]
        for frames, reason in cases:
            code, got = await closed_with(s.url(), frames)
            assert code == 1008 and reason in got, (frames, got)

        # Silence during the handshake: no auth frame, then no subscribe frame.
        assert await closed_with(s.url()) == (4401, "no authentication within 0.3 s")
        assert await closed_with(s.url(), [auth]) == (1008, "no subscribe frame within 0.3 s")

    run(main())


def test_ws_origin_check(serve: Callable[[], Served], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_SERVER__ALLOWED_ORIGINS", '["https://app.example"]')
    s = serve()
    topic = f"jobs.{s.alice_job}"

    async def main() -> None:
        with pytest.raises(InvalidStatus) as exc:
            await connect(
                s.url(f"topic={topic}"),
                origin=Origin("https://evil.example"),
                additional_headers=s.bearer("alice"),
            )
        assert exc.value.response.status_code == 403
        assert b"origin not allowed" in exc.value.response.body
        for origin in (s.origin, Origin("https://app.example")):
            async with connect(
                s.url(f"topic={topic}"), origin=origin, additional_headers=s.bearer("alice")
            ) as ws:
                await expect_subscribed(ws, topic)

    run(main())


def _tiny_receive_buffer_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


@pytest.mark.parametrize(
    ("queue_size", "send_timeout", "why"),
    [(8, 10.0, "more than 8 events queued"), (100_000, 0.5, "a send blocked over 0.5 s")],
    ids=["queue-overflow", "send-blocked"],
)
def test_ws_client_that_never_reads_is_dropped_while_others_receive_everything(
    serve: Callable[[], Served],
    monkeypatch: pytest.MonkeyPatch,
    queue_size: int,
    send_timeout: float,
    why: str,
) -> None:
    monkeypatch.setenv("SUITE_EVENTS__CLIENT_QUEUE_SIZE", str(queue_size))
    monkeypatch.setenv("SUITE_EVENTS__SLOW_CLIENT_TIMEOUT_S", str(send_timeout))
    s = serve()
    topic = f"jobs.{s.alice_job}"
    blob = secrets.token_hex(16 * 1024)  # incompressible, so socket buffers fill after a few hundred events

    async def main() -> None:
        fast = await connect(s.url(f"topic={topic}"), additional_headers=s.bearer("alice"))
        # Never reads after the ack: tiny kernel buffer, one-frame client queue, no compression.
        slow = await connect(
            s.url(f"topic={topic}"),
            additional_headers=s.bearer("alice"),
            sock=_tiny_receive_buffer_socket(s.port),
            max_queue=1,
            compression=None,
        )
        await expect_subscribed(fast, topic)
        await expect_subscribed(slow, topic)
        bus = events.get_bus()
        assert bus.subscriber_count(topic) == 2

        received: list[str] = []

        async def read_fast() -> None:
            async for message in fast:
                received.append(json.loads(message)["id"])

        reader = asyncio.create_task(read_fast())
        published: list[str] = []

        def publish(i: int) -> None:
            # From this thread into the server's loop thread.
            published.append(events.publish(topic, "test.blob", {"i": i, "blob": blob}).id)

        i = 0
        deadline = time.monotonic() + 60
        while bus.subscriber_count(topic) == 2:
            assert time.monotonic() < deadline, "the client that never reads was not dropped"
            publish(i)
            i += 1
            await wait_until(lambda: len(received) == len(published), "the reading client to keep up")
            await asyncio.sleep(0.002)  # pace: the watchdog case needs time to pass, not more data
        for _ in range(5):  # the reading client is unaffected afterwards
            publish(i)
            i += 1
        await wait_until(lambda: len(received) == len(published), "events after the drop")
        assert received == published

        code, reason = await close_of(slow)  # reading now drains what was buffered, then the close frame
        assert (code, reason) == (4408, f"slow consumer: {why}")
        reader.cancel()
        await fast.close()

    run(main())


@pytest.mark.redis
def test_ws_streams_events_from_a_worker_process_over_redis(
    serve: Callable[[], Served], redis_url: str
) -> None:
    s = serve()
    topic = f"jobs.{s.alice_job}"
    script = (
        "import sys\n"
        "from suite.core import events\n"
        "job = sys.argv[1]\n"
        "data = {'job_id': job, 'done': 1, 'total': 1, 'message': None}\n"
        "events.publish('jobs.' + job, 'job.progress', data)\n"
        "events.publish('jobs.' + job, 'job.status', {'job_id': job, 'state': 'done'})\n"
    )

    async def main() -> None:
        async with connect(s.url(f"topic={topic}"), additional_headers=s.bearer("alice")) as ws:
            await expect_subscribed(ws, topic)
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, s.alice_job)
            assert await asyncio.wait_for(proc.wait(), 60) == 0
            first, second = await read_json(ws), await read_json(ws)
        assert (first["type"], first["data"]["done"]) == ("job.progress", 1)
        assert (second["type"], second["data"]["state"]) == ("job.status", "done")

    run(main())
