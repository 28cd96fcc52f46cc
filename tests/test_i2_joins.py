"""I2: one ticket per customer per campaign, under any concurrency and retries.

A real `gate serve` with two worker processes (sharing the port through SO_REUSEPORT)
takes 10,000 concurrent HTTP joins from 2,000 customers, each customer joining five
times in a shuffled order. Exactly 2,000 tickets come out, numbered 1..2000 with no
gap, and Redis and the audit log agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.room.scripts import Scripts
from gate.signing import load_or_create_keys
from gate.tokens import customer_digest
from tests.helpers import ADMIN_TOKEN, GateProcess, spec, wait_for

CUSTOMERS = 2000
RETRIES = 5
IN_FLIGHT = 1000
CAMPAIGN = "i2-joins"


def _children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (the workers of `gate serve`), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
async def gate_process(
    redis_url: str, tmp_path: Path, keys_file: Path
) -> AsyncIterator[GateProcess]:
    # I2 is about uniqueness, not speed: on a shared two-core test machine an event loop
    # can stall for more than the default 500 ms Redis timeout, and the gate would then
    # (rightly) fail closed with 503. Generous timeouts keep that out of this test; a
    # shortage of connections (instant 503s) still shows.
    process = GateProcess(
        redis_url,
        tmp_path / "gate",
        keys_file,
        workers=2,
        extra_env={"GATE_REDIS_TIMEOUT_MS": "5000", "GATE_STALE_AFTER_MS": "10000"},
    )
    process.start()
    try:
        await process.wait_ready()
        yield process
    finally:
        workers = _children(process.process.pid) if process.process is not None else []
        process.stop()

        # A child that outlives `gate serve` would keep a port and a CPU busy: end it,
        # then fail, since `gate serve` must take its workers down with it.
        async def children_gone() -> bool:
            return not any(_alive(pid) for pid in workers)

        with contextlib.suppress(AssertionError):
            await wait_for(children_gone, 5, "the children of `gate serve` to exit")
        leftover = [pid for pid in workers if _alive(pid)]
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
        assert leftover == [], f"children of `gate serve` outlived it: {leftover}"


@pytest.mark.slow
async def test_10000_concurrent_joins_give_exactly_2000_gap_free_tickets(
    gate_process: GateProcess, redis_url: str, keys_file: Path
) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        # Admission is paused so that this test is about joins only.
        async with admin.post(
            gate_process.admin_url + "/admin/campaigns", json=spec(CAMPAIGN)
        ) as r:
            assert r.status == 201, await r.text()
        async with admin.post(f"{gate_process.admin_url}/admin/campaigns/{CAMPAIGN}/pause") as r:
            assert r.status == 200, await r.text()

    customers = [f"customer-{n:05d}" for n in range(CUSTOMERS)]
    attempts = [c for c in customers for _ in range(RETRIES)]
    random.Random(20261201).shuffle(attempts)

    results: list[tuple[str, int, int, bool]] = []  # customer, status, seq, created
    failures: list[tuple[str, int, str]] = []
    slots = asyncio.Semaphore(IN_FLIGHT)
    url = f"{gate_process.url}/q/{CAMPAIGN}/join"
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=60)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def join(customer: str) -> None:
            async with slots, session.post(url, headers={"X-Customer-Id": customer}) as r:
                if r.status not in (200, 201):
                    failures.append((customer, r.status, await r.text()))
                    return
                body = await r.json()
                results.append((customer, r.status, body["seq"], body["created"]))

        started = time.perf_counter()
        await asyncio.gather(*(join(c) for c in attempts))
        elapsed = time.perf_counter() - started

    print(
        f"\nI2: {len(attempts)} joins ({CUSTOMERS} customers x {RETRIES}) through 2 workers, "
        f"{IN_FLIGHT} in flight: {elapsed:.2f} s, {len(attempts) / elapsed:.0f} requests/s"
    )
    assert failures == [], Counter((status, text[:120]) for _, status, text in failures)
    assert len(results) == len(attempts)

    seq_of: dict[str, set[int]] = {}
    for customer, _, seq, _ in results:
        seq_of.setdefault(customer, set()).add(seq)
    assert all(len(seqs) == 1 for seqs in seq_of.values()), "a customer got two tickets"
    assert set(seq_of) == set(customers)

    created = [(customer, seq) for customer, status, seq, made in results if made]
    assert all(status == 201 for _, status, _, made in results if made)
    assert all(status == 200 for _, status, _, made in results if not made)
    assert len(created) == CUSTOMERS
    assert Counter(customer for customer, _ in created) == Counter(customers)
    assert sorted(seq for _, seq in created) == list(range(1, CUSTOMERS + 1))
    assert {next(iter(seqs)) for seqs in seq_of.values()} == set(range(1, CUSTOMERS + 1))

    keys = CampaignKeys(CAMPAIGN)
    redis = Redis.from_url(redis_url)
    try:
        assert await redis.hlen(keys.tickets) == CUSTOMERS
        assert int(await redis.hget(keys.meta, "seq")) == CUSTOMERS
        stored = await redis.hgetall(keys.tickets)
        entries = await Room(redis, Scripts()).audit_entries(CAMPAIGN)
    finally:
        await redis.aclose()

    signing = load_or_create_keys(keys_file, create=False)
    expected = {customer_digest(signing, CAMPAIGN, c): next(iter(seq_of[c])) for c in customers}
    assert {digest: int(seq) for digest, seq in stored.items()} == expected

    # The audit log: gap-free indexes, and the join entries together list each seq once,
    # with the digest of the customer who holds it.
    assert [entry["i"] for entry in entries] == list(range(1, len(entries) + 1))
    logged: list[tuple[int, bytes]] = []
    batches = 0
    for entry in entries:
        if entry["k"] == b"join":
            flat = entry["s"]
            logged += [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
            batches += 1
    print(f"I2: the 2000 new tickets came in {batches} join calls that created tickets")
    assert sorted(seq for seq, _ in logged) == list(range(1, CUSTOMERS + 1))
    assert {digest: seq for seq, digest in logged} == expected
