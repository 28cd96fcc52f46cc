"""The Python face of the Lua scripts: one method per atomic operation, plus reads.

Redis connection failures become `Unavailable` (the gate fails closed); a script that
refuses its arguments becomes `ScriptError`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.asyncio import Redis

from gate.ballot import Subscription, allocate
from gate.campaign import CampaignSpec, to_us
from gate.errors import Conflict, NotFound, ScriptError, Unavailable
from gate.prequeue import prequeue_order
from gate.redis_client import guarded
from gate.room import keys as keynames
from gate.room.keys import CampaignKeys
from gate.room.scripts import ScriptArg, Scripts

JOIN_OK, JOIN_UNKNOWN, JOIN_CLOSED, JOIN_NOT_OPEN = 1, -1, -2, -3
# A ticket's seq in JoinResult when the customer is in a shuffled pre-queue: their seq
# (in 1..P) comes when the pre-queue is shuffled at opening (Room.assign_prequeue).
PREQUEUED = -1


@dataclass(frozen=True)
class JoinResult:
    status: int
    now_us: int
    tickets: list[tuple[int, bool]]  # (seq, created); seq 0 = blocked, PREQUEUED (-1)
    entry: int = 0  # index of the batch's `join` audit entry (0 when nobody was created)


@dataclass(frozen=True)
class AdmitResult:
    admitted: int
    cursor: int
    active: int
    expired: int
    state: str


@dataclass(frozen=True)
class ClaimResult:
    """A reservation, or a refusal with its code (sold_out, over_customer_limit, ...)."""

    ok: bool
    code: str = ""
    detail: str = ""
    reservation: str = ""
    amount: int = 0
    expires_us: int = 0
    replayed: bool = False


@dataclass(frozen=True)
class ReservationOutcome:
    ok: bool
    state: str
    seq: int
    amount: int


@dataclass(frozen=True)
class CampaignState:
    """What every process caches about a campaign, refreshed every few ms."""

    state: str
    seq: int
    cursor: int
    rev: int
    opens_at_us: int
    closes_at_us: int
    prequeue_from_us: int
    rate: float
    admitted: int
    policy: str = "first_come"
    remaining: int = 1  # quota neither held nor confirmed
    minimum: int = 1
    prequeue_shuffle: bool = False  # joins before opening are shuffled at opening
    prequeue_state: str = ""  # "" collecting, "assigning" (frozen), "done"

    @property
    def prequeue_pending(self) -> bool:
        """The pre-queue's seqs are not all given out yet (admission waits for them)."""
        return self.prequeue_shuffle and self.prequeue_state != "done"

    @property
    def soldout(self) -> bool:
        """Nobody more can be served: what is left is below the per-customer minimum."""
        return self.policy == "first_come" and self.remaining < self.minimum


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
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int(value: bytes | None) -> int:
    return int(value) if value is not None else 0


