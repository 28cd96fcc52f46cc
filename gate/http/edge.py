"""The revocation list of the pass checked at the edge (issue 15): a proxy that verifies
passes itself (deploy/nginx/fairgate-edge.js, deploy/haproxy/fairgate-edge.lua) asks this
a few times a second per campaign, instead of asking /gate/auth on every request.

The answer is what such a proxy needs beyond the keys (`gate keys edge`): the revoked
seqs, the campaign's state and digest key id, and the gate's clock (Redis time), so that
the proxy checks expiry and not_before against the same clock as the gate, and fails
closed when its copy is older than the gate's own stale limit (stale_after_ms). It is
plain text, one `name value` a line, so that HAProxy's Lua reads it without a JSON
library:

    fairgate-revoked 1
    campaign deposit-5pct
    state open
    digest_key d1a2b3c4
    version 17
    time_ms 1796080960492
    stale_after_ms 1000
    revoked 3 17 25

Answered only to a trusted proxy (trusted_proxies and proxy_secret, as for the customer
header), from the per-process cache: no Redis round trip, and 503 (fail closed) when that
cache cannot prove the current state.
"""

from __future__ import annotations

from aiohttp import web

from gate.campaign import valid_campaign_id
from gate.errors import NotFound, Unauthorized, Unavailable
from gate.http.checks import IDENTITY_KEY
from gate.http.common import gate_of
from gate.identity import Credentials
from gate.signing import LEGACY_DIGEST_KID

REVOKED_PATH = "/gate/revoked"
FORMAT_LINE = "fairgate-revoked 1"


async def revoked(request: web.Request) -> web.Response:
    """GET /gate/revoked?campaign=C: the campaign's revocation list for an edge check."""
    credentials = Credentials(request.remote, request.headers, request.cookies)
    if not request.app[IDENTITY_KEY].header.trusted(credentials):
        raise Unauthorized(
            "the revocation list is answered to the bank's proxy only", code="untrusted_proxy"
        )
    campaign = request.query.get("campaign", "")
    if not valid_campaign_id(campaign):
        raise NotFound(f"no campaign {campaign[:64]!r}", code="unknown_campaign")
    gate = gate_of(request)
    if not await gate.cache.wait_fresh():
        # As /gate/auth: without fresh state no list proves a pass was not revoked.
        raise Unavailable("the gate cannot check passes right now")
    live = await gate.cache.get(campaign)
    if live is None:
        raise NotFound(f"no campaign {campaign!r}", code="unknown_campaign")
    digest_kid = live.spec.digest_key
    if digest_kid is None:  # as SigningKeys.digest_key_for(None)
        keys = gate.keys
        digest_kid = (
            LEGACY_DIGEST_KID if LEGACY_DIGEST_KID in keys.digest_keys else keys.digest_current
        )
    lines = [
        FORMAT_LINE,
        f"campaign {campaign}",
        f"state {live.state.state}",
        f"digest_key {digest_kid}",
        f"version {live.state.rev}",
        f"time_ms {int(gate.cache.redis_now() * 1000)}",
        f"stale_after_ms {gate.config.stale_after_ms}",
        "revoked " + " ".join(str(seq) for seq in sorted(live.revoked)),
    ]
    return web.Response(
        text="\n".join(lines) + "\n",
        content_type="text/plain",
        headers={"Cache-Control": "no-store"},
    )


def add_edge_routes(app: web.Application) -> None:
    app.router.add_get(REVOKED_PATH, revoked)


__all__ = ["REVOKED_PATH", "add_edge_routes"]
