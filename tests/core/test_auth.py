"""Users, passwords and API tokens: the service layer, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from suite.core import auth, web_auth
from suite.core.db import utcnow
from suite.core.errors import Conflict, Forbidden, NotFound, Unauthorized, UsageError, ValidationFailed
from suite.core.models import ApiToken, User, WebSession

PASSWORD = "correct horse battery"


@lru_cache(maxsize=1)
def password_hash() -> str:
    return auth.hash_password(PASSWORD)  # argon2 is slow on purpose: hash once per worker


def make_user(session: Session, username: str, *, role: str = "user") -> User:
    user = User(username=username, password_hash=password_hash(), role=role, is_active=True)
    session.add(user)
    session.flush()
    return user


def test_password_hashing() -> None:
    hashed = password_hash()
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed
    assert auth.verify_password(hashed, PASSWORD)
    assert not auth.verify_password(hashed, PASSWORD + "!")
    assert not auth.verify_password("not a hash", PASSWORD)


def test_create_user_and_rules(any_db_session: Session) -> None:
    user = auth.create_user(any_db_session, username="Alice", password="s3cret-pass", email="a@example.org")
    assert user.id and user.role == "user" and user.is_active
    assert user.password_hash != "s3cret-pass" and auth.verify_password(user.password_hash, "s3cret-pass")
    assert auth.get_user(any_db_session, username="alice") is user  # case-insensitive lookup
    with pytest.raises(Conflict, match="already exists"):
        auth.create_user(any_db_session, username="ALICE", password="another-pass")
    with pytest.raises(ValidationFailed, match="username"):
        auth.create_user(any_db_session, username="bad name", password="another-pass")
    with pytest.raises(ValidationFailed, match="at least 8"):
        auth.create_user(any_db_session, username="bob", password="short")
    with pytest.raises(ValidationFailed, match=r"unknown role 'wizard'; roles: .*admin.*user"):
        auth.create_user(any_db_session, username="bob", password="long-enough", role="wizard")
    count = any_db_session.scalar(select(func.count()).select_from(User).where(User.username == "bob"))
    assert count == 0  # nothing half-written
    with pytest.raises(NotFound, match="user 'nobody' not found"):
        auth.get_user(any_db_session, username="nobody")


def test_roles_include_domain_roles(db_session: Session) -> None:
    from suite.core.plugins import domain_roles

    assert auth.valid_roles() == {"admin", "user"} | domain_roles()
    make_user(db_session, "carol")
    assert auth.set_role(db_session, username="carol", role="admin").role == "admin"
    with pytest.raises(ValidationFailed):
        auth.set_role(db_session, username="carol", role="root")
    assert [u.username for u in auth.list_users(db_session)] == ["carol"]


def test_authenticate_password(db_session: Session) -> None:
    user = make_user(db_session, "dave")
    assert user.last_login_at is None
    assert auth.authenticate_password(db_session, username="DAVE", password=PASSWORD) is user
    assert user.last_login_at is not None
    with pytest.raises(Unauthorized) as wrong:
        auth.authenticate_password(db_session, username="dave", password="wrong password")
    with pytest.raises(Unauthorized) as unknown:
        auth.authenticate_password(db_session, username="nobody", password="wrong password")
    assert wrong.value.message == unknown.value.message == "invalid username or password"
    auth.disable_user(db_session, username="dave")
    with pytest.raises(Unauthorized, match="disabled"):
        auth.authenticate_password(db_session, username="dave", password=PASSWORD)


def test_token_is_stored_hashed_and_authenticates(any_db_session: Session) -> None:
    user = make_user(any_db_session, "erin")
    token, plain = auth.create_token(any_db_session, user=user, name="ci", scopes=["catalog:*", "chat:read"])
    assert plain.startswith("st_") and len(plain) > 40
    assert token.prefix == plain[:10] and token.token_hash == auth.hash_token(plain)
    stored = any_db_session.scalars(select(ApiToken.token_hash)).all()
    assert plain not in stored
    found_user, found = auth.authenticate_token(any_db_session, plain, scope="catalog:write")
    assert found_user is user and found is token and token.last_used_at is not None
    auth.authenticate_token(any_db_session, plain, scope="chat:read")
    with pytest.raises(Forbidden, match="lacks scope 'chat:write'"):
        auth.authenticate_token(any_db_session, plain, scope="chat:write")
    with pytest.raises(Unauthorized, match="invalid API token"):
        auth.authenticate_token(any_db_session, plain + "x")
    _, unscoped = auth.create_token(any_db_session, user=user, name="all")
    auth.authenticate_token(any_db_session, unscoped, scope="anything:at-all")


def test_expired_token_is_refused(any_db_session: Session) -> None:
    user = make_user(any_db_session, "frank")
    token, plain = auth.create_token(any_db_session, user=user, name="short", expires_in=timedelta(hours=1))
    assert token.expires_at is not None and auth.token_state(token) == "active"
    auth.authenticate_token(any_db_session, plain)
    token.expires_at = utcnow() - timedelta(seconds=1)
    any_db_session.flush()
    with pytest.raises(Unauthorized, match="API token expired"):
        auth.authenticate_token(any_db_session, plain)
    assert auth.token_state(token) == "expired"


def test_revoke_token_by_id_prefix_or_value(any_db_session: Session) -> None:
    user = make_user(any_db_session, "gina")
    other = make_user(any_db_session, "hank")
    t1, p1 = auth.create_token(any_db_session, user=user, name="one")
    t2, p2 = auth.create_token(any_db_session, user=user, name="two")
    t3, p3 = auth.create_token(any_db_session, user=other, name="three")

    token, changed = auth.revoke_token(any_db_session, ident=t1.prefix)
    assert token is t1 and changed and t1.revoked_at is not None
    with pytest.raises(Unauthorized, match="API token revoked"):
        auth.authenticate_token(any_db_session, p1)
    assert auth.revoke_token(any_db_session, ident=str(t1.id)) == (t1, False)  # idempotent
    assert auth.revoke_token(any_db_session, ident=p2)[0] is t2  # the full value works too
    with pytest.raises(NotFound):
        auth.revoke_token(any_db_session, ident=str(t3.id), user=user)  # another user's token
    auth.authenticate_token(any_db_session, p3)
    with pytest.raises(NotFound, match="not found"):
        auth.revoke_token(any_db_session, ident="st_nothing")
    t2.prefix = t3.prefix
    any_db_session.flush()
    with pytest.raises(UsageError, match="matches several tokens"):
        auth.revoke_token(any_db_session, ident=t3.prefix)
    assert [t.name for t in auth.list_tokens(any_db_session, user=user)] == ["two", "one"]


def test_token_rules(db_session: Session) -> None:
    user = make_user(db_session, "ivy")
    with pytest.raises(ValidationFailed, match="name"):
        auth.create_token(db_session, user=user, name=" ")
    with pytest.raises(ValidationFailed, match="invalid scope"):
        auth.create_token(db_session, user=user, name="x", scopes=["bad scope"])
    with pytest.raises(ValidationFailed, match="lifetime"):
        auth.create_token(db_session, user=user, name="x", expires_in=timedelta(seconds=-5))


def test_parse_duration() -> None:
    assert auth.parse_duration("30d") == timedelta(days=30)
    assert auth.parse_duration("12h") == timedelta(hours=12)
    assert auth.parse_duration("90m") == timedelta(minutes=90)
    assert auth.parse_duration("2w") == timedelta(weeks=2)
    assert auth.parse_duration("3600") == timedelta(hours=1)
    for bad in ("", "0d", "-1d", "soon", "3y", "99999w"):
        with pytest.raises(UsageError):
            auth.parse_duration(bad)


def test_disable_user_ends_sessions_and_blocks_tokens(any_db_session: Session) -> None:
    user = make_user(any_db_session, "jack")
    web_auth.create_session(any_db_session, user=user)
    web_auth.create_session(any_db_session, user=user)
    _, plain = auth.create_token(any_db_session, user=user, name="ci")
    disabled, ended = auth.disable_user(any_db_session, username="jack")
    assert disabled is user and not user.is_active and ended == 2
    assert any_db_session.scalar(select(func.count()).select_from(WebSession)) == 0
    with pytest.raises(Unauthorized, match="user disabled"):
        auth.authenticate_token(any_db_session, plain)
    with pytest.raises(Conflict, match="disabled"):
        auth.create_token(any_db_session, user=user, name="more")
    auth.enable_user(any_db_session, username="jack")
    assert auth.authenticate_token(any_db_session, plain)[0] is user


def test_set_password_ends_sessions(db_session: Session) -> None:
    user = make_user(db_session, "kate")
    web_auth.create_session(db_session, user=user)
    with pytest.raises(ValidationFailed):
        auth.set_password(db_session, username="kate", password="short")
    auth.set_password(db_session, username="kate", password="a brand new one")
    assert auth.verify_password(user.password_hash, "a brand new one")
    assert db_session.scalar(select(func.count()).select_from(WebSession)) == 0


def test_scope_allows() -> None:
    assert auth.scope_allows([], "anything")
    assert auth.scope_allows(["*"], "anything")
    assert auth.scope_allows(["catalog:*"], "catalog:write")
    assert not auth.scope_allows(["catalog:*"], "chat:read")
    assert not auth.scope_allows(["catalog:read"], "catalog:write")
