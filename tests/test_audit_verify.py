"""`gate audit verify` on real logs: a 50,000-customer campaign, a ballot, a pre-queue.

The campaigns are driven through `Room` (the Lua scripts on a real Redis) for speed,
sealed by the real sealer, exported with gate.audit.export and verified offline with
the public keys alone. To make reservations and passes expire without waiting, the
tests rewrite scores in the resexp / active sorted sets to the past and call admit:
the expiry itself is then done, and logged, by admit.lua as in production.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gate.audit.report import VerificationFailed
from gate.audit.verify import verify_file, verify_lines
from gate.campaign import parse_spec
from gate.room import ClaimResult, Room
from gate.room.keys import CampaignKeys
from gate.signing import SigningKeys
from gate.tokens import customer_digest
from tests.helpers import (
    Export,
    amount_quota,
    create_committed,
    export_to_file,
    pack_like_redis,
    seal_everything,
    spec,
    unpack,
    wait_redis_time,
)

MIN, MAX, STEP = 1_000_000, 10_000_000, 10_000


def amount_spec(campaign: str, **overrides: Any) -> dict[str, Any]:
    """Everyone admitted at once: rate, burst and max_active far above any crowd here."""
    raw = spec(
        campaign,
        rate_per_s=1_000_000,
        burst=1_000_000,
        max_active=10_000_000,
        pass_ttl_s=300,
        reservation_ttl_s=120,
        overbook=10,
    )
    raw["quota"] = amount_quota(10_000_000_000, MIN, MAX, STEP, partial_fill=True)
    raw.update(overrides)
    return raw


async def bounded(calls: Sequence[Callable[[], Awaitable[Any]]], limit: int = 64) -> list[Any]:
    """Run the calls concurrently, at most `limit` at a time, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(call) for call in calls))


async def expire_reservations(room: Room, campaign: str, rids: Sequence[str]) -> None:
    """Wait until these held reservations are due by Redis time, and let admit expire
    them (the replay refuses an expiry before the deadline: no rewriting of scores)."""
    await _expire_when_due(room, campaign, CampaignKeys(campaign).reservation_expiries, rids)


async def expire_passes(room: Room, campaign: str, seqs: Sequence[int]) -> None:
    """Wait until these passes are due by Redis time, and let admit expire them."""
    await _expire_when_due(room, campaign, CampaignKeys(campaign).active, [str(s) for s in seqs])


async def _expire_when_due(room: Room, campaign: str, zset: str, members: Sequence[str]) -> None:
    if not members:
        return
    due = [score for score in await room.redis.zmscore(zset, members) if score is not None]
    if due:
        await wait_redis_time(room.redis, int(max(due)))
    while await room.redis.zmscore(zset, members) != [None] * len(members):
        await room.admit(campaign, max_per_call=0)


