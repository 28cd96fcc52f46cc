"""The Lua scripts, called through `Room`, against real Redis 7.x and 6.2.

Each test flushes its server, drives the scripts directly (no HTTP, no background
admitter), and checks exact outcomes in Redis and in the audit log. Time-dependent
checks use Redis time as recorded in the audit entries ("t"), never the test's clock.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gate.campaign import CampaignSpec, parse_patch, parse_spec
from gate.errors import Conflict, GateError, NotFound, ScriptError
from gate.room import JOIN_CLOSED, JOIN_NOT_OPEN, JOIN_OK, JOIN_UNKNOWN, Room
from gate.room.keys import CampaignKeys
from tests.helpers import customer_digest, of_kind, spec, wait_for

ACTOR = "ops"
BIG = 1_000_000  # a burst or rate so large that tokens never bind


@pytest.fixture
def room(any_room: Room) -> Room:
    return any_room


digest = customer_digest


async def create(
    room: Room,
    campaign: str,
    *,
    opens_in_s: float = -10.0,
    closes_in_s: float = 3600.0,
    window_s: int = 0,
    **admission: Any,
) -> CampaignSpec:
    raw = spec(campaign, **admission)
    now = datetime.now(UTC)
    raw["opens_at"] = (now + timedelta(seconds=opens_in_s)).isoformat()
    raw["closes_at"] = (now + timedelta(seconds=closes_in_s)).isoformat()
    raw["prequeue"] = {"window_s": window_s, "shuffle": False}
    parsed = parse_spec(raw)
    await room.create(parsed, ACTOR)
    return parsed


async def audit(room: Room, campaign: str) -> list[dict[str, Any]]:
    """The decoded log, after checking it is gap-free (i = 1..n) and time-ordered."""
    entries = await room.audit_entries(campaign)
    assert [e["i"] for e in entries] == list(range(1, len(entries) + 1))
    meta = await room.meta(campaign)
    assert meta is not None and int(meta.get("audit_n", 0)) == len(entries)
    times = [e["t"] for e in entries]
    assert times == sorted(times)
    return entries


async def meta(room: Room, campaign: str) -> dict[str, str]:
    found = await room.meta(campaign)
    assert found is not None
    return found


async def active_set(room: Room, campaign: str) -> set[int]:
    return {int(m) for m in await room.redis.zrange(CampaignKeys(campaign).active, 0, -1)}


async def wait_redis_time(room: Room, at_least_us: int) -> None:
    """Wait until Redis's clock passes `at_least_us` (so a bucket has refilled)."""

    async def passed() -> bool:
        seconds, micros = await room.redis.time()
        return seconds * 1_000_000 + micros >= at_least_us

    await wait_for(passed, 5, "Redis time to advance", interval_s=0.002)


async def full_bucket(room: Room, campaign: str, entries: list[dict[str, Any]]) -> None:
    """With rate 1e6/s, 5 ms after creation the bucket is at its burst."""
    await wait_redis_time(room, of_kind(entries, "admin-create")[0]["t"] + 5_000)


async def writes_snapshot(room: Room, campaign: str) -> tuple[dict[Any, Any], int, int]:
    k = CampaignKeys(campaign)
    return (
        await room.redis.hgetall(k.meta),
        await room.redis.llen(k.audit),
        await room.redis.hlen(k.tickets),
    )


# -- join ----------------------------------------------------------------------------


async def test_join_batch_gets_gap_free_seqs_and_retries_are_idempotent(room: Room) -> None:
    await create(room, "j1")
    digests = [digest(i) for i in range(50)]
    first = await room.join("j1", digests)
    assert first.status == JOIN_OK and first.now_us > 0
    assert first.tickets == [(i + 1, True) for i in range(50)]

    again = await room.join("j1", digests)
    assert again.tickets == [(i + 1, False) for i in range(50)]

    # duplicates inside one batch: the first occurrence creates, the others find it
    mixed = [digest(100), digest(3), digest(100), digest(101), digest(101), digest(3)]
    result = await room.join("j1", mixed)
    assert result.tickets == [
        (51, True),
        (4, False),
        (51, False),
        (52, True),
        (52, False),
        (4, False),
    ]

    m = await meta(room, "j1")
    assert int(m["seq"]) == 52
    assert await room.redis.hlen(CampaignKeys("j1").tickets) == 52
    entries = await audit(room, "j1")
    joins = of_kind(entries, "join")
    # one entry per batch that created tickets; the retry batch wrote nothing
    assert len(joins) == 2
    assert joins[0]["s"] == [x for i, d in enumerate(digests) for x in (i + 1, d)]
    assert joins[1]["s"] == [51, digest(100), 52, digest(101)]


