"""Web login over HTTP: cookie sessions, CSRF, login rate limit, API tokens, role dependencies."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import timedelta
from functools import lru_cache
from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI, Form
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from suite.core import auth, web_auth
from suite.core.auth import AdminUser, CurrentUser, OptionalUser
from suite.core.config import reset_settings
from suite.core.db import utcnow
from suite.core.models import ApiToken, User, WebSession
from suite.core.web_auth import CsrfProtected, PageUser

PASSWORD = "correct horse battery"


@lru_cache(maxsize=1)
def password_hash() -> str:
    return auth.hash_password(PASSWORD)


def make_user(session: Session, username: str, *, role: str = "user") -> User:
    user = User(username=username, password_hash=password_hash(), role=role, is_active=True)
    session.add(user)
    session.commit()
    return user


probe = APIRouter()


@probe.get("/probe/admin")
def admin_only(user: AdminUser) -> dict[str, str]:
    return {"user": user.username}


@probe.get("/probe/editor", dependencies=[Depends(auth.require_role("editor"))])
def editors() -> dict[str, bool]:
    return {"ok": True}


@probe.get("/probe/only-admins", dependencies=[Depends(auth.require_role())])
def only_admins() -> dict[str, bool]:
    return {"ok": True}


@probe.get("/probe/scoped")
def scoped(user: Annotated[User, Depends(auth.require_scope("catalog:write"))]) -> dict[str, str]:
    return {"user": user.username}


@probe.post("/probe/write")
def write(user: CurrentUser, note: Annotated[str, Form()] = "") -> dict[str, str]:
    return {"user": user.username, "note": note}


@probe.post("/probe/anonymous-form")
def anonymous_form(
    _csrf: CsrfProtected, user: OptionalUser, note: Annotated[str, Form()] = ""
) -> dict[str, str]:
    return {"note": note}


@probe.get("/probe/page")
def page(user: PageUser) -> dict[str, str]:
    return {"user": user.username}


def build_app() -> FastAPI:
    from suite.core.api import create_app

    app = create_app(domains=[])
    app.include_router(probe)
    return app


@pytest.fixture(autouse=True)
def fresh_limits() -> Iterator[None]:
    web_auth.reset_rate_limits()
    yield
    web_auth.reset_rate_limits()


@pytest.fixture
def client(db_session: Session) -> Iterator[TestClient]:
    """The app on the test's savepoint-wrapped database."""
    with TestClient(build_app()) as c:
        yield c


def api_login(client: TestClient, username: str, password: str = PASSWORD) -> str:
    response = client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])


def form_csrf(client: TestClient) -> str:
    page = client.get("/login")
    assert page.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


