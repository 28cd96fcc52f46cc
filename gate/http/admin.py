"""The admin listener, on its own port: campaigns and live controls, bearer tokens only.

Every call that changes something is itself an audit entry, written by the same script,
with the name of the operator's token as the actor.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gate.audit import commitment
from gate.audit.cosignatures import Transparency
from gate.audit.dispute import build_account
from gate.audit.export import export_chunks
from gate.audit.query import lookup_params, parse_query, run_query
from gate.audit.store import AuditGapError
from gate.campaign import load_stored_spec, parse_patch, parse_spec
from gate.errors import BadRequest, GateError, NotFound
from gate.failover import hold_report, lost_report, restored_report
from gate.http.checks import (
    admin_actor,
    campaign_digest,
    campaign_id,
    reason_of,
    with_digest_key,
    with_seal_bound,
)
from gate.http.common import (
    GATE_KEY,
    Handler,
    gate_of,
    healthz,
    make_error_middleware,
    read_body,
    respond,
)
from gate.http.openapi import admin_document
from gate.room import Reply
from gate.service import Gate, store_for

ACTOR_KEY = web.RequestKey("actor", str)
# The state shown for a campaign a failover lost whole (only its tombstone is left).
LOST_STATE = "lost_in_failover"
log = logging.getLogger("gate.http")


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in ("/healthz", "/openapi.json"):  # neither says anything secret
        return await handler(request)
    request[ACTOR_KEY] = admin_actor(request)
    return await handler(request)


async def _meta(gate: Gate, campaign: str) -> dict[str, str]:
    """The campaign's stored meta; a campaign that does not exist is not found."""
    meta = await gate.room.meta(campaign)
    if meta is None:
        if await lost_report(gate.redis, campaign) is not None:
            raise Reply.CAMPAIGN_LOST_IN_FAILOVER.error(campaign=campaign)
        raise NotFound(f"no campaign {campaign}", code="unknown_campaign")
    return meta


def _lost_view(campaign: str, report: dict[str, Any]) -> dict[str, Any]:
    """A campaign a Redis failover lost whole: nothing of it but the report (its
    tombstone) is left, and its id stays taken (gate/failover.py)."""
    return {
        "id": campaign,
        "spec": None,
        "state": LOST_STATE,
        "stats": None,
        "failover_hold": report,
        "failover_restored": None,
    }


async def _view(gate: Gate, campaign: str) -> dict[str, Any]:
    meta = await _meta(gate, campaign)
    stats = await gate.room.stats(campaign)
    live = gate.cache.peek(campaign)
    stats["admission_rate_per_s"] = round(live.admission_rate(), 3) if live else None
    # The rate in force (a controller may have moved it from the spec's rate_per_s) and
    # who moves it (docs/adaptive-admission.md).
    stats["rate_per_s"] = float(meta["rate"])
    stats["rate_mode"] = meta.get("mode")
    return {
        "id": campaign,
        "spec": load_stored_spec(meta["spec"]).to_json(),
        "state": stats["state"],
        "stats": stats,
        # What a Redis failover lost, while the campaign is held (gate/failover.py).
        "failover_hold": hold_report(meta),
        "failover_restored": await restored_report(gate.redis, campaign)
        if "failover_hold" in meta
        else None,
    }


async def create_campaign(request: web.Request) -> web.Response:
    gate = gate_of(request)
    spec = with_seal_bound(gate, with_digest_key(gate, parse_spec(await read_body(request))))
    # Joins wait until the checkpoint that covers the creation (its rules and seed
    # commitments) is published: signed now, or cosigned by the witnesses' quorum.
    await gate.room.create(spec, request[ACTOR_KEY], publish_first=True)
    await commitment.publish(
        gate.room,
        gate.sealer,
        store_for(gate, spec.id),
        timeout_s=max(3.0, 2 * gate.config.seal_bound_ms / 1000),
    )
    await gate.cache.refresh_once()
    view = await _view(gate, spec.id)
    view["commitment"] = await commitment.view(store_for(gate, spec.id), await _meta(gate, spec.id))
    return respond(request, view, 201)