async def test_concurrent_overlapping_joins_give_one_ticket_per_digest(room: Room) -> None:
    await create(room, "j2")
    pool = [digest(i) for i in range(200)]

    async def customer_stream(worker: int) -> list[tuple[bytes, int, bool]]:
        rng = random.Random(worker)
        picks = rng.sample(pool, 60) + rng.choices(pool, k=20)  # overlaps and repeats
        rng.shuffle(picks)
        seen: list[tuple[bytes, int, bool]] = []
        while picks:
            size = rng.randint(1, 15)
            batch, picks = picks[:size], picks[size:]
            result = await room.join("j2", batch)
            assert result.status == JOIN_OK
            seen += [
                (d, seq, created) for d, (seq, created) in zip(batch, result.tickets, strict=True)
            ]
        return seen

    results = await asyncio.gather(*(customer_stream(w) for w in range(20)))
    observed = [row for rows in results for row in rows]
    seq_of: dict[bytes, set[int]] = {}
    created = Counter[bytes]()
    for d, seq, was_created in observed:
        seq_of.setdefault(d, set()).add(seq)
        created[d] += was_created
    distinct = len(seq_of)
    assert distinct > 150  # the streams really overlapped a large pool
    assert all(len(seqs) == 1 for seqs in seq_of.values())
    assert all(created[d] == 1 for d in seq_of)
    assert sorted(next(iter(s)) for s in seq_of.values()) == list(range(1, distinct + 1))

    k = CampaignKeys("j2")
    stored = {d: int(s) for d, s in (await room.redis.hgetall(k.tickets)).items()}
    assert stored == {d: next(iter(s)) for d, s in seq_of.items()}
    assert int((await meta(room, "j2"))["seq"]) == distinct
    logged: dict[int, bytes] = {}
    for entry in of_kind(await audit(room, "j2"), "join"):
        pairs = entry["s"]
        for i in range(0, len(pairs), 2):
            assert pairs[i] not in logged
            logged[pairs[i]] = pairs[i + 1]
    assert logged == {seq: d for d, seq in stored.items()}


async def test_bad_digest_length_raises_and_writes_nothing(room: Room) -> None:
    await create(room, "j3")
    await room.join("j3", [digest(0)])
    before = await writes_snapshot(room, "j3")
    for batch in ([digest(1), b"short"], [b"x" * 17], [digest(1), digest(2) * 2], [b""]):
        with pytest.raises(ScriptError):
            await room.join("j3", batch)
        assert await writes_snapshot(room, "j3") == before
    assert int((await meta(room, "j3"))["seq"]) == 1
    assert await room.redis.hget(CampaignKeys("j3").tickets, digest(1)) is None
    await audit(room, "j3")


