"""The gate's side of witnessing: its checkpoints as signed notes, the witnesses'
cosignatures it collects, and which checkpoints count as published (K of N).

A checkpoint note is rendered from the signed JSON checkpoint the sealer stored, and
signed on the spot (Ed25519 is deterministic: the same checkpoint always gives the same
note). The JSON checkpoint's own signature is checked first, so a checkpoint written into
Redis by someone without the key never gets a note signature from the gate.

A cosignature is taken only for a note whose text is exactly the gate's own checkpoint of
that size, from a witness named in ``witness_keys`` whose tlog-cosignature verifies. It is
stored in ``fg:{c}:cosigs`` ("size:name" -> the signature line); once ``witness_quorum``
of the configured witnesses have cosigned a size, that size joins ``fg:{c}:published``
(a sorted set, so the largest published size only grows, whatever the order of writes).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from gate.audit.checkpoints import verify_checkpoint
from gate.audit.format import load_public_keys
from gate.audit.note import (
    Note,
    NoteError,
    Signature,
    Verifier,
    checkpoint_of,
    cosignature_time,
    origin_for,
    parse_checkpoint_text,
    parse_note,
    parse_signature_line,
    parse_vkey,
    sign_note,
)
from gate.audit.store import AuditStore
from gate.config import Config
from gate.errors import BadRequest, Conflict, Forbidden, NotFound
from gate.redis_client import guarded
from gate.room.keys import CampaignKeys
from gate.signing import SigningKeys

log = logging.getLogger("gate.audit")

NOTE_CACHE = 256  # signed note texts kept per process (campaign, size)
FUTURE_SLACK_S = 600  # a cosignature dated further ahead than this is refused


class UnsignedCheckpoint(RuntimeError):
    """A stored checkpoint whose JSON signature does not verify: never re-signed."""


@dataclass(frozen=True)
class Witnessing:
    """Where a campaign's latest checkpoint stands with its witnesses."""

    size: int
    cosigned_by: tuple[str, ...]
    quorum: int
    witnesses: int
    witnessed_size: int

    @property
    def published(self) -> bool:
        return bool(self.witnesses) and len(self.cosigned_by) >= self.quorum

    def headers(self) -> dict[str, str]:
        return {
            "Fairgate-Cosignatures": str(len(self.cosigned_by)),
            "Fairgate-Witness-Quorum": f"{self.quorum} of {self.witnesses}",
            "Fairgate-Published": "yes" if self.published else "no",
            "Fairgate-Witnessed-Size": str(self.witnessed_size),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "cosigned_by": list(self.cosigned_by),
            "quorum": self.quorum,
            "witnesses": self.witnesses,
            "published": self.published,
            "witnessed_size": self.witnessed_size,
        }


