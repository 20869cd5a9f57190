"""The app factory: one error shape for every failure, request ids, the body limit, health and readiness."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from conftest import free_port
from suite import __version__
from suite.core import config, db, plugins
from suite.core.api import create_app
from suite.core.errors import Conflict, NotFound, RateLimited, UsageError
from suite.core.plugins import DomainSpec

LIMIT = 2048


class Item(BaseModel):
    name: str = Field(min_length=1)
    size: int = Field(ge=0)


def add_test_routes(app: FastAPI) -> None:
    @app.post("/test/items")
    def create_item(item: Item) -> Item:
        return item

    @app.post("/test/raw")
    async def raw(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.get("/test/conflict")
    def conflict() -> None:
        raise Conflict("job j1 already finished")

    @app.get("/test/not-found")
    def not_found() -> None:
        raise NotFound("movie 7 not found")

    @app.get("/test/rate")
    def rate() -> None:
        raise RateLimited("too many login attempts", retry_after=1.2)

    @app.get("/test/boom")
    def boom() -> None:
        raise RuntimeError("kaboom: password=hunter2")


def reload_settings() -> None:
    config.reset_settings()
    db.reset_engine()


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    monkeypatch.setenv("SUITE_SERVER__MAX_BODY_BYTES", str(LIMIT))
    reload_settings()
    app = create_app([])
    add_test_routes(app)
    return app


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    assert re.fullmatch(r"[a-z][a-z_]*", body["error"]["code"]), body
    return dict(body["error"])


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 in a thread of this process."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# --- the error shape -----------------------------------------------------------------------------------


def test_404_unknown_route(client: TestClient) -> None:
    r = client.get("/api/v1/nothing-here")
    assert r.status_code == 404
    assert error_of(r) == {"code": "not_found", "message": "no route for GET /api/v1/nothing-here"}


def test_404_from_a_domain_error(client: TestClient) -> None:
    r = client.get("/test/not-found")
    assert r.status_code == 404
    assert error_of(r) == {"code": "not_found", "message": "movie 7 not found"}


def test_405_wrong_method(client: TestClient) -> None:
    r = client.delete("/healthz")
    assert r.status_code == 405
    assert error_of(r) == {"code": "method_not_allowed", "message": "method DELETE not allowed on /healthz"}
    assert r.headers["allow"] == "GET"


def test_422_names_the_field(client: TestClient) -> None:
    r = client.post("/test/items", json={"name": "", "size": -1})
    assert r.status_code == 422
    err = error_of(r)
    assert err["code"] == "validation_error"
    assert err["message"].startswith("name: String should have at least 1 character")
    assert [e["loc"] for e in err["details"]["errors"]] == [["body", "name"], ["body", "size"]]


def test_422_invalid_json(client: TestClient) -> None:
    r = client.post("/test/items", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert error_of(r)["code"] == "validation_error"


def test_409_and_429_from_domain_errors(client: TestClient) -> None:
    r = client.get("/test/conflict")
    assert r.status_code == 409
    assert error_of(r) == {"code": "conflict", "message": "job j1 already finished"}
    r = client.get("/test/rate")
    assert r.status_code == 429
    assert error_of(r)["details"] == {"retry_after": 1.2}
    assert r.headers["retry-after"] == "2"


def test_500_hides_the_exception_and_names_the_request(client: TestClient) -> None:
    r = client.get("/test/boom", headers={"X-Request-ID": "req-500"})
    assert r.status_code == 500
    assert error_of(r) == {"code": "internal_error", "message": "internal error (request id req-500)"}
    assert "hunter2" not in r.text
    assert r.headers["x-request-id"] == "req-500"


# --- body limit ----------------------------------------------------------------------------------------


def test_413_by_content_length(client: TestClient) -> None:
    r = client.post("/test/raw", content=b"x" * (LIMIT + 1))
    assert r.status_code == 413
    assert error_of(r) == {"code": "too_large", "message": f"request body over {LIMIT} bytes"}
    assert r.headers["x-request-id"]
    ok = client.post("/test/raw", content=b"x" * LIMIT)
    assert ok.status_code == 200 and ok.json() == {"bytes": LIMIT}


def chunks(total: int, size: int = 512) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


def test_413_chunked_without_content_length(client: TestClient) -> None:
    r = client.post("/test/raw", content=chunks(LIMIT * 3))
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.status_code == 413
    assert error_of(r)["code"] == "too_large"
    # The same through FastAPI's own body parsing (a pydantic body), which must not turn it into a 400.
    r = client.post("/test/items", content=chunks(LIMIT * 3), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert error_of(r)["code"] == "too_large"
    ok = client.post("/test/raw", content=chunks(LIMIT))
    assert ok.status_code == 200 and ok.json() == {"bytes": LIMIT}


def test_413_chunked_on_a_real_server(app: FastAPI) -> None:
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=10) as http:
        r = http.post("/test/raw", content=chunks(LIMIT * 4))
        assert r.status_code == 413
        assert error_of(r) == {"code": "too_large", "message": f"request body over {LIMIT} bytes"}
        r = http.post("/test/raw", content=b"x" * (LIMIT * 4))
        assert r.status_code == 413
        assert http.get("/healthz").status_code == 200  # the server is fine afterwards


# --- request ids ---------------------------------------------------------------------------------------


def test_request_id_echoed(client: TestClient) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123.def:4"})
    assert r.headers["x-request-id"] == "abc-123.def:4"
    r = client.get("/nope", headers={"X-Request-ID": "abc-404"})
    assert r.headers["x-request-id"] == "abc-404"


def test_request_id_generated(client: TestClient) -> None:
    first = client.get("/healthz").headers["x-request-id"]
    second = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second


@pytest.mark.parametrize("bad", ["has space", "x" * 65, "<script>", "a\tb"])
def test_odd_request_id_replaced(client: TestClient, bad: str) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": bad})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


# --- health --------------------------------------------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "version": __version__}


def test_readyz_ok_and_lifespan_creates_the_database(app: FastAPI, suite_env: Path) -> None:
    with TestClient(app) as client:
        assert (suite_env / "suite.db").exists()
        r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"database": {"ok": True}}}


def test_readyz_503_names_redis_when_it_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_REDIS_URL", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    reload_settings()
    with TestClient(create_app([])) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    err = error_of(r)
    assert err["code"] == "not_ready"
    assert err["message"] == "not ready: redis"
    checks = err["details"]["checks"]
    assert checks["database"] == {"ok": True}
    assert checks["redis"]["ok"] is False and checks["redis"]["error"].startswith("redis redis://")
    assert "hunter2" not in r.text


def test_readyz_ok_with_a_live_redis(redis_url: str) -> None:
    r = TestClient(create_app([])).get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"]["redis"] == {"ok": True}


def test_readyz_503_names_the_database_when_it_cannot_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_DATABASE_URL", f"postgresql://suite:hunter2@127.0.0.1:{free_port()}/suite")
    reload_settings()
    with TestClient(create_app([])) as client:  # the app still starts
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
    assert r.status_code == 503
    err = error_of(r)
    assert err["message"] == "not ready: database"
    database = err["details"]["checks"]["database"]
    assert database["ok"] is False
    assert database["error"].startswith("cannot connect to database postgresql://suite:***@127.0.0.1:")
    assert "Connection refused" in database["error"]
    assert "hunter2" not in r.text


def demo_not_ready() -> str:
    return "search index not built"


def demo_broken_check() -> None:
    raise RuntimeError("model folder missing")


def test_readyz_names_a_domain_that_is_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        plugins,
        "_cache",
        [
            DomainSpec(name="demo", help="Demo.", readiness=f"{__name__}:demo_not_ready"),
            DomainSpec(name="other", help="Other.", readiness=f"{__name__}:demo_broken_check"),
        ],
    )
    r = TestClient(create_app()).get("/readyz")
    assert r.status_code == 503
    err = error_of(r)
    assert err["message"] == "not ready: demo, other"
    assert err["details"]["checks"]["demo"] == {"ok": False, "error": "search index not built"}
    assert err["details"]["checks"]["other"] == {"ok": False, "error": "RuntimeError: model folder missing"}


# --- docs and layout -----------------------------------------------------------------------------------


def test_openapi_and_docs(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["info"]["version"] == __version__
    assert {"/healthz", "/readyz"} <= set(schema["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text


def test_unknown_domain_refused() -> None:
    with pytest.raises(UsageError, match="unknown domain"):
        create_app(["no-such-domain"])


ROOT_ROUTES = ("/v1", "/sdapi/v1", "/socket.io", "/healthz", "/readyz")


def test_every_landed_domain_mounts_under_its_prefix() -> None:
    """DESIGN: routes live under /api/v1/<domain>; the only root-level ones are the compatibility APIs."""
    app = create_app()
    prefixes = [f"/api/v1/{name}" for name in (*app.state.domains, "auth", "jobs", "events")]
    stray = [
        path
        for path in app.openapi()["paths"]
        if not any(path == p or path.startswith(p + "/") for p in (*prefixes, *ROOT_ROUTES))
    ]
    assert stray == []


CALLS: list[str] = []


async def demo_startup(app: FastAPI) -> None:
    CALLS.append(f"start {app.title}")


def demo_shutdown(app: FastAPI) -> None:
    CALLS.append("stop demo")


def other_startup(app: FastAPI) -> None:
    CALLS.append("start other")


async def other_shutdown(app: FastAPI) -> None:
    CALLS.append("stop other")
    raise RuntimeError("shutdown bug")


def test_domain_startup_and_shutdown_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    here = __name__
    monkeypatch.setattr(
        plugins,
        "_cache",
        [
            DomainSpec(
                name="demo", help="x", startup=f"{here}:demo_startup", shutdown=f"{here}:demo_shutdown"
            ),
            DomainSpec(
                name="other", help="x", startup=f"{here}:other_startup", shutdown=f"{here}:other_shutdown"
            ),
        ],
    )
    CALLS.clear()
    with TestClient(create_app()) as client:
        assert CALLS == ["start suite", "start other"]
        assert client.get("/healthz").status_code == 200
    # Reverse order; a failing shutdown is logged and the others still run.
    assert CALLS == ["start suite", "start other", "stop other", "stop demo"]


def test_a_domain_raises_the_body_limit_for_its_own_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_SERVER__MAX_BODY_BYTES", str(LIMIT))
    reload_settings()
    spec = DomainSpec(name="demo", help="x", extra={"body_limits": {"/test/raw": LIMIT * 4}})
    monkeypatch.setattr(plugins, "_cache", [spec])
    app = create_app()
    add_test_routes(app)
    client = TestClient(app)
    assert client.post("/test/raw", content=b"x" * (LIMIT * 3)).json() == {"bytes": LIMIT * 3}
    assert client.post("/test/raw", content=chunks(LIMIT * 3)).json() == {"bytes": LIMIT * 3}
    assert client.post("/test/raw", content=b"x" * (LIMIT * 4 + 1)).status_code == 413
    # Other paths keep the server-wide limit.
    r = client.post("/test/items", content=b"x" * (LIMIT + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413 and error_of(r)["message"] == f"request body over {LIMIT} bytes"
