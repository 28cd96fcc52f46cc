"""One exception hierarchy; every error that reaches a client maps to a code and a status."""

from __future__ import annotations


class GateError(Exception):
    """Base of every error fairgate raises on purpose."""

    code = "gate_error"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class ConfigError(GateError):
    """A configuration value is missing or invalid; the message names the field."""

    code = "bad_config"


class BadRequest(GateError):
    code = "bad_request"
    status = 400


class Unauthorized(GateError):
    code = "unauthorized"
    status = 401


class NotYet(Unauthorized):
    """A pass presented before its paced arrival time (issue 12): 401 with Retry-After
    (seconds) and X-Gate-Retry-After-Ms (the wait, in milliseconds)."""

    code = "pass_not_yet"

    def __init__(self, message: str, *, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Forbidden(GateError):
    code = "forbidden"
    status = 403


class NotFound(GateError):
    code = "not_found"
    status = 404


class Conflict(GateError):
    code = "conflict"
    status = 409


class Unavailable(GateError):
    """Redis is unreachable or too slow: the gate fails closed and asks the client to retry."""

    code = "unavailable"
    status = 503

    DEFAULT = "the gate is temporarily unavailable; keep your ticket and retry"

    def __init__(self, message: str = DEFAULT, *, retry_after_s: int = 2):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotPublished(Unavailable):
    """The campaign's commitment checkpoint is not published yet (issue 13): joins wait."""

    code = "campaign_not_published"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message, retry_after_s=1)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class RedisRefused(Unavailable):
    """Redis refused a command (OOM at maxmemory, MISCONF, BUSY, ...): a 503 like any
    outage, with a generic message; `reason` is for the count and the log, never the client."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason


class ScriptError(GateError):
    """A Lua script refused its arguments (a bug in the caller, never customer input)."""

    code = "script_error"
    status = 500
