"""The public listener, behind the bank's reverse proxy: join, status, proxy auth, page.

A waiting customer's poll and a proxy's auth check are answered from the signed token
and the per-process cache, without a Redis round trip. Only the first poll after
admission (to log `pass` and check the deadline) and joins (batched) reach Redis.
"""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import UTC, datetime
from typing import Any

from aiohttp import hdrs, web

from gate.cache import LiveCampaign
from gate.config import Config
from gate.errors import (
    BadRequest,
    Forbidden,
    GateError,
    NotFound,
    NotYet,
    Unauthorized,
    Unavailable,
)
from gate.http.checks import (
    CAMPAIGN_HEADER,
    CUSTOMER_DIGEST_HEADER,
    IDENTITY_KEY,
    PASS_COOKIE,
    PASS_HEADER,
    SEQ_HEADER,
    campaign_digest,
    campaign_id,
    check_customer,
    identity,
    public_checks,
    verified_pass,
)
from gate.http.claims import add_claim_routes
from gate.http.common import GATE_KEY, gate_of, healthz, make_error_middleware, read_body, respond
from gate.http.edge import add_edge_routes
from gate.http.openapi import public_document
from gate.http.page import (
    STATIC_PREFIX,
    after_form_join,
    form_context,
    is_page_form,
    load_static,
    page_ticket,
    set_ticket_cookies,
    static_response,
    waiting_page,
)
from gate.http.transparency import add_transparency_routes, add_witnessed, refresh_witnessed
from gate.identity import Identity
from gate.room import PREQUEUED, Reply
from gate.service import Gate
from gate.tokens import PASS, PREQUEUE_TICKET, TICKET, Token, TokenError


def cached_campaign(request: web.Request, campaign: str) -> LiveCampaign | None:
    """The campaign from this process's cache while it answers: the poll's usual case, with
    no coroutine; None when `_campaign` must decide (load it, wait, or refuse)."""
    cache = gate_of(request).cache
    return cache.peek(campaign) if cache.answering() else None


async def _campaign(request: web.Request, campaign: str) -> LiveCampaign:
    gate = gate_of(request)
    # answering() first: the usual case costs no coroutine on the poll's hot path
    if not gate.cache.answering() and not await gate.cache.wait_answering():
        raise Unavailable()
    live = await gate.cache.get(campaign)
    if live is None:
        raise NotFound(f"no campaign {campaign}", code="unknown_campaign")
    return live


# A customer beyond what the quota left could serve polls at least this often (ms).
SELLOUT_POLL_MS = 2000


def poll_after_ms(position: int, rate: float, rng: random.Random) -> int:
    """Grows with the position, with ±20% jitter so browsers do not poll in lock-step."""
    expected_ms = position / rate * 1000 if rate > 0 else 30000
    base = min(max(expected_ms / 4, 500), 30000)
    return int(base * rng.uniform(0.8, 1.2))


def redis_now_us(request: web.Request) -> float:
    """Now, by Redis's clock as this process measures it (gate.cache): the one clock for
    what a customer is shown (countdowns, cookie lifetimes), never this process's own."""
    return gate_of(request).cache.redis_now() * 1_000_000


def _prequeue_view(live: LiveCampaign, rng: random.Random, now_us: float) -> dict[str, Any]:
    """A customer in a shuffled pre-queue: no position until the shuffle at opening."""
    until_open_ms = (live.state.opens_at_us - now_us) / 1000
    if until_open_ms > 0:  # come back around the opening
        wait_ms = min(max(until_open_ms, 500), 30000) * rng.uniform(0.8, 1.0)
    else:  # the seqs are being given out (a second or so): spread the first polls
        wait_ms = rng.uniform(500, 1500)
    return {
        "state": "prequeue",
        "position": None,
        "eta_s": None,
        "opens_at": live.spec.to_json()["opens_at"],
        "poll_after_ms": int(wait_ms),
    }


def _queue_view(live: LiveCampaign, seq: int, rng: random.Random, now_us: float) -> dict[str, Any]:
    view = _waiting_view(live, seq, rng, now_us)
    if live.state.policy == "first_come":
        # what is still neither held nor confirmed, so nobody waits for nothing
        view["remaining"] = str(max(0, live.state.remaining))
    return view