class Room:
    def __init__(
        self, redis: Redis, scripts: Scripts, *, wait_replicas: int = 0, wait_timeout_ms: int = 200
    ):
        self.redis = redis
        self.scripts = scripts
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms

    async def _call(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        async with guarded():
            return await self.scripts.call(self.redis, name, keys, args)

    async def durable(self) -> None:
        """With `appendfsync everysec`, hold the answer until replicas have the write."""
        if self.wait_replicas <= 0:
            return
        async with guarded():
            acked = await self.redis.wait(self.wait_replicas, self.wait_timeout_ms)
        if int(acked) < self.wait_replicas:
            raise Unavailable("not enough replicas acknowledged the write; retry")

    # -- campaigns -------------------------------------------------------------------

    async def create(self, spec: CampaignSpec, actor: str) -> int:
        k = CampaignKeys(spec.id)
        prequeue_from = to_us(spec.opens_at) - spec.prequeue.window_s * 1_000_000
        # Commit-reveal: the seed's hash is published now, the seed itself at close.
        seed = secrets.token_bytes(32)
        # The pre-queue's own seed, revealed at opening; the ballot's stays secret until close.
        pq_seed = secrets.token_bytes(32)
        quota = spec.quota
        reply = await self._call(
            "campaign_create",
            [k.meta, k.audit],
            [
                spec.id,
                spec.dumps(),
                to_us(spec.opens_at),
                to_us(spec.closes_at),
                prequeue_from,
                repr(float(spec.admission.rate_per_s)),
                spec.admission.burst,
                spec.admission.max_active,
                spec.admission.pass_ttl_s * 1_000_000,
                actor,
                spec.policy,
                quota.unit,
                str(quota.total),
                str(quota.min),
                str(quota.max),
                str(quota.step),
                "1" if quota.partial_fill else "0",
                spec.admission.reservation_ttl_s * 1_000_000,
                seed.hex(),
                hashlib.sha256(seed).hexdigest(),
                repr(float(spec.admission.overbook)),
                "1" if spec.prequeue.shuffle and spec.prequeue.window_s > 0 else "0",
                pq_seed.hex(),
                hashlib.sha256(pq_seed).hexdigest(),
            ],
        )
        if int(reply[0]) == 0:
            raise Conflict(f"campaign {spec.id} already exists", code="campaign_exists")
        async with guarded():
            await self.redis.sadd(keynames.REGISTRY, spec.id)
        await self.durable()
        return int(reply[1])

    async def update(
        self, campaign: str, spec: CampaignSpec, fields: dict[str, str], actor: str
    ) -> None:
        k = CampaignKeys(campaign)
        args: list[ScriptArg] = [actor, spec.dumps()]
        for name, value in fields.items():
            args += [name, value]
        reply = await self._call("campaign_update", [k.meta, k.audit], args)
        self._check_exists(campaign, reply)
        if int(reply[0]) == 0:
            raise Conflict(f"campaign {campaign} is closed", code="campaign_closed")
        await self.durable()

    async def set_state(self, campaign: str, action: str, actor: str) -> str:
        k = CampaignKeys(campaign)
        reply = await self._call("campaign_state", [k.meta, k.audit], [action, actor])
        self._check_exists(campaign, reply)
        state = reply[1].decode()
        if int(reply[0]) == 0:
            raise Conflict(f"cannot {action} campaign {campaign}: it is {state}", code="bad_state")
        await self.durable()
        return str(state)

    @staticmethod
    def _check_exists(campaign: str, reply: Any) -> None:
        if int(reply[0]) == -1:
            raise NotFound(f"no campaign {campaign}", code="unknown_campaign")

    async def list_ids(self) -> list[str]:
        async with guarded():
            members = await self.redis.smembers(keynames.REGISTRY)
        return sorted(_text(m) for m in members)

    async def meta(self, campaign: str) -> dict[str, str] | None:
        async with guarded():
            raw = await self.redis.hgetall(CampaignKeys(campaign).meta)
        if not raw:
            return None
        return {_text(k): _text(v) for k, v in raw.items()}

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
                policy=_text(row[9] or b"first_come"),
                remaining=_int(row[10]) - _int(row[12]) - _int(row[13]),
                minimum=_int(row[11]),
                prequeue_shuffle=row[14] == b"1",
                prequeue_state=_text(row[15] or b""),
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

    # -- customers -------------------------------------------------------------------

    async def join(self, campaign: str, digests: Sequence[bytes]) -> JoinResult:
        k = CampaignKeys(campaign)
        reply = await self._call(
            "join", [k.meta, k.tickets, k.blocked, k.audit, k.prequeue], digests
        )
        status = int(reply[0])
        if status != JOIN_OK:
            return JoinResult(status, int(reply[1]) if len(reply) > 1 else 0, [])
        flat = reply[2:]
        entry = 0
        if len(flat) % 2:  # a batch that created tickets ends with its audit entry's index
            entry = int(flat[-1])
            flat = flat[:-1]
        tickets = [(int(flat[i]), bool(int(flat[i + 1]))) for i in range(0, len(flat), 2)]
        if any(created for _, created in tickets):
            await self.durable()
        return JoinResult(status, int(reply[1]), tickets, entry)

    async def ticket_seq(self, campaign: str, digest: bytes) -> int | None:
        """The customer's seq, or None while they have none (in the pre-queue, or never)."""
        async with guarded():
            seq = await self.redis.hget(CampaignKeys(campaign).tickets, digest)
        return int(seq) if seq is not None else None

    async def assign_prequeue(self, campaign: str, chunk_size: int = 1000) -> bool:
        """Shuffle an opened campaign's pre-queue into seqs 1..P; True once all are given.

        The order is SHA-256(seed || digest) ascending (gate.prequeue), computed here and
        written a chunk per script call; the script's fencing on the position lets any
        number of processes run this at once without a seq given twice. False while the
        campaign is not open yet (by Redis time).
        """
        k = CampaignKeys(campaign)
        keys = [k.meta, k.prequeue, k.tickets, k.blocked, k.revoked, k.audit]
        async with guarded():
            row: list[Any] = await self.redis.hmget(
                k.meta, ["pq_shuffle", "pq_state", "pq_total", "pq_next", "pq_seed"]
            )
        shuffle, state, total, done, seed_hex = row
        if shuffle != b"1" or state == b"done":
            return True
        if state is None:
            reply = await self._call("prequeue_assign", keys, [0])
            if int(reply[0]) < 0:
                return int(reply[0]) == -4
            done, total, state = reply[1], reply[2], reply[3]
            if _text(state) == "done":
                await self.durable()
                return True
        position, size = int(done), int(total)
        async with guarded():
            members = {m async for m in self.redis.sscan_iter(k.prequeue, count=1000)}
        if len(members) != size:
            # the last chunk (another process's) dropped the set meanwhile
            return await self._prequeue_done(campaign)
        order = prequeue_order(bytes.fromhex(_text(seed_hex)), members)
        while position < size:
            chunk = order[position : position + chunk_size]
            reply = await self._call("prequeue_assign", keys, [position, *chunk])
            code, position, state = int(reply[0]), int(reply[1]), _text(reply[3])
            if code not in (0, 1):
                raise ScriptError(f"prequeue_assign answered {reply!r}")
            if state == "done":
                break
        await self.durable()
        return await self._prequeue_done(campaign)

    async def _prequeue_done(self, campaign: str) -> bool:
        async with guarded():
            state = await self.redis.hget(CampaignKeys(campaign).meta, "pq_state")
        return state == b"done"

    async def admit(
        self, campaign: str, *, max_per_call: int = 5000, expire_limit: int = 1000
    ) -> AdmitResult | None:
        k = CampaignKeys(campaign)
        reply = await self._call(
            "admit",
            [
                k.meta,
                k.active,
                k.revoked,
                k.audit,
                k.reservations,
                k.reservation_expiries,
                k.holds,
                k.spent,
            ],
            [max_per_call, expire_limit],
        )
        if int(reply[0]) == -1:
            return None
        return AdmitResult(
            int(reply[0]), int(reply[1]), int(reply[2]), int(reply[3]), reply[4].decode()
        )

    async def pass_check(self, campaign: str, seq: int, digest: bytes) -> tuple[str, int]:
        k = CampaignKeys(campaign)
        reply = await self._call(
            "pass",
            [k.meta, k.active, k.revoked, k.passed, k.audit, k.holds, k.spent, k.subscriptions],
            [seq, digest],
        )
        state = reply[0].decode()
        value = int(reply[1]) if len(reply) > 1 else 0
        if state == "admitted":
            await self.durable()
        return state, value

    async def claim(
        self, campaign: str, seq: int, digest: bytes, amount: int, idempotency_key: str
    ) -> ClaimResult:
        k = CampaignKeys(campaign)
        reply = await self._call(
            "claim",
            [
                k.meta,
                k.active,
                k.revoked,
                k.reservations,
                k.reservation_expiries,
                k.spent,
                k.holds,
                k.idempotency,
                k.audit,
            ],
            [seq, digest, str(amount), idempotency_key],
        )
        self._check_exists(campaign, reply)
        if int(reply[0]) == 0:
            return ClaimResult(False, _text(reply[1]), _text(reply[2]))
        result = ClaimResult(
            True,
            reservation=_text(reply[1]),
            amount=int(reply[2]),
            expires_us=int(reply[3]),
            replayed=bool(int(reply[4])),
        )
        await self.durable()
        return result

    async def subscribe(self, campaign: str, seq: int, digest: bytes, amount: int) -> ClaimResult:
        k = CampaignKeys(campaign)
        reply = await self._call(
            "subscribe",
            [k.meta, k.active, k.revoked, k.subscriptions, k.audit],
            [seq, digest, str(amount)],
        )
        self._check_exists(campaign, reply)
        if int(reply[0]) == 0:
            return ClaimResult(False, _text(reply[1]), _text(reply[2]))
        await self.durable()
        return ClaimResult(True, amount=int(reply[1]), replayed=bool(int(reply[2])))

    async def _finish(
        self, script: str, campaign: str, reservation: str, args: list[ScriptArg]
    ) -> ReservationOutcome:
        k = CampaignKeys(campaign)
        reply = await self._call(
            script,
            [k.meta, k.active, k.reservations, k.reservation_expiries, k.holds, k.spent, k.audit],
            [reservation, *args],
        )
        self._check_exists(campaign, reply)
        if int(reply[0]) == -2:
            raise NotFound(f"no reservation {reservation}", code="unknown_reservation")
        outcome = ReservationOutcome(
            bool(int(reply[0])), _text(reply[1]), int(reply[2]), int(reply[3])
        )
        await self.durable()
        return outcome

    async def confirm(self, campaign: str, reservation: str, actor: str) -> ReservationOutcome:
        return await self._finish("confirm", campaign, reservation, [actor])

    async def release(
        self, campaign: str, reservation: str, actor: str, reason: str = ""
    ) -> ReservationOutcome:
        return await self._finish("release", campaign, reservation, [actor, reason])

    async def subscriptions(self, campaign: str) -> list[Subscription]:
        k = CampaignKeys(campaign)
        out: list[Subscription] = []
        async with guarded():
            async for field, value in self.redis.hscan_iter(k.subscriptions, count=1000):
                amount, digest = msgpack.unpackb(value, raw=True)
                out.append(Subscription(int(field), digest, int(amount)))
        return out

    async def finalize_ballot(self, campaign: str, chunk_size: int = 1000) -> bool:
        """Compute and store a closed ballot's allocation; True once it is stored.

        Deterministic from the subscriptions and the committed seed, so any process may
        do it; the script's chunk fencing keeps a chunk from being written twice.
        """
        meta = await self.meta(campaign)
        if meta is None or meta.get("policy") != "ballot" or meta["state"] != "closed":
            return False
        if meta.get("alloc_next") == "done":
            return True
        subs = await self.subscriptions(campaign)
        result = allocate(
            int(meta["q_total"]), int(meta["q_step"]), subs, bytes.fromhex(meta["seed"])
        )
        items = sorted(result.items())
        chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)] or [[]]
        k = CampaignKeys(campaign)
        start = int(meta.get("alloc_next") or 0)
        for index in range(start, len(chunks)):
            args: list[ScriptArg] = [index, "1" if index == len(chunks) - 1 else "0"]
            for seq, amount in chunks[index]:
                args += [seq, str(amount)]
            reply = await self._call("ballot_store", [k.meta, k.allocations, k.audit], args)
            if int(reply[0]) != 1:
                return _text(reply[1]) == "done" if len(reply) > 1 else False
        await self.durable()
        return True

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

    async def block(self, campaign: str, digest: bytes, actor: str, reason: str) -> int:
        k = CampaignKeys(campaign)
        reply = await self._call(
            "block",
            [k.meta, k.tickets, k.blocked, k.revoked, k.active, k.audit],
            [digest, actor, reason],
        )
        self._check_exists(campaign, reply)
        await self.durable()
        return int(reply[1])

    async def revoke(self, campaign: str, digest: bytes, actor: str, reason: str) -> int:
        k = CampaignKeys(campaign)
        reply = await self._call(
            "revoke", [k.meta, k.tickets, k.revoked, k.active, k.audit], [digest, actor, reason]
        )
        self._check_exists(campaign, reply)
        if int(reply[1]) == 0:
            raise NotFound("that customer has no ticket in this campaign", code="no_ticket")
        await self.durable()
        return int(reply[1])

    async def audit_entries(
        self, campaign: str, start: int = 0, stop: int = -1
    ) -> list[dict[str, Any]]:
        """Decoded audit entries (0-based list positions); digests stay raw bytes."""
        async with guarded():
            raw = await self.redis.lrange(CampaignKeys(campaign).audit, start, stop)
        return [decode_entry(item) for item in raw if isinstance(item, bytes)]


def decode_entry(item: bytes) -> dict[str, Any]:
    entry = msgpack.unpackb(item, raw=True, strict_map_key=False)
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}