async def test_join_refusals_closed_not_open_unknown_blocked(room: Room) -> None:
    assert (await room.join("nope", [digest(0)])).status == JOIN_UNKNOWN

    await create(room, "closed-by-operator")
    await room.set_state("closed-by-operator", "close", ACTOR)
    refused = await room.join("closed-by-operator", [digest(0)])
    assert refused.status == JOIN_CLOSED and refused.now_us > 0 and refused.tickets == []

    await create(room, "closed-by-time", opens_in_s=-7200, closes_in_s=-1)
    assert (await room.join("closed-by-time", [digest(0)])).status == JOIN_CLOSED

    await create(room, "later", opens_in_s=3600, closes_in_s=7200, window_s=600)
    early = await room.join("later", [digest(0)])
    assert early.status == JOIN_NOT_OPEN and early.tickets == []
    # and an admit before opening admits no one
    admit = await room.admit("later")
    assert admit is not None and admit.admitted == 0 and admit.state == "open"

    await create(room, "prequeue", opens_in_s=300, window_s=600)
    inside = await room.join("prequeue", [digest(0)])
    assert inside.status == JOIN_OK and inside.tickets == [(1, True)]

    for campaign in ("closed-by-operator", "closed-by-time", "later"):
        m = await meta(room, campaign)
        assert m["seq"] == "0"
        assert await room.redis.hlen(CampaignKeys(campaign).tickets) == 0
        assert of_kind(await audit(room, campaign), "join") == []

    await create(room, "blk")
    assert await room.block("blk", digest(7), ACTOR, "fraud") == 0  # no ticket yet
    result = await room.join("blk", [digest(1), digest(7), digest(2)])
    assert result.tickets == [(1, True), (0, False), (2, True)]
    assert await room.redis.hget(CampaignKeys("blk").tickets, digest(7)) is None
    # blocked after joining: refused too, and the seq is revoked (never admitted)
    assert await room.block("blk", digest(1), ACTOR, "") == 1
    assert (await room.join("blk", [digest(1), digest(2)])).tickets == [(0, False), (2, False)]
    assert await room.redis.sismember(CampaignKeys("blk").revoked, 1)
    entries = await audit(room, "blk")
    assert [e["k"] for e in entries] == [b"admin-create", b"block", b"join", b"block"]
    assert entries[1]["c"] == digest(7) and entries[1]["s"] == 0 and entries[1]["r"] == b"fraud"
    assert entries[2]["s"] == [1, digest(1), 2, digest(2)]


# -- admit ---------------------------------------------------------------------------


async def test_admit_rate_is_bounded_by_bucket_and_in_seq_order(room: Room) -> None:
    rate, burst = 100.0, 10
    await create(room, "rate", rate_per_s=rate, burst=burst, max_active=BIG)
    await room.join("rate", [digest(i) for i in range(300)])

    async def reached() -> bool:
        result = await room.admit("rate")
        assert result is not None
        return result.cursor >= 60

    await wait_for(reached, 15, "60 customers admitted at 100/s", interval_s=0.005)
    entries = await audit(room, "rate")
    created_at = of_kind(entries, "admin-create")[0]["t"]
    admits = of_kind(entries, "admit")
    counts = [e["n"] for e in admits]
    total = sum(counts)
    assert total >= 60

    # seq order: ranges are contiguous from 1, with nothing skipped
    assert admits[0]["f"] == 1
    for prev, cur in itertools.pairwise(admits):
        assert cur["f"] == prev["l"] + 1
    for e in admits:
        assert e["n"] == e["l"] - e["f"] + 1 and "x" not in e

    # the bucket bound over every window of admit entries, in Redis time: a call admits
    # what accrued since the call before it (issue 12), plus at most the burst carried
    starts = [created_at] + [e["t"] for e in admits]
    for i in range(len(admits)):
        window = 0
        for j in range(i, len(admits)):
            window += counts[j]
            elapsed_s = (admits[j]["t"] - starts[i]) / 1e6
            assert window <= burst + rate * elapsed_s + 1e-6, (i, j, window, elapsed_s)
    elapsed_s = (admits[-1]["t"] - created_at) / 1e6
    assert total <= burst + rate * elapsed_s + 1e-6
    assert await active_set(room, "rate") == set(range(1, total + 1))


async def test_admit_never_exceeds_max_active(room: Room) -> None:
    await create(room, "cap", rate_per_s=BIG, burst=BIG, max_active=7)
    await room.join("cap", [digest(i) for i in range(30)])
    await full_bucket(room, "cap", await audit(room, "cap"))

    async def admit() -> int:
        result = await room.admit("cap")
        assert result is not None
        assert await room.redis.zcard(CampaignKeys("cap").active) == result.active <= 7
        return result.admitted

    assert await admit() == 7
    assert await active_set(room, "cap") == set(range(1, 8))
    assert await admit() == 0
    await room.revoke("cap", digest(2), ACTOR, "")  # seq 3 leaves the active set
    assert await admit() == 1
    assert await active_set(room, "cap") == {1, 2, 4, 5, 6, 7, 8}
    await room.block("cap", digest(4), ACTOR, "")  # seq 5 too
    assert await admit() == 1
    assert await active_set(room, "cap") == {1, 2, 4, 6, 7, 8, 9}
    assert await admit() == 0

    # a lower cap admits no one until enough leave
    current = parse_spec(spec("cap"))
    new_spec, fields = parse_patch({"max_active": 5}, current)
    await room.update("cap", new_spec, fields, ACTOR)
    for customer in (0, 1):
        await room.revoke("cap", digest(customer), ACTOR, "")
        assert await admit() == 0
    await room.revoke("cap", digest(3), ACTOR, "")
    assert await admit() == 1
    assert await active_set(room, "cap") == {6, 7, 8, 9, 10}
    assert int((await meta(room, "cap"))["cursor"]) == 10
    await audit(room, "cap")


