"""`wait` on the native job API: the answer comes when the job ends, woken by the worker (no client polling)."""

from __future__ import annotations

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
