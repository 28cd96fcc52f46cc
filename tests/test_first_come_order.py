"""First come, strictly, at the sell-out (issue 12): nobody admitted later books what an
earlier customer could have had.

Admitted customers send their claims in whatever order their browsers do. Before, the
claim script served whoever came first while anything was left, so at the sell-out an
early customer could find it sold out (or get only a part) after a later one took the
rest: in `make demo`, 107-191 customers told "sold out" at their claim while customers
admitted after them booked. Now a claim takes only what the customers admitted before it
and not yet claimed (max each) cannot: a larger one waits (`earlier_claims`) until they
have claimed; the claim entry logs what was owed, and the audit replay checks it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gate.audit.verify import verify_file
from gate.campaign import parse_spec
from gate.room import ClaimResult, Room
from gate.signing import SigningKeys
from gate.tokens import customer_digest
from tests.helpers import (
    amount_quota,
    as_customer,
    create_committed,
    export_to_file,
    join,
    seal_everything,
    spec,
)

MIN, MAX, STEP = 1_000_000, 10_000_000, 10_000


async def _campaign(
    room: Room, keys: SigningKeys, c: str, total: int, customers: int, overbook: float = 1.0
) -> list[bytes]:
    """`customers` joined in order (seq n is digests[n - 1]); admission not run yet."""
    raw = spec(
        c, rate_per_s=100_000, burst=10_000, max_active=100_000, pass_ttl_s=300, overbook=overbook
    )
    raw["quota"] = amount_quota(total, MIN, MAX, STEP, partial_fill=True)
    await create_committed(room, keys, parse_spec(raw), "ops")
    digests = [customer_digest(keys, c, f"customer-{n}") for n in range(1, customers + 1)]
    await room.join(c, digests)
    return digests


async def _cursor(room: Room, c: str) -> int:
    result = await room.admit(c, max_per_call=100)
    assert result is not None
    return result.cursor


async def _claim(room: Room, c: str, seq: int, digest: bytes, amount: int, key: str) -> ClaimResult:
    """A claim as a browser makes it: with the pass its status poll got (pass.lua logs
    the pass; the replay refuses a claim without one)."""
    await room.pass_check(c, seq, digest)
    return await room.claim(c, seq, digest, amount, key)


async def _verify(room: Room, keys: SigningKeys, c: str, tmp_path: Path) -> Any:
    await seal_everything(room.redis, room.scripts, keys, c)
    path = await export_to_file(room.redis, c, keys, tmp_path / f"{c}.jsonl")
    return await asyncio.to_thread(
        verify_file, path, keys.public_keys(), keys_from="published", require_sealed=True
    )


async def test_a_later_claim_waits_for_earlier_customers_at_the_sell_out(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    c = "order"
    d = await _campaign(room, keys, c, total=25_000_000, customers=4)
    assert await _cursor(room, c) == 3  # 10,000,000 + 10,000,000 + at least 1,000,000

    # seq 3 asks 10,000,000 first: seqs 1 and 2 may still take 10,000,000 each of the
    # 25,000,000, so 5,000,000 is free for it now; before, it got its 10,000,000 at once
    early = await _claim(room, c, 3, d[2], 10_000_000, "k3")
    assert (early.ok, early.code, early.detail) == (False, "earlier_claims", "5000000"), early
    # seq 2 takes 5,000,000 (seq 1 still owed 10,000,000): now seq 3's claim fits
    assert (await _claim(room, c, 2, d[1], 5_000_000, "k2")).amount == 5_000_000
    assert (await _claim(room, c, 3, d[2], 10_000_000, "k3")).amount == 10_000_000
    # 10,000,000 left, all owed to seq 1: nobody else comes in until it has claimed
    assert await _cursor(room, c) == 3
    assert (await _claim(room, c, 1, d[0], 4_000_000, "k1")).amount == 4_000_000
    assert await _cursor(room, c) == 4
    # seq 4, first in line now, gets the rest, in part
    last = await _claim(room, c, 4, d[3], 10_000_000, "k4")
    assert (last.ok, last.amount) == (True, 6_000_000), last

    report = await _verify(room, keys, c, tmp_path)
    assert (report.admitted, report.claims) == (4, 4)


async def test_an_overbooked_campaign_serves_claims_as_they_come(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """Overbook > 1: the operator admits more than the quota serves (expecting no-shows),
    so admitted customers may find it sold out, and their claims are not held in order."""
    c = "order-overbooked"
    d = await _campaign(room, keys, c, total=25_000_000, customers=4, overbook=2)
    assert await _cursor(room, c) == 4
    assert (await _claim(room, c, 3, d[2], 10_000_000, "k3")).amount == 10_000_000
    report = await _verify(room, keys, c, tmp_path)
    assert report.claims == 1


async def test_admission_keeps_max_for_each_admitted_customer_who_has_not_claimed(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """Overbook 1 (the default): a newcomer is admitted only while what is left beyond
    max for each admitted customer who has not claimed serves it at least the minimum, so
    every admitted customer's claim fits (before: what is left / the minimum were let in:
    25 customers for 25,000,000, most of whom then found it sold out at their claim)."""
    c = "order-admit"
    raw = spec(c, rate_per_s=100_000, burst=10_000, max_active=100_000, pass_ttl_s=300)
    raw["quota"] = amount_quota(25_000_000, MIN, MAX, STEP, partial_fill=True)
    await create_committed(room, keys, parse_spec(raw), "ops")
    d = [customer_digest(keys, c, f"customer-{n}") for n in range(1, 9)]
    await room.join(c, d)

    async def cursor() -> int:
        result = await room.admit(c, max_per_call=100)
        assert result is not None
        return result.cursor

    assert await cursor() == 3  # 10,000,000 + 10,000,000 + at least 1,000,000
    assert await cursor() == 3  # however often admission runs
    assert (await _claim(room, c, 1, d[0], 4_000_000, "k1")).amount == 4_000_000
    # 21,000,000 left, seqs 2 and 3 owed 20,000,000: room for one more at the minimum
    assert await cursor() == 4
    for seq, amount in ((2, 10_000_000), (3, 10_000_000)):
        assert (await _claim(room, c, seq, d[seq - 1], amount, f"k{seq}")).amount == amount
    # 1,000,000 left and seq 4 owed it: seq 4 gets it, in part; nobody else comes in
    assert (await _claim(room, c, 4, d[3], 3_000_000, "k4")).amount == 1_000_000
    assert await cursor() == 4

    report = await _verify(room, keys, c, tmp_path)
    assert (report.admitted, report.claims) == (4, 4)


async def test_customers_beyond_what_is_left_poll_often_enough_to_hear_it_sold_out(
    gate: Any, public: Any, admin: Any
) -> None:
    """At the sell-out admission slows (each admitted customer is held max), so the
    measured rate falls and a waiting customer's poll interval, sized for a queue that
    moves, grows to half a minute: customers the quota left cannot reach even at the
    minimum each heard "sold out" up to a minute late in `make demo` beside a CPU hog.
    They now poll at least every ~2 s; those the quota may still reach, as before."""
    body = spec("order-poll", rate_per_s=1, burst=1, pass_ttl_s=300)
    body["quota"] = amount_quota(3_000_000, MIN, 2_000_000, STEP)
    assert (await admin.post("/admin/campaigns", json=body)).status == 201
    tickets = [(await join(public, "order-poll", f"poll-{n}"))["ticket"] for n in range(40)]

    async def view(n: int) -> dict[str, Any]:
        r = await public.get(
            "/q/order-poll/status",
            params={"ticket": tickets[n]},
            headers=as_customer(f"poll-{n}"),
        )
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer

    near, far = await view(1), await view(39)
    assert near["state"] == far["state"] == "waiting", (near, far)
    # 3,000,000 left reaches 3 customers at the minimum: the last in line polls within
    # 2.4 s (before: its position / 1 admitted a second / 4, about 10 s)
    assert far["position"] > 3 and far["poll_after_ms"] <= 2400, far
    assert near["position"] <= 3 and near["poll_after_ms"] >= 400, near
