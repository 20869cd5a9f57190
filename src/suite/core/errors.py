"""Domain errors, mapped once to HTTP status codes and CLI exit codes."""

from __future__ import annotations

from typing import Any


class SuiteError(Exception):
    """Base error. `code` is the lower_snake error code of the API body."""

    code = "error"
    status_code = 500
    exit_code = 1

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class ConfigError(SuiteError):
    code = "config_error"
    status_code = 500
    exit_code = 2


class UsageError(SuiteError):
    code = "bad_request"
    status_code = 400
    exit_code = 2


class ValidationFailed(SuiteError):
    code = "validation_error"
    status_code = 422
    exit_code = 2


class NotFound(SuiteError):
    code = "not_found"
    status_code = 404


class Conflict(SuiteError):
    code = "conflict"
    status_code = 409


class Unauthorized(SuiteError):
    code = "unauthorized"
    status_code = 401


class Forbidden(SuiteError):
    code = "forbidden"
    status_code = 403


class TooLarge(SuiteError):
    code = "too_large"
    status_code = 413


class RateLimited(SuiteError):
    code = "rate_limited"
    status_code = 429

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code, details={"retry_after": round(retry_after, 3)})
        self.retry_after = retry_after


class Unavailable(SuiteError):
    """A dependency (database, Redis, a provider) does not answer."""

    code = "unavailable"
    status_code = 503


class DatabaseError(Unavailable):
    code = "database_unavailable"


class CryptoError(SuiteError):
    code = "crypto_error"
    status_code = 500
