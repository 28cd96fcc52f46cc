"""A ballot's result, recomputed by an outsider from what Redis holds, equals the stored one.

About 2,000 subscribers ask random valid amounts (demand well above supply) through the
real scripts; the campaign closes; the gate's admission loop (or `Room.finalize_ballot`)
stores the allocation. Then, without gate/room.py, the test reads what an auditor
would read: the subscriptions (HGETALL of the subs hash, msgpack), the seed revealed in
the audit log's `ballot-result` entry and the seed hash committed in the `admin-create`
entry before anyone could subscribe. It checks the commitment (sha256(seed) = h),
recomputes the allocation with `gate.ballot.allocate`, and compares it with the stored
allocations (HGETALL alloc) and with the `allot` audit entries; every amount is a
multiple of step and at most what was asked, and the sum is at most the total.

The checker is shown to be able to fail: another seed gives another allocation and
breaks the commitment, and a tampered stored allocation (sum unchanged) is caught.

Two finalizers racing (two threads, each with its own event loop, Redis connection and
`Room`) store each chunk once: the audit log has each `allot` chunk once and one
`ballot-result`, and alloc_sum equals the sum of the allocations.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from dataclasses import dataclass, replace
from typing import Any

import msgpack
from redis.asyncio import Redis

from gate.ballot import Subscription, allocate
from gate.campaign import parse_spec
from gate.redis_client import connect
from gate.room import Room
from gate.room.scripts import Scripts
from gate.service import Gate
from tests.helpers import amount_quota, spec, wait_for

SUBSCRIBERS = 2000
TOTAL = 3_000_000_000
LOW, HIGH, STEP = 100_000, 10_000_000, 10_000


def ballot_spec(campaign: str) -> dict[str, Any]:
    raw = spec(campaign, rate_per_s=1e6, burst=1_000_000, max_active=1_000_000, pass_ttl_s=3600)
    raw["policy"] = "ballot"
    raw["quota"] = amount_quota(TOTAL, LOW, HIGH, STEP)
    return raw


def customer(campaign: str, i: int) -> bytes:
    return hashlib.blake2b(f"{campaign}/subscriber-{i}".encode(), digest_size=16).digest()


async def subscribe_everyone(room: Room, campaign: str, *, admit_here: bool) -> dict[int, int]:
    """SUBSCRIBERS customers join, are admitted and subscribe a random valid amount."""
    rng = random.Random(campaign)
    digests = [customer(campaign, i) for i in range(SUBSCRIBERS)]
    seqs: list[int] = []
    for start in range(0, SUBSCRIBERS, 500):
        result = await room.join(campaign, digests[start : start + 500])
        seqs += [seq for seq, created in result.tickets if created]
    assert seqs == list(range(1, SUBSCRIBERS + 1))

    async def everyone_admitted() -> bool:
        if admit_here:
            await room.admit(campaign)
        meta = await room.meta(campaign)
        return meta is not None and int(meta["cursor"]) == SUBSCRIBERS

    await wait_for(everyone_admitted, 15, "every subscriber admitted", interval_s=0.02)
    asked = {seq: rng.randrange(LOW, HIGH + 1, STEP) for seq in seqs}
    for start in range(0, SUBSCRIBERS, 200):
        batch = seqs[start : start + 200]
        results = await asyncio.gather(
            *(room.subscribe(campaign, s, digests[s - 1], asked[s]) for s in batch)
        )
        assert all(r.ok and not r.replayed for r in results), results
    return asked


@dataclass(frozen=True)
class Evidence:
    """What an auditor reads from Redis: no gate code, only key names and msgpack."""

    total: int
    step: int
    alloc_sum: int
    subscriptions: list[Subscription]
    committed_hash: list[str]  # `h` of every admin-create entry (one expected)
    results: list[dict[bytes, Any]]  # every ballot-result entry (one expected)
    allot_chunks: list[tuple[int, list[Any]]]  # (n, [seq, amount, ...]) of every allot entry
    stored: dict[int, int]

    @property
    def seed(self) -> bytes:
        return bytes.fromhex(self.results[0][b"seed"].decode())


async def read_evidence(redis: Redis, campaign: str) -> Evidence:
    prefix = f"fg:{{{campaign}}}:"
    meta = await redis.hgetall(prefix + "meta")
    subscriptions = []
    for field, raw in (await redis.hgetall(prefix + "subs")).items():
        amount, digest, *_ = msgpack.unpackb(raw, raw=True)  # [entry, t] follow
        subscriptions.append(Subscription(int(field), digest, int(amount)))
    entries = [
        msgpack.unpackb(raw, raw=True, strict_map_key=False)
        for raw in await redis.lrange(prefix + "audit", 0, -1)
    ]
    stored = {int(s): int(a) for s, a in (await redis.hgetall(prefix + "alloc")).items()}
    return Evidence(
        total=int(meta[b"q_total"]),
        step=int(meta[b"q_step"]),
        alloc_sum=int(meta.get(b"alloc_sum", b"0")),
        subscriptions=sorted(subscriptions, key=lambda s: s.seq),
        committed_hash=[e[b"h"].decode() for e in entries if e[b"k"] == b"admin-create"],
        results=[e for e in entries if e[b"k"] == b"ballot-result"],
        allot_chunks=[(e[b"n"], e[b"s"]) for e in entries if e[b"k"] == b"allot"],
        stored=stored,
    )


def problems(ev: Evidence) -> list[str]:
    """Everything an auditor would complain about; empty when the ballot checks out."""
    found: list[str] = []
    if len(ev.committed_hash) != 1 or len(ev.results) != 1:
        return [f"{len(ev.committed_hash)} admin-create and {len(ev.results)} ballot-result"]
    if hashlib.sha256(ev.seed).hexdigest() != ev.committed_hash[0]:
        found.append("the revealed seed does not match the committed hash")
    recomputed = allocate(ev.total, ev.step, ev.subscriptions, ev.seed)
    if recomputed != ev.stored:
        differ = sorted(
            s for s in recomputed.keys() | ev.stored.keys() if recomputed.get(s) != ev.stored.get(s)
        )
        found.append(f"stored allocation differs from the recomputed one at seqs {differ[:5]}")
    indices = [n for n, _ in ev.allot_chunks]
    if indices != list(range(len(indices))):
        found.append(f"allot chunks out of order or repeated: {indices}")
    logged: dict[int, int] = {}
    for _, pairs in ev.allot_chunks:
        for seq, amount in zip(pairs[::2], pairs[1::2], strict=True):
            if seq in logged:
                found.append(f"seq {seq} allotted twice in the audit log")
            logged[seq] = int(amount)
    if logged != ev.stored:
        found.append("the allot audit entries differ from the stored allocation")
    total_stored = sum(ev.stored.values())
    if total_stored > ev.total:
        found.append(f"allocated {total_stored} > total {ev.total}")
    if not total_stored == ev.alloc_sum == int(ev.results[0][b"m"]):
        found.append(
            f"sums disagree: stored {total_stored}, alloc_sum {ev.alloc_sum}, "
            f"published {ev.results[0][b'm']!r}"
        )
    asked = {s.seq: s.amount for s in ev.subscriptions}
    if ev.stored.keys() != asked.keys():
        found.append("allocations and subscriptions name different seqs")
    for seq, amount in ev.stored.items():
        if amount % ev.step or not 0 <= amount <= asked.get(seq, 0):
            found.append(f"seq {seq}: {amount} is not a multiple of step within {asked.get(seq)}")
    return found


async def test_ballot_recomputed_from_redis_alone(gate: Gate) -> None:
    campaign = "ipo-recompute"
    room = gate.room
    await room.create(parse_spec(ballot_spec(campaign)), "ops")
    asked = await subscribe_everyone(room, campaign, admit_here=False)  # the loop admits
    assert sum(asked.values()) > 2 * TOTAL  # demand well above supply
    await room.set_state(campaign, "close", "ops")

    async def stored() -> bool:
        meta = await room.meta(campaign)
        return meta is not None and meta.get("alloc_next") == "done"

    await wait_for(stored, 15, "the admission loop to store the ballot allocation")

    auditor = Redis.from_url(gate.config.redis_url)
    try:
        evidence = await read_evidence(auditor, campaign)
        assert len(evidence.subscriptions) == SUBSCRIBERS
        assert {s.seq: s.amount for s in evidence.subscriptions} == asked
        assert problems(evidence) == []
        # demand > supply and the total is a whole number of lots: all of it is given out
        assert sum(evidence.stored.values()) == TOTAL
        assert sum(1 for a in evidence.stored.values() if a) > SUBSCRIBERS // 2

        # The check can fail. Another seed: another allocation, and a broken commitment.
        other_seed = hashlib.sha256(b"not the committed seed").digest()
        assert allocate(TOTAL, STEP, evidence.subscriptions, other_seed) != evidence.stored
        forged = replace(
            evidence, results=[{**evidence.results[0], b"seed": other_seed.hex().encode()}]
        )
        complaints = problems(forged)
        assert any("committed hash" in c for c in complaints), complaints
        assert any("differs from the recomputed" in c for c in complaints), complaints

        # A stored allocation tampered with (one lot moved between two winners, sum
        # unchanged): caught against both the recomputation and the audit log.
        winners = [s for s, a in sorted(evidence.stored.items()) if 0 < a < asked[s]]
        giver, taker = winners[0], winners[1]
        key = f"fg:{{{campaign}}}:alloc"
        await auditor.hincrby(key, str(giver), -STEP)
        await auditor.hincrby(key, str(taker), STEP)
        tampered = await read_evidence(auditor, campaign)
        assert sum(tampered.stored.values()) == TOTAL
        complaints = problems(tampered)
        assert any("differs from the recomputed" in c for c in complaints), complaints
        assert any("allot audit entries differ" in c for c in complaints), complaints
    finally:
        await auditor.aclose()


def _finalize_in_own_thread(url: str, campaign: str, start: threading.Barrier) -> bool:
    """A second process, as far as Redis can tell: its own loop, connection and Room."""

    async def finalize() -> bool:
        redis = connect(url, timeout_s=5)
        try:
            room = Room(redis, Scripts())
            await room.meta(campaign)  # connected before the race starts
            start.wait(timeout=10)
            return await room.finalize_ballot(campaign, chunk_size=100)
        finally:
            await redis.aclose()

    return asyncio.run(finalize())


async def test_concurrent_finalizers_store_each_chunk_once(redis_url: str) -> None:
    campaign = "ipo-race"
    redis = connect(redis_url, timeout_s=5)
    try:
        room = Room(redis, Scripts())
        await room.create(parse_spec(ballot_spec(campaign)), "ops")
        await subscribe_everyone(room, campaign, admit_here=True)
        await room.set_state(campaign, "close", "ops")

        start = threading.Barrier(2)
        outcomes = await asyncio.gather(
            asyncio.to_thread(_finalize_in_own_thread, redis_url, campaign, start),
            asyncio.to_thread(_finalize_in_own_thread, redis_url, campaign, start),
        )
        # One of them finished the job; the other either finished it too or stepped
        # aside when it found a chunk already written.
        assert any(outcomes), outcomes
        assert await room.finalize_ballot(campaign, chunk_size=100)  # a latecomer: no-op

        evidence = await read_evidence(redis, campaign)
        assert [n for n, _ in evidence.allot_chunks] == list(range(SUBSCRIBERS // 100))
        assert len(evidence.results) == 1
        assert evidence.alloc_sum == sum(evidence.stored.values()) == TOTAL
        assert problems(evidence) == []
    finally:
        await redis.aclose()
