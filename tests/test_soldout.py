"""Admission knows the quota: nobody is admitted to a product that is already gone.

One first_come amount campaign with the default overbook (1.0): 5,500,000 in total, at
least 1,000,000 and at most 2,000,000 per customer, and 12 customers in the queue.

1. What is left serves 3 customers when each admitted one may take the max (2,000,000
   + 2,000,000 + at least 1,000,000; first come strictly, issue 12), so admission (the
   gate's own loop calling admit.lua) lets exactly seqs 1-3 in and keeps the others
   waiting, however many more admission ticks pass.
2. Customers 1-3 reserve 1,600,000 each (every admitted customer's claim fits): 700,000
   is left, below the minimum. Every waiting customer's status says `soldout` within a
   second, and still nobody else is admitted.
3. The core system releases two reservations: 3,200,000 is back, 3,900,000 left, enough
   for 2 more (2,000,000 + at least 1,000,000); so the next two in seq order, 4 and 5,
   are admitted and nobody else. The waiting customers see `waiting` again with their
   positions, and the audit log shows admission in unbroken seq order: 1-3, then 4-5.
"""

from __future__ import annotations

from typing import Any

from gate.service import Gate
from tests.helpers import amount_quota, as_customer, spec, wait_for

CAMPAIGN = "soldout"
CUSTOMERS = 12
SOLDOUT_DEADLINE_S = 1.0  # the cache refreshes every 10 ms; this leaves room for a busy box


async def test_admission_stops_and_resumes_with_the_quota(
    gate: Gate, public: Any, admin: Any, core: Any
) -> None:
    body = spec(
        CAMPAIGN, rate_per_s=1000, burst=100, max_active=1000, pass_ttl_s=600, reservation_ttl_s=600
    )
    body["quota"] = amount_quota(5_500_000, 1_000_000, 2_000_000, 10_000)
    r = await admin.post("/admin/campaigns", json=body)
    assert r.status == 201, await r.text()

    tickets: dict[int, str] = {}

    def customer(seq: int, **more: str) -> dict[str, str]:
        return as_customer(f"cust-{seq}", **more)  # customer n joins n-th: seq n

    for n in range(1, CUSTOMERS + 1):
        r = await public.post(f"/q/{CAMPAIGN}/join", headers={"X-Customer-Id": f"cust-{n}"})
        assert r.status == 201, await r.text()
        joined = await r.json()
        assert joined["seq"] == n
        tickets[n] = joined["ticket"]

    async def status(seq: int) -> dict[str, Any]:
        r = await public.get(
            f"/q/{CAMPAIGN}/status", params={"ticket": tickets[seq]}, headers=customer(seq)
        )
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer

    async def meta(field: str) -> str:
        found = await gate.room.meta(CAMPAIGN)
        assert found is not None
        return found[field]

    async def cursor_is(n: int) -> bool:
        return int(await meta("cursor")) == n

    async def admission_ticks(count: int) -> None:
        """Wait until the gate's admission loop has called admit `count` more times."""
        start = gate.admitter.calls

        async def ticked() -> bool:
            return gate.admitter.calls >= start + count

        await wait_for(ticked, 5, f"{count} admission ticks")

    # 1. Exactly the 3 customers the quota serves at the max each (but the last) are in.
    await wait_for(lambda: cursor_is(3), 5, "the first 3 admitted")
    await admission_ticks(5)
    assert int(await meta("cursor")) == 3 and int(await meta("admitted")) == 3
    for seq in range(4, CUSTOMERS + 1):
        view = await status(seq)
        assert view["state"] == "waiting" and view["position"] == seq - 3, view
    passes: dict[int, str] = {}
    for seq in range(1, 4):
        view = await status(seq)
        assert view["state"] == "admitted", view
        passes[seq] = view["pass"]
    public.session.cookie_jar.clear()

    # 2. Three reservations of 1,600,000 leave 700,000: below the minimum, sold out.
    reservations: dict[int, str] = {}
    for seq in range(1, 4):
        r = await public.post(
            f"/q/{CAMPAIGN}/claim",
            json={"amount": "1600000"},
            headers=customer(seq, **{"X-Gate-Pass": passes[seq]}),
        )
        assert r.status == 201, await r.text()
        reservations[seq] = (await r.json())["reservation"]

    async def all_waiting_see(state: str) -> bool:
        views = [await status(seq) for seq in range(4, CUSTOMERS + 1)]
        return all(v["state"] == state for v in views)

    await wait_for(
        lambda: all_waiting_see("soldout"),
        SOLDOUT_DEADLINE_S,
        "every waiting customer to see soldout",
    )
    await admission_ticks(5)
    assert int(await meta("cursor")) == 3 and int(await meta("admitted")) == 3
    assert await all_waiting_see("soldout")
    stats = await (await admin.get(f"/admin/campaigns/{CAMPAIGN}/stats")).json()
    assert stats["held"] == "4800000" and stats["remaining"] == "700000"

    # 3. Two reservations released: 3,200,000 back; seqs 4 and 5 are next, nobody else.
    for seq in (1, 2):
        r = await core.post(
            f"/q/{CAMPAIGN}/reservations/{reservations[seq]}/release",
            json={"reason": "core declined"},
        )
        assert r.status == 200 and (await r.json())["state"] == "released", await r.text()
    await wait_for(lambda: cursor_is(5), 5, "admission to resume after the release")
    await admission_ticks(5)
    assert int(await meta("cursor")) == 5 and int(await meta("admitted")) == 5
    for seq in (4, 5):
        view = await status(seq)
        assert view["state"] == "admitted" and view["pass"], view
    for seq in range(6, CUSTOMERS + 1):
        view = await status(seq)
        assert view["state"] == "waiting" and view["position"] == seq - 5, view

    # Nobody jumped the queue: admission covered 1..5 in unbroken seq order, once each
    # (1-3 may come in more than one tick, as the joins trickled in), 1-3 before the first
    # claim; 4 once the first release left room for its max, 5 only after the second
    # (in one step when no admission tick fell between the two releases).
    entries = await gate.room.audit_entries(CAMPAIGN)
    admits = [e for e in entries if e["k"] == b"admit"]
    ranges = [(int(e["f"]), int(e["l"])) for e in admits]
    admitted_seqs = [s for first, last in ranges for s in range(first, last + 1)]
    assert admitted_seqs == list(range(1, 6)), ranges
    assert all("x" not in e for e in admits)
    first_claim = min(e["i"] for e in entries if e["k"] == b"claim")
    releases = [e["i"] for e in entries if e["k"] == b"release"]
    late = [e for e in admits if int(e["l"]) >= 4]
    assert all(e["i"] < first_claim for e in admits if int(e["l"]) <= 3), ranges
    assert [(int(e["f"]), int(e["l"])) for e in late] in ([(4, 5)], [(4, 4), (5, 5)]), ranges
    assert late[0]["i"] > min(releases) and late[-1]["i"] > max(releases), ranges