async def test_paused_campaign_admits_no_one_until_resumed(room: Room) -> None:
    await create(room, "p", rate_per_s=BIG, burst=BIG, max_active=BIG)
    await room.join("p", [digest(i) for i in range(5)])
    await full_bucket(room, "p", await audit(room, "p"))
    assert await room.set_state("p", "pause", ACTOR) == "paused"
    for _ in range(3):
        result = await room.admit("p")
        assert result is not None
        assert (result.admitted, result.cursor, result.active, result.state) == (0, 0, 0, "paused")
    assert (await meta(room, "p"))["cursor"] == "0"
    assert await room.set_state("p", "resume", ACTOR) == "open"
    result = await room.admit("p")
    assert result is not None
    assert (result.admitted, result.cursor, result.active, result.state) == (5, 5, 5, "open")
    kinds = [e["k"] for e in await audit(room, "p")]
    assert kinds == [b"admin-create", b"join", b"admin-pause", b"admin-resume", b"admit"]


async def test_closing_time_in_the_past_closes_on_admit(room: Room) -> None:
    current = await create(room, "late", opens_in_s=-3600, rate_per_s=BIG, burst=BIG)
    await room.join("late", [digest(i) for i in range(3)])
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    new_spec, fields = parse_patch({"closes_at": past}, current)
    await room.update("late", new_spec, fields, ACTOR)
    for _ in range(2):
        result = await room.admit("late")
        assert result is not None and (result.admitted, result.state) == (0, "closed")
    assert (await meta(room, "late"))["state"] == "closed"
    entries = await audit(room, "late")
    assert [e["k"] for e in entries] == [b"admin-create", b"join", b"admin-update", b"close"]
    assert entries[2]["f"] == [b"closes_at_us"] and entries[2]["n"] == [
        fields["closes_at_us"].encode()
    ]
    assert entries[3]["a"] == b"schedule"
    assert (await room.join("late", [digest(9)])).status == JOIN_CLOSED
    assert await room.pass_check("late", 1, digest(0)) == ("closed", 0)


async def test_expired_passes_free_their_slots(room: Room) -> None:
    await create(room, "ttl", rate_per_s=BIG, burst=BIG, max_active=3, pass_ttl_s=1)
    await room.join("ttl", [digest(i) for i in range(6)])
    await full_bucket(room, "ttl", await audit(room, "ttl"))
    first = await room.admit("ttl")
    assert first is not None and (first.admitted, first.cursor) == (3, 3)
    again = await room.admit("ttl")
    assert again is not None and (again.admitted, again.expired) == (0, 0)

    async def next_three_admitted() -> bool:
        result = await room.admit("ttl")
        assert result is not None and result.active <= 3
        return result.cursor == 6

    await wait_for(next_three_admitted, 10, "expiry to free the three slots", interval_s=0.05)
    entries = await audit(room, "ttl")
    admits, expires = of_kind(entries, "admit"), of_kind(entries, "expire")
    assert [(e["f"], e["l"], e["n"]) for e in admits] == [(1, 3, 3), (4, 6, 3)]
    assert [s for e in expires for s in e["s"]] == [1, 2, 3]
    assert expires[0]["t"] >= admits[0]["d"] == admits[0]["t"] + 1_000_000
    assert admits[1]["t"] >= expires[-1]["t"]
    assert await active_set(room, "ttl") == {4, 5, 6}
    assert (await room.stats("ttl"))["expired"] == 3
    assert (await room.pass_check("ttl", 1, digest(0)))[0] == "expired"


