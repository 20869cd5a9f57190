"""`wait` on the native job API: the answer comes when the job ends, woken by the worker (no client polling)."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]
API = "/api/v1/imagegen"
SMALL = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 7, "sampler": "Euler"}


def test_post_with_wait_answers_with_the_finished_job(client: Any) -> None:
    r = client.post(f"{API}/jobs", params={"wait": 120}, json=SMALL)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "succeeded" and job["step"] == 2
    assert len(job["images"]) == 1 and job["images"][0]["seed"] == 7
    png = client.get(job["images"][0]["url"])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    # the same pixels as the plain flow (POST, then read the job)
    plain = client.post(f"{API}/jobs", json=SMALL)
    assert plain.status_code == 202 and plain.json()["status"] == "queued"
    again = client.get(f"{API}/jobs/{plain.json()['job_id']}", params={"wait": 120}).json()
    assert again["status"] == "succeeded"
    assert client.get(again["images"][0]["url"]).content == png.content


def test_wait_timeout_answers_202_with_the_current_status(client: Any, worker: Any) -> None:
    long = {**SMALL, "steps": 150, "n_iter": 4, "sampler": "DDIM"}
    r = client.post(f"{API}/jobs", params={"wait": 0.05}, json=long)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] in ("queued", "running")
    job_id = body["job_id"]
    polled = client.get(f"{API}/jobs/{job_id}", params={"wait": 0.05}).json()
    assert polled["status"] in ("queued", "running")  # a long poll that ends before the job does
    assert client.delete(f"{API}/jobs/{job_id}").status_code in (200, 202)
    done = client.get(f"{API}/jobs/{job_id}", params={"wait": 60}).json()
    assert done["status"] == "cancelled"


@pytest.mark.parametrize("wait", ["-1", "601", "soon"])
def test_bad_wait_is_422(client: Any, wait: str) -> None:
    r = client.post(f"{API}/jobs", params={"wait": wait}, json=SMALL)
    assert r.status_code == 422
    assert client.get(f"{API}/jobs").json()["items"] == []  # nothing was queued
    assert client.get(f"{API}/jobs/nope", params={"wait": wait}).status_code == 422


def test_wait_on_a_finished_or_unknown_job(client: Any) -> None:
    job = client.post(f"{API}/jobs", params={"wait": 120}, json=SMALL).json()
    again = client.get(f"{API}/jobs/{job['id']}", params={"wait": 600}).json()  # returns at once
    assert again["status"] == "succeeded"
    missing = client.get(f"{API}/jobs/does-not-exist", params={"wait": 5})
    assert missing.status_code == 404


# --- answers from the worker's record (no read back) ----------------------------------------------------------


def _no_read_back(*_a: Any, **_k: Any) -> Any:
    raise AssertionError("read back from the database")


def test_wait_answer_is_the_workers_record_and_equals_the_database(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from suite.imagegen import api

    with monkeypatch.context() as m:
        m.setattr(api, "read_live", _no_read_back)
        r = client.post(f"{API}/jobs", params={"wait": 120}, json={**SMALL, "prompt": "red " * 90})
    assert r.status_code == 200, r.text
    recorded = r.json()
    assert recorded["status"] == "succeeded" and recorded["timings"]["gen_ms"] > 0
    assert len(recorded["warnings"]) == 2  # the request's (over 70 words) and the worker's (over 77 tokens)
    stored = client.get(f"{API}/jobs/{recorded['id']}").json()
    assert recorded == stored  # every field, images (ids, URLs, hashes), timings and warnings included


def test_recent_image_is_served_without_the_database_but_keeps_its_rules(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from suite.core.auth import create_token, create_user
    from suite.core.db import session_scope
    from suite.imagegen import service

    with session_scope() as s:
        alice = create_user(s, username="alice", password="password-a")
        bob = create_user(s, username="bob", password="password-b")
        _, ta = create_token(s, user=alice, name="t")
        _, tb = create_token(s, user=bob, name="t")
    a = {"Authorization": f"Bearer {ta}"}
    b = {"Authorization": f"Bearer {tb}"}
    job = client.post(f"{API}/jobs", params={"wait": 120}, json=SMALL, headers=a).json()
    url = job["images"][0]["url"]
    with monkeypatch.context() as m:
        m.setattr(service, "get_image", _no_read_back)
        png = client.get(url, headers=a)
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert client.get(url, headers=b).status_code == 404  # another user's image
    assert client.get(url, headers=a).content == png.content
    assert client.delete(url, headers=a).status_code == 200
    gone = client.get(url, headers=a)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "image_not_found"


def test_terminal_sse_status_carries_the_images(client: Any) -> None:
    job_id = client.post(f"{API}/jobs", json=SMALL).json()["job_id"]
    last: dict[str, Any] = {}
    with client.stream("GET", f"{API}/jobs/{job_id}/events") as r:
        event = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "job.status":
                last = json.loads(line[6:])
    assert last["status"] == "succeeded"
    assert last["images"] == client.get(f"{API}/jobs/{job_id}").json()["images"]


def test_a1111_answer_is_the_workers_record_and_equals_the_database(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from suite.imagegen import a1111
    from suite.imagegen.schemas import A1111Generate

    body = {
        "prompt": "a red circle",
        "steps": 2,
        "width": 64,
        "height": 64,
        "seed": 7,
        "sampler_name": "Euler",
    }
    with monkeypatch.context() as m:
        m.setattr(a1111, "_result", _no_read_back)
        r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    recorded = r.json()
    stored = a1111._result(recorded["job_id"], A1111Generate.model_validate(body))
    assert recorded["images"] == stored["images"] and recorded["parameters"] == stored["parameters"]
    assert json.loads(recorded["info"]) == json.loads(stored["info"])


def test_a1111_png_bytes_kept_for_waiting_callers_are_bounded(suite_env: Any) -> None:
    from types import SimpleNamespace

    from suite.imagegen import worker as worker_mod
    from suite.imagegen.handles import JobHandle

    w = worker_mod.Worker(threads=1)  # not started: only its bookkeeping
    for i in range(worker_mod.A1111_PNGS + 3):
        h = JobHandle(id=f"j{i}", payload={}, origin="a1111")
        saved = SimpleNamespace(rows=[{"relpath": f"r{i}.png", "bytes": 3}], data=[b"png"])
        w.remember_images(h, [i], saved)
    assert list(w.a1111_pngs) == [f"j{i}" for i in range(3, worker_mod.A1111_PNGS + 3)]
    data = [
        b"x" * (worker_mod.A1111_PNG_BYTES + 1)
    ]  # over the byte cap on its own: its caller reads the file
    big = SimpleNamespace(rows=[{"relpath": "big.png", "bytes": len(data[0])}], data=data)
    w.remember_images(JobHandle(id="big", payload={}, origin="a1111"), [99], big)
    assert not w.a1111_pngs
    native = JobHandle(id="n", payload={}, origin="native")
    w.remember_images(native, [100], SimpleNamespace(rows=[{"relpath": "n.png", "bytes": 3}], data=[b"png"]))
    assert "n" not in w.a1111_pngs and w.recent_images[100] == ("n.png", None, 3)


def test_job_events_reach_core_bus_subscribers_and_cost_nothing_without(client: Any, worker: Any) -> None:
    import asyncio
    import threading

    from suite.core import events

    job = client.post(f"{API}/jobs", params={"wait": 120}, json=SMALL).json()
    assert job["status"] == "succeeded"
    assert worker._bus._thread is None  # nobody subscribed: nothing was built or woken per event

    got: list[tuple[str, dict[str, Any]]] = []

    async def follow() -> None:
        async with events.subscribe("jobs.*") as sub:
            ready.set()
            while True:
                ev = await asyncio.wait_for(sub.get(), timeout=60)
                got.append((ev.type, ev.data))
                if ev.type == "job.status" and ev.data["status"] == "succeeded":
                    return

    ready = threading.Event()
    t = threading.Thread(target=lambda: asyncio.run(follow()))
    t.start()
    assert ready.wait(10)
    second = client.post(f"{API}/jobs", params={"wait": 120}, json={**SMALL, "seed": 8}).json()
    t.join(60)
    assert [d["status"] for e, d in got if e == "job.status"] == ["queued", "running", "succeeded"]
    assert {d["job_id"] for _e, d in got} == {second["id"]}
    assert got[-1][1]["images"] == second["images"]
