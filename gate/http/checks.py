"""What a request must show before a handler acts on it, for both listeners and the claim
routes: a campaign id in the path, the customer named by the trusted proxy, a pass, a
bearer token. Each check answers with the value or raises the error the client sees.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gate.cache import LiveCampaign
from gate.campaign import valid_campaign_id
from gate.errors import BadRequest, Forbidden, NotFound, Unauthorized
from gate.http.common import gate_of
from gate.tokens import PASS, Token, TokenError, customer_digest

PASS_COOKIE = "fg_pass"
PASS_HEADER = "X-Gate-Pass"
CAMPAIGN_HEADER = "X-Gate-Campaign"
MAX_CUSTOMER_ID = 256


def campaign_id(request: web.Request) -> str:
    """The path's campaign id; one that cannot exist is simply not found."""
    campaign = request.match_info["campaign"]
    if not valid_campaign_id(campaign):
        raise NotFound(f"no campaign {campaign[:64]!r}", code="unknown_campaign")
    return campaign


def customer_id(request: web.Request, *, required: bool) -> str | None:
    """The customer id the proxy put in the trusted header (config.customer_header)."""
    header = gate_of(request).config.customer_header
    value = request.headers.get(header)
    if value is None or not value.strip():
        if required:
            raise BadRequest(f"the {header} header is missing or empty", code="missing_customer")
        return None
    value = value.strip()
    if len(value) > MAX_CUSTOMER_ID or not value.isprintable():
        raise BadRequest(f"the {header} header is not a valid customer id", code="bad_customer")
    return value


def check_customer(request: web.Request, token: Token) -> None:
    """When the proxy names the customer, the token must be theirs."""
    customer = customer_id(request, required=False)
    if customer is None:
        return
    gate = gate_of(request)
    if customer_digest(gate.keys, token.campaign, customer) != token.digest:
        raise Forbidden("this token belongs to another customer", code="wrong_customer")


def verified_pass(request: web.Request) -> tuple[Token, LiveCampaign]:
    """The request's pass, checked with no Redis round trip: signature, expiry, campaign,
    customer, and the cached revocations (a stale cache fails closed)."""
    gate = gate_of(request)
    text = request.headers.get(PASS_HEADER) or request.cookies.get(PASS_COOKIE, "")
    if not text:
        raise Unauthorized("no pass", code="no_pass")
    try:
        token = gate.signer.verify(text, PASS)
    except TokenError as exc:
        raise Unauthorized(f"invalid pass: {exc}", code="bad_pass") from None
    if token.exp <= time.time():
        raise Unauthorized("the pass has expired", code="pass_expired")
    wanted = request.headers.get(CAMPAIGN_HEADER) or request.query.get("campaign")
    if wanted and wanted != token.campaign:
        raise Forbidden("this pass is for another campaign", code="wrong_campaign")
    check_customer(request, token)
    if not gate.cache.fresh():
        # Without fresh state we cannot prove the pass was not revoked: fail closed.
        raise Unauthorized("the gate cannot check passes right now", code="unavailable")
    live = gate.cache.peek(token.campaign)
    if live is None:
        raise Unauthorized("unknown campaign", code="unknown_campaign")
    if live.state.state == "closed":
        raise Forbidden("the campaign is closed", code="campaign_closed")
    if token.seq in live.revoked:
        raise Forbidden("this pass was revoked", code="revoked")
    return token, live


def authenticate(tokens: tuple[tuple[str, str], ...], header: str | None) -> str | None:
    """The name of the token presented, comparing against every token in constant time."""
    if not header or not header.startswith("Bearer "):
        return None
    # A header with non-ASCII bytes arrives with surrogate escapes: compare it as bytes
    # (it matches no token) instead of failing to encode it.
    presented = header[len("Bearer ") :].strip().encode("utf-8", "surrogateescape")
    found: str | None = None
    for name, token in tokens:
        if hmac.compare_digest(presented, token.encode()):
            found = name
    return found


def _bearer_actor(
    request: web.Request, tokens: tuple[tuple[str, str], ...], who: str, code: str
) -> str:
    actor = authenticate(tokens, request.headers.get("Authorization"))
    if actor is None:
        raise Unauthorized(f"a valid {who} bearer token is required", code=code)
    return actor


def admin_actor(request: web.Request) -> str:
    """The name of the operator's token (config.admin_tokens)."""
    tokens = gate_of(request).config.admin_tokens
    return _bearer_actor(request, tokens, "admin", "bad_admin_token")


def core_actor(request: web.Request) -> str:
    """The name of the core system's token (config.core_tokens)."""
    tokens = gate_of(request).config.core_tokens
    return _bearer_actor(request, tokens, "core-system", "bad_core_token")


def reason_of(body: Mapping[str, Any]) -> str:
    """The optional free-text `reason` an operator or the core system gives (logged)."""
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise BadRequest("reason: at most 500 characters", code="bad_reason")
    return reason