async def test_revoked_and_blocked_seqs_are_skipped_without_using_tokens(room: Room) -> None:
    # three tokens in the bucket, and (at 0.001/s) none accruing: admit now accrues the
    # whole rate x elapsed (issue 12), so a fast rate would fill more than the burst
    await create(room, "skip", rate_per_s=0.001, burst=3, max_active=100)
    await room.join("skip", [digest(i) for i in range(8)])
    assert await room.revoke("skip", digest(1), ACTOR, "") == 2
    assert await room.block("skip", digest(2), ACTOR, "") == 3
    await room.redis.hset(CampaignKeys("skip").meta, "tokens", "3")
    result = await room.admit("skip")
    assert result is not None and (result.admitted, result.cursor, result.active) == (3, 5, 3)
    assert await active_set(room, "skip") == {1, 4, 5}
    m = await meta(room, "skip")
    assert float(m["tokens"]) < 0.01  # three tokens for three customers, none for the skips
    assert m["skipped"] == "2" and m["admitted"] == "3"
    entry = of_kind(await audit(room, "skip"), "admit")[0]
    assert (entry["f"], entry["l"], entry["n"], entry["x"]) == (1, 5, 3, [2, 3])
    assert await room.pass_check("skip", 2, digest(1)) == ("revoked", 0)
    assert await room.pass_check("skip", 3, digest(2)) == ("revoked", 0)


# -- pass ----------------------------------------------------------------------------


async def test_pass_states_and_one_pass_entry_per_seq(room: Room) -> None:
    await create(room, "ps", rate_per_s=BIG, burst=BIG, max_active=BIG, pass_ttl_s=1)
    a, b, c = digest(0), digest(1), digest(2)
    await room.join("ps", [a, b, c])
    assert await room.pass_check("ps", 1, a) == ("waiting", 0)
    await full_bucket(room, "ps", await audit(room, "ps"))
    result = await room.admit("ps", max_per_call=2)
    assert result is not None and result.cursor == 2

    admit_entry = of_kind(await audit(room, "ps"), "admit")[0]
    deadline = admit_entry["d"]
    assert deadline == admit_entry["t"] + 1_000_000
    assert await room.redis.zscore(CampaignKeys("ps").active, 1) == deadline
    for _ in range(5):
        assert await room.pass_check("ps", 1, a) == ("admitted", deadline)
    assert await room.pass_check("ps", 3, c) == ("waiting", 2)

    await room.revoke("ps", b, ACTOR, "chargeback")
    await room.revoke("ps", c, ACTOR, "")
    assert await room.pass_check("ps", 2, b) == ("revoked", 0)
    assert await room.pass_check("ps", 3, c) == ("revoked", 0)

    async def expired() -> bool:
        return (await room.pass_check("ps", 1, a))[0] == "expired"

    await wait_for(expired, 5, "the pass deadline to pass", interval_s=0.05)
    result = await room.admit("ps")
    assert result is not None and result.expired == 1
    assert await room.pass_check("ps", 1, a) == ("expired", 0)

    await room.set_state("ps", "close", ACTOR)
    for seq, d in ((1, a), (2, b), (3, c)):
        assert await room.pass_check("ps", seq, d) == ("closed", 0)
    # a signed (seq, digest) that Redis holds no ticket for grants nothing, closed or not
    with pytest.raises(GateError) as unknown:
        await room.pass_check("ps", 4, digest(3))
    assert (unknown.value.status, unknown.value.code) == (409, "ticket_unknown")
    assert await room.pass_check("nope", 1, a) == ("unknown", 0)
    for seq, d in ((1, b"short"), (0, a)):
        with pytest.raises(ScriptError):
            await room.pass_check("ps", seq, d)

    passes = of_kind(await audit(room, "ps"), "pass")
    assert len(passes) == 1
    assert (passes[0]["s"], passes[0]["c"], passes[0]["d"]) == (1, a, deadline)
    assert await room.redis.smembers(CampaignKeys("ps").passed) == {b"1"}


# -- campaign_update / campaign_state ----------------------------------------------


