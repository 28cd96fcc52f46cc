"""The public listener's transparency routes: checkpoints as signed notes, consistency
proofs between them, and witnesses' cosignatures (docs/audit-format.md, "Witnessed
checkpoints"; the witness itself is `gate witness`, gate/audit/witness.py).

    GET  /.well-known/fairgate/checkpoint/{campaign}[?size=N]   text/plain signed note
    GET  /.well-known/fairgate/consistency/{campaign}?old=N&new=M  base64 hashes, a line each
    POST /.well-known/fairgate/cosign/{campaign}                the note + cosignature lines
    GET  /.well-known/fairgate/witnessed/{campaign}             JSON: K of N, published size
    GET  /.well-known/fairgate/commitment/{campaign}            JSON: entry 1 and its proof
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gate.audit.commitment import COMMITMENT_ENTRY
from gate.audit.cosignatures import (
    Transparency,
    UnsignedCheckpoint,
    WitnessCollector,
    cosigned_note,
)
from gate.audit.format import decode_entry
from gate.audit.note import MAX_NOTE_BYTES, b64, proof_lines
from gate.audit.store import AuditGapError
from gate.errors import BadRequest, GateError, NotFound, Unavailable
from gate.http.checks import campaign_id
from gate.http.common import GATE_KEY, Handler, gate_of, respond
from gate.service import store_for

log = logging.getLogger("gate.http")

TRANSPARENCY_KEY = web.AppKey("transparency", Transparency)
PREFIX = "/.well-known/fairgate"
NOTE_TYPE = "text/plain"
MAX_SIZE = 2**53


def _log_errors(handler: Handler) -> Handler:
    """What the stored log may hold that a request cannot fix (a checkpoint that does
    not verify, an unreadable or malformed record: an insider's write, a lost segment
    file) is a 503 and a log line, never a 500."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except UnsignedCheckpoint:
            raise GateError(
                "the stored checkpoint does not verify; it is not served",
                code="checkpoint_unverified",
                status=503,
            ) from None
        except (AuditGapError, ValueError, KeyError, TypeError) as exc:
            log.error("event=transparency_read_failed path=%s error=%r", request.path, exc)
            raise Unavailable("the log cannot be read right now") from None

    return wrapped


def _transparency(request: web.Request) -> Transparency:
    return request.app[TRANSPARENCY_KEY]


def _whole(params: Mapping[str, str], name: str, *, required: bool) -> int | None:
    text = params.get(name)
    if text is None:
        if required:
            raise BadRequest(f"the {name} query parameter is missing", code="bad_size")
        return None
    if not text.isdigit() or not text.isascii() or len(text) > 16 or int(text) > MAX_SIZE:
        raise BadRequest(f"{name} must be a whole number", code="bad_size")
    return int(text)


async def _checkpoint(request: web.Request, campaign: str, size: int | None) -> Mapping[str, Any]:
    gate = gate_of(request)
    checkpoint = await _transparency(request).checkpoint_at(store_for(gate, campaign), size)
    if checkpoint is None:
        what = "no checkpoint yet" if size is None else f"no checkpoint of size {size}"
        raise NotFound(f"{what} in {campaign}", code="unknown_checkpoint")
    return checkpoint


async def checkpoint_note(request: web.Request) -> web.Response:
    """The latest checkpoint (or the one of ?size=N) as a signed note, with the
    configured witnesses' cosignatures collected so far appended."""
    gate = gate_of(request)
    campaign = campaign_id(request)
    transparency = _transparency(request)
    checkpoint = await _checkpoint(request, campaign, _whole(request.query, "size", required=False))
    note = transparency.note(campaign, checkpoint)
    size = int(checkpoint["size"])
    cosignatures = await transparency.cosignatures(gate.redis, campaign, size)
    witnessing = await transparency.witnessing(gate.redis, campaign, size)
    return web.Response(
        text=cosigned_note(note, cosignatures).render(),
        content_type=NOTE_TYPE,
        charset="utf-8",
        headers=witnessing.headers(),
    )


async def consistency(request: web.Request) -> web.Response:
    """PROOF(old, new) of RFC 6962 §2.1.2, a base64 hash a line (the lines of a
    c2sp.org/tlog-witness add-checkpoint request). `new` may be at most the latest
    checkpoint's size: beyond it nothing is sealed."""
    gate = gate_of(request)
    campaign = campaign_id(request)
    old = _whole(request.query, "old", required=True)
    new = _whole(request.query, "new", required=True)
    assert old is not None and new is not None
    if old > new:
        raise BadRequest(f"old ({old}) is larger than new ({new})", code="bad_size")
    latest = await _checkpoint(request, campaign, None)
    if new > int(latest["size"]):
        raise BadRequest(
            f"new ({new}) is beyond the latest checkpoint ({latest['size']})", code="bad_size"
        )
    proof = await store_for(gate, campaign).consistency_proof(old, new)
    return web.Response(text=proof_lines(proof), content_type=NOTE_TYPE, charset="utf-8")


