"""The sockets of every listener, hardened against slow and malformed clients.

aiohttp alone keeps an idle connection for an hour, waits for a request head for as long
as the keep-alive lasts, and logs every malformed request as an ERROR with a traceback.
Here a connection whose request head has not arrived `header_timeout_ms` after its first
byte is closed, an idle keep-alive ends after `keepalive_timeout_s`, and malformed HTTP
(answered 400 by aiohttp's parser) is counted in `fairgate_http_refused_total` and
logged as one WARNING line at most once a second per listener, with how many it stands for.

The head deadline needs aiohttp's request handler to say whether it waits for a head
(`_waiter`): tests/test_listener_hardening.py checks it on a real `gate serve` process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gate.config import Config
from gate.http.common import GATE_KEY
from gate.http.fast import FastPath

log = logging.getLogger("gate.http.listener")
# Called with a reason ("malformed", "slow_head") each time a connection is refused.
Refused = Callable[[str], None]


def counter_of(app: web.Application, listener: str) -> Refused:
    """Counts in the metrics of the app's Gate (there once the app has started)."""

    def refused(reason: str) -> None:
        gate = app.get(GATE_KEY)
        if gate is not None:
            gate.metrics.refusal(listener, reason)

    return refused


class _Warnings:
    """One WARNING line per listener per second at most; the rest are counted in it."""

    def __init__(self, listener: str) -> None:
        self.listener = listener
        self.last = 0.0
        self.suppressed = 0

    def warn(self, reason: str, detail: str) -> None:
        now = time.monotonic()
        if now - self.last < 1.0:
            self.suppressed += 1
            return
        log.warning(
            "event=http_refused listener=%s reason=%s detail=%s suppressed=%d",
            self.listener,
            reason,
            detail,
            self.suppressed,
        )
        self.last = now
        self.suppressed = 0


class _GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a deadline on the request head and quiet
    logging of malformed requests."""

    __slots__ = ("_head_count", "_head_timeout_s", "_head_timer", "_refused", "_warnings")

    def __init__(
        self,
        manager: web.Server,
        *,
        head_timeout_s: float,
        refused: Refused,
        warnings: _Warnings,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0
        self._refused = refused
        self._warnings = warnings

    def _waiting_for_head(self) -> bool:
        """No request is being handled or queued: bytes now can only be a request head."""
        waiter = self._waiter
        return (
            not self._request_in_progress
            and not self._messages
            and (waiter is None or not waiter.done())
        )

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Bytes arrived and no head is complete yet: start the clock (once per head; a
        # trickle of bytes does not restart it).
        if data and self._head_timer is None and self._waiting_for_head():
            self._head_count = self._request_count
            self._head_timer = self._loop.call_later(self._head_timeout_s, self._head_expired)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._request_count == self._head_count and self._waiting_for_head():
            self._refused("slow_head")
            self._warnings.warn("slow_head", f"no complete request head in {self._head_timeout_s}s")
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp logs a first request that is not HTTP at all (TLS to this port, a
        # scanner) at DEBUG, not through log_exception: counted here, not logged.
        if self._request_count == 1 and isinstance(exc, BadHttpMethod):
            self._refused("malformed")
        super().handle_error(request, status, exc, message)  # logs; raises if answered
        # aiohttp's own answer is text/plain with its words and the request's bytes in it:
        # the gate's error shape instead (the documents promise it on every route).
        if status >= 500:
            code, text = "internal", "internal error"
        elif isinstance(exc, LineTooLong):
            code, text = "line_too_long", "the request line or a header is too long"
        else:
            code, text = "malformed_request", "the request is not valid HTTP/1.1"
        response = web.Response(
            status=status,
            text=json.dumps({"error": {"code": code, "message": text}}),
            content_type="application/json",
        )
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's report of a request it could not parse (answered 400) or a body it
        could not decode: one counted line, no traceback. Anything else is a fault and
        keeps its traceback (the gate's handlers log theirs in the error middleware)."""
        exc = kw.get("exc_info")
        if not isinstance(exc, HttpProcessingError | web.RequestPayloadError | ConnectionError):
            super().log_exception(*args, **kw)
            return
        self._refused("malformed")
        self._warnings.warn("malformed", type(exc).__name__)


class _GuardedServer(web.Server):
    def __init__(
        self,
        plain: web.Server,
        *,
        head_timeout_s: float,
        refused: Refused,
        listener: str,
        kwargs: dict[str, Any],
    ) -> None:
        super().__init__(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            **kwargs,
        )
        self._head_timeout_s = head_timeout_s
        self._refused = refused
        self._warnings = _Warnings(listener)

    def __call__(self) -> RequestHandler:
        return _GuardedRequestHandler(
            self,
            loop=self._loop,
            head_timeout_s=self._head_timeout_s,
            refused=self._refused,
            warnings=self._warnings,
            **self._kwargs,
        )


class ListenerRunner(web.AppRunner):
    """An AppRunner whose connections have the configured keep-alive and head deadline.

    A connection refused before a handler saw it is counted in the metrics of the app's
    Gate as `fairgate_http_refused_total{listener, reason}`."""

    def __init__(self, app: web.Application, config: Config, *, listener: str) -> None:
        super().__init__(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=float(config.keepalive_timeout_s),
            # A body the handler did not read is drained (so the answer is not lost to a
            # reset) for as long as a body may take, not aiohttp's 10 s.
            lingering_time=min(10.0, config.body_timeout_ms / 1000),
        )
        self._head_timeout_s = config.header_timeout_ms / 1000
        self._listener = listener
        self._fast_path = config.http_fast_path
        self.fast_path: FastPath | None = None  # the public listener's, once serving
        self._refused = counter_of(app, listener)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        if self._listener == "public" and self._fast_path:
            self.fast_path = FastPath(self._app, plain.request_handler)
            plain.request_handler = self.fast_path
        return _GuardedServer(
            plain,
            head_timeout_s=self._head_timeout_s,
            refused=self._refused,
            listener=self._listener,
            kwargs=dict(plain._kwargs),
        )
