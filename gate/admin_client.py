"""A small synchronous client of the admin API, for the `gate campaign` commands."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from gate.errors import GateError


class AdminClient:
    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0):
        if not token:
            raise GateError(
                "no admin token: set GATE_ADMIN_TOKEN (or --token)", code="no_admin_token"
            )
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
                code, message = error["code"], error["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", f"HTTP {exc.code}"
            raise GateError(message, code=code, status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GateError(
                f"cannot reach the admin API at {self.base_url}: {reason}",
                code="unreachable",
                status=503,
            ) from None
