"""I1 at the seed's scale: 20,000 customers on a 10,000,000,000 amount quota never oversell.

The quota of the incident that started the project: 10,000,000,000 in total, 1,000,000
to 10,000,000 per customer in steps of 10,000; 20,000 customers each ask a random valid
amount (about 110,000,000,000 of demand for 10,000,000,000 of supply). Run twice: with
partial fill (a claim larger than what is left takes the rest) and without.

How it runs:
- The 20,000 join in batches through Room.join and are admitted by a running gate's
  own admission loop (admit.lua, every 50 ms). `overbook` is 2 so that all 20,000 are
  admitted at once (what is left serves 10,000 at the minimum; x2 = 20,000).
- Claims go straight through Room.claim (the claim script), not over HTTP: HTTP
  concurrency is covered by test_i1_items.py, and 20,000 HTTP claims plus their retries
  would not fit this test's time on a 2-core machine. 32 first claims are in flight at
  once (the other customers queue for a slot in arrival order), plus up to 8 retries.
- A simulated core system answers each reservation after 0-20 ms (simulated latency):
  about 85% confirmed, 10% released at once, 5% never answered, so they expire
  (reservation_ttl_s = 1) in the gate's admission loop and their amount returns.
- A customer refused with `sold_out` waits on a retry board and tries again as long as
  something could still come back for them. The board reads HMGET held confirmed
  q_total every ~2 ms; with held(t) >= 0 and confirmed only growing, what is left at any
  later time is at most total - confirmed now, and, once held is 0, at most what is
  left now. So a customer gives up ("never") only when total - confirmed < what they
  need (their ask; with partial fill, the minimum), or when held = 0 and what is left
  < what they need; otherwise the board wakes
  waiting customers, oldest first, as many as what is left could serve at the minimum.
  Everything is bounded by a deadline.

What it checks:
- every sample of a monitor thread with its own connection (HMGET held confirmed q_total
  every ~2 ms, whatever the test's event loop is doing) and of the retry board:
  held + confirmed <= total, and neither negative;
- the audit log replayed in index order (claim +m held; confirm m held -> confirmed;
  release and expire-res -m held): held + confirmed <= total after EVERY entry, every
  customer's held + confirmed <= max after every entry, each reservation finishes once,
  and the replayed totals equal the meta fields and this test's own ledger;
- the end: nothing held; with partial fill, total - confirmed < min (what is left could
  serve nobody; it is exactly 0 unless the last whole grants left a remainder below the
  minimum, which no claim may take); without, total - confirmed < the smallest amount
  any finally refused customer asked for (no refused claim would have fit).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from gate.campaign import parse_spec
from gate.redis_client import connect
from gate.room import ClaimResult, Room
from gate.room.keys import CampaignKeys
from gate.service import Gate
from gate.tokens import customer_digest
from tests.helpers import amount_quota, spec, wait_for

TOTAL = 10_000_000_000
MIN = 1_000_000
MAX = 10_000_000
STEP = 10_000
CUSTOMERS = 20_000
RES_TTL_S = 1
IN_FLIGHT = 32  # first claims
RETRY_IN_FLIGHT = 8  # retries do not queue behind the 20,000 first claims
CORE_IN_FLIGHT = 64
DEADLINE_S = 45.0
CONFIRMED, RELEASED = 0.85, 0.10  # the rest is never answered


@dataclass
class Ledger:
    """What the customers and the simulated core system saw."""

    asks: dict[int, int] = field(default_factory=dict)
    granted: dict[int, tuple[str, int]] = field(default_factory=dict)  # seq -> (rid, amount)
    fate: dict[int, str] = field(default_factory=dict)  # confirmed/released/unanswered/late
    refused: dict[int, int] = field(default_factory=dict)  # seq -> ask, gave up for good
    timed_out: dict[int, int] = field(default_factory=dict)
    unexpected: list[tuple[int, str, str]] = field(default_factory=list)
    claim_calls: int = 0
    retry_grants: int = 0


class RetryBoard:
    """Samples the quota every ~2 ms, checks I1 on each sample, and wakes customers
    refused with sold_out when what is left could serve them (see the module docstring)."""

    def __init__(self, redis: Redis, meta_key: str, deadline: float):
        self.redis = redis
        self.meta_key = meta_key
        self.deadline = deadline
        self.waiting: dict[int, deque[tuple[int, asyncio.Future[str]]]] = {}
        self.arrivals = itertools.count()
        self.in_flight = 0  # retries woken and not answered yet
        self.samples = 0
        self.violations: list[tuple[int, int, int]] = []
        self.woken = 0
        self.stopped = False

    def wait(self, needed: int) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(needed, deque()).append((next(self.arrivals), future))
        return future

    async def run(self) -> None:
        while not self.stopped:
            raw = await self.redis.hmget(self.meta_key, ["held", "confirmed", "q_total"])
            held, confirmed, total = (int(v) for v in raw)
            self.samples += 1
            if held < 0 or confirmed < 0 or held + confirmed > total:
                self.violations.append((held, confirmed, total))
            self.dispatch(held, confirmed, total)
            await asyncio.sleep(0.002)  # the sampling interval

    def dispatch(self, held: int, confirmed: int, total: int) -> None:
        left = total - held - confirmed
        ceiling = total - confirmed  # the most that can ever be left from now on
        late = time.monotonic() > self.deadline
        for needed in list(self.waiting):
            verdict = ""
            if late:
                verdict = "deadline"
            elif needed > ceiling or (held == 0 and needed > left):
                verdict = "never"
            if verdict:
                for _, future in self.waiting.pop(needed):
                    future.set_result(verdict)
        budget = left // MIN - self.in_flight
        heads = [(q[0][0], needed) for needed, q in self.waiting.items() if needed <= left]
        heapq.heapify(heads)
        while budget > 0 and heads:
            _, needed = heapq.heappop(heads)
            queue = self.waiting[needed]
            _, future = queue.popleft()
            if queue:
                heapq.heappush(heads, (queue[0][0], needed))
            else:
                del self.waiting[needed]
            future.set_result("retry")
            self.in_flight += 1
            self.woken += 1
            budget -= 1


class Sampler(threading.Thread):
    """A thread with its own connection: HMGET held confirmed q_total every ~2 ms,
    independent of how busy the test's event loop is; checks I1 on each sample."""

    def __init__(self, redis_url: str, meta_key: str):
        super().__init__(daemon=True)
        self.redis_url = redis_url
        self.meta_key = meta_key
        self.stop = threading.Event()
        self.samples = 0
        self.violations: list[tuple[int, int, int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        client = sync_redis.Redis.from_url(self.redis_url)
        try:
            while not self.stop.is_set():
                raw = client.hmget(self.meta_key, ["held", "confirmed", "q_total"])
                held, confirmed, total = (int(v) for v in raw)
                self.samples += 1
                if held < 0 or confirmed < 0 or held + confirmed > total:
                    self.violations.append((held, confirmed, total))
                self.stop.wait(0.002)  # the sampling interval
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            client.close()


def replay(entries: list[dict[str, Any]], total: int) -> dict[str, Any]:
    """Replay the quota movements of the audit log in index order, checking I1 after each."""
    held = confirmed = released = expired = 0
    spent: Counter[int] = Counter()
    state: dict[str, str] = {}
    amount_of: dict[str, int] = {}
    worst = 0
    for position, entry in enumerate(entries):
        assert entry["i"] == position + 1, f"audit index gap at {position}"
        kind = entry["k"]
        if kind == b"claim":
            rid, seq, m = entry["r"].decode(), int(entry["s"]), int(entry["m"])
            assert rid not in state, f"reservation {rid} claimed twice"
            state[rid], amount_of[rid] = "held", m
            held += m
            spent[seq] += m
            assert spent[seq] <= MAX, f"entry {entry['i']}: customer {seq} over max"
        elif kind in (b"confirm", b"release"):
            rid, m = entry["r"].decode(), int(entry["m"])
            assert state.get(rid) == "held" and amount_of[rid] == m, f"entry {entry['i']}"
            held -= m
            if kind == b"confirm":
                state[rid] = "confirmed"
                confirmed += m
            else:
                state[rid] = "released"
                released += m
                spent[int(entry["s"])] -= m
        elif kind == b"expire-res":
            for rid_raw, seq, m_raw in zip(entry["r"], entry["s"], entry["m"], strict=True):
                rid, m = rid_raw.decode(), int(m_raw)
                assert state.get(rid) == "held" and amount_of[rid] == m, f"entry {entry['i']}"
                state[rid] = "expired"
                held -= m
                expired += m
                spent[int(seq)] -= m
        assert held >= 0 and held + confirmed <= total, f"I1 broken at entry {entry['i']}"
        worst = max(worst, held + confirmed)
    return {
        "held": held,
        "confirmed": confirmed,
        "released": released,
        "expired": expired,
        "states": Counter(state.values()),
        "spent": spent,
        "peak": worst,
    }


@pytest.mark.slow
@pytest.mark.parametrize("partial_fill", [True, False], ids=["partial_fill", "whole_claims"])
async def test_amount_quota_at_scale(gate: Gate, redis_url: str, partial_fill: bool) -> None:
    campaign = "i1-amounts-partial" if partial_fill else "i1-amounts-whole"
    k = CampaignKeys(campaign)
    body = spec(
        campaign,
        rate_per_s=100000,
        burst=CUSTOMERS,
        max_active=CUSTOMERS,
        pass_ttl_s=600,
        reservation_ttl_s=RES_TTL_S,
        overbook=2,
    )
    body["quota"] = amount_quota(TOTAL, MIN, MAX, STEP, partial_fill=partial_fill)
    await gate.room.create(parse_spec(body), "test")
    await gate.cache.get(campaign)  # the admission loop picks it up on its next tick

    monitor = Redis.from_url(redis_url)
    pool = IN_FLIGHT + RETRY_IN_FLIGHT
    room = Room(connect(redis_url, timeout_s=10, max_connections=pool), gate.scripts)
    # the core system has connections of its own: it does not queue behind the customers
    core = Room(connect(redis_url, timeout_s=10, max_connections=CORE_IN_FLIGHT), gate.scripts)
    rng = random.Random(20240601 + partial_fill)
    ledger = Ledger()
    started = time.monotonic()
    board = RetryBoard(monitor, k.meta, started + DEADLINE_S)
    board_task: asyncio.Task[None] | None = None
    sampler = Sampler(redis_url, k.meta)
    try:
        digests = [customer_digest(gate.keys, campaign, f"cust-{n}") for n in range(CUSTOMERS)]
        seqs: list[int] = []
        for first in range(0, CUSTOMERS, 500):
            joined = await room.join(campaign, digests[first : first + 500])
            assert joined.status == 1
            seqs += [seq for seq, _ in joined.tickets]
        assert seqs == list(range(1, CUSTOMERS + 1))

        async def all_admitted() -> bool:
            return int(await monitor.hget(k.meta, "cursor") or 0) == CUSTOMERS

        await wait_for(all_admitted, 20, "the admission loop to admit all 20,000")
        admitted_s = time.monotonic() - started

        asks = {seq: rng.randrange(MIN, MAX + STEP, STEP) for seq in seqs}
        fates = {seq: rng.random() for seq in seqs}
        latency = {seq: rng.uniform(0, 0.02) for seq in seqs}
        ledger.asks = asks
        assert sum(asks.values()) > TOTAL  # demand exceeds supply
        # Bounded in flight, first come first served: no task waits inside redis-py's
        # connection pool, whose waiters can be overtaken by newcomers.
        slots = asyncio.Semaphore(IN_FLIGHT)
        retry_slots = asyncio.Semaphore(RETRY_IN_FLIGHT)
        core_slots = asyncio.Semaphore(CORE_IN_FLIGHT)

        async def core_system(seq: int, result: ClaimResult) -> None:
            await asyncio.sleep(latency[seq])  # the core system's simulated latency
            draw = fates[seq]
            if draw >= CONFIRMED + RELEASED:
                ledger.fate[seq] = "unanswered"
                return
            async with core_slots:
                if draw < CONFIRMED:
                    outcome = await core.confirm(campaign, result.reservation, "core")
                else:
                    outcome = await core.release(campaign, result.reservation, "core", "declined")
            if outcome.ok:
                ledger.fate[seq] = outcome.state
            else:  # the reservation expired before the core system answered
                assert outcome.state == "expired", outcome
                ledger.fate[seq] = "late"

        async def customer(seq: int, digest: bytes) -> None:
            ask = asks[seq]
            needed = MIN if partial_fill else ask
            for attempt in itertools.count(1):
                async with slots if attempt == 1 else retry_slots:
                    result = await room.claim(campaign, seq, digest, ask, f"try-{attempt}")
                ledger.claim_calls += 1
                if attempt > 1:
                    board.in_flight -= 1
                if result.ok:
                    assert not result.replayed
                    ledger.retry_grants += attempt > 1
                    ledger.granted[seq] = (result.reservation, result.amount)
                    await core_system(seq, result)
                    return
                if result.code != "sold_out":
                    ledger.unexpected.append((seq, result.code, result.detail))
                    return
                verdict = await board.wait(needed)
                if verdict != "retry":
                    (ledger.refused if verdict == "never" else ledger.timed_out)[seq] = ask
                    return

        sampler.start()
        board_task = asyncio.create_task(board.run())
        claims_started = time.monotonic()
        await asyncio.gather(*(customer(seq, digests[seq - 1]) for seq in seqs))
        claims_s = time.monotonic() - claims_started

        async def nothing_held() -> bool:
            return int(await monitor.hget(k.meta, "held") or 0) == 0

        await wait_for(nothing_held, RES_TTL_S + 10, "the unanswered reservations to expire")
        board.stopped = True
        await board_task
        board_task = None
        sampler.stop.set()
        await asyncio.to_thread(sampler.join, 5)

        # The customers and the core system.
        assert not ledger.unexpected, ledger.unexpected[:10]
        assert not ledger.timed_out, f"{len(ledger.timed_out)} customers hit the deadline"
        assert len(ledger.granted) + len(ledger.refused) == CUSTOMERS
        for seq, (_, amount) in ledger.granted.items():
            assert MIN <= amount <= asks[seq] and amount % STEP == 0, (seq, amount)
            if not partial_fill:
                assert amount == asks[seq], (seq, amount)
        by_fate: dict[str, int] = Counter()
        for seq, fate in ledger.fate.items():
            by_fate[fate] += ledger.granted[seq][1]
        fate_counts = Counter(ledger.fate.values())
        assert fate_counts["confirmed"] > 0 and fate_counts["released"] > 0, fate_counts
        assert fate_counts["unanswered"] > 0, fate_counts

        # Every sample the monitors took, and the final meta.
        assert sampler.error is None and not sampler.is_alive()
        assert not sampler.violations, sampler.violations[:5]
        assert not board.violations, board.violations[:5]
        assert sampler.samples >= 200 and board.samples >= 100, (sampler.samples, board.samples)
        meta = {
            key.decode(): value.decode() for key, value in (await monitor.hgetall(k.meta)).items()
        }
        confirmed = int(meta["confirmed"])
        assert meta["held"] == "0" and int(meta["holding"]) == 0
        assert confirmed == by_fate["confirmed"] <= TOTAL
        assert int(meta["released"]) == by_fate["released"]
        assert int(meta["expired_amount"]) == by_fate["unanswered"] + by_fate["late"]
        assert int(meta["claims"]) == len(ledger.granted)

        # Customer limits: what each holds or has confirmed is within max.
        spent = {int(s): int(v) for s, v in (await monitor.hgetall(k.spent)).items()}
        assert all(v <= MAX for v in spent.values())
        for seq, (_, amount) in ledger.granted.items():
            expected = amount if ledger.fate[seq] == "confirmed" else 0
            assert spent.get(seq, 0) == expected, (seq, spent.get(seq), expected)

        # The audit log, replayed entry by entry.
        entries = await room.audit_entries(campaign)
        replayed = replay(entries, TOTAL)
        assert replayed["held"] == 0 and replayed["confirmed"] == confirmed
        assert replayed["released"] == int(meta["released"])
        assert replayed["expired"] == int(meta["expired_amount"])
        assert replayed["states"]["held"] == 0
        assert all(replayed["spent"][seq] == spent.get(seq, 0) for seq in ledger.granted)

        # Demand exceeded supply: the final confirmed sum is as full as the claims allow.
        left = TOTAL - confirmed
        assert ledger.refused, "demand exceeded supply, so some customers went without"
        if partial_fill:
            assert 0 <= left < MIN, left  # nothing left that could serve anybody
        else:
            smallest_refused = min(ledger.refused.values())
            assert left < smallest_refused, (left, smallest_refused)
        print(
            f"\npartial_fill={partial_fill}: admitted {CUSTOMERS} in {admitted_s:.1f}s; "
            f"claims done in {claims_s:.1f}s ({ledger.claim_calls} claim calls, "
            f"{board.woken} retries woken, {ledger.retry_grants} granted); "
            f"granted {len(ledger.granted)} "
            f"{dict(fate_counts)}; refused {len(ledger.refused)}; "
            f"confirmed {confirmed} (left {left}); samples: thread {sampler.samples}, "
            f"board {board.samples}; "
            f"audit entries {len(entries)}; peak held+confirmed in the log {replayed['peak']}"
        )
    finally:
        sampler.stop.set()
        if board_task is not None:
            board.stopped = True
            board_task.cancel()
        await room.redis.aclose()
        await core.redis.aclose()
        await monitor.aclose()
