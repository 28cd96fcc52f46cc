"""What a request must show before a handler acts on it, for every listener: a campaign id
in the path, the customer (gate.identity: a trusted proxy's header or the bank's JWT), a
pass bound to that customer and campaign, a same-origin browser write, a bearer token.
Each check answers with the value or raises the error the client sees.
"""

from __future__ import annotations

import dataclasses
import hmac
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gate.cache import LiveCampaign
from gate.campaign import CampaignSpec, valid_campaign_id
from gate.errors import BadRequest, Forbidden, GateError, NotFound, NotYet, Unauthorized
from gate.http.common import MSGPACK, gate_of
from gate.identity import Credentials, Identity
from gate.service import Gate
from gate.tokens import PASS, Token, TokenError, customer_digest

PASS_COOKIE = "fg_pass"
PASS_HEADER = "X-Gate-Pass"
CAMPAIGN_HEADER = "X-Gate-Campaign"
# What /gate/auth answers a proxy with: the customer as the campaign's keyed digest (hex),
# never the raw id, and the ticket's seq.
CUSTOMER_DIGEST_HEADER = "X-Gate-Customer"
SEQ_HEADER = "X-Gate-Seq"
API_CONTENT_TYPES = ("application/json", MSGPACK)
AUTH_PATH = "/gate/auth"  # the proxies' pass check

IDENTITY_KEY = web.AppKey("identity", Identity)
# The middleware's finding, for identity(): the customer, or the error to raise.
_FOUND: web.RequestKey[tuple[str | None, GateError | None]] = web.RequestKey("identity_found")


def campaign_id(request: web.Request) -> str:
    """The path's campaign id; one that cannot exist is simply not found."""
    campaign = request.match_info["campaign"]
    if not valid_campaign_id(campaign):
        raise NotFound(f"no campaign {campaign[:64]!r}", code="unknown_campaign")
    return campaign


async def find_identity(request: web.Request) -> None:
    """Find who the request names (a JWT may need its JWKS loaded: async) before the
    handler runs, so that identity() is a plain call. A failure is kept, not raised: it
    matters only to a handler that asks."""
    credentials = Credentials(request.remote, request.headers, request.cookies)
    try:
        request[_FOUND] = (await request.app[IDENTITY_KEY].customer(credentials), None)
    except GateError as exc:
        request[_FOUND] = (None, exc)


def identity(request: web.Request, *, required: bool) -> str | None:
    """The authenticated customer id: the only source of it for every handler.

    None when the request names nobody (401 `no_identity` when `required`); an identity
    header from an untrusted peer (401 `untrusted_identity`) or a bad token (401
    `bad_identity`) is refused even where identity is optional.
    """
    try:
        customer, error = request[_FOUND]
    except KeyError:  # an app without public_checks: it has no customers
        raise Unauthorized("this listener does not know customers", code="no_identity") from None
    if error is not None:
        raise error
    if customer is None and required:
        raise Unauthorized(
            f"the request does not say who the customer is ({request.app[IDENTITY_KEY].source})",
            code="no_identity",
        )
    return customer


def campaign_digest(
    gate: Gate, campaign: str, customer: str, spec: CampaignSpec | None = None
) -> bytes:
    """The customer's digest in `campaign`, under the digest key the campaign recorded at
    creation (its spec: given, or the cached one)."""
    if spec is None:
        live = gate.cache.peek(campaign)
        spec = live.spec if live is not None else None
    return customer_digest(gate.keys, campaign, customer, spec.digest_key if spec else None)


def with_digest_key(gate: Gate, spec: CampaignSpec) -> CampaignSpec:
    """A new campaign's spec with the digest key it will use recorded: the one it names
    (it must be loaded), else the current one (gate/signing.py)."""
    if spec.digest_key is None:
        return dataclasses.replace(spec, digest_key=gate.keys.digest_current)
    if spec.digest_key not in gate.keys.digest_keys:
        raise BadRequest(
            f"digest_key: no digest key {spec.digest_key!r} is loaded (digest_keys)",
            code="bad_spec",
        )
    return spec


def with_seal_bound(gate: Gate, spec: CampaignSpec) -> CampaignSpec:
    """A new campaign's spec with its seal bound recorded (docs/audit-format.md, "Seal
    bound"): the gate's seal_bound_ms, or a larger one the spec states; a smaller one is
    refused, since this gate's sealer does not promise it."""
    bound = gate.config.seal_bound_ms
    if spec.seal_bound_ms is None:
        return dataclasses.replace(spec, seal_bound_ms=bound) if bound else spec
    if bound and spec.seal_bound_ms < bound:
        raise BadRequest(
            f"seal_bound_ms: this gate seals within {bound} ms (seal_bound_ms); a campaign "
            "may state that bound or a larger one",
            code="bad_spec",
        )
    return spec