def _waiting_view(
    live: LiveCampaign, seq: int, rng: random.Random, now_us: float
) -> dict[str, Any]:
    state = live.state
    position = max(0, seq - state.cursor)
    if now_us < state.opens_at_us:
        until_open_ms = (state.opens_at_us - now_us) / 1000
        return {
            "state": "prequeue",
            "position": position,
            "eta_s": None,
            "opens_at": live.spec.to_json()["opens_at"],
            "poll_after_ms": int(min(max(until_open_ms, 500), 30000) * rng.uniform(0.8, 1.0)),
        }
    if state.soldout:
        # Nothing left for anyone waiting; released or expired amounts may still return,
        # so the page keeps asking, slowly.
        return {
            "state": "soldout",
            "position": position,
            "eta_s": None,
            "poll_after_ms": int(10000 * rng.uniform(0.8, 1.2)),
        }
    rate = live.admission_rate()
    eta = math.ceil(position / rate) if rate > 0 and state.state == "open" else None
    wait_ms = poll_after_ms(position, rate, rng)
    if state.policy == "first_come" and position > state.remaining // max(state.minimum, 1):
        # What is left could not reach this customer even at the minimum each: it is about
        # to sell out for them (or come back, if amounts are released), so they ask often
        # enough to be told at once, not after a wait sized for a queue that moves.
        wait_ms = min(wait_ms, int(SELLOUT_POLL_MS * rng.uniform(0.8, 1.2)))
    view: dict[str, Any] = {
        "state": "waiting",
        "position": position,
        "eta_s": eta,
        "poll_after_ms": wait_ms,
    }
    if state.state == "paused":  # admission stopped by an operator: the place is kept
        view["paused"] = True
    return view


async def join(request: web.Request) -> web.StreamResponse:
    campaign = campaign_id(request)
    customer = identity(request, required=True)
    assert customer is not None
    if is_page_form(request):
        try:
            await request.post()  # the waiting page's no-script form: no fields we use
        except web.RequestPayloadError:  # bad chunking, a Content-Encoding that does not decode
            raise BadRequest("the body could not be decoded", code="bad_body_encoding") from None
    else:
        await read_body(request)  # no fields yet, but a malformed body is still refused
    body, created = await join_answer(request, campaign, customer)
    return await _joined(request, campaign, body, created)


async def join_answer(
    request: web.Request, campaign: str, customer: str
) -> tuple[dict[str, Any], bool]:
    """The customer's place in `campaign` (new, or the one they hold): the join's answer
    and whether the place is new. Raises the refusals (closed, not open, blocked, Redis
    unsafe or away); a refused join takes nothing, so asking again is answered the same."""
    gate = gate_of(request)
    live = cached_campaign(request, campaign) or await _campaign(request, campaign)
    gate.refuse_writes_if_unsafe(campaign, allocates=False)
    digest = campaign_digest(gate, campaign, customer, live.spec)
    outcome = await gate.batcher.join(campaign, digest)
    reply = Reply.of(outcome.status)
    if reply is not Reply.OK:  # the spec's words only for a refusal (to_json: ~5 us a join)
        # unknown_campaign, campaign_closed or not_open_yet, as the reply table words them
        reply.expect(
            Reply.OK,
            campaign=campaign,
            window_s=live.spec.prequeue.window_s,
            opens_at=live.spec.to_json()["opens_at"],
        )
    if outcome.seq == 0:
        raise Forbidden("this customer may not join this campaign", code="blocked")
    if outcome.seq == PREQUEUED:
        # Joined before opening: a place in the pre-queue, seq 0 until the shuffle.
        prequeue_body: dict[str, Any] = {
            "campaign": campaign,
            "ticket": gate.signer.issue(PREQUEUE_TICKET, campaign, 0, digest),
            "seq": 0,
            "created": outcome.created,
            **_prequeue_view(live, request.app[RNG_KEY], redis_now_us(request)),
            "receipt": None,  # the receipt comes with the seq (the `prequeue` audit entry)
        }
        return prequeue_body, outcome.created
    ticket = gate.signer.issue(TICKET, campaign, outcome.seq, digest)
    body: dict[str, Any] = {
        "campaign": campaign,
        "ticket": ticket,
        "seq": outcome.seq,
        "created": outcome.created,
    }
    body.update(_queue_view(live, outcome.seq, request.app[RNG_KEY], redis_now_us(request)))
    if outcome.seq <= live.state.cursor and body["state"] == "waiting":
        body.update(state="admitted", position=0, eta_s=0, poll_after_ms=0)
    # Signed with the batch; a retried join gets the receipt it was given the first time
    # (None only when it cannot be had right now: the join stands anyway).
    body["receipt"] = outcome.receipt
    return body, outcome.created


