"""I4 for claims: Redis killed with kill -9 in the middle of a claim burst, and restarted.

A real `gate serve` process in front of a private redis-server with AOF and
`appendfsync always`. Customers join and get their passes over HTTP; then a burst of
claims runs, and as soon as some have been acknowledged (201) Redis is killed with
SIGKILL from another task, while claims are still in flight. The burst goes on against
the dead Redis; then Redis is restarted on the same port and data directory.

What must hold afterwards:
- every acknowledged reservation is in Redis, with its seq, amount and state `held`;
- held + confirmed <= total, and the acknowledged amounts sum to at most the total;
- every request that failed during the outage got 503 with Retry-After (never a 500,
  never a misleading 401/403); retried afterwards with the same idempotency key it gets
  the very reservation that had been written (200, replayed) or a fresh answer (201,
  or 409 sold_out); still no oversell, and then Redis holds exactly the acknowledged
  reservations;
- the audit log, replayed from the start, has a claim entry for every acknowledged
  reservation (same seq and amount), and its running sum never exceeds the total.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import redis as sync_redis

from gate.redis_server import RedisServer, free_port
from tests.helpers import ADMIN_TOKEN, GateProcess, open_amount_spec, wait_for

CAMPAIGN = "deposit-durable"
CUSTOMERS = 300
TOTAL = 600_000_000  # demand (about 300 x 5.5M) is far above it
LOW, HIGH, STEP = 1_000_000, 10_000_000, 10_000
KILL_AFTER_ACKS = 50
CONCURRENCY = 40


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    retry_after: str | None


async def call(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Answer:
    async with session.request(method, url, **kwargs) as r:
        body = await r.json(content_type=None)
        return Answer(r.status, body, r.headers.get("Retry-After"))


def amount_spec() -> dict[str, Any]:
    return open_amount_spec(CAMPAIGN, TOTAL, LOW, HIGH, STEP)


async def passes_for_everyone(
    session: aiohttp.ClientSession, gate: GateProcess
) -> tuple[dict[str, int], dict[str, str]]:
    """Join over HTTP, wait for the admission loop, fetch each pass from status."""
    limit = asyncio.Semaphore(CONCURRENCY)
    seqs: dict[str, int] = {}
    tickets: dict[str, str] = {}

    async def join(customer: str) -> None:
        async with limit:
            a = await call(
                session,
                "POST",
                f"{gate.url}/q/{CAMPAIGN}/join",
                headers={"X-Customer-Id": customer},
            )
        assert a.status == 201, a.body
        seqs[customer], tickets[customer] = a.body["seq"], a.body["ticket"]

    customers = [f"cust-{i}" for i in range(CUSTOMERS)]
    await asyncio.gather(*(join(c) for c in customers))
    passes: dict[str, str] = {}

    async def fetch_pass(customer: str) -> None:
        async with limit:
            a = await call(
                session,
                "GET",
                f"{gate.url}/q/{CAMPAIGN}/status",
                params={"ticket": tickets[customer]},
                headers={"X-Customer-Id": customer},
            )
        assert a.status == 200, a.body
        if a.body["state"] == "admitted":
            passes[customer] = a.body["pass"]

    async def everyone_has_a_pass() -> bool:
        await asyncio.gather(*(fetch_pass(c) for c in customers if c not in passes))
        return len(passes) == CUSTOMERS

    await wait_for(everyone_has_a_pass, 20, "every customer admitted", interval_s=0.1)
    return seqs, passes


def audit_entries(client: sync_redis.Redis) -> list[dict[bytes, Any]]:
    raw = client.lrange(f"fg:{{{CAMPAIGN}}}:audit", 0, -1)
    return [msgpack.unpackb(item, raw=True, strict_map_key=False) for item in raw]


def reservations(client: sync_redis.Redis) -> dict[str, list[Any]]:
    raw = client.hgetall(f"fg:{{{CAMPAIGN}}}:res")
    return {rid.decode(): msgpack.unpackb(value, raw=True) for rid, value in raw.items()}


async def test_acknowledged_claims_survive_kill_9_of_redis(tmp_path: Path, keys_file: Path) -> None:
    port = free_port()
    redis_dir = tmp_path / "redis"
    server = RedisServer(redis_dir, port=port, appendfsync="always")
    server.start()
    gate = GateProcess(server.url, tmp_path / "gate", keys_file)
    client = sync_redis.Redis(port=port)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY + 10))
    try:
        assert client.config_get("appendfsync")["appendfsync"] == "always"
        gate.start()
        await gate.wait_ready()
        created = await call(
            session,
            "POST",
            f"{gate.admin_url}/admin/campaigns",
            json=amount_spec(),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert created.status == 201, created.body
        seqs, passes = await passes_for_everyone(session, gate)

        rng = random.Random(4)
        asked = {c: rng.randrange(LOW, HIGH + 1, STEP) for c in passes}
        first: dict[str, Answer] = {}
        acked_enough = asyncio.Event()
        limit = asyncio.Semaphore(CONCURRENCY)

        async def claim(customer: str) -> Answer:
            return await call(
                session,
                "POST",
                f"{gate.url}/q/{CAMPAIGN}/claim",
                json={"amount": str(asked[customer]), "idempotency_key": f"key-{customer}"},
                headers={"X-Gate-Pass": passes[customer], "X-Customer-Id": customer},
            )

        async def burst_claim(customer: str) -> None:
            async with limit:
                first[customer] = answer = await claim(customer)
            if (
                answer.status == 201
                and sum(a.status == 201 for a in first.values()) >= KILL_AFTER_ACKS
            ):
                acked_enough.set()

        async def killer() -> int:
            await acked_enough.wait()
            server.kill()  # SIGKILL: no shutdown, no final fsync
            return len(first)

        kill_task = asyncio.create_task(killer())
        await asyncio.gather(*(burst_claim(c) for c in passes))
        answered_before_kill = await asyncio.wait_for(kill_task, 5)

        statuses = sorted({a.status for a in first.values()})
        outage = [c for c, a in first.items() if a.status == 503]
        acked = {c: a.body for c, a in first.items() if a.status == 201}
        # the kill landed in the middle of the burst
        assert len(acked) >= KILL_AFTER_ACKS and answered_before_kill < CUSTOMERS, statuses
        assert outage, statuses
        assert set(statuses) <= {201, 409, 503}, statuses
        for a in first.values():
            if a.status == 503:
                assert a.body["error"]["code"] == "unavailable" and a.retry_after, a.body
            elif a.status == 409:
                assert a.body["error"]["code"] == "sold_out", a.body

        # Restart on the same port and directory: Redis replays its AOF.
        restarted = RedisServer(redis_dir, port=port, appendfsync="always")
        await asyncio.to_thread(restarted.start)
        server = restarted
        await gate.wait_ready()

        # Every acknowledged reservation is there, as acknowledged.
        held_before_retry = reservations(client)
        lost = [
            b["reservation"] for b in acked.values() if b["reservation"] not in held_before_retry
        ]
        assert not lost, f"acknowledged reservations lost: {lost}"
        for c, body in acked.items():
            seq, amount, state, _expires, _digest, asked_amount = held_before_retry[
                body["reservation"]
            ]
            assert (seq, int(amount), state, int(asked_amount)) == (
                seqs[c],
                int(body["amount"]),
                b"held",
                asked[c],
            )
        meta = {
            k.decode(): v.decode() for k, v in client.hgetall(f"fg:{{{CAMPAIGN}}}:meta").items()
        }
        assert int(meta["held"]) + int(meta["confirmed"]) <= TOTAL
        assert sum(int(b["amount"]) for b in acked.values()) <= int(meta["held"])

        # Retry what failed, with the same idempotency key.
        by_seq = {r[0]: rid for rid, r in held_before_retry.items()}
        retried: dict[str, Answer] = {}
        for c in outage:
            retried[c] = a = await claim(c)
            written = by_seq.get(seqs[c])
            if a.status == 200:  # it had been written before the kill: the same one
                assert a.body["reservation"] == written, (c, a.body)
            elif a.status == 201:
                assert written is None, (c, a.body)
            else:
                assert (a.status, a.body["error"]["code"]) == (409, "sold_out"), a.body
                assert written is None, (c, a.body)
        for c, a in retried.items():
            if a.status in (200, 201):
                acked[c] = a.body

        # No oversell, and Redis holds exactly the acknowledged reservations.
        final = reservations(client)
        assert {body["reservation"] for body in acked.values()} == set(final)
        acked_sum = sum(int(b["amount"]) for b in acked.values())
        meta = {
            k.decode(): v.decode() for k, v in client.hgetall(f"fg:{{{CAMPAIGN}}}:meta").items()
        }
        assert acked_sum == int(meta["held"]) and meta["confirmed"] == "0"
        assert acked_sum <= TOTAL

        # The audit log, replayed: gap-free, a claim entry per acknowledged reservation.
        entries = audit_entries(client)
        assert [e[b"i"] for e in entries] == list(range(1, len(entries) + 1))
        claims: dict[str, tuple[int, int]] = {}
        running = 0
        for e in entries:
            if e[b"k"] == b"claim":
                claims[e[b"r"].decode()] = (e[b"s"], int(e[b"m"]))
                running += int(e[b"m"])
                assert running <= TOTAL, e
        for c, body in acked.items():
            assert claims[body["reservation"]] == (seqs[c], int(body["amount"]))
        assert set(claims) == set(final)
        print(
            f"acknowledged before the kill: {len(first) - len(outage)} answers "
            f"({sum(a.status == 201 for a in first.values())} reservations), "
            f"503 during the outage: {len(outage)}, "
            f"replayed after restart: {sum(a.status == 200 for a in retried.values())}, "
            f"fresh after restart: {sum(a.status == 201 for a in retried.values())}, "
            f"held {meta['held']} of {TOTAL}"
        )
    finally:
        await session.close()
        gate.stop()
        client.close()
        server.stop()