async def test_rate_change_is_not_retroactive(room: Room) -> None:
    # high -> low: tokens earned at the old rate stay, and are spent
    current = await create(room, "down", rate_per_s=1000, burst=BIG, max_active=BIG)
    await room.join("down", [digest(i) for i in range(3000)])
    created_at = of_kind(await audit(room, "down"), "admin-create")[0]["t"]
    await wait_redis_time(room, created_at + 50_000)
    new_spec, fields = parse_patch({"rate_per_s": 0.001}, current)
    await room.update("down", new_spec, fields, ACTOR)
    updated = of_kind(await audit(room, "down"), "admin-update")[0]
    m = await meta(room, "down")
    earned = 1000 * (updated["t"] - created_at) / 1e6
    assert 50 <= earned < 3000
    assert float(m["tokens"]) == pytest.approx(earned, rel=1e-9)
    assert int(m["bucket_us"]) == updated["t"] and float(m["rate"]) == 0.001
    result = await room.admit("down")
    assert result is not None
    admit_entry = of_kind(await audit(room, "down"), "admit")[0]
    expected = math.floor(float(m["tokens"]) + 0.001 * (admit_entry["t"] - updated["t"]) / 1e6)
    assert result.admitted == admit_entry["n"] == expected
    assert float((await meta(room, "down"))["tokens"]) < 1

    # low -> high: nothing is earned at the new rate for the time before the change
    current = await create(room, "up", rate_per_s=0.001, burst=BIG, max_active=BIG)
    created_at = of_kind(await audit(room, "up"), "admin-create")[0]["t"]
    await wait_redis_time(room, created_at + 50_000)
    new_spec, fields = parse_patch({"rate_per_s": 1_000_000}, current)
    await room.update("up", new_spec, fields, ACTOR)
    updated = of_kind(await audit(room, "up"), "admin-update")[0]
    stored = float((await meta(room, "up"))["tokens"])
    assert stored == pytest.approx(0.001 * (updated["t"] - created_at) / 1e6, rel=1e-9)
    assert stored < 1
    assert (updated["f"], updated["o"], updated["n"]) == ([b"rate"], [b"0.001"], [b"1000000.0"])

    # a lower burst also lowers what the bucket holds now
    await wait_redis_time(room, updated["t"] + 10_000)
    new_spec, fields = parse_patch({"burst": 2}, new_spec)
    await room.update("up", new_spec, fields, ACTOR)
    assert float((await meta(room, "up"))["tokens"]) == 2.0
    await audit(room, "down")
    await audit(room, "up")


async def test_update_with_bad_fields_writes_nothing(room: Room) -> None:
    current = await create(room, "u")
    before = await writes_snapshot(room, "u")
    bad: list[dict[str, str]] = [
        {},
        {"bogus": "1"},
        {"rate": "abc"},
        {"rate": "0"},
        {"burst": "0"},
        {"max_active": "1.5"},
        {"pass_ttl_us": "999999"},
        {"closes_at_us": "-1"},
        {"rate": "5.0", "max_active": "0"},  # a valid change with a bad one: neither lands
        {"rate": "5.0", "state": "closed"},
    ]
    for fields in bad:
        with pytest.raises(ScriptError):
            await room.update("u", current, fields, ACTOR)
        assert await writes_snapshot(room, "u") == before, fields

    with pytest.raises(NotFound):
        await room.update("nope", current, {"rate": "5.0"}, ACTOR)

    await room.set_state("u", "close", ACTOR)
    before = await writes_snapshot(room, "u")
    new_spec, fields = parse_patch({"rate_per_s": 5}, current)
    with pytest.raises(Conflict) as refused:
        await room.update("u", new_spec, fields, ACTOR)
    assert refused.value.code == "campaign_closed"
    assert await writes_snapshot(room, "u") == before
    assert [e["k"] for e in await audit(room, "u")] == [b"admin-create", b"admin-close"]


async def test_campaign_state_transitions(room: Room) -> None:
    await create(room, "st")

    async def refused(action: str, state: str) -> None:
        before = await writes_snapshot(room, "st")
        with pytest.raises(Conflict) as error:
            await room.set_state("st", action, ACTOR)
        assert error.value.code == "bad_state" and state in error.value.message
        assert await writes_snapshot(room, "st") == before

    await refused("resume", "open")
    assert await room.set_state("st", "pause", ACTOR) == "paused"
    await refused("pause", "paused")
    assert await room.set_state("st", "resume", ACTOR) == "open"
    assert await room.set_state("st", "pause", ACTOR) == "paused"
    assert await room.set_state("st", "close", ACTOR) == "closed"
    for action in ("pause", "resume", "close"):
        await refused(action, "closed")
    with pytest.raises(ScriptError):
        await room.set_state("st", "reopen", ACTOR)
    with pytest.raises(NotFound):
        await room.set_state("nope", "pause", ACTOR)

    await create(room, "st2")
    assert await room.set_state("st2", "close", ACTOR) == "closed"  # open -> closed

    entries = await audit(room, "st")
    assert [e["k"] for e in entries] == [
        b"admin-create",
        b"admin-pause",
        b"admin-resume",
        b"admin-pause",
        b"admin-close",
    ]
    assert all(e["a"] == ACTOR.encode() for e in entries)
    assert (await meta(room, "st"))["state"] == "closed"