async def _joined(
    request: web.Request, campaign: str, body: dict[str, Any], created: bool
) -> web.StreamResponse:
    """The join's answer: JSON for apps and the page's script, a 303 back to the page for
    its no-script form; both keep the ticket in a cookie (a reload or a second tab finds
    the same ticket)."""
    secure = gate_of(request).config.cookie_secure
    if is_page_form(request):
        context = await form_context(request)
        return after_form_join(request, campaign, context, body, secure=secure)
    response = respond(request, body, 201 if created else 200)
    if "Origin" in request.headers:  # a browser's script (the page's); apps keep the ticket
        set_ticket_cookies(response, campaign, body, secure=secure)
    return response


async def status(request: web.Request) -> web.Response:
    campaign = campaign_id(request)
    view = await ticket_status(request, campaign, request.query.get("ticket", ""))
    response = respond(request, view)
    set_pass_cookie(request, response, view)
    return response


def set_pass_cookie(
    request: web.Request, response: web.StreamResponse, view: dict[str, Any]
) -> None:
    """An admitted view's pass, as the HttpOnly cookie the proxy's auth check reads."""
    if "pass" not in view:
        return
    expires_at = int(view["pass_expires_at"])
    response.set_cookie(
        PASS_COOKIE,
        view["pass"],
        max_age=max(1, expires_at - int(redis_now_us(request) / 1_000_000)),
        httponly=True,
        secure=gate_of(request).config.cookie_secure,
        samesite="Lax",
        path="/",
    )


def checked_ticket(request: web.Request, campaign: str, text: str) -> Token:
    """The ticket (or pre-queue ticket) in `text`: signed, for `campaign`, the requesting
    customer's. Raises the error the client sees."""
    if not text:
        raise BadRequest("the ticket query parameter is missing", code="missing_ticket")
    try:
        token = gate_of(request).signer.verify(text, TICKET, PREQUEUE_TICKET)
    except TokenError as exc:
        raise Forbidden(f"invalid ticket: {exc}", code="bad_ticket") from None
    if token.campaign != campaign:
        raise Forbidden("this ticket is for another campaign", code="wrong_campaign")
    check_customer(request, token)
    return token


def cached_view(
    request: web.Request, live: LiveCampaign, token: Token, base: dict[str, Any]
) -> dict[str, Any] | None:
    """The status answer when the cache alone decides it (a customer still waiting, or
    in a pre-queue not yet shuffled, or the campaign closed before their turn); None when
    Redis must be asked: a shuffled pre-queue's seq, or a pass. Raises for a revoked
    customer."""
    if token.kind == PREQUEUE_TICKET:
        if not live.state.prequeue_pending:
            return None
        if live.state.state == "closed":
            closed = {"state": "closed", "position": None, "eta_s": None}
            return {**base, **closed, "poll_after_ms": None}
        return {**base, **_prequeue_view(live, request.app[RNG_KEY], redis_now_us(request))}
    if token.seq in live.revoked:
        raise Forbidden("this customer's admission was revoked", code="revoked")
    if token.seq > live.state.cursor:
        if live.state.state == "closed":
            return {
                **base,
                "state": "closed",
                "position": None,
                "eta_s": None,
                "poll_after_ms": None,
            }
        return {**base, **_queue_view(live, token.seq, request.app[RNG_KEY], redis_now_us(request))}
    return None