def check_customer(request: web.Request, token: Token) -> None:
    """The token (ticket or pass) must be the authenticated customer's, on every use:
    a request that names nobody is refused, whatever header the proxy forgot."""
    customer = identity(request, required=True)
    assert customer is not None
    gate = gate_of(request)
    if not hmac.compare_digest(campaign_digest(gate, token.campaign, customer), token.digest):
        raise Forbidden("this token belongs to another customer", code="wrong_customer")


def wanted_campaign(request: web.Request) -> str:
    """The campaign a proxy's auth check is for (X-Gate-Campaign, or ?campaign=)."""
    wanted = request.headers.get(CAMPAIGN_HEADER) or request.query.get("campaign")
    if not wanted:
        raise Unauthorized(
            f"the {CAMPAIGN_HEADER} header (or ?campaign=) is missing", code="no_campaign"
        )
    return wanted


def verified_pass(
    request: web.Request, campaign: str | None = None, *, fresh: bool | None = None
) -> tuple[Token, LiveCampaign]:
    """The request's pass, checked with no Redis round trip: who presents it (first: an
    untrusted or forged identity is refused as such), signature, expiry, campaign
    (`campaign`, else the one the proxy names), that it is the presenter's, and the cached
    revocations (a stale cache fails closed). `fresh`: what the caller's
    `cache.wait_fresh` found just before (a stall of the process between the two must not
    undo it); by default, `cache.fresh()` now."""
    gate = gate_of(request)
    identity(request, required=True)
    text = request.headers.get(PASS_HEADER) or request.cookies.get(PASS_COOKIE, "")
    if not text:
        raise Unauthorized("no pass", code="no_pass")
    try:
        token = gate.signer.verify(text, PASS)
    except TokenError as exc:
        raise Unauthorized(f"invalid pass: {exc}", code="bad_pass") from None
    # Redis time, as the cache measured it: the pass's expiry was Redis time too, so a
    # process whose wall clock lags accepts no expired pass.
    if token.exp <= gate.cache.redis_now():
        raise Unauthorized("the pass has expired", code="pass_expired")
    # Paced arrivals (issue 12): a pass is valid from its not_before, by Redis time.
    early_us = token.not_before - gate.cache.redis_now() * 1_000_000
    if early_us > 0:
        wait_ms = max(1, math.ceil(early_us / 1000))
        raise NotYet(f"this pass is valid in {wait_ms} ms", retry_after_ms=wait_ms)
    wanted = campaign if campaign is not None else wanted_campaign(request)
    if wanted != token.campaign:
        raise Forbidden("this pass is for another campaign", code="wrong_campaign")
    check_customer(request, token)
    if not (gate.cache.fresh() if fresh is None else fresh):
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


def _origin_key(scheme: str, netloc: str) -> tuple[str, int | None] | None:
    """(host, port) of an origin or a Host header, the scheme's port when none is given."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.username is not None or parts.path:
        return None
    default = {"http": 80, "https": 443}.get(scheme)
    return parts.hostname.lower(), port if port is not None else default


def same_origin(request: web.Request, origin: str) -> bool:
    """Origin names this listener's own site (its host:port is the request's Host) or
    one of config.public_origins."""
    if origin.lower() in gate_of(request).config.public_origins:
        return True
    scheme, sep, netloc = origin.partition("://")
    if not sep or scheme not in ("http", "https"):
        return False  # "null" (sandboxed frames, file: pages) included
    presented = _origin_key(scheme, netloc)
    host = request.headers.get("Host", "")
    return presented is not None and presented == _origin_key(scheme, host)


def check_browser_write(request: web.Request) -> None:
    """A POST that a browser may have sent for another site (it carries a cookie, or an
    Origin) must come from a page of this site: the pass and JWT cookies are sent with
    cross-site form posts too, and SameSite does not stop a sibling subdomain."""
    if request.method != "POST":
        return
    origin = request.headers.get("Origin")
    if origin is None and "Cookie" not in request.headers:
        return  # an API client (a bank's app): its credentials are headers it set itself
    if origin is None or not same_origin(request, origin):
        raise Forbidden("this write does not come from the gate's own site", code="bad_origin")


async def public_checks(request: web.Request) -> None:
    """What the public listener checks before any handler, run by its error middleware
    (one middleware, not three: each layer cost the poll ~2 us):

    - check_browser_write() for every POST route, present and future (a path it does not
      serve stays a 404), except the proxies' pass check: it writes nothing, and Envoy's
      ext_authz asks it with the method and headers of the request it guards;
    - the customer, found once (find_identity)."""
    if request.match_info.http_exception is None and request.path != AUTH_PATH:
        check_browser_write(request)
    await find_identity(request)


def require_api_body(request: web.Request) -> None:
    """A JSON or msgpack body: a content type that a cross-site HTML form cannot send."""
    if request.content_type not in API_CONTENT_TYPES:
        raise GateError(
            "send the body as application/json or application/msgpack",
            code="unsupported_media_type",
            status=415,
        )


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