def test_api_login_me_logout(client: TestClient, db_session: Session) -> None:
    make_user(db_session, "alice")
    response = client.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["user"]["username"] == "alice" and "password_hash" not in body["user"]
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{web_auth.SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    assert "Max-Age=1209600" in cookie
    plain = client.cookies[web_auth.SESSION_COOKIE]
    row = db_session.get(WebSession, hashlib.sha256(plain.encode()).hexdigest())
    assert row is not None and row.csrf_token == body["csrf_token"]
    assert db_session.scalars(select(WebSession.id)).all() == [
        row.id
    ]  # the cookie value itself is not stored

    me = client.get("/api/v1/auth/me")
    assert me.status_code == 200
    assert me.json()["username"] == "alice" and me.json()["auth"] == "session"
    assert me.json()["csrf_token"] == body["csrf_token"]

    refused = client.post("/api/v1/auth/logout")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_failed"
    assert client.get("/api/v1/auth/me").status_code == 200  # still logged in

    out = client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": body["csrf_token"]})
    assert out.status_code == 204
    client.cookies.clear()
    client.cookies.set(web_auth.SESSION_COOKIE, plain)  # replaying the old cookie does not work
    after = client.get("/api/v1/auth/me")
    assert after.status_code == 401
    assert after.json() == {
        "error": {
            "code": "unauthorized",
            "message": "authentication required: send 'Authorization: Bearer <token>' or log in",
        }
    }


def test_bad_credentials(client: TestClient, db_session: Session) -> None:
    make_user(db_session, "bob")
    wrong = client.post("/api/v1/auth/login", json={"username": "bob", "password": "not it at all"})
    unknown = client.post("/api/v1/auth/login", json={"username": "nobody", "password": "not it at all"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"] == {"code": "unauthorized", "message": "invalid username or password"}
    assert "set-cookie" not in wrong.headers


def test_secure_cookie_setting(
    client: TestClient, db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUITE_AUTH__COOKIE_SECURE", "true")
    monkeypatch.setenv("SUITE_AUTH__SESSION_TTL_S", "3600")
    reset_settings()
    make_user(db_session, "cleo")
    response = client.post("/api/v1/auth/login", json={"username": "cleo", "password": PASSWORD})
    cookie = response.headers["set-cookie"]
    assert "Secure" in cookie and "Max-Age=3600" in cookie
    row = db_session.scalars(select(WebSession)).one()
    assert timedelta(seconds=3590) < row.expires_at - utcnow() <= timedelta(seconds=3600)


def test_expired_session_is_refused_and_purged(client: TestClient, db_session: Session) -> None:
    make_user(db_session, "dina")
    api_login(client, "dina")
    row = db_session.scalars(select(WebSession)).one()
    expired_id = row.id
    row.expires_at = utcnow() - timedelta(seconds=1)
    db_session.commit()
    assert client.get("/api/v1/auth/me").status_code == 401
    client.cookies.clear()
    api_login(client, "dina")
    db_session.expire_all()
    ids = db_session.scalars(select(WebSession.id)).all()
    assert len(ids) == 1 and expired_id not in ids


def test_form_login_flow(client: TestClient, db_session: Session) -> None:
    make_user(db_session, "emma")
    page = client.get("/login?next=/catalog/")
    assert page.status_code == 200 and 'id="login-form"' in page.text
    assert 'name="next" value="/catalog/"' in page.text
    token = form_csrf(client)
    assert client.cookies[web_auth.CSRF_COOKIE] == token

    fields = {"username": "emma", "password": PASSWORD, "next": "/catalog/"}
    missing = client.post("/login", data=fields, follow_redirects=False)
    assert missing.status_code == 403
    assert missing.json()["error"]["code"] == "csrf_failed"
    assert "missing" in missing.json()["error"]["message"]
    forged = client.post("/login", data={**fields, "csrf_token": "forged"}, follow_redirects=False)
    assert forged.status_code == 403 and "does not match" in forged.json()["error"]["message"]
    assert web_auth.SESSION_COOKIE not in client.cookies
    assert db_session.scalars(select(WebSession)).all() == []

    bad = client.post("/login", data={**fields, "password": "nope nope", "csrf_token": token})
    assert bad.status_code == 401 and "invalid username or password" in bad.text
    assert 'value="emma"' in bad.text

    ok = client.post("/login", data={**fields, "csrf_token": token}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/catalog/"
    assert client.get("/api/v1/auth/me").json()["username"] == "emma"

    again = client.get("/login")
    assert "You are logged in as" in again.text


def test_form_login_never_redirects_off_site(client: TestClient, db_session: Session) -> None:
    make_user(db_session, "fay")
    token = form_csrf(client)
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        fields = {"username": "fay", "password": PASSWORD, "next": target, "csrf_token": token}
        response = client.post("/login", data=fields, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/"
        client.cookies.delete(web_auth.SESSION_COOKIE)


def test_form_logout_needs_csrf(client: TestClient, db_session: Session) -> None:
    make_user(db_session, "gail")
    csrf = api_login(client, "gail")
    refused = client.post("/logout", data={}, follow_redirects=False)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    assert client.get("/api/v1/auth/me").status_code == 200
    out = client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert client.get("/api/v1/auth/me").status_code == 401
    assert db_session.scalars(select(WebSession)).all() == []


def test_cookie_writes_need_csrf_but_bearer_writes_do_not(client: TestClient, db_session: Session) -> None:
    make_user(db_session, "hana")
    csrf = api_login(client, "hana")
    assert client.post("/probe/write", data={"note": "x"}).status_code == 403
    assert client.post("/api/v1/auth/tokens", json={"name": "ci"}).status_code == 403
    ok = client.post("/probe/write", data={"note": "x", "csrf_token": csrf})
    assert ok.status_code == 200 and ok.json() == {"user": "hana", "note": "x"}
    created = client.post("/api/v1/auth/tokens", json={"name": "ci"}, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 201
    bearer = {"Authorization": f"Bearer {created.json()['token']}"}
    client.cookies.clear()
    assert client.post("/probe/write", data={"note": "y"}, headers=bearer).json() == {
        "user": "hana",
        "note": "y",
    }
    # a form post with no session anywhere still needs a CSRF token
    cookieless = client.post("/probe/anonymous-form", data={"note": "z", "csrf_token": "made-up"})
    assert (
        cookieless.status_code == 403 and "no session or CSRF cookie" in cookieless.json()["error"]["message"]
    )
    token = form_csrf(client)
    assert client.post("/probe/anonymous-form", data={"note": "z", "csrf_token": token}).json() == {
        "note": "z"
    }


def test_login_rate_limit(client: TestClient, db_session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_AUTH__LOGIN_ATTEMPTS_PER_MINUTE", "2")
    reset_settings()
    make_user(db_session, "ida")
    for _ in range(2):
        bad = client.post("/api/v1/auth/login", json={"username": "ida", "password": "wrong guess"})
        assert bad.status_code == 401
    limited = client.post("/api/v1/auth/login", json={"username": "IDA", "password": PASSWORD})
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert "set-cookie" not in limited.headers
    token = form_csrf(client)
    page = client.post("/login", data={"username": "ida", "password": PASSWORD, "csrf_token": token})
    assert page.status_code == 429 and "too many login attempts" in page.text
    assert 1 <= int(page.headers["Retry-After"]) <= 60
    # another account from the same client is counted separately
    make_user(db_session, "jo")
    api_login(client, "jo")


def test_login_rate_limit_in_redis(
    redis_url: str, client: TestClient, db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    monkeypatch.setenv("SUITE_AUTH__LOGIN_ATTEMPTS_PER_MINUTE", "1")
    reset_settings()
    make_user(db_session, "kim")
    assert (
        client.post("/api/v1/auth/login", json={"username": "kim", "password": "wrong guess"}).status_code
        == 401
    )
    keys = redis.Redis.from_url(redis_url).keys("suite:login:*")
    assert keys == [b"suite:login:kim|testclient"]
    web_auth.reset_rate_limits()  # as if another server process: the count lives in Redis
    limited = client.post("/api/v1/auth/login", json={"username": "kim", "password": PASSWORD})
    assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 60


def test_tokens_api(client: TestClient, db_session: Session) -> None:
    make_user(db_session, "lena")
    other = make_user(db_session, "mo")
    _, foreign = auth.create_token(db_session, user=other, name="theirs")
    db_session.commit()
    csrf = api_login(client, "lena")
    headers = {"X-CSRF-Token": csrf}
    created = client.post(
        "/api/v1/auth/tokens",
        json={"name": "ci", "scopes": ["catalog:*"], "expires_in": "1h"},
        headers=headers,
    )
    assert created.status_code == 201
    body = created.json()
    plain = body["token"]
    assert plain.startswith(body["prefix"]) and body["state"] == "active" and body["expires_at"]
    bad = client.post("/api/v1/auth/tokens", json={"name": "x", "expires_in": "soon"}, headers=headers)
    assert bad.status_code == 422 and "invalid duration" in bad.json()["error"]["message"]

    listed = client.get("/api/v1/auth/tokens").json()
    assert [t["name"] for t in listed] == ["ci"] and "token" not in listed[0]

    client.cookies.clear()
    bearer = {"Authorization": f"Bearer {plain}"}
    me = client.get("/api/v1/auth/me", headers=bearer).json()
    assert me["username"] == "lena" and me["auth"] == "token" and me["csrf_token"] is None
    assert client.get("/probe/scoped", headers=bearer).status_code == 200
    # a scoped token cannot mint a broader one
    broader = client.post("/api/v1/auth/tokens", json={"name": "all"}, headers=bearer)
    assert broader.status_code == 403
    narrower = client.post(
        "/api/v1/auth/tokens", json={"name": "ro", "scopes": ["catalog:read"]}, headers=bearer
    )
    assert narrower.status_code == 201

    foreign_id = db_session.scalars(select(ApiToken.id).where(ApiToken.name == "theirs")).one()
    assert client.delete(f"/api/v1/auth/tokens/{foreign_id}", headers=bearer).status_code == 404
    assert client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {foreign}"}).status_code == 200

    assert client.delete(f"/api/v1/auth/tokens/{body['id']}", headers=bearer).status_code == 204
    revoked = client.get("/api/v1/auth/me", headers=bearer)
    assert revoked.status_code == 401
    assert revoked.json() == {"error": {"code": "unauthorized", "message": "API token revoked"}}
    assert revoked.headers["WWW-Authenticate"] == "Bearer"


def test_expired_token_is_401(client: TestClient, db_session: Session) -> None:
    user = make_user(db_session, "nia")
    token, plain = auth.create_token(db_session, user=user, name="old", expires_in=timedelta(days=1))
    token.expires_at = utcnow() - timedelta(minutes=1)
    db_session.commit()
    response = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {plain}"})
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "unauthorized", "message": "API token expired"}}
    garbage = client.get("/api/v1/auth/me", headers={"Authorization": "Bearer st_garbage"})
    assert garbage.status_code == 401 and garbage.json()["error"]["message"] == "invalid API token"


def test_disabled_user(client: TestClient, db_session: Session) -> None:
    user = make_user(db_session, "otto")
    _, plain = auth.create_token(db_session, user=user, name="ci")
    db_session.commit()
    api_login(client, "otto")
    auth.disable_user(db_session, username="otto")
    db_session.commit()
    assert client.get("/api/v1/auth/me").status_code == 401
    bearer = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {plain}"})
    assert bearer.status_code == 401 and bearer.json()["error"]["message"] == "user disabled"
    login = client.post("/api/v1/auth/login", json={"username": "otto", "password": PASSWORD})
    assert login.status_code == 401 and "disabled" in login.json()["error"]["message"]


def test_admin_role_and_page_dependencies(client: TestClient, db_session: Session) -> None:
    make_user(db_session, "pia")
    make_user(db_session, "quinn", role="admin")
    assert client.get("/probe/admin").status_code == 401
    redirect = client.get("/probe/page?tab=2", follow_redirects=False)
    assert redirect.status_code == 303 and redirect.headers["location"] == "/login?next=/probe/page%3Ftab%3D2"
    htmx = client.get("/probe/page", headers={"HX-Request": "true"})
    assert htmx.status_code == 401 and htmx.headers["HX-Redirect"] == "/login?next=/probe/page"
    api_login(client, "pia")
    assert client.get("/probe/page").json() == {"user": "pia"}
    assert client.get("/probe/only-admins").json()["error"]["message"] == "admin role required"
    denied = client.get("/probe/admin")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    assert client.get("/probe/editor").status_code == 403
    api_login(client, "quinn")
    assert client.get("/probe/admin").json() == {"user": "quinn"}
    assert client.get("/probe/editor").json() == {"ok": True}  # admins pass every role check


def test_login_on_the_database_the_app_prepares() -> None:
    """No test database: the app creates its own SQLite file, as `suite serve` does."""
    from suite.core.config import get_settings
    from suite.core.db import session_scope

    with TestClient(build_app()) as client:
        with session_scope() as session:
            auth.create_user(session, username="ruth", password=PASSWORD, role="admin")
        token = form_csrf(client)
        fields = {"username": "ruth", "password": PASSWORD, "csrf_token": token, "next": "/"}
        assert client.post("/login", data=fields, follow_redirects=False).status_code == 303
        me = client.get("/api/v1/auth/me").json()
        assert me["username"] == "ruth" and me["last_login_at"]
        home = client.get("/")
        assert home.status_code == 200 and me["csrf_token"] in home.text  # base.html gets the session's token
        assert client.post("/logout", data={"csrf_token": me["csrf_token"]}).status_code == 200
        assert client.get("/api/v1/auth/me").status_code == 401
    assert (get_settings().data_dir / "suite.db").exists()