async def ticket_status(request: web.Request, campaign: str, text: str) -> dict[str, Any]:
    """Where a ticket stands (the status answer, and the waiting page's): its position,
    or a final state, or, once admitted, a freshly signed pass."""
    gate = gate_of(request)
    token = checked_ticket(request, campaign, text)
    live = cached_campaign(request, campaign) or await _campaign(request, campaign)
    base: dict[str, Any] = {"campaign": campaign, "seq": token.seq}
    view = cached_view(request, live, token, base)
    if view is not None:
        return view
    if token.kind == PREQUEUE_TICKET:
        # Shuffled: one Redis call for the seq, then a ticket that carries it.
        seq = await gate.room.ticket_seq(campaign, token.digest)
        if seq is None:
            raise NotFound("this customer has no ticket in this campaign", code="no_ticket")
        token = dataclasses.replace(token, kind=TICKET, seq=seq)
        base = {
            "campaign": campaign,
            "seq": seq,
            "ticket": gate.signer.issue(TICKET, campaign, seq, token.digest),
        }
        view = cached_view(request, live, token, base)
        if view is not None:
            return view
    if not await gate.cache.wait_fresh():
        # A pass grants access: it is issued only on state proven just now (I7); a cache
        # that is only old (the event loop ran late) is waited for, not failed.
        raise Unavailable()
    state, value, not_before = await gate.passes.status(
        gate.room, live, campaign, token.seq, token.digest, redis_now_us(request)
    )
    if state == "revoked":
        raise Forbidden("this customer's admission was revoked", code="revoked")
    if state == "waiting":  # another process's cache ran ahead of ours; keep waiting
        return {**base, **_queue_view(live, token.seq, request.app[RNG_KEY], redis_now_us(request))}
    if state != "admitted":
        final: dict[str, Any] = {
            **base,
            "state": state,
            "position": None,
            "eta_s": None,
            "poll_after_ms": None,
        }
        if state == "claimed":
            final["claimed"] = str(value)
        elif state == "closed" and live.spec.policy == "ballot":
            subscribed, allocated = await gate.room.allocation(campaign, token.seq)
            final["subscribed"] = None if subscribed is None else str(subscribed)
            final["allocation"] = None if allocated is None else str(allocated)
            # until the allocation is stored, the page asks again
            final["poll_after_ms"] = 2000 if allocated is None and subscribed else None
        return final
    expires_at = value // 1_000_000
    pass_token = gate.signer.issue(
        PASS, campaign, token.seq, token.digest, exp=expires_at, not_before=not_before
    )
    early_us = not_before - redis_now_us(request)
    if not_before and early_us > 0:
        # Paced arrival (issue 12): the pass is valid from not_before; until then the
        # customer waits at the front (clients that go on at "admitted" wait by themselves).
        wait_ms = max(1, math.ceil(early_us / 1000))
        return {
            **base,
            "state": "waiting",
            "position": 0,
            "eta_s": math.ceil(wait_ms / 1000),
            "poll_after_ms": wait_ms,
            "retry_after_ms": wait_ms,
            "not_before": not_before,
            "pass": pass_token,
            "pass_expires_at": expires_at,
        }
    return {
        **base,
        "state": "admitted",
        "position": 0,
        "eta_s": 0,
        "poll_after_ms": None,
        "pass": pass_token,
        "pass_expires_at": expires_at,
    }


async def auth(request: web.Request) -> web.Response:
    """For nginx auth_request, Envoy ext_authz and Traefik ForwardAuth: 200, 401 or 403.
    A pass's first use is the customer's arrival at the core: metered (gate/arrivals.py).
    A cache that is only old (this process's event loop ran late) is waited for first, so
    that a starved process delays the check instead of refusing a good pass. Each answer
    is counted by decision and reason (fairgate_auth_decisions_total)."""
    gate = gate_of(request)
    try:
        response = await _auth(request)
    except NotYet as exc:
        gate.metrics.decision("wait", exc.code)
        raise
    except GateError as exc:
        gate.metrics.decision("deny", exc.code)
        raise
    gate.metrics.decision("allow", "ok")
    return response


async def _auth(request: web.Request) -> web.Response:
    gate = gate_of(request)
    fresh = gate.cache.fresh() or await gate.cache.wait_fresh()
    token = checked_pass(request, fresh)
    await gate.arrivals.enter(token, gate.cache.redis_now())
    body, headers = auth_answer(request, token)
    return respond(request, body, headers=headers)


def checked_pass(request: web.Request, fresh: bool) -> Token:
    """The proxy's pass check up to the door: the pass verified as verified_pass does."""
    try:
        token, _ = verified_pass(request, fresh=fresh)
    except BadRequest as exc:
        # A malformed customer id: refused as one that names nobody. nginx's
        # auth_request turns any status but 2xx, 401 and 403 into a 500 for the customer.
        raise Unauthorized(exc.message, code=exc.code) from None
    return token


