"""The reads of the Room: plain Redis commands, no script (campaign meta, the cached
snapshot, stats, tickets, subscriptions, allocations, audit entries)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
from redis.asyncio import Redis

from gate.audit.format import decode_entry
from gate.ballot import Subscription
from gate.errors import NotFound
from gate.redis_client import guarded
from gate.room.keys import REGISTRY, CampaignKeys
from gate.room.replies import text
from gate.room.results import CampaignState

_SNAPSHOT_FIELDS = (
    b"state",
    b"seq",
    b"cursor",
    b"rev",
    b"opens_at_us",
    b"closes_at_us",
    b"prequeue_from_us",
    b"rate",
    b"admitted",
    b"policy",
    b"q_total",
    b"q_min",
    b"held",
    b"confirmed",
    b"pq_shuffle",
    b"pq_state",
    b"claims",
    b"subscriptions",
    b"door_n",
)


def _int(value: bytes | None) -> int:
    return int(value) if value is not None else 0


class Reads:
    redis: Redis

    async def list_ids(self) -> list[str]:
        async with guarded():
            members = await self.redis.smembers(REGISTRY)
        return sorted(text(m) for m in members)

    async def meta(self, campaign: str) -> dict[str, str] | None:
        async with guarded():
            raw = await self.redis.hgetall(CampaignKeys(campaign).meta)
        if not raw:
            return None
        return {text(k): text(v) for k, v in raw.items()}

    async def snapshot(self, campaigns: Sequence[str]) -> dict[str, CampaignState | None]:
        """One round trip for the live state of every cached campaign."""
        async with guarded():
            pipe = self.redis.pipeline(transaction=False)
            for campaign in campaigns:
                pipe.hmget(CampaignKeys(campaign).meta, _SNAPSHOT_FIELDS)
            rows = await pipe.execute()
        out: dict[str, CampaignState | None] = {}
        for campaign, row in zip(campaigns, rows, strict=True):
            if row[0] is None:
                out[campaign] = None
                continue
            out[campaign] = CampaignState(
                state=row[0].decode(),
                seq=_int(row[1]),
                cursor=_int(row[2]),
                rev=_int(row[3]),
                opens_at_us=_int(row[4]),
                closes_at_us=_int(row[5]),
                prequeue_from_us=_int(row[6]),
                rate=float(row[7] or 0),
                admitted=_int(row[8]),
                policy=text(row[9] or b"first_come"),
                remaining=_int(row[10]) - _int(row[12]) - _int(row[13]),
                minimum=_int(row[11]),
                prequeue_shuffle=row[14] == b"1",
                prequeue_state=text(row[15] or b""),
                claims=_int(row[16]),
                subscriptions=_int(row[17]),
                door=_int(row[18]),
            )
        return out

    async def revoked(self, campaign: str) -> frozenset[int]:
        async with guarded():
            members = await self.redis.smembers(CampaignKeys(campaign).revoked)
        return frozenset(int(m) for m in members)

    async def stats(self, campaign: str) -> dict[str, Any]:
        k = CampaignKeys(campaign)
        async with guarded():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(k.meta)
            pipe.zcard(k.active)
            pipe.scard(k.blocked)
            pipe.scard(k.revoked)
            meta_raw, active, blocked, revoked = await pipe.execute()
        if not meta_raw:
            raise NotFound(f"no campaign {campaign}", code="unknown_campaign")
        meta = {key.decode(): value.decode() for key, value in meta_raw.items()}
        joined, cursor = int(meta["seq"]), int(meta["cursor"])
        return {
            "state": meta["state"],
            "joined": joined,
            "cursor": cursor,
            "waiting": joined - cursor,
            "admitted": int(meta["admitted"]),
            "active": int(active),
            "expired": int(meta["expired"]),
            "skipped": int(meta["skipped"]),
            "blocked": int(blocked),
            "revoked": int(revoked),
            "audit_entries": int(meta.get("audit_n", 0)),
            "policy": meta.get("policy", "first_come"),
            "unit": meta.get("unit", "item"),
            "total": meta.get("q_total", "0"),
            "held": meta.get("held", "0"),
            "confirmed": meta.get("confirmed", "0"),
            "released": meta.get("released", "0"),
            "expired_amount": meta.get("expired_amount", "0"),
            "remaining": str(
                int(meta.get("q_total", "0"))
                - int(meta.get("held", "0"))
                - int(meta.get("confirmed", "0"))
            ),
            "claims": int(meta.get("claims", 0)),
            "holding": int(meta.get("holding", 0)),
            "confirms": int(meta.get("confirms", 0)),
            "releases": int(meta.get("releases", 0)),
            "reservations_expired": int(meta.get("reservations_expired", 0)),
            "subscriptions": int(meta.get("subscriptions", 0)),
            "subscribed": meta.get("subscribed", "0"),
        }

    async def ticket_seq(self, campaign: str, digest: bytes) -> int | None:
        """The customer's seq, or None while they have none (in the pre-queue, or never)."""
        async with guarded():
            seq = await self.redis.hget(CampaignKeys(campaign).tickets, digest)
        return int(seq) if seq is not None else None

    async def prequeue_progress(self, campaign: str) -> list[Any]:
        """meta's pq_shuffle, pq_state, pq_total and pq_next, as Redis has them."""
        async with guarded():
            row: list[Any] = await self.redis.hmget(
                CampaignKeys(campaign).meta, ["pq_shuffle", "pq_state", "pq_total", "pq_next"]
            )
        return row

    async def prequeue_members(self, campaign: str) -> set[bytes]:
        async with guarded():
            return {
                m async for m in self.redis.sscan_iter(CampaignKeys(campaign).prequeue, count=1000)
            }

    async def prequeue_done(self, campaign: str) -> bool:
        async with guarded():
            state = await self.redis.hget(CampaignKeys(campaign).meta, "pq_state")
        return state == b"done"

    async def subscriptions(self, campaign: str) -> list[Subscription]:
        k = CampaignKeys(campaign)
        out: list[Subscription] = []
        async with guarded():
            async for field, value in self.redis.hscan_iter(k.subscriptions, count=1000):
                record = msgpack.unpackb(value, raw=True)  # amount, digest[, entry, t]
                out.append(Subscription(int(field), record[1], int(record[0])))
        return out

    async def allocation(self, campaign: str, seq: int) -> tuple[int | None, int | None]:
        """A ballot customer's (subscribed, allocated) amounts; None where there is none."""
        k = CampaignKeys(campaign)
        async with guarded():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hget(k.subscriptions, str(seq))
            pipe.hget(k.allocations, str(seq))
            sub, alloc = await pipe.execute()
        subscribed = int(msgpack.unpackb(sub, raw=True)[0]) if sub else None
        return subscribed, int(alloc) if alloc is not None else None

    async def audit_entries(
        self, campaign: str, start: int = 0, stop: int = -1
    ) -> list[dict[str, Any]]:
        """Decoded audit entries (0-based list positions); digests stay raw bytes."""
        async with guarded():
            raw = await self.redis.lrange(CampaignKeys(campaign).audit, start, stop)
        return [decode_entry(item) for item in raw if isinstance(item, bytes)]
