"""The public listener's fast path for its two hottest requests (issue 15).

On promotion day nearly every request to the gate is one of two: a waiting customer's
status poll, answered from the signed ticket and this process's cache, and a proxy's
pass check (`/gate/auth`) for a customer the door has already let in. Through aiohttp's
application (the router, the middleware, a `web.Response` and its header multidict)
each cost about twice an aiohttp hello-world; most of that is machinery these two
answers do not need. Here they are recognised from the request line, checked by the
very functions the application's handlers use, and answered with the response's bytes
written in one piece.

The fast path answers only what it is sure of, and does nothing before it is sure: a
poll the cache answers (the customer waiting, in a pre-queue not yet shuffled, or the
campaign closed before their turn), a pass check whose pass the door has already let in
(gate/arrivals.py). Everything else, every error included, goes through the application
as before, from the start: its handlers and middleware give the same answers they always
gave (a 503 at the in-flight bound or while shedding, an error page for a browser, a
Redis round trip for an admitted customer's poll). What is answered here is counted in
the metrics as the middleware counts it, and its bytes are those the application would
send (tests/test_fast_path.py compares them). `http_fast_path = false` turns it off.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate

from aiohttp import hdrs, web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.web_request import BaseRequest
from aiohttp.web_urldispatcher import AbstractRoute, UrlMappingMatchInfo

from gate.errors import GateError
from gate.http.checks import AUTH_PATH, find_identity
from gate.http.common import GATE_KEY, JSON_TYPE, MSGPACK, encode_json
from gate.http.public import (  # the checks and views of the application's handlers
    auth_answer,
    cached_campaign,
    cached_view,
    checked_pass,
    checked_ticket,
)
from gate.overload import SHED_MIN_IN_FLIGHT
from gate.service import Gate

AppHandler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]

POLL_ROUTE = "/q/{campaign}/status"
_TAIL = (
    f"{hdrs.CONTENT_TYPE}: {JSON_TYPE}\r\n{hdrs.CONTENT_LENGTH}: %d\r\n"
    f"{hdrs.DATE}: %s\r\n{hdrs.SERVER}: {SERVER_SOFTWARE}\r\n\r\n"
)


class _Date:
    """The Date header's value, formatted once a second."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.text = formatdate(second, usegmt=True)
        return self.text


class RawResponse:
    """A 200 whose bytes are written as they are: what aiohttp's connection handler asks
    of a response (prepare, write_eof, keep_alive, status) and nothing more."""

    __slots__ = ("data",)
    keep_alive = True
    status = 200

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def prepare(self, request: BaseRequest) -> None:
        await request.writer.write(self.data)

    async def write_eof(self) -> None:
        return None


class FastPath:
    """The public listener's request handler: the fast path where it applies, else the
    application's own handler (`app_handler`, aiohttp's Application._handle)."""

    def __init__(self, app: web.Application, app_handler: AppHandler) -> None:
        self.app = app
        self.app_handler = app_handler
        self.date = _Date()
        self._poll_route: AbstractRoute | None = None
        self._auth_route: AbstractRoute | None = None
        self.answered = 0  # requests this fast path answered itself

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        answer = None
        if request.method == hdrs.METH_GET and request.version == HttpVersion11:
            answer = await self._fast(request)
        if answer is None:
            return await self.app_handler(request)
        return answer  # type: ignore[return-value]  # a response in all aiohttp asks of one

    async def _fast(self, request: BaseRequest) -> RawResponse | None:
        gate = self.app.get(GATE_KEY)
        if gate is None or not request.keep_alive or request.body_exists:
            return None
        asked = request.headers
        if hdrs.EXPECT in asked or MSGPACK in asked.get(hdrs.ACCEPT, ""):
            return None
        path = request.rel_url.raw_path
        if path == AUTH_PATH:
            route, campaign = AUTH_PATH, ""
        else:
            parts = path.split("/")
            if len(parts) != 4 or parts[1] != "q" or parts[3] != "status" or "%" in path:
                return None
            route, campaign = POLL_ROUTE, parts[2]
        flights = gate.in_flight
        in_flight = flights.get("public", 0)
        bound = gate.config.max_concurrent_requests
        if (bound and in_flight >= bound) or (
            route == POLL_ROUTE and in_flight >= SHED_MIN_IN_FLIGHT and gate.shedder.shedding()
        ):
            return None  # the middleware answers 503, and counts it
        started = time.perf_counter()
        request._match_info = self._match_info(route, campaign)  # type: ignore[attr-defined]
        flights["public"] = in_flight + 1
        try:
            answer = await self._answer(gate, request, route, campaign)
        except GateError:
            return None  # the application's handler raises it again, and answers it
        finally:
            flights["public"] -= 1
        if answer is None:
            return None
        body, headers = answer
        self.answered += 1
        gate.metrics.answered("public", route, 200, time.perf_counter() - started)
        if route == AUTH_PATH:
            gate.metrics.decision("allow", "ok")
        head = "HTTP/1.1 200 OK\r\n"
        for name, value in headers:
            head += f"{name}: {value}\r\n"
        head += _TAIL % (len(body), self.date.now())
        return RawResponse(head.encode() + body)

    async def _answer(
        self, gate: Gate, request: BaseRequest, route: str, campaign: str
    ) -> tuple[bytes, list[tuple[str, str]]] | None:
        """The answer's body and headers (besides Content-Type, Content-Length, Date and
        Server), or None where the application must answer."""
        web_request: web.Request = request  # type: ignore[assignment]
        if route == AUTH_PATH:
            await find_identity(web_request)
            if not gate.cache.fresh():  # after any wait for the identity, as the handler
                return None  # the handler waits for a fresh cache
            token = checked_pass(web_request, True)
            if not gate.arrivals.let_in(token):
                return None  # the pass's first use: the door meters it
            data, extra = auth_answer(web_request, token)
            if not all(value.isascii() for value in extra.values()):
                return None
            return encode_json(data), list(extra.items())
        await find_identity(web_request)
        token = checked_ticket(web_request, campaign, request.query.get("ticket", ""))
        live = cached_campaign(web_request, campaign)
        if live is None:
            return None
        view = cached_view(web_request, live, token, {"campaign": campaign, "seq": token.seq})
        if view is None:
            return None
        return encode_json(view), []

    def _match_info(self, route: str, campaign: str) -> UrlMappingMatchInfo:
        """What the router would have found, for the handlers' helpers (request.app,
        request.match_info)."""
        if self._poll_route is None:
            for resource in self.app.router.resources():
                for candidate in resource:
                    if resource.canonical == POLL_ROUTE and candidate.method == hdrs.METH_GET:
                        self._poll_route = candidate
                    elif resource.canonical == AUTH_PATH:
                        self._auth_route = candidate
        if route == AUTH_PATH:
            assert self._auth_route is not None
            info = UrlMappingMatchInfo({}, self._auth_route)
        else:
            assert self._poll_route is not None
            info = UrlMappingMatchInfo({"campaign": campaign}, self._poll_route)
        info.add_app(self.app)
        info.freeze()
        return info