class Transparency:
    """One process's view: its keys, the configured witnesses, a few signed notes."""

    def __init__(self, config: Config, keys: SigningKeys):
        self.prefix = config.origin_prefix
        self.keys = keys
        self.public_keys = load_public_keys(keys.public_keys())
        self.witnesses: list[Verifier] = [parse_vkey(text) for text in config.witness_keys]
        self.quorum = config.witness_quorum if self.witnesses else 0
        self._notes: OrderedDict[tuple[str, int, str], Note] = OrderedDict()
        # Last witnessed size seen per campaign, for the metric (refreshed on scrape).
        self.witnessed: dict[str, int] = {}

    def origin(self, campaign: str) -> str:
        return origin_for(self.prefix, campaign)

    # -- notes ---------------------------------------------------------------------

    def note(self, campaign: str, checkpoint: Mapping[str, Any]) -> Note:
        """The gate-signed note of a stored JSON checkpoint (UnsignedCheckpoint if that
        checkpoint's own signature does not verify)."""
        cache_key = (campaign, int(checkpoint.get("size", -1)), str(checkpoint.get("sig")))
        cached = self._notes.get(cache_key)
        if cached is not None:
            self._notes.move_to_end(cache_key)
            return cached
        if not verify_checkpoint(checkpoint, self.public_keys, campaign):
            raise UnsignedCheckpoint(f"campaign {campaign}: a stored checkpoint does not verify")
        origin = self.origin(campaign)
        text = checkpoint_of(origin, checkpoint).text()
        key = self.keys.ed25519_keys.get(str(checkpoint["kid"]))
        if key is None:  # its key left the file: sign with the current one
            key = self.keys.ed25519_keys[self.keys.ed25519_current]
        note = Note(text, (sign_note(text, origin, key),))
        self._notes[cache_key] = note
        if len(self._notes) > NOTE_CACHE:
            self._notes.popitem(last=False)
        return note

    # -- cosignatures --------------------------------------------------------------

    async def cosignatures(self, redis: Redis, campaign: str, size: int) -> list[Signature]:
        """The configured witnesses' stored cosignatures of the checkpoint of `size`."""
        if not self.witnesses:
            return []
        k = CampaignKeys(campaign)
        async with guarded():
            values = await redis.hmget(k.cosignatures, [f"{size}:{w.name}" for w in self.witnesses])
        out: list[Signature] = []
        for verifier, value in zip(self.witnesses, values, strict=True):
            if not isinstance(value, bytes):
                continue
            try:
                signature = parse_signature_line(value.decode())
            except (NoteError, UnicodeDecodeError):
                continue
            if verifier.matches(signature):
                out.append(signature)
        return out

    async def witnessed_size(self, redis: Redis, campaign: str) -> int:
        async with guarded():
            top = await redis.zrevrange(CampaignKeys(campaign).published, 0, 0)
        size = int(top[0]) if top and isinstance(top[0], bytes | str) else 0
        self.witnessed[campaign] = size
        return size

    async def witnessing(self, redis: Redis, campaign: str, size: int) -> Witnessing:
        cosigned = await self.cosignatures(redis, campaign, size)
        return Witnessing(
            size,
            tuple(s.name for s in cosigned),
            self.quorum,
            len(self.witnesses),
            await self.witnessed_size(redis, campaign),
        )

    async def checkpoint_at(self, store: AuditStore, size: int | None) -> Mapping[str, Any] | None:
        """The stored JSON checkpoint of `size` (None: the latest)."""
        latest = await store.latest_checkpoint()
        if latest is None or size is None or int(latest["size"]) == size:
            return latest
        if size > int(latest["size"]):
            return None
        for checkpoint in await store.checkpoints():
            if int(checkpoint["size"]) == size:
                return checkpoint
        return None

    async def add(self, redis: Redis, store: AuditStore, body: bytes) -> dict[str, Any]:
        """Take the cosignatures a note carries (c2sp.org/tlog-witness's answer appended
        to the gate's checkpoint): every line from a configured witness must verify over
        the gate's own checkpoint of that size; lines from other keys are ignored."""
        campaign = store.campaign
        try:
            note = parse_note(body)
            submitted = parse_checkpoint_text(note.text)
        except NoteError as exc:
            raise BadRequest(f"not a checkpoint note: {exc}", code="bad_note") from None
        if submitted.origin != self.origin(campaign):
            raise NotFound(
                f"this gate's log for {campaign} is {self.origin(campaign)!r}, "
                f"not {submitted.origin[:100]!r}",
                code="unknown_origin",
            )
        if not self.witnesses:
            raise Forbidden(
                "this gate takes no cosignatures (no witness_keys)", code="no_witnesses"
            )
        checkpoint = await self.checkpoint_at(store, submitted.size)
        if checkpoint is None:
            raise NotFound(
                f"no checkpoint of size {submitted.size} in {campaign}", code="unknown_checkpoint"
            )
        ours = self.note(campaign, checkpoint)
        if note.text != ours.text:
            # Someone showed a witness a checkpoint of this size that is not this log's.
            log.warning("event=foreign_checkpoint campaign=%s size=%d", campaign, submitted.size)
            raise Conflict(
                f"the note is not this log's checkpoint of size {submitted.size}",
                code="not_this_checkpoint",
            )
        accepted = self._verified_cosignatures(note)
        if not accepted:
            raise Forbidden(
                "no cosignature from a configured witness in the note", code="unknown_witness"
            )
        k = CampaignKeys(campaign)
        size = submitted.size
        fields = {
            f"{size}:{signature.name}": signature.line().rstrip("\n") for signature in accepted
        }
        async with guarded():
            await redis.hset(k.cosignatures, mapping=fields)  # type: ignore[arg-type]
            present = await redis.hmget(
                k.cosignatures, [f"{size}:{w.name}" for w in self.witnesses]
            )
            count = sum(1 for value in present if value is not None)
            if count >= self.quorum:
                await redis.zadd(k.published, {str(size): size})
                # The campaign's commitment (its admin-create entry, entry 1) is public
                # now: joins may come (lua/join.lua refuses them while commit_pending).
                await redis.hdel(k.meta, "commit_pending")
        witnessing = await self.witnessing(redis, campaign, size)
        return {
            "campaign": campaign,
            "accepted": sorted(s.name for s in accepted),
            **witnessing.to_json(),
        }

    def _verified_cosignatures(self, note: Note) -> list[Signature]:
        now = time.time()
        accepted: list[Signature] = []
        for signature in note.signatures:
            for verifier in self.witnesses:
                if not verifier.matches(signature):
                    continue
                if not verifier.verify(note.text, signature):
                    raise Forbidden(
                        f"the cosignature of {signature.name} does not verify",
                        code="bad_cosignature",
                    )
                if cosignature_time(signature) > now + FUTURE_SLACK_S:
                    raise BadRequest(
                        f"the cosignature of {signature.name} is dated in the future",
                        code="bad_cosignature",
                    )
                if signature.name not in {s.name for s in accepted}:
                    accepted.append(signature)
                break
        return accepted

    async def all_cosignatures(self, redis: Redis, campaign: str) -> dict[int, list[str]]:
        """Every stored cosignature line, by checkpoint size (for the export)."""
        async with guarded():
            raw = await redis.hgetall(CampaignKeys(campaign).cosignatures)
        out: dict[int, list[str]] = {}
        for field, value in raw.items():
            size_text, _, _ = (field.decode() if isinstance(field, bytes) else field).partition(":")
            if size_text.isdigit() and isinstance(value, bytes):
                out.setdefault(int(size_text), []).append(value.decode())
        return {size: sorted(lines) for size, lines in out.items()}

    async def cosigned_notes(
        self, redis: Redis, campaign: str, checkpoints: Sequence[Mapping[str, Any]]
    ) -> dict[int, str]:
        """size -> the signed note with every stored cosignature, for the checkpoints
        that have any (the export's `note`)."""
        stored = await self.all_cosignatures(redis, campaign)
        out: dict[int, str] = {}
        for checkpoint in checkpoints:
            lines = stored.get(int(checkpoint["size"]))
            if not lines:
                continue
            try:
                note = self.note(campaign, checkpoint)
            except UnsignedCheckpoint:
                continue  # exported as it is: verify names it
            extra = "".join(line + "\n" for line in lines)
            out[int(checkpoint["size"])] = note.render() + extra
        return out


def cosigned_note(note: Note, cosignatures: Sequence[Signature]) -> Note:
    return Note(note.text, (*note.signatures, *cosignatures))


class WitnessCollector(Collector):
    """fairgate_checkpoint_witnessed_size: the largest published checkpoint per campaign."""

    def __init__(self, transparency: Transparency):
        self.transparency = transparency

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "fairgate_checkpoint_witnessed_size",
            "size of the largest checkpoint that witness_quorum witnesses cosigned",
            labels=["campaign"],
        )
        for campaign, size in sorted(self.transparency.witnessed.items()):
            gauge.add_metric([campaign], size)
        yield gauge


__all__ = ["Transparency", "UnsignedCheckpoint", "WitnessCollector", "Witnessing", "cosigned_note"]
