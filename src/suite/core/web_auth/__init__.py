"""Web login: server-side sessions (cookie), CSRF tokens on forms, login rate limit, login/logout pages.

The session cookie holds a random token; `core_session` stores only its sha256. Each session has its own
CSRF token: every cookie-authenticated POST/PUT/PATCH/DELETE, and every form post, must carry it as the
`csrf_token` form field or the `X-CSRF-Token` header, else 403. Before login, the login form uses a
double-submit cookie.

For domains: `PageUser` (a page that needs a login: redirects to /login), `CsrfProtected` (a route or router
dependency for form posts that use no user dependency) and `csrf_token(request)` for the hidden form field.

Modules: `sessions` (cookies, login, logout), `csrf` (tokens, `CsrfProtected`, `PageUser`), `ratelimit`,
`routes` (`router` for /api/v1/auth, `pages` for /login). Everything public is importable from here.
"""

from __future__ import annotations

from suite.core.web_auth.csrf import (
    CSRF_COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    SAFE_METHODS,
    CsrfProtected,
    PageUser,
    attach_csrf_cookie,
    check_csrf,
    csrf_protect,
    csrf_token,
    login_url,
    page_user,
    safe_next,
)
from suite.core.web_auth.ratelimit import (
    LOGIN_WINDOW_S,
    Limiter,
    MemoryLimiter,
    RedisLimiter,
    login_limiter,
    reset_rate_limits,
)
from suite.core.web_auth.routes import (
    LoginIn,
    LoginOut,
    MeRead,
    TokenCreate,
    TokenCreated,
    TokenRead,
    UserRead,
    pages,
    router,
    token_read,
)
from suite.core.web_auth.sessions import (
    SESSION_COOKIE,
    clear_session_cookie,
    create_session,
    end_session,
    login,
    logout,
    purge_expired_sessions,
    set_session_cookie,
    user_from_cookie,
    web_session_from_cookie,
)

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "LOGIN_WINDOW_S",
    "SAFE_METHODS",
    "SESSION_COOKIE",
    "CsrfProtected",
    "Limiter",
    "LoginIn",
    "LoginOut",
    "MeRead",
    "MemoryLimiter",
    "PageUser",
    "RedisLimiter",
    "TokenCreate",
    "TokenCreated",
    "TokenRead",
    "UserRead",
    "attach_csrf_cookie",
    "check_csrf",
    "clear_session_cookie",
    "create_session",
    "csrf_protect",
    "csrf_token",
    "end_session",
    "login",
    "login_limiter",
    "login_url",
    "logout",
    "page_user",
    "pages",
    "purge_expired_sessions",
    "reset_rate_limits",
    "router",
    "safe_next",
    "set_session_cookie",
    "token_read",
    "user_from_cookie",
    "web_session_from_cookie",
]
