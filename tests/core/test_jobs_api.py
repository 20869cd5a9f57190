"""The jobs API over a real app and database (jobs run inline: SUITE_JOBS__IMMEDIATE=true)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from suite.core.api import create_app
from suite.core.auth import create_token
from suite.core.db import utcnow
from suite.core.models import Job, User
from suite.core.tasks import enqueue, get_huey

try:
    from . import jobtasks_fixture as fx
except ImportError:
    import jobtasks_fixture as fx  # type: ignore[no-redef]


@dataclass
class Caller:
    user: User
    headers: dict[str, str]


def _caller(session: Session, name: str, role: str = "user") -> Caller:
    user = User(username=name, password_hash="unused: bearer tokens only", role=role, is_active=True)
    session.add(user)
    session.flush()
    _, plain = create_token(session, user=user, name="test")
    return Caller(user, {"Authorization": f"Bearer {plain}"})


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(domains=[])  # core routers only


@pytest.fixture
def client(app: FastAPI, db_session: Session) -> Iterator[TestClient]:
    yield TestClient(app)


@pytest.fixture
def alice(db_session: Session) -> Caller:
    return _caller(db_session, "alice")


@pytest.fixture
def bob(db_session: Session) -> Caller:
    return _caller(db_session, "bob")


@pytest.fixture
def admin(db_session: Session) -> Caller:
    return _caller(db_session, "root", role="admin")


def _queued(session: Session, owner: User | None, **values: Any) -> Job:
    """A job row as enqueue leaves it before a worker takes it (jobs run inline in these tests)."""
    now = utcnow()
    job = Job(
        id=values.pop("id", None) or f"job-{now.timestamp()}-{id(values)}",
        domain=values.pop("domain", "core"),
        name="touch",
        owner_id=owner.id if owner else None,
        state=values.pop("state", "queued"),
        params={},
        created_at=now,
        updated_at=now,
        **values,
    )
    session.add(job)
    session.flush()
    return job


def _error(resp: Any) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def test_list_own_jobs_newest_first_admin_sees_all(
    client: TestClient, db_session: Session, alice: Caller, bob: Caller, admin: Caller
) -> None:
    first = enqueue(fx.add, owner_id=alice.user.id, a=1, b=2)
    second = enqueue(fx.named, owner_id=alice.user.id)
    enqueue(fx.add, owner_id=bob.user.id, a=5, b=5)

    resp = client.get("/api/v1/jobs/", headers=alice.headers)
    assert resp.status_code == 200
    page = resp.json()
    assert page["total"] == 2 and page["limit"] == 50 and page["offset"] == 0
    assert [j["id"] for j in page["items"]] == [second.id, first.id]
    done = page["items"][1]
    assert done["state"] == "done" and done["result"] == 3 and done["attempts"] == 1
    assert done["params"] == {"a": 1, "b": 2} and done["owner_id"] == alice.user.id

    everyone = client.get("/api/v1/jobs", headers=admin.headers).json()  # with or without the slash
    assert everyone["total"] == 3


def test_list_filters_and_paging(client: TestClient, db_session: Session, alice: Caller) -> None:
    enqueue(fx.add, owner_id=alice.user.id, a=1, b=1)
    enqueue(fx.named, owner_id=alice.user.id)  # domain catalog
    enqueue(fx.boom, owner_id=alice.user.id, message="nope")

    def ids(**params: Any) -> list[str]:
        resp = client.get("/api/v1/jobs/", headers=alice.headers, params=params)
        assert resp.status_code == 200, resp.text
        return [j["name"] for j in resp.json()["items"]]

    assert ids(state="failed") == ["boom"]
    assert ids(domain="catalog") == ["renamed"]
    assert ids(state="done", domain="core") == ["add"]
    assert ids(limit=1) == ["boom"]
    assert ids(limit=1, offset=1) == ["renamed"]
    assert ids(offset=10) == []


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"state": "sleeping"}, "state"),
        ({"domain": "x" * 33}, "domain"),
    ],
)
def test_bad_list_parameters_are_422(
    client: TestClient, alice: Caller, params: dict[str, Any], where: str
) -> None:
    resp = client.get("/api/v1/jobs/", headers=alice.headers, params=params)
    assert resp.status_code == 422
    error = _error(resp)
    assert error["code"] == "validation_error" and where in error["message"]


def test_anonymous_is_401(client: TestClient) -> None:
    resp = client.get("/api/v1/jobs/")
    assert resp.status_code == 401 and _error(resp)["code"] == "unauthorized"


def test_get_job_own_foreign_unknown(
    client: TestClient, db_session: Session, alice: Caller, bob: Caller
) -> None:
    job = enqueue(fx.boom, owner_id=alice.user.id, message="it broke")

    resp = client.get(f"/api/v1/jobs/{job.id}", headers=alice.headers)
    assert resp.status_code == 200
    body = resp.json()
    assert body["state"] == "failed" and body["error"] == "RuntimeError: it broke"
    assert body["attempts"] == 3 and body["max_retries"] == 2 and body["finished_at"]

    for who, job_id in ((bob, job.id), (alice, "no-such-job")):
        resp = client.get(f"/api/v1/jobs/{job_id}", headers=who.headers)
        assert resp.status_code == 404
        assert _error(resp) == {"code": "not_found", "message": f"job {job_id} not found"}


def test_cancel_queued_job_never_runs(
    client: TestClient, db_session: Session, alice: Caller, tmp_path: Any
) -> None:
    job = _queued(db_session, alice.user)

    resp = client.post(f"/api/v1/jobs/{job.id}/cancel", headers=alice.headers)
    assert resp.status_code == 202
    body = resp.json()
    assert body["state"] == "cancelled" and body["cancel_requested"] is True and body["finished_at"]
    assert get_huey().is_revoked(job.id)  # a worker that dequeues it skips it
    db_session.expire_all()
    assert db_session.get(Job, job.id).state == "cancelled"  # type: ignore[union-attr]


def test_cancel_running_job_asks_it_to_stop(client: TestClient, db_session: Session, alice: Caller) -> None:
    job = _queued(db_session, alice.user, state="running", attempts=1, started_at=utcnow())

    resp = client.post(f"/api/v1/jobs/{job.id}/cancel", headers=alice.headers)
    assert resp.status_code == 202
    body = resp.json()
    assert body["state"] == "running" and body["cancel_requested"] is True


def test_cancel_finished_job_is_409(client: TestClient, db_session: Session, alice: Caller) -> None:
    job = enqueue(fx.add, owner_id=alice.user.id, a=1, b=2)
    resp = client.post(f"/api/v1/jobs/{job.id}/cancel", headers=alice.headers)
    assert resp.status_code == 409
    assert _error(resp) == {"code": "conflict", "message": f"job {job.id} already done"}
    db_session.expire_all()
    row = db_session.get(Job, job.id)
    assert row is not None and row.state == "done" and row.cancel_requested is False  # untouched


def test_cancel_foreign_job_is_404_admin_may(
    client: TestClient, db_session: Session, alice: Caller, bob: Caller, admin: Caller
) -> None:
    job = _queued(db_session, alice.user)
    resp = client.post(f"/api/v1/jobs/{job.id}/cancel", headers=bob.headers)
    assert resp.status_code == 404 and _error(resp)["code"] == "not_found"
    db_session.expire_all()
    assert db_session.get(Job, job.id).state == "queued"  # type: ignore[union-attr]

    resp = client.post(f"/api/v1/jobs/{job.id}/cancel", headers=admin.headers)
    assert resp.status_code == 202 and resp.json()["state"] == "cancelled"


def test_system_jobs_are_admin_only(
    client: TestClient, db_session: Session, alice: Caller, admin: Caller
) -> None:
    job = _queued(db_session, None, finished_at=utcnow() - timedelta(days=1), state="done")
    assert client.get(f"/api/v1/jobs/{job.id}", headers=alice.headers).status_code == 404
    assert client.get(f"/api/v1/jobs/{job.id}", headers=admin.headers).status_code == 200
    count = db_session.scalar(select(func.count()).select_from(Job))
    assert count == 1
