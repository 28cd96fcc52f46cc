"""Claims on the public listener, and the core system's confirm/release callbacks on
the core listener.

A claim needs a pass bound to the authenticated customer and the path's campaign
(checked like /gate/auth, no Redis round trip), a JSON or msgpack body (a cross-site HTML
form cannot send one), and then one Lua call that reserves the amount atomically or
refuses it with a reason. The core system confirms a reservation once the deposit is
booked, or releases it when it fails; unanswered reservations expire and their amount
returns to the pool. Confirm and release live on a listener of their own
(config.core_host, config.core_port, bearer tokens of config.core_tokens), which the
shipped proxy configs never expose.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from gate.audit.receipts import subscription_receipt
from gate.campaign import MAX_AMOUNT
from gate.errors import BadRequest, Conflict, GateError, Unavailable
from gate.http.checks import campaign_id, core_actor, reason_of, require_api_body, verified_pass
from gate.http.common import GATE_KEY, gate_of, healthz, make_error_middleware, read_body, respond
from gate.http.openapi import core_document
from gate.room import ClaimResult, ReservationOutcome
from gate.service import Gate

_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# r<n>-<8 random URL-safe characters> (claim.lua); a bare r<n> from before the suffix too.
_RESERVATION_RE = re.compile(r"^r[0-9]{1,20}(-[A-Za-z0-9_-]{8})?$")


def parse_claim_amount(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        raise BadRequest("amount: an integer or a decimal string is required", code="bad_amount")
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 30:
        amount = int(value)
    else:
        raise BadRequest("amount: an integer or a decimal string is required", code="bad_amount")
    if not 1 <= amount <= MAX_AMOUNT:
        raise BadRequest("amount: out of range", code="bad_amount")
    return amount


def _refusal(result: ClaimResult) -> GateError:
    """The refusal's status, code and message, as the one table of replies has them."""
    return result.refusal.error(detail=result.detail)


async def claim(request: web.Request) -> web.Response:
    """A claim (or a ballot's subscription), counted by outcome for the metrics: a campaign
    this process does not know is counted as "unknown" (no label per made-up name)."""
    gate = gate_of(request)
    live = gate.cache.peek(request.match_info.get("campaign", ""))
    known = live.spec.id if live is not None else "unknown"
    try:
        response = await _claim(request)
    except GateError as exc:
        gate.metrics.claim(known, exc.code)
        raise
    if response.status != 201:
        outcome = "replayed"
    elif live is not None and live.spec.policy == "ballot":
        outcome = "subscribed"
    else:
        outcome = "granted"
    gate.metrics.claim(known, outcome)
    return response


async def _claim(request: web.Request) -> web.Response:
    gate = gate_of(request)
    campaign = campaign_id(request)
    fresh = await gate.cache.wait_fresh()
    if not fresh:
        # Redis is out: a claim cannot be decided, so say "retry" (503), not "your pass is
        # bad" (the 401 that verified_pass gives a proxy's auth check in this case). A cache
        # only old (the event loop ran late) is waited for, not failed.
        raise Unavailable()
    gate.refuse_writes_if_unsafe(campaign)
    require_api_body(request)
    token, live = verified_pass(request, campaign, fresh=fresh)
    body = await read_body(request)
    amount = parse_claim_amount(body.get("amount"))
    key = body.get("idempotency_key", "-")
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise BadRequest(
            "idempotency_key: 1 to 64 of A-Z a-z 0-9 _ . : -", code="bad_idempotency_key"
        )
    unit = live.spec.quota.unit
    if live.spec.policy == "ballot":
        result = await gate.room.subscribe(campaign, token.seq, token.digest, amount)
        if not result.ok:
            raise _refusal(result)
        # The customer's evidence of what they subscribed (docs/audit-format.md, "Receipts").
        receipt = (
            subscription_receipt(
                gate.keys,
                campaign,
                token.seq,
                result.t_us,
                token.digest,
                result.amount,
                result.entry,
            )
            if result.entry
            else None
        )
        return respond(
            request,
            {
                "campaign": campaign,
                "subscribed": str(result.amount),
                "unit": unit,
                "receipt": receipt,
            },
            200 if result.replayed else 201,
        )
    result = await gate.claims.claim(campaign, token.seq, token.digest, amount, key)
    if not result.ok:
        raise _refusal(result)
    return respond(
        request,
        {
            "campaign": campaign,
            "reservation": result.reservation,
            "amount": str(result.amount),
            "unit": unit,
            "expires_at": result.expires_us / 1_000_000,
            "partial": result.amount < amount,
        },
        200 if result.replayed else 201,
    )


def _reservation_id(request: web.Request) -> str:
    reservation = request.match_info["reservation"]
    if not _RESERVATION_RE.match(reservation):
        raise BadRequest("not a reservation id", code="bad_reservation")
    return reservation


def _outcome(
    request: web.Request, reservation: str, outcome: ReservationOutcome, wanted: str
) -> web.Response:
    if not outcome.ok:
        raise Conflict(
            f"reservation {reservation} is {outcome.state}, it cannot be {wanted}",
            code=f"reservation_{outcome.state}",
        )
    return respond(
        request,
        {
            "reservation": reservation,
            "state": outcome.state,
            "seq": outcome.seq,
            "amount": str(outcome.amount),
        },
    )


async def confirm(request: web.Request) -> web.Response:
    actor = core_actor(request)
    campaign = campaign_id(request)
    reservation = _reservation_id(request)
    await read_body(request)
    gate_of(request).refuse_writes_if_unsafe(campaign, allocates=False)
    outcome = await gate_of(request).room.confirm(campaign, reservation, actor)
    gate_of(request).callback_health.record(campaign, outcome.held_us, None)
    return _outcome(request, reservation, outcome, "confirmed")


async def release(request: web.Request) -> web.Response:
    actor = core_actor(request)
    campaign = campaign_id(request)
    reservation = _reservation_id(request)
    body = await read_body(request)
    reason = reason_of(body)
    gate_of(request).refuse_writes_if_unsafe(campaign, allocates=False)
    outcome = await gate_of(request).room.release(campaign, reservation, actor, reason)
    gate_of(request).callback_health.record(campaign, outcome.held_us, reason)
    return _outcome(request, reservation, outcome, "released")


def add_claim_routes(app: web.Application) -> None:
    """The public listener's claim route."""
    app.router.add_post("/q/{campaign}/claim", claim)


async def openapi(request: web.Request) -> web.Response:
    """This listener's OpenAPI document (gate/http/openapi.py): confirm and release."""
    return respond(request, core_document(gate_of(request).config))


def create_core_app(gate: Gate) -> web.Application:
    """The core listener: the core system's confirm and release, with its bearer token."""
    app = web.Application(
        client_max_size=gate.config.max_body_bytes, middlewares=[make_error_middleware("core")]
    )
    app[GATE_KEY] = gate
    app.router.add_post("/q/{campaign}/reservations/{reservation}/confirm", confirm)
    app.router.add_post("/q/{campaign}/reservations/{reservation}/release", release)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi)
    return app
