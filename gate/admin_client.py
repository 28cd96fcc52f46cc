"""A small synchronous client of the admin API, for the `gate campaign` commands."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any, BinaryIO

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

    def stream(self, path: str, sink: BinaryIO, *, chunk_size: int = 65536) -> int:
        """GET a streamed body (the audit export) into `sink` as it arrives; returns the
        bytes written. A body cut short (the gate died mid-stream) is an error."""
        request = urllib.request.Request(
            self.base_url + path,
            method="GET",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        written = 0
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                while True:
                    chunk = response.read(chunk_size)
                    if not chunk:
                        return written
                    sink.write(chunk)
                    written += len(chunk)
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except BrokenPipeError:  # the sink's reader went away (`| head`): the CLI's to handle
            raise
        except http.client.IncompleteRead:
            raise GateError(
                f"the stream from {self.base_url} was cut short after {written} bytes",
                code="incomplete",
                status=502,
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: Exception) -> GateError:
        reason = getattr(exc, "reason", exc)  # a URLError wraps the socket's own error
        return GateError(
            f"cannot reach the admin API at {self.base_url}: {reason}",
            code="unreachable",
            status=503,
        )

    @staticmethod
    def _http_error(exc: urllib.error.HTTPError) -> GateError:
        try:
            error = json.loads(exc.read())["error"]
            code, message = error["code"], error["message"]
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", f"HTTP {exc.code}"
        return GateError(message, code=code, status=exc.code)

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
            raise self._http_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._unreachable(exc) from None