async def admit_all(room: Room, campaign: str, upto: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        result = await room.admit(campaign, max_per_call=5000)
        assert result is not None
        if result.cursor >= upto:
            return
        assert time.monotonic() < deadline, f"admission stuck at {result.cursor}"


async def seal_and_verify(
    room: Room, keys: SigningKeys, campaign: str, tmp_path: Path, **options: Any
) -> tuple[Path, Any]:
    await seal_everything(room.redis, room.scripts, keys, campaign)
    path = await export_to_file(room.redis, campaign, keys, tmp_path / f"{campaign}.jsonl")
    report = await asyncio.to_thread(
        verify_file,
        path,
        keys.public_keys(),
        keys_from="published",
        require_sealed=True,
        **options,
    )
    return path, report


@pytest.mark.slow
async def test_50k_campaign_exports_and_verifies_clean(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """A campaign with 50,000 joins, admissions, claims, releases and expiries exports
    and verifies clean; the summary agrees with the live counters."""
    started = time.monotonic()
    rng = random.Random(5)
    c = "big"
    raw = amount_spec(c)
    raw["admission"]["reservation_ttl_s"] = 1  # those not confirmed or released expire
    await create_committed(room, keys, parse_spec(raw))
    digests = [customer_digest(keys, c, f"customer-{i}") for i in range(50_000)]
    for i in range(0, len(digests), 500):
        result = await room.join(c, digests[i : i + 500])
        assert all(created for _, created in result.tickets)
    again = await room.join(c, digests[:300])  # retried joins: same tickets, no entry
    assert [seq for seq, _ in again.tickets] == list(range(1, 301))

    # operators: block two customers and revoke one before admission; a rate change
    assert await room.block(c, digests[9], "ops", "fraud ring") == 10
    assert await room.block(c, customer_digest(keys, c, "never-joined"), "ops", "") == 0
    assert await room.revoke(c, digests[19], "ops", "duplicate account") == 20
    parsed = parse_spec(raw)
    await room.update(c, parsed, {"rate": "500000.0", "burst": "1000000"}, "ops")
    await room.set_state(c, "pause", "ops")
    await room.set_state(c, "resume", "ops")
    await seal_everything(room.redis, room.scripts, keys, c)  # checkpoints along the way
    await admit_all(room, c, 45_000)  # up to 45,002 (5,000 a call, 2 revoked skipped)
    # the next 500 get a 1-s pass and let it expire unused (by Redis time)
    await room.update(c, parsed, {"pass_ttl_us": "1000000"}, "ops")
    short = await room.admit(c, max_per_call=500)
    assert short is not None and short.admitted == 500, short
    await room.update(c, parsed, {"pass_ttl_us": "300000000"}, "ops")
    await admit_all(room, c, 50_000)
    await seal_everything(room.redis, room.scripts, keys, c)

    # passes for the first 6,000 (the status poll that logs `pass`)
    states = await bounded(
        [lambda s=s: room.pass_check(c, s, digests[s - 1]) for s in range(1, 6001)]
    )
    assert sum(state == "admitted" for state, _ in states) == 5998  # 10 and 20 revoked

    # claims in rounds: confirm some, release some, let the rest expire
    claimed: list[ClaimResult] = []
    refused: dict[str, int] = {}
    seq = 0
    for _ in range(8):
        seqs = [s for s in range(seq + 1, seq + 501) if s not in (10, 20)]
        seq += 500
        results = await bounded(
            [
                lambda s=s: room.claim(
                    c, s, digests[s - 1], rng.randrange(MIN, MAX + 1, STEP), f"k{s}"
                )
                for s in seqs
            ]
        )
        held: list[str] = []
        for result in results:
            if result.ok:
                claimed.append(result)
                held.append(result.reservation)
            else:
                refused[result.code] = refused.get(result.code, 0) + 1
        rng.shuffle(held)
        confirm, release, rest = held[: len(held) // 2], held[len(held) // 2 :][:100], []
        rest = held[len(confirm) + len(release) :]
        await bounded([lambda r=r: room.confirm(c, r, "core") for r in confirm])
        await bounded([lambda r=r: room.release(c, r, "core", "card declined") for r in release])
        await expire_reservations(room, c, rest)
    assert refused.get("sold_out", 0) > 0, refused  # demand beat supply
    assert any(r.amount % STEP == 0 and r.amount < MAX for r in claimed)

    # some passes expire unused, one customer is revoked after admission, then close
    await expire_passes(room, c, range(short.cursor - 499, short.cursor + 1))
    assert await room.revoke(c, digests[45_999], "ops", "chargeback") == 46_000
    await room.set_state(c, "close", "ops")
    stats = await room.stats(c)

    _, report = await seal_and_verify(room, keys, c, tmp_path)
    assert report.entries == stats["audit_entries"]
    assert report.customers == 50_000
    assert report.admitted == stats["admitted"] == 49_998
    assert report.skipped == 2
    assert report.passes == 5998
    assert report.claims == len(claimed) == stats["claims"]
    assert report.confirmed == int(stats["confirmed"]) > 0
    assert report.released == int(stats["released"]) > 0
    assert report.expired_amount == int(stats["expired_amount"]) > 0
    assert report.held == int(stats["held"]) == 0
    assert report.confirms == stats["confirms"] and report.releases == stats["releases"]
    assert report.reservations_expired == stats["reservations_expired"]
    assert report.expired_passes == 500
    assert report.state == "closed"
    # the commitment's (entry 1, before anyone joined) and three of the campaign's
    assert report.checkpoints == 4 and report.consistency_proofs == 3
    assert report.commitment_checkpoint == 1
    assert report.sealed == report.entries
    print("\n".join(report.lines()))
    text = "\n".join(report.lines())
    assert "never oversold" in text and "50000 tickets" in text
    elapsed = time.monotonic() - started
    print(
        f"50k campaign: {report.entries} entries, {report.checkpoints} checkpoints, "
        f"{elapsed:.1f}s in all"
    )
    assert elapsed < 90


async def test_ballot_recomputed_and_seed_checked(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """A ballot verifies: the allotments are recomputed from the subscriptions and the
    revealed seed, whose SHA-256 is the commitment of admin-create."""
    c = "lottery"
    raw = amount_spec(c, policy="ballot")
    raw["quota"]["total"] = 50_000_000
    await create_committed(room, keys, parse_spec(raw))
    digests = [customer_digest(keys, c, f"b{i}") for i in range(40)]
    await room.join(c, digests)
    await admit_all(room, c, 40)
    rng = random.Random(9)
    for s in range(1, 41):
        assert (await room.pass_check(c, s, digests[s - 1]))[0] == "admitted"  # the pass
        result = await room.subscribe(c, s, digests[s - 1], rng.randrange(MIN, MAX + 1, STEP))
        assert result.ok, result
    await room.set_state(c, "close", "ops")
    assert await room.finalize_ballot(c, chunk_size=7)
    path, report = await seal_and_verify(room, keys, c, tmp_path)
    assert report.subscriptions == 40 and report.seed_revealed
    assert report.allocated == 50_000_000
    assert report.kinds["allot"] == 6

    # moving one lot between two customers (the sum unchanged), or revealing another seed,
    # is caught: at the entry, inside the range its checkpoint no longer matches
    clean = Export.parse(await asyncio.to_thread(path.read_text))
    kinds = [clean.kind(p) for p in range(len(clean.entries))]
    allot = kinds.index(b"allot")
    result = kinds.index(b"ballot-result")

    def move_a_lot(entry: dict[bytes, Any]) -> None:
        pairs = entry[b"s"]
        pairs[1] = str(int(pairs[1]) + STEP).encode()
        pairs[3] = str(int(pairs[3]) - STEP).encode()

    def another_seed(entry: dict[bytes, Any]) -> None:
        entry[b"seed"] = b"00" * 32

    for position, change in ((allot, move_a_lot), (result, another_seed)):
        export = Export.parse(await asyncio.to_thread(path.read_text))
        entry = unpack(export.raw(position))
        change(entry)
        export.set_raw(position, pack_like_redis(entry))
        with pytest.raises(VerificationFailed) as failed:
            verify_lines(export.lines(), keys.public_keys())
        failure = failed.value.failure
        assert failure.entries is not None, failure.describe()
        assert failure.entries[0] <= position + 1 <= failure.entries[1]
        assert failure.index == result + 1, failure.describe()  # where the replay fails


async def test_prequeue_shuffle_reproducible(room: Room, keys: SigningKeys, tmp_path: Path) -> None:
    """Joins before opening are shuffled at opening; verify recomputes the order from
    the revealed seed (and its commitment) and admission waits for it."""
    c = "early"
    now = datetime.now(UTC)
    raw = amount_spec(
        c,
        opens_at=(now + timedelta(seconds=2)).isoformat(),
        prequeue={"window_s": 600, "shuffle": True},
    )
    await create_committed(room, keys, parse_spec(raw))
    digests = [customer_digest(keys, c, f"p{i}") for i in range(300)]
    for i in range(0, 250, 50):
        result = await room.join(c, digests[i : i + 50])
        assert all(seq == -1 for seq, _ in result.tickets)
    await room.block(c, digests[7], "ops", "blocked while waiting")

    async def opened() -> bool:
        return await room.assign_prequeue(c, chunk_size=60)

    deadline = time.monotonic() + 10
    while not await opened():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await room.join(c, digests[250:])
    await admit_all(room, c, 300)
    _, report = await seal_and_verify(room, keys, c, tmp_path)
    assert report.prequeue == 250 and report.customers == 300
    assert report.kinds["prequeue"] == 5 and report.skipped == 1


async def test_verify_names_a_real_rule_break(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """An invariant broken inside an authentic (signed) log is reported as such: here a
    claim entry written straight into Redis for a customer who was never admitted."""
    import msgpack

    c = "forged"
    await create_committed(room, keys, parse_spec(amount_spec(c)))
    digests = [customer_digest(keys, c, f"f{i}") for i in range(3)]
    await room.join(c, digests)
    k = CampaignKeys(c)
    index = await room.redis.hincrby(k.meta, "audit_n", 1)
    forged = {
        "k": "claim",
        "s": 2,
        "c": digests[1],
        "r": "r1",
        "m": "1000000",
        "q": "1000000",
        "e": 1,
        "i": index,
        "t": time.time_ns() // 1000,
    }
    await room.redis.rpush(k.audit, msgpack.packb(forged))
    with pytest.raises(VerificationFailed) as failed:
        await seal_and_verify(room, keys, c, tmp_path)
    failure = failed.value.failure
    assert failure.index == index and failure.checkpoint is None
    assert "not admitted" in failure.message, failure.describe()