async def cosign(request: web.Request) -> web.Response:
    """A witness hands in its cosignature: the body is the checkpoint note as the gate
    served it with the witness's cosignature line(s) appended."""
    gate = gate_of(request)
    campaign = campaign_id(request)
    if request.content_length is not None and request.content_length > MAX_NOTE_BYTES:
        raise GateError(
            f"a note is at most {MAX_NOTE_BYTES} bytes", code="body_too_large", status=413
        )
    try:
        async with asyncio.timeout(gate.config.body_timeout_ms / 1000):
            body = bytearray()
            while len(body) <= MAX_NOTE_BYTES:  # read() returns what has arrived so far
                chunk = await request.content.read(MAX_NOTE_BYTES + 1 - len(body))
                if not chunk:
                    break
                body += chunk
    except TimeoutError:
        raise GateError(
            "the body did not arrive in time", code="body_timeout", status=408
        ) from None
    except ConnectionError:  # the client went away mid-body
        raise BadRequest("the body was cut off", code="body_incomplete") from None
    except web.RequestPayloadError:  # bad chunking, a Content-Encoding that does not decode
        raise BadRequest("the body could not be decoded", code="bad_body_encoding") from None
    if len(body) > MAX_NOTE_BYTES:
        raise GateError(
            f"a note is at most {MAX_NOTE_BYTES} bytes", code="body_too_large", status=413
        )
    answer = await _transparency(request).add(gate.redis, store_for(gate, campaign), bytes(body))
    return respond(request, answer)


async def witnessed(request: web.Request) -> web.Response:
    """Where the latest checkpoint stands: who cosigned it, K of N, the published size."""
    gate = gate_of(request)
    campaign = campaign_id(request)
    transparency = _transparency(request)
    checkpoint = await _checkpoint(request, campaign, None)
    witnessing = await transparency.witnessing(gate.redis, campaign, int(checkpoint["size"]))
    return respond(
        request,
        {
            "campaign": campaign,
            "origin": transparency.origin(campaign),
            "witness_keys": [w.vkey() for w in transparency.witnesses],
            **witnessing.to_json(),
        },
    )


async def add_witnessed(request: web.Request, campaign: str, answer: dict[str, Any]) -> None:
    """A receipt's answer gets `witnessed`: the largest published checkpoint (its note
    with the cosignatures) and the consistency proof between it and the answer's
    checkpoint, so a receipt ties the customer's join to what witnesses saw. None while
    nothing is published (or no witnesses are configured)."""
    gate = gate_of(request)
    transparency = _transparency(request)
    answer["witnessed"] = None
    latest = answer.get("checkpoint")
    if not transparency.witnesses or not isinstance(latest, Mapping):
        return
    size = await transparency.witnessed_size(gate.redis, campaign)
    store = store_for(gate, campaign)
    try:
        checkpoint = await transparency.checkpoint_at(store, size) if size else None
        if checkpoint is None:
            return
        note = transparency.note(campaign, checkpoint)
        old, new = sorted((size, int(latest["size"])))
        proof = await store.consistency_proof(old, new)
    except (UnsignedCheckpoint, AuditGapError, ValueError, KeyError, TypeError):
        return  # the receipt stands without it
    cosignatures = await transparency.cosignatures(gate.redis, campaign, size)
    answer["witnessed"] = {
        "size": size,
        "note": cosigned_note(note, cosignatures).render(),
        "consistency": {"old": old, "new": new, "proof": [b64(h) for h in proof]},
    }


async def refresh_witnessed(request: web.Request) -> None:
    """Before a metrics scrape: the published size of each campaign this process knows."""
    gate = gate_of(request)
    transparency = _transparency(request)
    with contextlib.suppress(Exception):  # Redis away: the metric keeps its last value
        async with asyncio.timeout(0.5):
            for campaign in list(gate.cache.campaigns):
                await transparency.witnessed_size(gate.redis, campaign)


async def commitment(request: web.Request) -> web.Response:
    """The campaign's commitment (docs/audit-format.md, "Commitment before opening"):
    entry 1 (admin-create: the rules and both seed commitments) as stored, the first
    checkpoint, which covers it, as a signed note with the cosignatures it has, and the
    inclusion proof of entry 1 in it: anyone checks, before joining, what the campaign
    committed to, with nothing but the published keys."""
    gate = gate_of(request)
    campaign = campaign_id(request)
    store = store_for(gate, campaign)
    first = await store.first_checkpoint()
    raw = await store.entry(COMMITMENT_ENTRY) if first is not None else None
    if first is None or raw is None:
        raise NotFound(f"campaign {campaign} has no signed commitment", code="unknown_checkpoint")
    transparency = _transparency(request)
    size = int(first["size"])
    note = transparency.note(campaign, first)
    cosignatures = await transparency.cosignatures(gate.redis, campaign, size)
    entry = decode_entry(raw)
    return respond(
        request,
        {
            "campaign": campaign,
            "entry": COMMITMENT_ENTRY,
            "raw": b64(raw),
            "spec": entry["spec"].decode(),
            "seed_hash": entry["h"].decode(),
            "pq_seed_hash": entry["hq"].decode(),
            "checkpoint": first,
            "note": cosigned_note(note, cosignatures).render(),
            "inclusion": [b64(h) for h in await store.inclusion_proof(0, size)],
            "published": not await gate.room.commitment_pending(campaign),
        },
    )


def add_transparency_routes(app: web.Application) -> None:
    async def bind(app: web.Application) -> None:
        if GATE_KEY not in app:
            return
        gate = app[GATE_KEY]
        transparency = Transparency(gate.config, gate.keys)
        app[TRANSPARENCY_KEY] = transparency
        with contextlib.suppress(ValueError):  # a second app on the same gate (tests)
            gate.metrics.registry.register(WitnessCollector(transparency))

    app.on_startup.append(bind)
    app.router.add_get(PREFIX + "/checkpoint/{campaign}", _log_errors(checkpoint_note))
    app.router.add_get(PREFIX + "/consistency/{campaign}", _log_errors(consistency))
    app.router.add_post(PREFIX + "/cosign/{campaign}", _log_errors(cosign))
    app.router.add_get(PREFIX + "/witnessed/{campaign}", _log_errors(witnessed))
    app.router.add_get(PREFIX + "/commitment/{campaign}", _log_errors(commitment))


__all__ = ["add_transparency_routes", "add_witnessed", "refresh_witnessed"]