async def test_create_twice_is_a_conflict(room: Room) -> None:
    current = await create(room, "dup")
    before = await writes_snapshot(room, "dup")
    with pytest.raises(Conflict) as error:
        await room.create(current, ACTOR)
    assert error.value.code == "campaign_exists"
    assert await writes_snapshot(room, "dup") == before


# -- NOSCRIPT ------------------------------------------------------------------------


async def test_scripts_reload_after_script_flush(room: Room) -> None:
    await create(room, "ns", rate_per_s=BIG, burst=BIG)
    assert (await room.join("ns", [digest(0)])).tickets == [(1, True)]
    join_sha = room.scripts["join"].sha
    assert await room.redis.script_exists(join_sha) == [True]
    await room.redis.script_flush()
    assert await room.redis.script_exists(join_sha) == [False]

    assert (await room.join("ns", [digest(0), digest(1)])).tickets == [(1, False), (2, True)]
    await full_bucket(room, "ns", await audit(room, "ns"))
    result = await room.admit("ns")
    assert result is not None and result.admitted == 2
    assert (await room.pass_check("ns", 2, digest(1)))[0] == "admitted"
    assert await room.set_state("ns", "pause", ACTOR) == "paused"
    shas = [room.scripts[name].sha for name in ("join", "admit", "pass", "campaign_state")]
    assert await room.redis.script_exists(*shas) == [True] * 4
    kinds = [e["k"] for e in await audit(room, "ns")]
    assert kinds == [b"admin-create", b"join", b"join", b"admit", b"pass", b"admin-pause"]


# -- audit ---------------------------------------------------------------------------


async def test_every_state_change_has_its_audit_entry(room: Room) -> None:
    current = await create(room, "au", rate_per_s=BIG, burst=BIG, max_active=1, pass_ttl_s=1)
    a, b, c, d = (digest(i) for i in range(4))
    await room.join("au", [a, b, c])
    await room.block("au", d, ACTOR, "sanctions list")
    assert (await room.join("au", [d])).tickets == [(0, False)]
    await full_bucket(room, "au", await audit(room, "au"))
    result = await room.admit("au")
    assert result is not None and result.admitted == 1
    assert (await room.pass_check("au", 1, a))[0] == "admitted"
    await room.revoke("au", c, ACTOR, "duplicate account")
    new_spec, fields = parse_patch({"rate_per_s": 500000}, current)
    await room.update("au", new_spec, fields, ACTOR)
    await room.set_state("au", "pause", ACTOR)
    await room.set_state("au", "resume", ACTOR)

    async def second_admitted() -> bool:
        result = await room.admit("au")
        assert result is not None
        return result.cursor == 2

    await wait_for(second_admitted, 10, "seq 1 to expire and seq 2 to take its slot", 0.05)
    await room.set_state("au", "close", ACTOR)
    assert (await room.pass_check("au", 2, b))[0] == "closed"

    entries = await audit(room, "au")
    assert [e["k"].decode() for e in entries] == [
        "admin-create",
        "join",
        "block",
        "admit",
        "pass",
        "revoke",
        "admin-update",
        "admin-pause",
        "admin-resume",
        "expire",
        "admit",
        "admin-close",
    ]
    by_kind = {e["k"].decode(): e for e in entries}
    assert by_kind["admin-create"]["spec"] == current.dumps().encode()
    assert by_kind["block"]["c"] == d and by_kind["block"]["s"] == 0
    assert by_kind["revoke"]["c"] == c and by_kind["revoke"]["s"] == 3
    assert by_kind["revoke"]["r"] == b"duplicate account"
    assert by_kind["expire"]["s"] == [1]
    assert (by_kind["admit"]["f"], by_kind["admit"]["l"]) == (2, 2)
    assert by_kind["pass"]["s"] == 1 and by_kind["pass"]["c"] == a
    stats = await room.stats("au")
    assert stats["audit_entries"] == len(entries) == 12
