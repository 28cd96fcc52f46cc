"""What both listeners share: the error middleware, body parsing and content negotiation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import orjson
from aiohttp import web
from multidict import CIMultiDict

from gate.errors import BadRequest, GateError, NotYet, RedisRefused, Unavailable
from gate.failover import CampaignHeld, Reconciling
from gate.http.page import error_page, prefers_html
from gate.overload import SHED_MIN_IN_FLIGHT, SHED_ROUTES
from gate.service import Gate

log = logging.getLogger("gate.http")
GATE_KEY = web.AppKey("gate", Gate)
MSGPACK = "application/msgpack"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "body_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    431: "headers_too_large",
}


def gate_of(request: web.Request) -> Gate:
    return request.app[GATE_KEY]


def wants_msgpack(request: web.Request) -> bool:
    return MSGPACK in request.headers.get("Accept", "")


# The fallback for what orjson will not encode (an int past 64 bits): json.dumps with any
# argument builds a new encoder per call, so one, built once.
_JSON = json.JSONEncoder(separators=(",", ":"))
JSON_TYPE = "application/json; charset=utf-8"


def encode_json(data: Any) -> bytes:
    """Compact JSON as UTF-8: orjson (a few times faster than the standard library on the
    poll's answer). What it refuses (a lone surrogate, an int past 64 bits) is encoded by
    the standard library, with \\u escapes, as every answer was before."""
    try:
        return orjson.dumps(data)
    except (TypeError, orjson.JSONEncodeError):
        return _JSON.encode(data).encode()


def respond(
    request: web.Request, data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    if wants_msgpack(request):
        body, ctype = msgpack.packb(data), MSGPACK
    else:
        body, ctype = encode_json(data), JSON_TYPE
    # The headers built here rather than through `content_type=`, which parses and
    # rebuilds the header on every response.
    full = CIMultiDict(headers) if headers else CIMultiDict()
    full["Content-Type"] = ctype
    return web.Response(body=body, status=status, headers=full)


async def healthz(request: web.Request) -> web.Response:
    """Liveness, the same on both listeners (the admin one asks no token for it)."""
    return respond(request, {"ok": True})


def error_response(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The error as JSON (or msgpack) for API clients; as a page in the customer's
    language for a browser's navigation (the busy page for a 503), never raw JSON."""
    if prefers_html(request) and not wants_msgpack(request):
        return _error_page(request, status, code, headers)
    return respond(request, {"error": {"code": code, "message": message}}, status, headers)


def _error_page(
    request: web.Request, status: int, code: str, headers: dict[str, str] | None
) -> web.Response:
    gate = request.app.get(GATE_KEY)
    campaign = request.match_info.get("campaign", "")
    live = gate.cache.peek(campaign) if gate is not None and campaign else None
    retry = (headers or {}).get("Retry-After", "")
    response = error_page(
        request,
        status,
        code,
        spec=live.spec if live is not None else None,
        retry_after_s=int(retry) if retry.isdigit() else None,
        templates_dir=gate.config.page_templates_dir if gate is not None else None,
    )
    for name, value in (headers or {}).items():
        response.headers.setdefault(name, value)
    return response


async def read_body(request: web.Request) -> dict[str, Any]:
    """The request body as a dict: JSON or msgpack by Content-Type; empty body = {}."""
    max_size = gate_of(request).config.max_body_bytes
    if request.content_length is not None and request.content_length > max_size:
        raise GateError(
            f"the body is larger than {max_size} bytes", code="body_too_large", status=413
        )
    try:
        if request.content.is_eof():  # all here (or none sent): no wait to bound (~3 us)
            raw = await request.read()
        else:
            async with asyncio.timeout(gate_of(request).config.body_timeout_ms / 1000):
                raw = await request.read()
    except TimeoutError:
        raise GateError(
            "the body did not arrive in time", code="body_timeout", status=408
        ) from None
    except ConnectionError:  # the client went away mid-body: nobody reads the answer
        raise BadRequest("the body was cut off", code="body_incomplete") from None
    except web.RequestPayloadError:  # bad chunking, or a Content-Encoding that does not decode
        raise BadRequest("the body could not be decoded", code="bad_body_encoding") from None
    if not raw:
        return {}
    ctype = request.content_type
    if ctype == MSGPACK:
        try:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception:  # msgpack raises a zoo of types for bad input
            raise BadRequest("the body is not valid msgpack", code="bad_msgpack") from None
    elif ctype in ("application/json", "text/plain", "application/octet-stream", ""):
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadRequest("the body is not valid JSON", code="bad_json") from None
    else:
        raise GateError(
            f"unsupported Content-Type {ctype!r}; send JSON or msgpack",
            code="unsupported_media_type",
            status=415,
        )
    if not isinstance(data, dict):
        raise BadRequest("the body must be an object", code="bad_body")
    require_text(data)
    return data


def require_text(data: Any) -> None:
    """Every string in `data` (keys too) is text that UTF-8 can carry: JSON's \\ud800 escapes
    decode to lone surrogates, which no Redis call, digest or msgpack answer can encode."""
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                raise BadRequest(
                    "the body holds a string that is not valid text (a lone surrogate)",
                    code="bad_text",
                ) from None


def make_error_middleware(
    listener: str, *, before: Callable[[web.Request], Awaitable[None]] | None = None
) -> Any:
    """The listener's outermost middleware: every error answered in the JSON error shape
    (or a page), requests counted and timed, and, except on the admin listener, at most
    config.max_concurrent_requests in flight in this process (503 at once above it).

    `before`: the listener's own checks, run ahead of every handler; what they raise is
    answered like a handler's error.

    On the public listener, while the process's event loop runs late with requests of
    its own piled up (gate/overload.py), new joins, polls and waiting pages are answered
    503 at once, before any work."""
    sheds = SHED_ROUTES if listener == "public" else frozenset()

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        gate = request.app[GATE_KEY]
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        bound = gate.config.max_concurrent_requests if listener != "admin" else 0
        flights = gate.in_flight  # this process's requests under way, per listener
        in_flight = flights.get(listener, 0)
        shed = route in sheds and in_flight >= SHED_MIN_IN_FLIGHT and gate.shedder.shedding()
        if (bound and in_flight >= bound) or shed:
            gate.metrics.refusal(listener, "loop_lag" if shed else "overload")
            gate.metrics.answered(listener, route, 503, None)
            return error_response(
                request,
                503,
                "unavailable",  # the busy page for a browser, as when Redis is away
                "the gate is busier than it can answer now; retry shortly"
                if shed
                else "the gate is at its limit of requests in flight; retry shortly",
                {"Retry-After": "1"},
            )
        started = time.perf_counter()
        flights[listener] = in_flight + 1
        try:
            response = await _answer(request, handler, route, before)
        finally:
            flights[listener] -= 1
        gate.metrics.answered(listener, route, response.status, time.perf_counter() - started)
        if response.status == 408:
            # What still comes of the body is no request: answer, then close at once
            # rather than linger reading it.
            gate.metrics.refusal(listener, "body_timeout")
            response.force_close()
            with contextlib.suppress(ConnectionError):  # the client may be gone already
                await response.prepare(request)
                await response.write_eof()
            request.protocol.force_close()
        return response

    return errors


async def _held_if_lost(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's response; where it finds no campaign that a Redis failover lost whole
    (gate/failover.py), the campaign is held, not unknown: 503 `campaign_held`."""
    try:
        return await handler(request)
    except GateError as exc:
        campaign = request.match_info.get("campaign")
        if exc.code == "unknown_campaign" and gate_of(request).failover.is_lost(campaign):
            raise CampaignHeld() from None
        raise


async def _answer(
    request: web.Request,
    handler: Handler,
    route: str,
    before: Callable[[web.Request], Awaitable[None]] | None,
) -> web.StreamResponse:
    """The handler's response, or its error as the client sees it."""
    try:
        if before is not None:
            await before(request)
        response = await _held_if_lost(request, handler)
    except Unavailable as exc:
        if isinstance(exc, RedisRefused):
            gate_of(request).sanity.refused(exc.reason)
        elif gate_of(request).failover.is_reconciling(request.match_info.get("campaign")):
            # Redis answers, but not before this process has reconciled with a new primary.
            exc = Reconciling()
        response = error_response(
            request, 503, exc.code, exc.message, {"Retry-After": str(exc.retry_after_s)}
        )
    except GateError as exc:
        if exc.status >= 500:
            log.error("event=gate_error route=%s code=%s message=%s", route, exc.code, exc.message)
        wait: dict[str, str] | None = None
        if isinstance(exc, NotYet):  # a paced pass, early: when to come back
            wait = {
                "Retry-After": str(max(1, -(-exc.retry_after_ms // 1000))),
                "X-Gate-Retry-After-Ms": str(exc.retry_after_ms),
            }
        response = error_response(request, exc.status, exc.code, exc.message, wait)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(request, exc.status, code, exc.reason)
        if exc.status == 405:
            response.headers["Allow"] = exc.headers.get("Allow", "")
    except Exception:
        log.exception("event=unhandled route=%s", route)
        response = error_response(request, 500, "internal", "internal error")
    return response
