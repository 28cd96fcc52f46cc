"""Issue 12: admission delivers the configured rate however late the admit loop runs,
and the admitted customers' arrivals are paced (not_before) at that rate.

Against real Redis 7.x and 6.2; every figure goes by Redis time (the audit's "t")."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis as sync_redis

from gate.campaign import parse_spec
from gate.redis_client import connect
from gate.redis_server import RedisServer
from gate.room import Room
from gate.room.scripts import Scripts
from tests.helpers import of_kind, spec

RATE, BURST = 1000, 50


@pytest.fixture
async def room(any_redis: RedisServer) -> AsyncIterator[Room]:
    flusher = sync_redis.Redis(port=any_redis.port)
    flusher.flushall()
    flusher.close()
    redis = connect(any_redis.url, timeout_s=2)
    try:
        yield Room(redis, Scripts())
    finally:
        await redis.aclose()


def digest(i: int) -> bytes:
    return hashlib.blake2b(f"customer-{i}".encode(), digest_size=16).digest()


async def redis_us(room: Room) -> int:
    seconds, micros = await room.redis.time()
    return int(seconds) * 1_000_000 + int(micros)


async def open_with(room: Room, campaign: str, customers: int) -> None:
    await room.create(parse_spec(spec(campaign, rate_per_s=RATE, burst=BURST)), "ops")
    for i in range(0, customers, 2000):
        await room.join(campaign, [digest(j) for j in range(i, min(i + 2000, customers))])


def not_befores(entries: list[dict[str, Any]], rate: float, burst: int) -> list[int]:
    """Each admitted customer's scheduled arrival, as docs/audit-format.md derives it
    from an admit entry (t, n, p); an entry without p means arrival at t."""
    out: list[int] = []
    for e in of_kind(entries, "admit"):
        p = e.get("p")
        for i in range(e["n"]):
            out.append(e["t"] if p is None else max(e["t"], p + -(-i * 1_000_000 // int(rate))))
    return out


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
    arrivals = not_befores(entries, RATE, BURST)
    peak = busiest_window(arrivals)
    print(f"busiest 1-s window of arrivals: {peak} (bound {RATE + BURST})")
    assert peak <= RATE + BURST
