"""End to end: uvicorn on 127.0.0.1, the unmodified `webuiapi` client and real Socket.IO clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


@pytest.fixture
def server(app: Any) -> Iterator[str]:
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_webuiapi_client_works_unchanged(server: str) -> None:
    import webuiapi

    port = int(server.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
    result = api.txt2img(prompt="a red circle", width=64, height=64, steps=2, seed=7, sampler_name="Euler")
    assert result.image.size == (64, 64)
    assert result.info["seed"] == 7 and result.info["sampler_name"] == "Euler"
    assert "Euler a" in [s["name"] for s in api.get_samplers()]
    assert api.get_sd_models()[0]["model_name"] == "tiny"
    api.util_set_model("tiny")
    assert api.util_get_current_model().startswith("tiny")
    again = api.img2img(images=[result.image], prompt="a red circle", width=64, height=64, steps=2, seed=7)
    assert again.image.size == (64, 64)
    info = api.png_info(result.image)
    assert "Seed: 7" in str(info.info)
    api.interrupt()
    progress = api.get_progress()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0


def test_socketio_rooms_isolate_jobs_and_refuse_foreign_origins(server: str) -> None:
    import httpx
    import socketio

    async def main() -> None:
        received: dict[str, list[tuple[str, dict[str, Any]]]] = {"a": [], "b": []}
        clients = {}
        for name in ("a", "b"):
            c = socketio.AsyncClient()

            def make(n: str) -> Any:
                async def handler(event: str, data: Any) -> None:
                    received[n].append((event, data))

                return handler

            c.on("*", make(name))
            await c.connect(server, transports=["websocket"])
            clients[name] = c
        async with httpx.AsyncClient(base_url=server) as http:
            body = {"prompt": "x", "steps": 6, "width": 64, "height": 64, "seed": 1, "sampler": "Euler"}
            jobs = {}
            for name in ("a", "b"):
                r = await http.post("/api/v1/imagegen/jobs", json=body)
                jobs[name] = r.json()["job_id"]
                ack = await clients[name].call("subscribe", {"job_id": jobs[name]})
                assert ack["ok"] is True
            denied = await clients["a"].call("subscribe", {"job_id": "does-not-exist"})
            assert denied["ok"] is False
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                done = [
                    any(e == "job.status" and d.get("status") == "succeeded" for e, d in received[n])
                    for n in "ab"
                ]
                if all(done):
                    break
                await asyncio.sleep(0.05)
        for name, other in (("a", "b"), ("b", "a")):
            ids = {d.get("job_id") for _e, d in received[name]}
            assert jobs[name] in ids and jobs[other] not in ids
            events = [e for e, _d in received[name] if e.startswith("job.")]
            assert "job.progress" in events and events[-1] == "job.status"
            steps = [d["done"] for e, d in received[name] if e == "job.progress"]
            assert steps == sorted(steps)
        for c in clients.values():
            await c.disconnect()
        foreign = socketio.AsyncClient()
        try:
            with pytest.raises(socketio.exceptions.ConnectionError):
                await foreign.connect(
                    server, headers={"Origin": "http://evil.example"}, transports=["polling"]
                )
        finally:
            await foreign.shutdown()

    asyncio.run(main())


def test_readyz_and_healthz(server: str) -> None:
    import httpx

    assert httpx.get(server + "/healthz").status_code == 200
    r = httpx.get(server + "/readyz")
    assert r.status_code == 200 and r.json()["checks"]["imagegen"]["ok"] is True


def _serve(app: Any) -> tuple[Any, threading.Thread, str]:
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    return srv, thread, f"http://127.0.0.1:{port}"


def test_shutdown_interrupts_the_running_job_and_joins_the_worker(model: Any, suite_env: Any) -> None:
    """The domain's shutdown hook: the running job ends `interrupted` within a step, no worker thread is left,
    no temp file remains, the queued native job survives and runs on the next start."""
    import httpx

    from suite.core.api import create_app
    from suite.imagegen import progress, sio
    from suite.imagegen import worker as worker_mod

    try:
        srv, thread, base = _serve(create_app(["imagegen"]))
        with httpx.Client(base_url=base, timeout=60) as http:
            long_body = {"prompt": "x", "steps": 150, "n_iter": 4, "width": 64, "height": 64, "seed": 1}
            running = http.post("/api/v1/imagegen/jobs", json=long_body).json()["job_id"]
            queued = http.post("/api/v1/imagegen/jobs", json={**long_body, "steps": 1, "n_iter": 1}).json()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                job = http.get(f"/api/v1/imagegen/jobs/{running}").json()
                if job["status"] == "running" and job["step"] >= 1:
                    break
                time.sleep(0.05)
            assert job["status"] == "running", job
        worker = worker_mod.current_worker()
        assert worker is not None and worker.alive
        t0 = time.monotonic()
        srv.should_exit = True
        thread.join(30)
        assert not thread.is_alive()
        assert time.monotonic() - t0 < 15
        assert not worker.alive and worker_mod.current_worker() is None
        assert not [t for t in threading.enumerate() if t.name == "imagegen-worker"]
        assert not list((suite_env / "imagegen").rglob("*.tmp"))

        from suite.core.db import session_scope
        from suite.imagegen.models import GenJob

        with session_scope() as session:
            stopped = session.get(GenJob, running)
            assert stopped.status == "interrupted" and not stopped.images
            assert 1 <= stopped.step < 600
            assert session.get(GenJob, queued["job_id"]).status == "queued"

        srv, thread, base = _serve(create_app(["imagegen"]))  # the next start runs what was queued
        with httpx.Client(base_url=base, timeout=60) as http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                job = http.get(f"/api/v1/imagegen/jobs/{queued['job_id']}").json()
                if job["status"] not in ("queued", "running"):
                    break
                time.sleep(0.05)
            assert job["status"] == "succeeded", job
        srv.should_exit = True
        thread.join(30)
        assert worker_mod.current_worker() is None
    finally:
        worker_mod.shutdown_worker()
        progress.reset()
        sio.reset()
