"""Issue 12: admission delivers the configured rate however late the admit loop runs,
and the admitted customers' arrivals are paced (not_before) at that rate.

Against real Redis 7.x and 6.2; every figure goes by Redis time (the audit's "t")."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from pathlib import Path
from typing import Any

import pytest

from gate.audit.verify import verify_file
from gate.campaign import parse_spec
from gate.config import Config
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.service import running_gate
from gate.signing import SigningKeys
from gate.tokens import PASS
from tests.helpers import (
    as_customer,
    create_campaign,
    create_committed,
    customer_digest,
    export_to_file,
    join,
    of_kind,
    seal_everything,
    spec,
    wait_for,
    wait_redis_time,
)

RATE, BURST = 1000, 50


@pytest.fixture
def room(any_room: Room) -> Room:
    return any_room


digest = customer_digest


async def redis_us(room: Room) -> int:
    seconds, micros = await room.redis.time()
    return int(seconds) * 1_000_000 + int(micros)


async def open_with(
    room: Room, campaign: str, customers: int, keys: SigningKeys | None = None
) -> None:
    """`keys`: the commitment is signed before anyone joins (a log verify accepts)."""
    created = parse_spec(spec(campaign, rate_per_s=RATE, burst=BURST))
    if keys is None:
        await room.create(created, "ops")
    else:
        await create_committed(room, keys, created)
    for i in range(0, customers, 2000):
        await room.join(campaign, [digest(j) for j in range(i, min(i + 2000, customers))])


def busiest_window(times: list[int]) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1_000_000:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_sparse_admit_calls_deliver_the_configured_rate(room: Room) -> None:
    """An admit loop running late (every 300 ms instead of 50) still admits rate x
    elapsed (within 2%), and no 1-s window of arrivals carries more than rate + burst."""
    campaign = "sparse"
    await open_with(room, campaign, 8000)
    first = await room.admit(campaign)  # the burst, at opening
    assert first is not None
    start = await redis_us(room)
    end = start + 3_000_000
    admitted = 0
    while await redis_us(room) < end:
        await asyncio.sleep(0.3)
        result = await room.admit(campaign)
        assert result is not None
        admitted += result.admitted
    entries = await room.audit_entries(campaign)
    admits = of_kind(entries, "admit")
    t0, t1 = admits[0]["t"], admits[-1]["t"]
    elapsed_s = (t1 - t0) / 1e6
    later = sum(e["n"] for e in admits[1:])
    delivered = later / elapsed_s
    print(f"admitted {later} in {elapsed_s:.3f}s of Redis time: {delivered:.1f}/s (rate {RATE})")
    assert abs(delivered - RATE) <= 0.02 * RATE, delivered
    # each call admits what accrued since the one before (at most 3 s of it), plus at
    # most the burst carried over
    for prev, cur in itertools.pairwise(admits):
        accrued = RATE * min(cur["t"] - prev["t"], 3_000_000) / 1e6
        assert cur["n"] <= BURST + accrued + 1e-6, (cur, prev["t"])


async def test_passes_issued_at_once_are_paced_at_the_rate(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """Customers admitted over a while who all ask for their pass at once: the passes'
    not_before spread them at the rate, so no 1-s window holds more than rate + burst
    first arrivals; a pass valid late enough carries its deadline past not_before."""
    campaign = "bunch"
    customers = 2500
    await open_with(room, campaign, customers, keys)
    while True:  # admitted over ~2.5 s, nobody asking for a pass meanwhile
        result = await room.admit(campaign)
        assert result is not None
        if result.cursor >= customers:
            break
        await asyncio.sleep(0.05)
    now = await redis_us(room)
    answers: list[tuple[str, int, int]] = []
    for first in range(1, customers + 1, 50):  # all at once, 50 connections at a time
        answers += await asyncio.gather(
            *(room.pass_status(campaign, s, digest(s - 1)) for s in range(first, first + 50))
        )
    assert [state for state, _, _ in answers] == ["admitted"] * customers
    # When each pass is valid from: the log's nb (an answer says 0 once that has passed:
    # a pass asked for after its slot is valid from when it was issued, which on a busy
    # machine is seconds after `now`, and counting it at `now` bunched 2,406 into 1 s).
    logged = {e["s"]: e["nb"] for e in of_kind(await room.audit_entries(campaign), "pass")}
    assert sorted(logged) == list(range(1, customers + 1))
    arrivals = list(logged.values())
    assert all(nb in (0, logged[seq]) for seq, (_, _, nb) in enumerate(answers, 1))
    peak = busiest_window(arrivals)
    print(f"{customers} passes asked for at once: busiest 1-s window {peak} (bound {RATE + BURST})")
    assert peak <= RATE + BURST
    assert max(arrivals) - now >= (customers - RATE - BURST) / RATE * 1e6 * 0.95
    for _state, deadline, nb in answers:
        assert deadline >= nb + 300_000_000  # pass_ttl_s 300 from not_before
    # asked again: the same not_before
    again = await room.pass_status(campaign, customers, digest(customers - 1))
    if again[2] == 0:  # its moment has passed meanwhile (a slow machine): not moved
        assert await redis_us(room) >= logged[customers]
    else:
        assert again[2] == logged[customers]
    # `gate audit verify` replays the arrival clock: the log is clean
    await seal_everything(room.redis, room.scripts, keys, campaign)
    path = await export_to_file(room.redis, campaign, keys, tmp_path / "bunch.jsonl")
    report = await asyncio.to_thread(
        verify_file, path, keys.public_keys(), keys_from="published", require_sealed=True
    )
    assert report.kinds["pass"] == customers


HTTP_RATE, HTTP_BURST, HTTP_CUSTOMERS = 40, 4, 120


async def test_auth_lets_customers_in_at_the_rate_however_their_polls_bunch(
    public: Any, admin: Any, gate: Any
) -> None:
    """Customers admitted over ~3 s who all poll at once, then go on to the core: the
    /gate/auth successes (each customer's first) fall at most rate + burst in any 1-s
    window of Redis time; an early pass is refused 401 pass_not_yet with the wait."""
    campaign = "paced"
    await create_campaign(
        admin, campaign, rate_per_s=HTTP_RATE, burst=HTTP_BURST, max_active=100000
    )
    tickets = {}
    for i in range(HTTP_CUSTOMERS):
        body = await join(public, campaign, f"c-{i}")
        tickets[f"c-{i}"] = body["ticket"]

    async def all_admitted() -> bool:
        meta = await gate.room.meta(campaign)
        return meta is not None and int(meta["cursor"]) >= HTTP_CUSTOMERS

    await wait_for(all_admitted, 15, "everyone admitted")
    refused_early = 0
    times: list[int] = []
    spans: list[tuple[int, int]] = []
    scheduled: list[int] = []

    async def customer(name: str) -> None:
        nonlocal refused_early
        r = await public.get(
            f"/q/{campaign}/status", params={"ticket": tickets[name]}, headers=as_customer(name)
        )
        assert r.status == 200, await r.text()
        body = await r.json()
        pass_token = body["pass"]
        not_before = int(body.get("not_before", 0))
        if not_before:
            scheduled.append(not_before)
        who = as_customer(name, **{"X-Gate-Campaign": campaign, "X-Gate-Pass": pass_token})
        while True:
            sent = int(gate.cache.redis_now() * 1_000_000)  # Redis time, no round trip
            r = await public.get("/gate/auth", headers=who)
            if r.status == 200:
                at = int(gate.cache.redis_now() * 1_000_000)
                assert at >= not_before
                times.append(at)
                spans.append((sent, at))
                return
            assert r.status == 401, await r.text()
            assert (await r.json())["error"]["code"] == "pass_not_yet"
            refused_early += 1
            await asyncio.sleep(int(r.headers["X-Gate-Retry-After-Ms"]) / 1000)

    await asyncio.gather(*(customer(name) for name in tickets))
    peak = busiest_window(times)
    print(
        f"{HTTP_CUSTOMERS} customers polling at once: busiest 1-s window of /gate/auth "
        f"successes {peak} (bound {HTTP_RATE + HTTP_BURST}), {refused_early} early refusals"
    )
    # the schedule holds the bound exactly, and so do the successes (the door meters
    # them), counted where they surely fell: sent and answered inside the window
    assert busiest_window(scheduled) <= HTTP_RATE + HTTP_BURST
    surely = max(
        sum(1 for sent, got in spans if start <= sent and got < start + 1_000_000)
        for start, _ in spans
    )
    assert surely <= HTTP_RATE + HTTP_BURST, (surely, peak)


LATE_RATE, LATE_BURST, LATE_CUSTOMERS = 20, 2, 40


async def test_late_comers_do_not_crowd_the_core_past_rate_plus_burst(
    public: Any, admin: Any, gate: Any
) -> None:
    """Customers whose passes were valid earlier all come at one moment, on top of those
    due then: /gate/auth still lets at most rate + burst in per 1-s window of Redis time
    (each success counted only where it surely fell: between the request's send and its
    answer). Before the door was metered, the late comers all got in at once."""
    campaign = "late"
    await create_campaign(
        admin, campaign, rate_per_s=LATE_RATE, burst=LATE_BURST, max_active=100000
    )
    tickets = {}
    for i in range(LATE_CUSTOMERS):
        tickets[f"l-{i}"] = (await join(public, campaign, f"l-{i}"))["ticket"]

    async def all_admitted() -> bool:
        meta = await gate.room.meta(campaign)
        return meta is not None and int(meta["cursor"]) >= LATE_CUSTOMERS

    await wait_for(all_admitted, 15, "everyone admitted")
    passes: dict[str, tuple[str, int]] = {}
    for name, ticket in tickets.items():
        r = await public.get(
            f"/q/{campaign}/status", params={"ticket": ticket}, headers=as_customer(name)
        )
        assert r.status == 200, await r.text()
        body = await r.json()
        passes[name] = (body["pass"], int(body.get("not_before", 0)))
    now = lambda: gate.cache.redis_now() * 1_000_000  # noqa: E731
    # everyone whose pass is valid before `late_at` comes exactly then
    late_at = now() + 1_200_000
    spans: list[tuple[float, float]] = []
    held_back = 0
    told_by_status = 0
    door = CampaignKeys(campaign).door

    async def customer(name: str) -> None:
        nonlocal held_back, told_by_status
        pass_token, not_before = passes[name]
        come = max(not_before, late_at)
        await asyncio.sleep(max(0.0, come - now()) / 1e6)
        who = as_customer(name, **{"X-Gate-Campaign": campaign, "X-Gate-Pass": pass_token})
        while True:
            sent = now()
            r = await public.get("/gate/auth", headers=who)
            if r.status == 200:
                spans.append((sent, now()))
                return
            assert r.status == 401, await r.text()
            assert (await r.json())["error"]["code"] == "pass_not_yet"
            held_back += 1
            wait_s = int(r.headers["X-Gate-Retry-After-Ms"]) / 1000
            # the proxy sends them back to the waiting page: its status answer says when
            # their slot at the door is, and the pass it carries is valid from then
            slot = await gate.room.redis.zscore(door, gate.signer.verify(pass_token, PASS).seq)
            r = await public.get(
                f"/q/{campaign}/status", params={"ticket": tickets[name]}, headers=as_customer(name)
            )
            body = await r.json()
            if slot is not None and slot > now() + 50_000:  # surely still ahead when answered
                assert body["state"] == "waiting" and body["not_before"] == int(slot), body
                assert gate.signer.verify(body["pass"], PASS).not_before == int(slot)
                told_by_status += 1
            await asyncio.sleep(wait_s)

    await asyncio.gather(*(customer(name) for name in passes))
    late = sum(1 for _, nb in passes.values() if nb < late_at)
    # the most successes surely inside one 1-s window: those whose whole span is in it
    surely = max(
        sum(1 for sent, got in spans if start <= sent and got < start + 1_000_000)
        for start, _ in spans
    )
    print(
        f"{late} of {LATE_CUSTOMERS} customers late at once: at least {surely} in one 1-s "
        f"window (bound {LATE_RATE + LATE_BURST}), {held_back} told to wait"
    )
    assert late >= LATE_CUSTOMERS // 3  # the scene: many come late together
    assert surely <= LATE_RATE + LATE_BURST
    assert told_by_status > 0
    # the door's own record: each first success at its Redis time
    arrived = await gate.room.redis.zrange(CampaignKeys(campaign).arrived, 0, -1, withscores=True)
    assert len(arrived) == LATE_CUSTOMERS
    assert busiest_window([int(t) for _, t in arrived]) <= LATE_RATE + LATE_BURST
    # a pass already let in goes through at once, also when asked again
    name = next(iter(passes))
    who = as_customer(name, **{"X-Gate-Campaign": campaign, "X-Gate-Pass": passes[name][0]})
    assert (await public.get("/gate/auth", headers=who)).status == 200


async def test_the_door_spreads_a_crowd_of_late_comers_at_the_rate(room: Room) -> None:
    """arrive.lua straight: a crowd at the door at once gets the burst in, and each of the
    others is told to come back one slot of the clock after the one before (asked again
    early: the same time; a pass let in: in at once)."""
    campaign = "door"
    # slots 1 s apart, a grace of 2 s: the last of the crowd is told ~9 s, which a loaded
    # machine does not reach before it asks again (at 100 ms apart it did: told 0, in)
    rate, burst = 1, 3
    await room.create(parse_spec(spec(campaign, rate_per_s=rate, burst=burst)), "ops")
    crowd = 12
    waits = [await room.arrive(campaign, seq) for seq in range(1, crowd + 1)]
    assert waits[:burst] == [0] * burst  # the burst (the grace's slots and now's) is in
    ahead = waits[burst:]
    assert all(w is not None and w > 0 for w in ahead)
    # told to come back one slot apart, 1 s
    door = CampaignKeys(campaign).door
    slots = [await room.redis.zscore(door, seq) for seq in range(burst + 1, crowd + 1)]
    assert [b - a for a, b in itertools.pairwise(slots)] == [1_000_000] * (len(slots) - 1)
    assert await room.arrive(campaign, 1) == 0  # already in
    again = await room.arrive(campaign, crowd)
    assert again is not None and 0 < again <= waits[-1]  # the same time, not a later one
    assert await room.arrive("no-such-campaign", 1) is None


async def _delivered_by_a_slow_loop(
    config: Config, campaign: str, *, rate: int, interval_ms: int, calls: int
) -> float:
    """The admitted/s a real gate's admit loop delivers with its calls `interval_ms` apart,
    from the audit log's first `calls` admit entries (the first spends the burst)."""
    # enough that the queue never runs dry within `calls`: the first call may give up to
    # 3 s of accrual (the joins take a while), and a loaded machine stretches the calls
    # (a full run at load 8-12: ~690 ms apart, the queue ran dry in the last call)
    customers = int(rate * (3 + interval_ms / 1000 * (calls + 2) * 1.5))
    slow = dataclasses.replace(config, admit_interval_ms=interval_ms)
    async with running_gate(slow) as gate:
        await gate.wait_ready()
        room = gate.room
        await room.create(parse_spec(spec(campaign, rate_per_s=rate, burst=10)), "ops")
        for i in range(0, customers, 2000):
            await room.join(campaign, [digest(j) for j in range(i, min(i + 2000, customers))])

        async def calls_logged() -> bool:
            return len(of_kind(await room.audit_entries(campaign), "admit")) >= calls

        await wait_for(calls_logged, 30, f"{calls} admit calls")
        admits = of_kind(await room.audit_entries(campaign), "admit")[:calls]
    span_s = (admits[-1]["t"] - admits[0]["t"]) / 1e6
    delivered = sum(e["n"] for e in admits[1:]) / span_s
    print(f"admit calls {span_s / (calls - 1) * 1000:.0f} ms apart: {delivered:.0f}/s ({rate})")
    assert abs(delivered - rate) <= 0.02 * rate, [(e["t"], e["n"]) for e in admits]
    return delivered


async def test_a_stretched_admit_loop_still_admits_the_configured_rate(config: Config) -> None:
    """The gate's own admit loop, its calls 600 ms apart (as a process saturated by polls
    stretches them), at 5,000/s: each call has 3,000 tokens to give, more than the loop's
    usual per-call cap of 2,000, and what a call leaves beyond the burst is dropped. The
    loop sizes its calls to what one can accrue, so the rate is delivered (within 2%)."""
    await _delivered_by_a_slow_loop(config, "stretched", rate=5000, interval_ms=600, calls=6)


async def test_an_admit_loop_stalled_past_a_second_still_admits_the_configured_rate(
    config: Config,
) -> None:
    """Admit calls 1.5 s apart (every gate process stalled at once, as four processes and
    a poll load on two cores did: 1.1 s gaps, 4,940/s of 5,000): each call gets the whole
    time since the last one, up to ACCRUE_MAX_US (3 s), so the rate is delivered (within
    2%). Before, a call used at most 1 s of it: two thirds of the rate."""
    await _delivered_by_a_slow_loop(config, "stalled", rate=1000, interval_ms=1500, calls=4)


async def test_a_late_comer_back_later_than_told_is_not_sent_to_the_end_of_a_line(
    room: Room,
) -> None:
    """The time the door tells is a hint, not a booking: a customer who comes back after
    it (a client retrying at its own pace) gets in as soon as the clock is due, instead of
    being given a slot behind everyone told after them (as a door that kept each waiting
    customer a slot did: the demo's burst left 1,121 of 3,000 customers refused 5 times)."""
    campaign = "hint"
    rate, burst = 10, 1  # slots 100 ms apart, no grace
    await room.create(parse_spec(spec(campaign, rate_per_s=rate, burst=burst)), "ops")
    assert await room.arrive(campaign, 1) == 0
    door = CampaignKeys(campaign).door
    told = {}
    for seq in (2, 3, 4):
        assert (await room.arrive(campaign, seq) or 0) > 0
        told[seq] = await room.redis.zscore(door, seq)
    # seq 2 comes back well after the time it was told, after seq 3's and 4's too
    await wait_redis_time(room.redis, int(told[4]) + 50_000)
    assert await room.arrive(campaign, 2) == 0
