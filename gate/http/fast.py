"""The public listener's fast path for its hottest requests (issue 15).

On promotion day nearly every request to the gate is a waiting customer's status poll,
answered from the signed ticket and this process's cache, or a proxy's pass check
(`/gate/auth`) for a customer the door has already let in; and in the first seconds, a
burst of joins. Through aiohttp's application (the router, the middleware, a
`web.Response` and its header multidict) a poll and a pass check cost about twice an
aiohttp hello-world; most of that is machinery these answers do not need. Here they are
recognised from the request line, checked by the very functions the application's
handlers use, and answered with the response's bytes written in one piece.

The fast path answers only what it is sure of, and does nothing before it is sure: a
poll the cache answers (the customer waiting, in a pre-queue not yet shuffled, or the
campaign closed before their turn), a pass check whose pass the door has already let in
(gate/arrivals.py), and an API client's join (no body, no Origin, no cookie: nothing a
browser's cross-site write could carry). Everything else, every error included, goes
through the application as before, from the start: its handlers and middleware give the
same answers they always gave (a 503 at the in-flight bound or while shedding, an error
page for a browser, a Redis round trip for an admitted customer's poll). A join refused
(closed, not open, blocked, Redis away) took nothing, so the application, asked again,
answers the same refusal. What is answered here is counted in the metrics as the
middleware counts it, and its bytes are those the application would send
(tests/test_fast_path.py compares them). `http_fast_path = false` turns it off.
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
from gate.http.checks import AUTH_PATH, campaign_id, find_identity, identity
from gate.http.common import GATE_KEY, JSON_TYPE, MSGPACK, encode_json
from gate.http.public import (  # the checks and views of the application's handlers
    auth_answer,
    cached_campaign,
    cached_view,
    checked_pass,
    checked_ticket,
    join_answer,
)
from gate.overload import SHED_MIN_IN_FLIGHT, SHED_ROUTES
from gate.service import Gate

AppHandler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]

POLL_ROUTE = "/q/{campaign}/status"
JOIN_ROUTE = "/q/{campaign}/join"
_STATUS_LINES = {200: "HTTP/1.1 200 OK\r\n", 201: "HTTP/1.1 201 Created\r\n"}
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
    """An answer whose bytes are written as they are: what aiohttp's connection handler
    asks of a response (prepare, write_eof, keep_alive, status) and nothing more."""

    __slots__ = ("data", "status")
    keep_alive = True

    def __init__(self, data: bytes, status: int) -> None:
        self.data = data
        self.status = status

    async def prepare(self, request: BaseRequest) -> None:
        await request.writer.write(self.data)

    async def write_eof(self) -> None:
        return None


# The request lines the fast path knows: (method, the path's last segment) -> the route.
_ROUTES = {
    (hdrs.METH_GET, "status"): POLL_ROUTE,
    (hdrs.METH_POST, "join"): JOIN_ROUTE,
}
# A browser's write (Origin, cookies) is checked by the application (check_browser_write),
# and so is any body (a form, JSON): the fast path takes a join with none of them.
_BROWSER_WRITE = (hdrs.ORIGIN, hdrs.COOKIE, hdrs.CONTENT_TYPE)


class FastPath:
    """The public listener's request handler: the fast path where it applies, else the
    application's own handler (`app_handler`, aiohttp's Application._handle)."""

    def __init__(self, app: web.Application, app_handler: AppHandler) -> None:
        self.app = app
        self.app_handler = app_handler
        self.date = _Date()
        self._routes: dict[str, AbstractRoute] = {}
        self.answered = 0  # requests this fast path answered itself

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        answer = None
        if request.version == HttpVersion11:
            answer = await self._fast(request)
        if answer is None:
            return await self.app_handler(request)
        return answer  # type: ignore[return-value]  # a response in all aiohttp asks of one

    def _route(self, request: BaseRequest) -> tuple[str, str] | None:
        """The route and campaign of a request the fast path may take, else None."""
        path = request.rel_url.raw_path
        if path == AUTH_PATH:
            return (AUTH_PATH, "") if request.method == hdrs.METH_GET else None
        parts = path.split("/")
        if len(parts) != 4 or parts[1] != "q" or "%" in path:
            return None
        route = _ROUTES.get((request.method, parts[3]))
        if route is None:
            return None
        if route == JOIN_ROUTE and any(name in request.headers for name in _BROWSER_WRITE):
            return None
        return route, parts[2]

    async def _fast(self, request: BaseRequest) -> RawResponse | None:
        gate = self.app.get(GATE_KEY)
        if gate is None or not request.keep_alive or request.body_exists:
            return None
        asked = request.headers
        if hdrs.EXPECT in asked or MSGPACK in asked.get(hdrs.ACCEPT, ""):
            return None
        found = self._route(request)
        if found is None:
            return None
        route, campaign = found
        flights = gate.in_flight
        in_flight = flights.get("public", 0)
        bound = gate.config.max_concurrent_requests
        if (bound and in_flight >= bound) or (
            route in SHED_ROUTES and in_flight >= SHED_MIN_IN_FLIGHT and gate.shedder.shedding()
        ):
            return None  # the middleware answers 503, and counts it
        started = time.perf_counter()
        request._match_info = self._match_info(route, campaign)  # type: ignore[attr-defined]
        flights["public"] = in_flight + 1
        try:
            answer = await self._answer(gate, request, route, campaign)
        except GateError:
            # The application's handler raises it again and answers it. Nothing was done
            # before the error (a refused join takes nothing either: asked again, the
            # same refusal; a join that Redis may have taken is the customer's on retry).
            return None
        finally:
            flights["public"] -= 1
        if answer is None:
            return None
        body, headers, status = answer
        self.answered += 1
        gate.metrics.answered("public", route, status, time.perf_counter() - started)
        if route == AUTH_PATH:
            gate.metrics.decision("allow", "ok")
        head = _STATUS_LINES[status]
        for name, value in headers:
            head += f"{name}: {value}\r\n"
        head += _TAIL % (len(body), self.date.now())
        return RawResponse(head.encode() + body, status)

    async def _answer(
        self, gate: Gate, request: BaseRequest, route: str, campaign: str
    ) -> tuple[bytes, list[tuple[str, str]], int] | None:
        """The answer's body, headers (besides Content-Type, Content-Length, Date and
        Server) and status, or None where the application must answer."""
        web_request: web.Request = request  # type: ignore[assignment]
        await find_identity(web_request)
        if route == AUTH_PATH:
            if not gate.cache.fresh():  # after any wait for the identity, as the handler
                return None  # the handler waits for a fresh cache
            token = checked_pass(web_request, True)
            if not gate.arrivals.let_in(token):
                return None  # the pass's first use: the door meters it
            data, extra = auth_answer(web_request, token)
            if not all(value.isascii() for value in extra.values()):
                return None
            return encode_json(data), list(extra.items()), 200
        if route == JOIN_ROUTE:
            customer = identity(web_request, required=True)
            assert customer is not None
            joined, created = await join_answer(web_request, campaign_id(web_request), customer)
            return encode_json(joined), [], 201 if created else 200
        token = checked_ticket(web_request, campaign, request.query.get("ticket", ""))
        live = cached_campaign(web_request, campaign)
        if live is None:
            return None
        view = cached_view(web_request, live, token, {"campaign": campaign, "seq": token.seq})
        if view is None:
            return None
        return encode_json(view), [], 200

    def _match_info(self, route: str, campaign: str) -> UrlMappingMatchInfo:
        """What the router would have found, for the handlers' helpers (request.app,
        request.match_info)."""
        if not self._routes:
            wanted = {POLL_ROUTE: hdrs.METH_GET, JOIN_ROUTE: hdrs.METH_POST, AUTH_PATH: "*"}
            for resource in self.app.router.resources():
                for candidate in resource:
                    if wanted.get(resource.canonical) == candidate.method:
                        self._routes[resource.canonical] = candidate
        info = UrlMappingMatchInfo({"campaign": campaign} if campaign else {}, self._routes[route])
        info.add_app(self.app)
        info.freeze()
        return info
