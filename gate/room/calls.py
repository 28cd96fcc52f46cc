"""The script calls of the Room: one method per Lua script, each reply decoded through
the one table (gate.room.replies).

Redis connection failures become `Unavailable` (the gate fails closed); a script that
refuses its arguments, or answers with a code that is not in the table, becomes
`ScriptError`.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
from redis.asyncio import Redis

from gate import seeds
from gate.campaign import CampaignSpec, to_us
from gate.errors import GateError, ScriptError
from gate.marks import Marks
from gate.redis_client import guarded
from gate.redis_nodes import is_cluster
from gate.room.durability import Durability
from gate.room.keys import REGISTRY, REGISTRY_MARK, CampaignKeys
from gate.room.replies import Reply, status_of, text
from gate.room.results import (
    AdmitResult,
    ClaimResult,
    JoinResult,
    PrequeueStep,
    ReservationOutcome,
)
from gate.room.scripts import ScriptArg, Scripts
from gate.seeds import Seeds

log = logging.getLogger("gate.room")


class ScriptCalls:
    # What this process acknowledged, for the failover check (gate/failover.py); the gate
    # sets it on the room its listeners use.
    marks: Marks | None = None

    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 200,
        durability: Durability | None = None,
        seeds: Seeds | None = None,
    ):
        self.redis = redis
        self.scripts = scripts
        # Where the campaigns' seeds come from (gate/seeds.py): never from Redis.
        self.seeds = seeds or Seeds.of_this_process()
        # What an acknowledgement waits for (the gate shares one among its rooms and its
        # sealer, so their counts add up); `wait_replicas`/`wait_timeout_ms` alone make one.
        self.durability = durability or Durability(wait_replicas, wait_timeout_ms)
        self.wait_replicas = self.durability.replicas
        self.wait_timeout_ms = self.durability.timeout_ms
        # Told the campaign's id after each call of this room that may change what this
        # process remembers about it (a pass it issued, a campaign it found missing):
        # gate/pass_cache.py, gate/cache.py. Other processes' changes come with the refresh.
        self.on_change: list[Callable[[str], None]] = []

    def _changed(self, campaign: str) -> None:
        for forget in self.on_change:
            forget(campaign)

    async def _call(
        self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> tuple[Reply, list[Any]]:
        """The script's status and its whole reply."""
        async with guarded():
            reply = await self.scripts.call(self.redis, name, keys, args)
        return status_of(reply), reply

    async def _durable_call(
        self, name: str, keys: Sequence[str], args: Sequence[ScriptArg], *, mark: str | None
    ) -> tuple[Reply, list[Any]]:
        """An acknowledging call: script `name` and the wait for the configured durability
        on ONE connection, [EVALSHA, INCR mark, WAIT] (gate/room/durability.py says why the
        connection must be the same and why the mark: a replay writes nothing itself).
        `mark` is the campaign's mark key, or None for a script whose acknowledged answer
        always writes. With no durability configured: the script alone, no extra work."""
        if not self.durability.active:
            return await self._call(name, keys, args)
        reply = await self.durability.call(self.redis, self.scripts, name, keys, args, mark=mark)
        return status_of(reply), reply

    async def durable(self, campaign: str) -> None:
        """Hold the answer until everything written so far (by any connection, any
        process) is as durable as configured: the campaign's mark and the wait, on one
        connection. For the multi-step flows."""
        await self.durability.mark(self.redis, CampaignKeys(campaign).durable_mark)

    # -- campaigns -------------------------------------------------------------------

    async def create(self, spec: CampaignSpec, actor: str, *, publish_first: bool = False) -> int:
        """Create the campaign. `publish_first`: joins are refused (CAMPAIGN_NOT_PUBLISHED)
        until the checkpoint covering the creation is published (signed by the sealer, or
        cosigned by the witnesses' quorum where witnesses are configured)."""
        k = CampaignKeys(spec.id)
        # Commit-reveal: the seeds' hashes are published now, each seed at its reveal (the
        # pre-queue's at opening, the ballot's at close). The seeds are derived from the
        # signing key file's secret and never stored in Redis (gate/seeds.py).
        kid, nonce = self.seeds.new_ref()
        seed = self.seeds.derive(spec.id, kid, nonce, seeds.BALLOT)
        pq_seed = self.seeds.derive(spec.id, kid, nonce, seeds.PREQUEUE)
        admission, quota = spec.admission, spec.quota
        opens_at = to_us(spec.opens_at)
        fields: dict[str, str | int | bool] = {
            "id": spec.id,
            "actor": actor,
            "spec": spec.dumps(),
            "opens_at_us": opens_at,
            "closes_at_us": to_us(spec.closes_at),
            "prequeue_from_us": opens_at - spec.prequeue.window_s * 1_000_000,
            "pass_ttl_us": admission.pass_ttl_s * 1_000_000,
            "res_ttl_us": admission.reservation_ttl_s * 1_000_000,
            "burst": admission.burst,
            "max_active": admission.max_active,
            "rate": repr(float(admission.rate_per_s)),
            "overbook": repr(float(admission.overbook)),
            "policy": spec.policy,
            "unit": quota.unit,
            "q_total": str(quota.total),
            "q_min": str(quota.min),
            "q_max": str(quota.max),
            "q_step": str(quota.step),
            "partial": quota.partial_fill,
            "seed_kid": kid,
            "seed_nonce": nonce,
            "seed_hash": hashlib.sha256(seed).hexdigest(),
            "pq_shuffle": spec.prequeue.shuffle and spec.prequeue.window_s > 0,
            "pq_seed_hash": hashlib.sha256(pq_seed).hexdigest(),
        }
        if publish_first:
            fields["commit_pending"] = True
        if admission.adaptive is not None:
            fields["mode"] = admission.adaptive.mode
        # Registered first (SADD is idempotent), then created: a create cut short between
        # the two leaves at most a registered id with no campaign, which every reader skips
        # and a retried create completes; never a campaign that no sealer knows of. (In a
        # cluster the registry and the campaign live in two slots: no one script can write
        # both.)
        await self._register(spec.id)
        # An OK answer always wrote (the campaign): no mark needed.
        status, reply = await self._durable_call(
            "campaign_create",
            [k.meta, k.audit, k.failover_gone],
            [msgpack.packb(fields)],
            mark=None,
        )
        self._changed(spec.id)
        status.expect(Reply.OK, campaign=spec.id)
        return int(reply[1])

    async def seed_for(self, campaign: str, purpose: str) -> bytes:
        """The campaign's seed for `purpose` (gate/seeds.py), for its reveal: derived from
        the key file's secret, whatever Redis says. A commitment in Redis that differs from
        the derived seed's is logged (someone with Redis access changed it; the log's
        sealed admin-create entry holds the commitment verify opens) and ignored."""
        async with guarded():
            kid, nonce, committed = await self.redis.hmget(
                CampaignKeys(campaign).meta,
                ["seed_kid", "seed_nonce", seeds.COMMITMENT_FIELD[purpose]],
            )
        if kid is None or nonce is None:
            raise ScriptError(
                f"campaign {campaign} records no seed_kid and seed_nonce: its {purpose} seed "
                "cannot be derived (created by a version that kept seeds in Redis, or changed)"
            )
        seed = self.seeds.derive(campaign, text(kid), text(nonce), purpose)
        if committed is None or hashlib.sha256(seed).hexdigest() != text(committed):
            log.error(
                "campaign=%s the %s seed's commitment in Redis (%s) is not the derived "
                "seed's: Redis was changed; revealing the derived seed, which the sealed "
                "admin-create entry commits to",
                campaign,
                purpose,
                text(committed) if committed is not None else "none",
            )
        return seed

    async def commitment_pending(self, campaign: str) -> bool:
        """True while joins wait for the checkpoint that covers the campaign's creation
        (gate/audit/commitment.py)."""
        async with guarded():
            return bool(await self.redis.hexists(CampaignKeys(campaign).meta, "commit_pending"))

    async def _register(self, campaign: str) -> None:
        async with guarded():
            await self.redis.sadd(REGISTRY, campaign)
        if is_cluster(self.redis):
            # The registry's master is not the campaign's: the campaign's wait would not
            # cover this write. (On one Redis it does: no extra round trip.)
            await self.durability.mark(self.redis, REGISTRY_MARK)

    async def update(
        self, campaign: str, spec: CampaignSpec, fields: dict[str, str], actor: str
    ) -> None:
        k = CampaignKeys(campaign)
        args: list[ScriptArg] = [actor, spec.dumps()]
        for name, value in fields.items():
            args += [name, value]
        status, _ = await self._durable_call("campaign_update", [k.meta, k.audit], args, mark=None)
        self._changed(campaign)  # closes_at may have moved
        status.expect(Reply.OK, campaign=campaign)

    async def controller_update(
        self, campaign: str, *, rate_in_force: str, rate: str, why: str, actor: str
    ) -> bool:
        """The rate controller's change: only while the campaign is in mode auto and its
        rate is still `rate_in_force` (an operator's pin or PATCH in between wins); the
        stored spec stays. False when a condition no longer held (nothing written)."""
        k = CampaignKeys(campaign)
        args: list[ScriptArg] = [actor, "", "rate", rate]
        args += ["if_mode", "auto", "if_rate", rate_in_force, "why", why]
        status, _ = await self._durable_call("campaign_update", [k.meta, k.audit], args, mark=None)
        status.expect(Reply.OK, Reply.REFUSED, campaign=campaign)
        return status is Reply.OK

    async def controller_lease(self, campaign: str, token: str, ttl_ms: int, mode: str) -> bool:
        """Take or renew (mode acquire) or give back (release) the campaign's controller
        lease; True while `token` holds it."""
        status, reply = await self._call(
            "controller_lease", [CampaignKeys(campaign).controller], [token, ttl_ms, mode]
        )
        status.expect(Reply.OK, campaign=campaign)
        return int(reply[1]) == 1

    async def set_state(self, campaign: str, action: str, actor: str) -> str:
        k = CampaignKeys(campaign)
        # No mark: an OK answer always wrote the state, and a mark (a write without the
        # script's allow-oom flag) would turn a pause at maxmemory into a 503.
        status, reply = await self._durable_call(
            "campaign_state", [k.meta, k.audit], [action, actor], mark=None
        )
        state = text(reply[1]) if len(reply) > 1 else ""
        self._changed(campaign)
        status.expect(Reply.OK, campaign=campaign, action=action, state=state)
        return state

    # -- customers -------------------------------------------------------------------

    async def join(
        self,
        campaign: str,
        digests: Sequence[bytes],
        records: Sequence[tuple[int, int, str, str]] = (),
    ) -> JoinResult:
        """Join the digests (one batch). `records`: receipt records of earlier batches,
        (entry index, first seq, kid, sig) each, written by the same call (ReceiptBook's
        record(), without a round trip of its own)."""
        k = CampaignKeys(campaign)
        keys = [
            k.meta,
            k.tickets,
            k.blocked,
            k.audit,
            k.prequeue,
            k.receipt_signatures,
            k.join_entries,
        ]
        carried: list[ScriptArg] = [len(records)]
        for entry, first_seq, kid, sig in records:
            carried += [entry, first_seq, f"{kid}:{sig}"]
        # Every answer waits, a replayed ticket's (created:false) too: it may be one that
        # another call wrote a moment ago and no replica has yet.
        status, reply = await self._durable_call(
            "join", keys, ["", *carried, *digests], mark=k.durable_mark
        )
        if status is Reply.SEED_NEEDED:
            # The first join after opening freezes a shuffled pre-queue and reveals its
            # seed, which Redis does not hold: once per campaign, the call again with it.
            seed = await self.seed_for(campaign, seeds.PREQUEUE)
            status, reply = await self._durable_call(
                "join", keys, [seed.hex(), *carried, *digests], mark=k.durable_mark
            )
        if status is not Reply.OK:
            # the caller answers each customer: the codes are JoinResult.status's
            status.expect(
                Reply.UNKNOWN_CAMPAIGN,
                Reply.CAMPAIGN_CLOSED,
                Reply.NOT_OPEN_YET,
                Reply.CAMPAIGN_NOT_PUBLISHED,
            )
            return JoinResult(int(status.value), int(reply[1]) if len(reply) > 1 else 0, [])
        flat = reply[2:]
        entry = 0
        if len(flat) % 2:  # a batch that created tickets ends with its audit entry's index
            entry = int(flat[-1])
            flat = flat[:-1]
        tickets = [(int(flat[i]), bool(int(flat[i + 1]))) for i in range(0, len(flat), 2)]
        if self.marks is not None:
            self.marks.acknowledged(
                campaign, seq=max((s for s, _ in tickets), default=0), audit_n=entry
            )
        return JoinResult(int(status.value), int(reply[1]), tickets, entry)

    async def prequeue_assign(
        self, campaign: str, position: int, digests: Sequence[bytes] = ()
    ) -> PrequeueStep:
        """Give the digests the seqs after `position` (none: freeze the pre-queue if it is
        time). The step's status is OK, FROZEN or REFUSED, or the code that says why
        nothing applies (UNKNOWN_CAMPAIGN, NOT_OPEN_YET, NO_PREQUEUE)."""
        k = CampaignKeys(campaign)
        keys = [k.meta, k.prequeue, k.tickets, k.blocked, k.revoked, k.audit]
        status, reply = await self._call("prequeue_assign", keys, [position, "", *digests])
        if status is Reply.SEED_NEEDED:  # this call freezes the pre-queue: the seed's reveal
            seed = await self.seed_for(campaign, seeds.PREQUEUE)
            status, reply = await self._call(
                "prequeue_assign", keys, [position, seed.hex(), *digests]
            )
        if status not in (Reply.OK, Reply.FROZEN, Reply.REFUSED):
            status.expect(Reply.UNKNOWN_CAMPAIGN, Reply.NOT_OPEN_YET, Reply.NO_PREQUEUE)
            return PrequeueStep(status, 0, 0, "")
        return PrequeueStep(status, int(reply[1]), int(reply[2]), text(reply[3]))

    async def admit(
        self, campaign: str, *, max_per_call: int = 5000, expire_limit: int = 1000
    ) -> AdmitResult | None:
        k = CampaignKeys(campaign)
        status, reply = await self._call(
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
                k.not_before,
            ],
            [max_per_call, expire_limit],
        )
        if status.expect(Reply.OK, Reply.UNKNOWN_CAMPAIGN) is Reply.UNKNOWN_CAMPAIGN:
            return None
        return AdmitResult(
            int(reply[1]), int(reply[2]), int(reply[3]), int(reply[4]), text(reply[5])
        )

    async def arrive(self, campaign: str, seq: int) -> int | None:
        """A pass's first use at /gate/auth, metered at rate + burst per 1-s window
        (arrive.lua, issue 12): 0 when the customer is in, else the milliseconds to wait;
        None for no such campaign. No durability wait: it grants nothing that a failover
        could lose, a lost arrival is at worst counted again."""
        k = CampaignKeys(campaign)
        status, reply = await self._call("arrive", [k.meta, k.arrived, k.door], [seq])
        if status.expect(Reply.OK, Reply.UNKNOWN_CAMPAIGN) is Reply.UNKNOWN_CAMPAIGN:
            return None
        if int(reply[1]):  # told to come back: pass.lua answers that time as not_before
            self._changed(campaign)
        return int(reply[1])

    async def pass_check(self, campaign: str, seq: int, digest: bytes) -> tuple[str, int]:
        """The pass's state (a Reply value: admitted, waiting, expired, claimed, revoked,
        closed; "unknown" for no such campaign) and its number (deadline, cursor, amount).
        A token whose ticket Redis does not hold (lost in a failover, or another
        customer's seq) raises TICKET_UNKNOWN's error (409 ticket_unknown): no pass."""
        state, value, _ = await self.pass_status(campaign, seq, digest)
        return state, value

    async def pass_status(self, campaign: str, seq: int, digest: bytes) -> tuple[str, int, int]:
        """pass_check's state and number, and for an admitted customer the scheduled
        arrival (not_before, microseconds of Redis time; 0 when it has passed): issue 12."""
        k = CampaignKeys(campaign)
        status, reply = await self._durable_call(
            "pass",
            [
                k.meta,
                k.active,
                k.revoked,
                k.passed,
                k.audit,
                k.holds,
                k.spent,
                k.subscriptions,
                k.tickets,
                k.not_before,
                k.door,
            ],
            [seq, digest],
            mark=k.durable_mark,
        )
        if status.expect(Reply.OK, Reply.UNKNOWN_CAMPAIGN) is Reply.UNKNOWN_CAMPAIGN:
            return "unknown", 0, 0
        state = Reply.of(reply[1]).expect(
            Reply.ADMITTED, Reply.WAITING, Reply.EXPIRED, Reply.CLAIMED, Reply.REVOKED, Reply.CLOSED
        )
        value = int(reply[2]) if len(reply) > 2 else 0
        not_before = int(reply[3]) if state is Reply.ADMITTED and len(reply) > 3 else 0
        if state is Reply.ADMITTED and self.marks is not None and len(reply) > 4:
            self.marks.acknowledged(campaign, audit_n=int(reply[4]))
        return str(state.value), value, not_before

    async def claim(
        self, campaign: str, seq: int, digest: bytes, amount: int, idempotency_key: str
    ) -> ClaimResult:
        k = CampaignKeys(campaign)
        status, reply = await self._durable_call(
            "claim",
            _claim_keys(k),
            # the id's random part keeps ids unique even when a failover sets the
            # reservation counter back (claim.lua)
            [seq, digest, str(amount), idempotency_key, reservation_suffix()],
            mark=k.durable_mark,
        )
        self._changed(campaign)
        return self._claimed(campaign, status, reply)

    async def claim_batch(
        self, campaign: str, claims: Sequence[tuple[int, bytes, int, str]]
    ) -> list[ClaimResult | GateError]:
        """Several claims (seq, digest, amount, idempotency key) in one call
        (claim_batch.lua), each made exactly as `claim` alone would, in this order: its
        result, or the error `claim` would raise. A claim the batch could not make (its run
        raised in Lua, nothing written) is made alone afterwards."""
        k = CampaignKeys(campaign)
        args: list[ScriptArg] = []
        for seq, digest, amount, key in claims:
            args += [seq, digest, str(amount), key, reservation_suffix()]
        status, reply = await self._durable_call(
            "claim_batch", _claim_keys(k), args, mark=k.durable_mark
        )
        self._changed(campaign)
        status.expect(Reply.OK, campaign=campaign)
        items = reply[1:]
        if len(items) != len(claims):
            raise ScriptError(f"claim_batch answered {len(items)} claims of {len(claims)}")
        out: list[ClaimResult | GateError] = []
        for (seq, digest, amount, key), item in zip(claims, items, strict=True):
            try:
                if item:
                    out.append(self._claimed(campaign, status_of(item), item))
                else:
                    out.append(await self.claim(campaign, seq, digest, amount, key))
            except GateError as exc:
                out.append(exc)
        return out

    def _claimed(self, campaign: str, status: Reply, reply: list[Any]) -> ClaimResult:
        """claim.lua's reply, decoded (a refusal as a result; another code raised)."""
        if status.expect(Reply.OK, Reply.REFUSED, campaign=campaign) is Reply.REFUSED:
            return _refused(reply)
        result = ClaimResult(
            True,
            reservation=text(reply[1]),
            amount=int(reply[2]),
            expires_us=int(reply[3]),
            replayed=bool(int(reply[4])),
        )
        if self.marks is not None:
            self.marks.reservation(
                campaign, result.reservation, int(reply[5]) if len(reply) > 5 else 0
            )
        return result

    async def subscribe(self, campaign: str, seq: int, digest: bytes, amount: int) -> ClaimResult:
        k = CampaignKeys(campaign)
        status, reply = await self._durable_call(
            "subscribe",
            [k.meta, k.active, k.revoked, k.subscriptions, k.audit, k.tickets],
            [seq, digest, str(amount)],
            mark=k.durable_mark,
        )
        self._changed(campaign)
        if status.expect(Reply.OK, Reply.REFUSED, campaign=campaign) is Reply.REFUSED:
            return _refused(reply)
        entry, t_us = int(reply[3]), int(reply[4])
        if self.marks is not None and entry:
            self.marks.acknowledged(campaign, audit_n=entry)
        return ClaimResult(
            True, amount=int(reply[1]), replayed=bool(int(reply[2])), entry=entry, t_us=t_us
        )

    async def _finish(
        self, script: str, campaign: str, reservation: str, args: list[ScriptArg]
    ) -> ReservationOutcome:
        k = CampaignKeys(campaign)
        # A repeat (already confirmed) and a refusal (released, expired) wait too: the core
        # system acts on either answer.
        status, reply = await self._durable_call(
            script,
            [k.meta, k.active, k.reservations, k.reservation_expiries, k.holds, k.spent, k.audit],
            [reservation, *args],
            mark=k.durable_mark,
        )
        status.expect(Reply.OK, Reply.REFUSED, campaign=campaign, reservation=reservation)
        outcome = ReservationOutcome(
            status is Reply.OK,
            text(reply[1]),
            int(reply[2]),
            int(reply[3]),
            int(reply[5]) if status is Reply.OK and len(reply) > 5 else None,
        )
        if self.marks is not None and outcome.ok:
            index = int(reply[4]) if len(reply) > 4 else 0
            self.marks.finished(campaign, reservation, script, tuple(map(str, args)), index)
        return outcome

    async def confirm(self, campaign: str, reservation: str, actor: str) -> ReservationOutcome:
        return await self._finish("confirm", campaign, reservation, [actor])

    async def release(
        self, campaign: str, reservation: str, actor: str, reason: str = ""
    ) -> ReservationOutcome:
        return await self._finish("release", campaign, reservation, [actor, reason])

    async def ballot_store(
        self,
        campaign: str,
        index: int,
        last: bool,
        pairs: Sequence[tuple[int, int]],
        seed: bytes = b"",
    ) -> tuple[Reply, str]:
        """Store chunk `index` of a closed ballot's allocation (seq, amount pairs): OK and
        the next chunk, REFUSED and the chunk expected instead ("done" after the last), or
        the code that says why nothing applies (UNKNOWN_CAMPAIGN, NOT_CLOSED, NOT_BALLOT).
        `seed`: the ballot's, revealed with the last chunk (Redis does not hold it)."""
        k = CampaignKeys(campaign)
        args: list[ScriptArg] = [index, "1" if last else "0", seed.hex() if last else ""]
        for seq, amount in pairs:
            args += [seq, str(amount)]
        status, reply = await self._call("ballot_store", [k.meta, k.allocations, k.audit], args)
        status.expect(
            Reply.OK, Reply.REFUSED, Reply.UNKNOWN_CAMPAIGN, Reply.NOT_CLOSED, Reply.NOT_BALLOT
        )
        return status, text(reply[1]) if len(reply) > 1 else ""

    async def block(self, campaign: str, digest: bytes, actor: str, reason: str) -> int:
        k = CampaignKeys(campaign)
        # No mark: an OK answer always wrote (the block, its audit entry).
        status, reply = await self._durable_call(
            "block",
            [k.meta, k.tickets, k.blocked, k.revoked, k.active, k.audit],
            [digest, actor, reason],
            mark=None,
        )
        self._changed(campaign)
        status.expect(Reply.OK, campaign=campaign)
        return int(reply[2])

    async def revoke(self, campaign: str, digest: bytes, actor: str, reason: str) -> int:
        k = CampaignKeys(campaign)
        status, reply = await self._durable_call(
            "revoke",
            [k.meta, k.tickets, k.revoked, k.active, k.audit],
            [digest, actor, reason],
            mark=None,  # an OK answer always wrote
        )
        self._changed(campaign)
        status.expect(Reply.OK, campaign=campaign)
        return int(reply[2])

    async def record_lookup(
        self, campaign: str, actor: str, what: str, digest: bytes, params: str
    ) -> int:
        """An operator's lookup of a customer, as an `admin-query` audit entry (issue 13):
        its index."""
        k = CampaignKeys(campaign)
        status, reply = await self._durable_call(
            "admin_query", [k.meta, k.audit], [actor, what, digest, params], mark=None
        )
        status.expect(Reply.OK, campaign=campaign)
        return int(reply[1])


def _claim_keys(k: CampaignKeys) -> list[str]:
    """claim.lua's KEYS (claim_batch.lua's too)."""
    return [
        k.meta,
        k.active,
        k.revoked,
        k.reservations,
        k.reservation_expiries,
        k.spent,
        k.holds,
        k.idempotency,
        k.audit,
        k.tickets,
    ]


def reservation_suffix() -> str:
    """The random part of a reservation id (8 URL-safe characters, 48 bits): "r17-Kq3v_x8A"."""
    return secrets.token_urlsafe(6)


def _refused(reply: list[Any]) -> ClaimResult:
    """A refused claim or subscription: {REFUSED, reason, detail}."""
    reason = Reply.of(reply[1])
    return ClaimResult(False, str(reason.value), text(reply[2]))