async def list_campaigns(request: web.Request) -> web.Response:
    gate = gate_of(request)
    out = []
    for campaign in await gate.room.list_ids():
        meta = await gate.room.meta(campaign)
        if meta is not None:
            out.append(
                {
                    "id": campaign,
                    "state": meta["state"],
                    "joined": int(meta["seq"]),
                    "cursor": int(meta["cursor"]),
                }
            )
        elif (report := await lost_report(gate.redis, campaign)) is not None:
            seqs = report.get("seqs")
            joined = int(seqs[1]) if isinstance(seqs, list) else 0
            out.append({"id": campaign, "state": LOST_STATE, "joined": joined, "cursor": None})
    return respond(request, {"campaigns": out})


async def show_campaign(request: web.Request) -> web.Response:
    gate, campaign = gate_of(request), campaign_id(request)
    if await gate.room.meta(campaign) is None:
        report = await lost_report(gate.redis, campaign)
        if report is not None:
            return respond(request, _lost_view(campaign, report))
    return respond(request, await _view(gate, campaign))


async def update_campaign(request: web.Request) -> web.Response:
    gate = gate_of(request)
    campaign = campaign_id(request)
    body = await read_body(request)
    meta = await _meta(gate, campaign)
    # The rate in force, which the controller may have moved from the spec's rate_per_s.
    spec, fields = parse_patch(body, load_stored_spec(meta["spec"]), float(meta["rate"]))
    await gate.room.update(campaign, spec, fields, request[ACTOR_KEY])
    await gate.cache.refresh_once()
    return respond(request, await _view(gate, campaign))