def auth_answer(request: web.Request, token: Token) -> tuple[dict[str, Any], dict[str, str]]:
    """The 200 of a pass let in: its body and headers."""
    # The customer as the campaign's keyed digest: the core may key its records on it,
    # and never sees the raw id or the pass (proxies drop both upstream).
    customer = token.digest.hex()
    headers = {
        CAMPAIGN_HEADER: token.campaign,
        SEQ_HEADER: str(token.seq),
        CUSTOMER_DIGEST_HEADER: customer,
    }
    cookies = request.headers.get(hdrs.COOKIE)
    if cookies is not None:
        # The request's cookies without the pass, for a proxy that can only copy whole
        # headers from this answer onto the upstream request (Traefik's ForwardAuth
        # authResponseHeaders): the core then never sees the pass cookie.
        headers[hdrs.COOKIE] = without_pass_cookie(cookies)
    body = {"ok": True, "campaign": token.campaign, "seq": token.seq, "customer": customer}
    return body, headers


def without_pass_cookie(header: str) -> str:
    """A Cookie header with every `fg_pass` pair taken out, the others kept as sent."""
    kept = [
        pair.strip()
        for pair in header.split(";")
        if pair.strip() and pair.split("=", 1)[0].strip() != PASS_COOKIE
    ]
    return "; ".join(kept)


# A page's ticket that is not (or no longer) this customer's: the page offers the join.
_FORGET_TICKET = ("missing_ticket", "bad_ticket", "wrong_campaign", "wrong_customer", "no_ticket")


async def page(request: web.Request) -> web.StreamResponse:
    """The waiting page (gate/http/page.py): the ticket's state, from the same answer as
    a status poll, rendered; once admitted, a 303 to the target with the pass cookie."""
    gate = gate_of(request)
    campaign = campaign_id(request)
    live = cached_campaign(request, campaign) or await _campaign(request, campaign)
    ticket = page_ticket(request)
    view: dict[str, Any] | None = None
    if ticket is not None:
        try:
            view = await ticket_status(request, campaign, ticket)
        except (BadRequest, Forbidden, NotFound) as exc:
            if exc.code == "revoked":
                view = {"campaign": campaign, "state": "blocked"}
            elif exc.code in _FORGET_TICKET:
                ticket = None
            else:
                raise
    if view is not None and isinstance(view.get("ticket"), str):
        ticket = view["ticket"]  # after the pre-queue shuffle: the ticket with the seq
    response = waiting_page(
        request,
        campaign=campaign,
        spec=live.spec,
        campaign_state=live.state.state,
        view=view,
        ticket=ticket,
        templates_dir=gate.config.page_templates_dir,
        now=datetime.fromtimestamp(gate.cache.redis_now(), UTC),
    )
    if view is not None:
        set_pass_cookie(request, response, view)
        set_ticket_cookies(response, campaign, view, secure=gate.config.cookie_secure)
    return response


async def static_file(request: web.Request) -> web.Response:
    """The page's script (fairgate.js, page.js) and style sheet."""
    return static_response(request.app[STATIC_KEY], request.match_info["name"])


async def openapi(request: web.Request) -> web.Response:
    """This listener's OpenAPI document (gate/http/openapi.py): join, status polling,
    pass, claim, the page, the proxies' check, the transparency log; no admin path."""
    return respond(request, public_document(gate_of(request).config))


async def readyz(request: web.Request) -> web.Response:
    gate = gate_of(request)
    # `reason`: redis_unsafe (an evicting policy or weak persistence: the log names the
    # setting), redis_refused_<why> (Redis refused a command in the last seconds),
    # reconciling (a new Redis primary is being checked: gate/failover.py), or null.
    reason = gate.failover.not_ready() or gate.sanity.not_ready()
    ready = gate.scripts_loaded and gate.cache.fresh() and reason is None
    body = {
        "ready": ready,
        "redis": gate.cache.fresh(),
        "scripts": gate.scripts_loaded,
        "reason": reason,
    }
    return respond(request, body, 200 if ready else 503, None if ready else {"Retry-After": "1"})


