"""Pre-queue fairness: joins before opening are shuffled at opening by a committed seed.

Customers who join inside the pre-queue window get no seq by arrival (being early by a
millisecond buys nothing). At opening the seed whose SHA-256 was published at creation is
revealed, the pre-queue takes seqs 1..P in ascending SHA-256(seed || digest) order, later
joins get seqs > P, and nobody is admitted before every pre-queue customer has a seq.
Every order below is recomputed here from the revealed seed and the digests with hashlib
alone, not with the gate's own code. Real redis-server processes; waits have deadlines.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gate.campaign import parse_spec
from gate.redis_server import RedisServer
from gate.room import JOIN_OK, PREQUEUED, Room
from gate.room.keys import CampaignKeys
from gate.room.scripts import Scripts
from gate.service import Gate
from gate.signing import load_or_create_keys
from gate.tokens import PREQUEUE_TICKET, TICKET, TokenSigner, customer_digest
from tests.helpers import of_kind, wait_for

ACTOR = "ops"
CHUNK = 37  # several chunks for 200 customers, and a short last one


def pq_spec(campaign: str, opens_in_s: float, window_s: int = 600) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": campaign,
        "opens_at": (now + timedelta(seconds=opens_in_s)).isoformat(),
        "closes_at": (now + timedelta(hours=1)).isoformat(),
        "quota": {"unit": "item", "total": 1000000},
        "admission": {"rate_per_s": 1000, "burst": 1000, "max_active": 100000},
        "prequeue": {"window_s": window_s, "shuffle": True},
    }


def recompute(seed: bytes, digests: set[bytes]) -> dict[bytes, int]:
    """The published rule, written out independently: ascending SHA-256(seed || digest)."""
    order = sorted(digests, key=lambda d: hashlib.sha256(seed + d).digest())
    return {digest: seq for seq, digest in enumerate(order, start=1)}


def pairs(entry: dict[str, Any]) -> list[tuple[int, bytes]]:
    s = entry["s"]
    return [(int(s[i]), bytes(s[i + 1])) for i in range(0, len(s), 2)]


async def redis_now_us(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1_000_000 + int(micros)


async def wait_open(redis: Redis, campaign: str) -> None:
    opens = int(await redis.hget(CampaignKeys(campaign).meta, "opens_at_us") or 0)

    async def opened() -> bool:
        return await redis_now_us(redis) >= opens

    await wait_for(opened, 15, f"{campaign} open by Redis time", interval_s=0.02)


def digest_of(i: int) -> bytes:
    return hashlib.sha256(f"customer-{i}".encode()).digest()[:16]


@pytest.fixture
async def rooms(any_redis: RedisServer) -> AsyncIterator[tuple[Room, Room]]:
    """Two Rooms on two connections to the same Redis: two assigners that can race."""
    clients = [Redis.from_url(any_redis.url) for _ in range(2)]
    await clients[0].flushall()
    scripts = Scripts()
    await scripts.load_all(clients[0])
    yield Room(clients[0], scripts), Room(clients[1], scripts)
    for client in clients:
        await client.aclose()


async def test_shuffle_follows_the_committed_seed_not_arrival(rooms: tuple[Room, Room]) -> None:
    room, other = rooms
    redis = room.redis
    c, n = "pq", 200
    k = CampaignKeys(c)
    await room.create(parse_spec(pq_spec(c, opens_in_s=2.0)), ACTOR)
    arrival = [digest_of(i) for i in range(n)]
    blocked_in_queue, blocked_outside = arrival[7], digest_of(10_000)
    late, late2 = digest_of(20_000), digest_of(20_001)

    # Before opening: a place in the pre-queue, no seq; a re-join is the same place.
    for start in range(0, n, 25):
        result = await room.join(c, arrival[start : start + 25])
        assert result.status == JOIN_OK, result
        assert result.tickets == [(PREQUEUED, True)] * 25, result.tickets
    again = await room.join(c, arrival[:10])
    assert again.tickets == [(PREQUEUED, False)] * 10
    await room.block(c, blocked_in_queue, ACTOR, "fraud")
    await room.block(c, blocked_outside, ACTOR, "fraud")
    assert (await room.join(c, [blocked_outside])).tickets == [(0, False)]
    assert await redis.hget(k.meta, "seq") == b"0"
    assert await redis.hlen(k.tickets) == 0
    assert await room.assign_prequeue(c) is False  # not open yet by Redis time
    admitted = await room.admit(c)
    assert admitted is not None and admitted.admitted == 0
    assert of_kind(await room.audit_entries(c), "reveal") == []

    await wait_open(redis, c)
    # The first join after opening freezes the pre-queue: it reveals the seed and gets
    # a seq above the pre-queue's range; a pre-queue customer does not get a second seq.
    frozen = await room.join(c, [late, arrival[0]])
    assert frozen.tickets == [(n + 1, True), (PREQUEUED, False)]
    admitted = await room.admit(c)
    assert admitted is not None and admitted.admitted == 0 and admitted.cursor == 0

    # The chunks are fenced on the position and checked before any write.
    scripts, keys = room.scripts, [k.meta, k.prequeue, k.tickets, k.blocked, k.revoked, k.audit]
    size_before = await redis.llen(k.audit)
    stale = await scripts.call(redis, "prequeue_assign", keys, [5, "", arrival[1]])
    assert [int(stale[0]), int(stale[1]), int(stale[2])] == [0, 0, n]
    with pytest.raises(Exception, match="not in the pre-queue"):
        await scripts.call(redis, "prequeue_assign", keys, [0, "", late2])
    with pytest.raises(Exception, match="twice"):
        await scripts.call(redis, "prequeue_assign", keys, [0, "", arrival[1], arrival[1]])
    assert await redis.llen(k.audit) == size_before
    assert await redis.hlen(k.tickets) == 1

    # Two assigners race, chunk by chunk, on two connections: both finish, no seq twice.
    done = await asyncio.gather(
        room.assign_prequeue(c, chunk_size=CHUNK), other.assign_prequeue(c, chunk_size=CHUNK)
    )
    assert done == [True, True]
    assert await redis.exists(k.prequeue) == 0  # dropped with the last chunk

    entries = await room.audit_entries(c)
    create = of_kind(entries, "admin-create")[0]
    (reveal,) = of_kind(entries, "reveal")
    seed = bytes.fromhex(reveal["seed"].decode())
    assert hashlib.sha256(seed).hexdigest() == create["hq"].decode()
    # the ballot's seed (committed as h) stays secret: opening reveals only the pre-queue's
    assert hashlib.sha256(seed).hexdigest() != create["h"].decode()
    assert int(reveal["p"]) == n
    prejoined = [bytes(d) for e in of_kind(entries, "prejoin") for d in e["c"]]
    assert sorted(prejoined) == sorted(arrival)  # each customer logged once

    chunks = of_kind(entries, "prequeue")
    assert len(chunks) == math.ceil(n / CHUNK)  # no chunk written twice
    given = [pair for chunk in chunks for pair in pairs(chunk)]
    assert [seq for seq, _ in given] == list(range(1, n + 1))
    expected = recompute(seed, set(prejoined))
    assert dict((d, s) for s, d in given) == expected
    tickets = {bytes(d): int(s) for d, s in (await redis.hgetall(k.tickets)).items()}
    assert tickets == {**expected, late: n + 1}
    # Not the arrival order: the arrival order is checked against the recomputation.
    assert [expected[d] for d in arrival] != list(range(1, n + 1))
    assert sum(expected[d] == i for i, d in enumerate(arrival, start=1)) < n // 10

    # The customer blocked while waiting still took their place, revoked at once.
    blocked_seq = expected[blocked_in_queue]
    assert [int(x) for chunk in chunks for x in chunk.get("x", [])] == [blocked_seq]
    assert await redis.sismember(k.revoked, str(blocked_seq))

    # Admission starts once the last chunk is in, in seq order, skipping the blocked seq.
    admitted = await room.admit(c)
    assert admitted is not None and admitted.admitted == n  # n + 1 seqs, one revoked
    entries = await room.audit_entries(c)
    positions = {e["i"]: e for e in entries}
    last_chunk = max(i for i, e in positions.items() if e["k"] == b"prequeue")
    admits = [e for e in entries if e["k"] == b"admit"]
    assert admits and min(e["i"] for e in admits) > last_chunk
    assert int(admits[0]["f"]) == 1 and [int(x) for x in admits[0]["x"]] == [blocked_seq]
    joins = of_kind(entries, "join")
    assert all(seq > n for e in joins for seq, _ in pairs(e))
    assert (
        min(e["i"] for e in joins) > reveal["i"] > max(e["i"] for e in of_kind(entries, "prejoin"))
    )

    # After the shuffle a re-join returns the shuffled seq; a new customer comes after.
    result = await room.join(c, [arrival[0], late2])
    assert result.tickets == [(expected[arrival[0]], False), (n + 2, True)]


async def test_a_pre_queue_nobody_joined_opens_at_once(rooms: tuple[Room, Room]) -> None:
    room, _ = rooms
    c = "empty-pq"
    await room.create(parse_spec(pq_spec(c, opens_in_s=0.5)), ACTOR)
    await wait_open(room.redis, c)
    assert await room.assign_prequeue(c) is True
    (reveal,) = of_kind(await room.audit_entries(c), "reveal")
    assert int(reveal["p"]) == 0
    assert (await room.join(c, [digest_of(1)])).tickets == [(1, True)]
    admitted = await room.admit(c)
    assert admitted is not None and admitted.admitted == 1


async def status(public: Any, campaign: str, ticket: str, customer: str) -> dict[str, Any]:
    r = await public.get(
        f"/q/{campaign}/status", params={"ticket": ticket}, headers={"X-Customer-Id": customer}
    )
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


@pytest.mark.slow
async def test_http_prequeue_tickets_get_their_seq_at_opening(
    gate: Gate, public: Any, admin: Any, keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTP, with the gate's own admission loop doing the shuffle at opening."""
    c, n = "http-pq", 40
    r = await admin.post("/admin/campaigns", json=pq_spec(c, opens_in_s=3.0))
    assert r.status == 201, await r.text()
    keys = load_or_create_keys(keys_file, create=False)
    signer = TokenSigner(keys)
    customers = [f"customer-{i:03d}" for i in range(n)]
    lookups: list[bytes] = []
    original = gate.room.ticket_seq

    async def counted(campaign: str, digest: bytes) -> int | None:
        lookups.append(digest)
        return await original(campaign, digest)

    monkeypatch.setattr(gate.room, "ticket_seq", counted)

    tickets: dict[str, str] = {}
    for customer in customers:  # one at a time: a known arrival order
        r = await public.post(f"/q/{c}/join", headers={"X-Customer-Id": customer})
        assert r.status == 201, await r.text()
        body = await r.json()
        assert body["state"] == "prequeue", "joined after opening: the machine was too slow"
        assert body["seq"] == 0 and body["position"] is None and body["eta_s"] is None
        token = signer.verify(body["ticket"], PREQUEUE_TICKET)
        assert token.seq == 0 and token.digest == customer_digest(keys, c, customer)
        tickets[customer] = body["ticket"]
    r = await public.post(f"/q/{c}/join", headers={"X-Customer-Id": customers[0]})
    assert r.status == 200
    again = await r.json()
    assert again["created"] is False and again["ticket"] == tickets[customers[0]]

    # Waiting for the opening costs no Redis call.
    for customer in customers[:10]:
        body = await status(public, c, tickets[customer], customer)
        assert body["state"] == "prequeue" and body["seq"] == 0 and "ticket" not in body
    assert lookups == []

    # The admission loop shuffles at opening; then a seq-0 ticket is swapped for a new one.
    first: dict[str, Any] = {}

    async def shuffled() -> bool:
        first.update(await status(public, c, tickets[customers[0]], customers[0]))
        return first["state"] != "prequeue"

    await wait_for(shuffled, 20, "the pre-queue shuffled")
    seqs = {customers[0]: signer.verify(first["ticket"], TICKET).seq}
    assert first["seq"] == seqs[customers[0]]
    for customer in customers[1:]:
        body = await status(public, c, tickets[customer], customer)
        assert body["state"] in ("waiting", "admitted"), body
        token = signer.verify(body["ticket"], TICKET)
        assert body["seq"] == token.seq and token.digest == customer_digest(keys, c, customer)
        seqs[customer] = token.seq
    assert len(lookups) == n  # one Redis lookup per seq-0 ticket
    assert sorted(seqs.values()) == list(range(1, n + 1))

    entries = await gate.room.audit_entries(c)
    (reveal,) = of_kind(entries, "reveal")
    seed = bytes.fromhex(reveal["seed"].decode())
    assert hashlib.sha256(seed).hexdigest() == of_kind(entries, "admin-create")[0]["hq"].decode()
    expected = recompute(seed, {customer_digest(keys, c, who) for who in customers})
    assert {customer_digest(keys, c, who): seq for who, seq in seqs.items()} == expected
    assert [seqs[who] for who in customers] != list(range(1, n + 1))  # not arrival order
    last_chunk = max(e["i"] for e in of_kind(entries, "prequeue"))
    assert all(e["i"] > last_chunk for e in of_kind(entries, "admit"))

    # The new ticket is an ordinary one: its polls need no lookup and carry no new ticket.
    new_ticket = signer.issue(
        TICKET, c, seqs[customers[-1]], customer_digest(keys, c, customers[-1])
    )
    body = await status(public, c, new_ticket, customers[-1])
    assert "ticket" not in body and body["seq"] == seqs[customers[-1]]
    assert len(lookups) == n

    # (the client keeps no pass cookie from the polls: a POST with a cookie and no Origin
    # would be refused as a cross-site write)
    public.session.cookie_jar.clear()
    r = await public.post(f"/q/{c}/join", headers={"X-Customer-Id": "late-comer"})
    assert r.status == 201
    assert (await r.json())["seq"] == n + 1

    # the waiting page's client keeps the ticket a status answer hands out
    script = await (await public.get("/q/_static/fairgate.js")).text()
    assert "if (answer.ticket && answer.ticket !== ticket) {" in script