def _state_change(action: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        gate = gate_of(request)
        campaign = campaign_id(request)
        await read_body(request)
        await _meta(gate, campaign)  # a campaign a failover lost whole: 409, as for create
        await gate.room.set_state(campaign, action, request[ACTOR_KEY])
        await gate.cache.refresh_once()
        return respond(request, await _view(gate, campaign))

    return handler


async def _customer_action(request: web.Request) -> tuple[Gate, str, bytes, str]:
    gate = gate_of(request)
    campaign = campaign_id(request)
    body = await read_body(request)
    customer = body.get("customer")
    if not isinstance(customer, str) or not customer.strip() or len(customer) > 256:
        raise BadRequest("customer: a customer id is required", code="bad_customer")
    reason = reason_of(body)
    spec = load_stored_spec((await _meta(gate, campaign))["spec"])
    return gate, campaign, campaign_digest(gate, campaign, customer.strip(), spec), reason


async def block_customer(request: web.Request) -> web.Response:
    gate, campaign, digest, reason = await _customer_action(request)
    seq = await gate.room.block(campaign, digest, request[ACTOR_KEY], reason)
    await gate.cache.refresh_once()
    return respond(request, {"campaign": campaign, "blocked": True, "seq": seq or None})


async def revoke_customer(request: web.Request) -> web.Response:
    gate, campaign, digest, reason = await _customer_action(request)
    seq = await gate.room.revoke(campaign, digest, request[ACTOR_KEY], reason)
    await gate.cache.refresh_once()
    return respond(request, {"campaign": campaign, "revoked": True, "seq": seq})


async def campaign_stats(request: web.Request) -> web.Response:
    view = await _view(gate_of(request), campaign_id(request))
    return respond(request, {"id": view["id"], **view["stats"]})


# -- the audit log -------------------------------------------------------------------


async def _existing_campaign(request: web.Request) -> tuple[Gate, str]:
    gate = gate_of(request)
    campaign = campaign_id(request)
    await _meta(gate, campaign)
    return gate, campaign


def _query_params(request: web.Request) -> dict[str, str]:
    params: dict[str, str] = {}
    for name in request.query:
        if len(request.query.getall(name)) > 1:
            raise BadRequest(f"{name}: given more than once", code="bad_query")
        params[name] = request.query[name]
    return params


def _gap(exc: AuditGapError) -> GateError:
    return GateError(str(exc), code="audit_gap", status=500)


async def audit_entries(request: web.Request) -> web.Response:
    """Entries about a customer, a seq range and/or a time range, decoded."""
    params = _query_params(request)
    query = parse_query(params)
    gate, campaign = await _existing_campaign(request)
    digest = None
    if query.customer:
        spec = load_stored_spec((await _meta(gate, campaign))["spec"])
        digest = campaign_digest(gate, campaign, query.customer, spec)
    try:
        result = await run_query(store_for(gate, campaign), query, digest)
    except AuditGapError as exc:
        raise _gap(exc) from None
    if digest is not None:  # a lookup of a customer is itself logged, before it is answered
        others = {name: value for name, value in params.items() if name != "customer"}
        await gate.room.record_lookup(
            campaign, request[ACTOR_KEY], "audit", digest, lookup_params(others)
        )
    return respond(request, result)


async def audit_dispute(request: web.Request) -> web.Response:
    """One customer's account with its proofs (`gate audit dispute`)."""
    params = _query_params(request)
    customer = (params.get("customer") or "").strip()
    if not customer or len(customer) > 256 or not customer.isprintable():
        raise BadRequest("customer: a customer id is required", code="bad_query")
    for name in params:
        if name != "customer":
            raise BadRequest(f"{name}: unknown parameter; known: customer", code="bad_query")
    gate, campaign = await _existing_campaign(request)
    spec = load_stored_spec((await _meta(gate, campaign))["spec"])
    digest = campaign_digest(gate, campaign, customer, spec)
    try:
        account = await build_account(
            store_for(gate, campaign), digest, gate.keys.public_keys(), gate.receipts
        )
    except AuditGapError as exc:
        raise _gap(exc) from None
    # the lookup is itself logged (issue 13), before it is answered
    await gate.room.record_lookup(campaign, request[ACTOR_KEY], "dispute", digest, "")
    return respond(request, account)


async def audit_export(request: web.Request) -> web.StreamResponse:
    """The whole log as JSON Lines, streamed chunk by chunk (never held in memory)."""
    gate, campaign = await _existing_campaign(request)
    chunks = export_chunks(
        store_for(gate, campaign), gate.keys.public_keys(), Transparency(gate.config, gate.keys)
    )
    first = await anext(chunks)  # a failure before the first byte is an ordinary error
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="{campaign}-audit.jsonl"',
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk = first
    try:
        while True:
            try:
                await response.write(chunk)
            except ConnectionError:
                return response  # the client went away
            chunk = await anext(chunks, b"")
            if not chunk:
                break
    except Exception as exc:
        # Reading the log failed after the status line was sent: cut the stream so the
        # client sees an incomplete body, never a clean end that passes for the export.
        log.error("event=audit_export_cut campaign=%s error=%r", campaign, exc)
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        await chunks.aclose()
    await response.write_eof()
    return response


async def audit_checkpoints(request: web.Request) -> web.Response:
    gate, campaign = await _existing_campaign(request)
    checkpoints = await store_for(gate, campaign).checkpoints()
    # The latest checkpoint's witnesses: who cosigned, K of N, the published size.
    transparency = Transparency(gate.config, gate.keys)
    witnessing = (
        (await transparency.witnessing(gate.redis, campaign, checkpoints[-1]["size"])).to_json()
        if checkpoints
        else None
    )
    return respond(
        request,
        {
            "campaign": campaign,
            "checkpoints": checkpoints,
            "keys": gate.keys.public_keys(),
            "witnessing": witnessing,
        },
    )


async def openapi(request: web.Request) -> web.Response:
    """This listener's OpenAPI document (gate/http/openapi.py), admin paths included."""
    return respond(request, admin_document(gate_of(request).config))


def create_admin_app(gate: Gate) -> web.Application:
    app = web.Application(
        client_max_size=gate.config.max_body_bytes,
        middlewares=[make_error_middleware("admin"), require_token],
    )
    app[GATE_KEY] = gate
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/admin/campaigns", create_campaign)
    app.router.add_get("/admin/campaigns", list_campaigns)
    app.router.add_get("/admin/campaigns/{campaign}", show_campaign)
    app.router.add_patch("/admin/campaigns/{campaign}", update_campaign)
    for action in ("pause", "resume", "close"):
        app.router.add_post(f"/admin/campaigns/{{campaign}}/{action}", _state_change(action))
    app.router.add_post("/admin/campaigns/{campaign}/block", block_customer)
    app.router.add_post("/admin/campaigns/{campaign}/revoke", revoke_customer)
    app.router.add_get("/admin/campaigns/{campaign}/stats", campaign_stats)
    app.router.add_get("/admin/campaigns/{campaign}/audit", audit_entries)
    app.router.add_get("/admin/campaigns/{campaign}/audit/export", audit_export)
    app.router.add_get("/admin/campaigns/{campaign}/audit/dispute", audit_dispute)
    app.router.add_get("/admin/campaigns/{campaign}/checkpoints", audit_checkpoints)
    return app