async def metrics(request: web.Request) -> web.Response:
    await refresh_witnessed(request)
    return web.Response(
        body=await gate_of(request).metrics.render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


# What anyone who does not show that they hold the seq is answered, word for word the
# answer for a seq that does not exist: a receipt names its customer's digest and join
# time, and whether a seq exists is nobody else's business either.
_NO_RECEIPT = (
    "no receipt this request may see: send the customer's own ticket (?ticket= or the "
    "page's cookie) or pass for that seq, as that customer"
)


def holds_seq(request: web.Request, campaign: str, seq: int) -> bool:
    """The request shows, as its authenticated customer, their own ticket or pass for
    `seq` of `campaign` (an expired pass still shows who held the seq)."""
    gate = gate_of(request)
    try:
        identity(request, required=True)
    except GateError:
        return False
    presented = (
        (page_ticket(request), TICKET),
        (request.headers.get(PASS_HEADER) or request.cookies.get(PASS_COOKIE), PASS),
    )
    for text, kind in presented:
        if not text:
            continue
        try:
            token: Token = gate.signer.verify(text, kind)
            if token.campaign != campaign or token.seq != seq:
                continue
            check_customer(request, token)
        except (TokenError, GateError):
            continue
        return True
    return False


async def receipt(request: web.Request) -> web.Response:
    """A ticket's signed receipt, and once the log is sealed past its join entry, the
    latest checkpoint and the entry's inclusion proof (docs/audit-format.md); for the
    ticket's holder only (issue 13), anyone else gets 404 `unknown_receipt`."""
    gate = gate_of(request)
    campaign = campaign_id(request)
    text = request.match_info["seq"]
    valid = text.isascii() and text.isdigit() and len(text) <= 15 and int(text) >= 1
    if not valid or not holds_seq(request, campaign, int(text)):
        raise NotFound(_NO_RECEIPT, code="unknown_receipt")
    answer = await gate.receipts.receipt_with_proof(campaign, int(text))
    if answer is None:
        raise NotFound(_NO_RECEIPT, code="unknown_receipt")
    await add_witnessed(request, campaign, answer)
    return respond(request, answer)


async def public_keys(request: web.Request) -> web.Response:
    return respond(request, gate_of(request).keys.public_keys())


RNG_KEY = web.AppKey("rng", random.Random)
STATIC_KEY = web.AppKey("static", dict[str, bytes])


def public_app(config: Config) -> web.Application:
    """The public listener's routes, with no gate yet: whoever serves the app puts its
    gate under GATE_KEY before the first request (`create_public_app`, or the cleanup
    context of `gate.http.app.create_app`)."""
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[make_error_middleware("public", before=public_checks)],
    )
    app[RNG_KEY] = random.Random()
    app[IDENTITY_KEY] = Identity(config)

    async def bind_identity_clock(app: web.Application) -> None:
        # After the gate is in place (create_public_app, or app.py's cleanup context,
        # which runs first): token times are checked against Redis's time.
        if GATE_KEY in app:
            app[IDENTITY_KEY].bind_clock(app[GATE_KEY].cache.redis_now)

    app.on_startup.append(bind_identity_clock)

    async def close_identity(app: web.Application) -> None:
        await app[IDENTITY_KEY].close()

    app.on_cleanup.append(close_identity)
    app[STATIC_KEY] = load_static()
    app.router.add_get(STATIC_PREFIX + "{name}", static_file)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/q/{campaign}/join", join)
    app.router.add_get("/q/{campaign}/status", status)
    app.router.add_get("/q/{campaign}", page)
    # Any method: Envoy's ext_authz asks with the client's own (a POST to the core is
    # checked with a POST); nginx, HAProxy's Lua and Traefik ask with GET. No body is read.
    app.router.add_route("*", "/gate/auth", auth)
    add_edge_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/.well-known/fairgate/keys", public_keys)
    app.router.add_get("/q/{campaign}/receipt/{seq}", receipt)
    add_claim_routes(app)
    add_transparency_routes(app)
    return app


def create_public_app(gate: Gate) -> web.Application:
    """The public listener around a gate that is already running; its owner stops it."""
    app = public_app(gate.config)
    app[GATE_KEY] = gate
    return app


__all__ = ["create_public_app", "poll_after_ms", "public_app"]
