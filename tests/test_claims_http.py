"""Claims over HTTP with a pass, and the core system's confirm/release callbacks (on the
core listener)."""

from __future__ import annotations

from typing import Any

from tests.helpers import admitted_pass, amount_spec, as_customer, wait_for


async def test_claim_confirm_release(public: Any, admin: Any, core: Any) -> None:
    body = amount_spec("dep")
    # Overbook 2: a fourth customer is let in although the first three may take it all at
    # max each (without it, admission would have told them sold out before their claim).
    body["admission"]["overbook"] = 2
    assert (await admin.post("/admin/campaigns", json=body)).status == 201
    passes = [await admitted_pass(public, "dep", f"c{i}") for i in range(4)]

    def h(i: int) -> dict[str, str]:
        return as_customer(f"c{i}", **{"X-Gate-Pass": passes[i]})

    r = await public.post("/q/dep/claim", json={"amount": "999999"}, headers=h(0))
    assert r.status == 400 and (await r.json())["error"]["code"] == "below_minimum"
    r = await public.post("/q/dep/claim", json={"amount": 1000001}, headers=h(0))
    assert r.status == 400 and (await r.json())["error"]["code"] == "bad_step"
    r = await public.post("/q/dep/claim", json={"amount": "10010000"}, headers=h(0))
    assert r.status == 409 and (await r.json())["error"]["code"] == "over_customer_limit"
    r = await public.post("/q/dep/claim", json={"amount": "abc"}, headers=h(0))
    assert r.status == 400 and (await r.json())["error"]["code"] == "bad_amount"
    r = await public.post("/q/dep/claim", json={"amount": "1000000"})
    assert r.status == 401
    r = await public.post("/q/dep/claim", json={"amount": "1000000"}, headers=as_customer("c0"))
    assert r.status == 401

    r = await public.post(
        "/q/dep/claim", json={"amount": "10000000", "idempotency_key": "a"}, headers=h(0)
    )
    assert r.status == 201, await r.text()
    first = await r.json()
    r = await public.post(
        "/q/dep/claim", json={"amount": "10000000", "idempotency_key": "a"}, headers=h(0)
    )
    assert r.status == 200 and (await r.json())["reservation"] == first["reservation"]

    rids = []
    for i in (1, 2):
        r = await public.post("/q/dep/claim", json={"amount": "10000000"}, headers=h(i))
        assert r.status == 201, await r.text()
        rids.append((await r.json())["reservation"])
    # r<n>-<8 random URL-safe characters>: unique even if a failover sets n back
    assert [rid.partition("-")[0] for rid in rids] == ["r2", "r3"]
    assert all(len(rid.partition("-")[2]) == 8 for rid in rids)
    r = await public.post("/q/dep/claim", json={"amount": "1000000"}, headers=h(3))
    assert r.status == 409 and (await r.json())["error"]["code"] == "sold_out"

    rid = first["reservation"]
    r = await core.post(f"/q/dep/reservations/{rid}/confirm", headers={"Authorization": ""})
    assert r.status == 401
    r = await core.post(f"/q/dep/reservations/{rid}/confirm")
    assert r.status == 200 and (await r.json())["state"] == "confirmed"
    r = await core.post(f"/q/dep/reservations/{rid}/release")
    assert r.status == 409 and (await r.json())["error"]["code"] == "reservation_confirmed"
    r = await core.post(f"/q/dep/reservations/{rids[0]}/release", json={"reason": "core declined"})
    assert r.status == 200 and (await r.json())["state"] == "released"
    r = await core.post("/q/dep/reservations/r999/confirm")
    assert r.status == 404
    # Released money is back: customer 3 can now claim it.
    r = await public.post("/q/dep/claim", json={"amount": "10000000"}, headers=h(3))
    assert r.status == 201, await r.text()

    stats = await (await admin.get("/admin/campaigns/dep/stats")).json()
    assert stats["confirmed"] == "10000000" and stats["held"] == "20000000"


async def test_ballot_subscribe_close_allocate(public: Any, admin: Any) -> None:
    s = amount_spec("ipo", total="5000000", min="100000", max="3000000", step="100000")
    s["policy"] = "ballot"
    assert (await admin.post("/admin/campaigns", json=s)).status == 201
    asks = {"a": "3000000", "b": "1000000", "c": "2000000", "d": "100000"}
    tickets = {}
    for customer, amount in asks.items():
        pass_token = await admitted_pass(public, "ipo", customer)
        r = await public.post(
            "/q/ipo/claim",
            json={"amount": amount},
            headers=as_customer(customer, **{"X-Gate-Pass": pass_token}),
        )
        assert r.status == 201, await r.text()
        assert (await r.json())["subscribed"] == amount
        r = await public.post("/q/ipo/join", headers={"X-Customer-Id": customer})
        tickets[customer] = (await r.json())["ticket"]
        r = await public.get(
            "/q/ipo/status", params={"ticket": tickets[customer]}, headers=as_customer(customer)
        )
        assert (await r.json())["state"] == "claimed"
    assert (await admin.post("/admin/campaigns/ipo/close")).status == 200

    allocations: dict[str, int] = {}

    async def allocated() -> bool:
        for customer, ticket in tickets.items():
            r = await public.get(
                "/q/ipo/status", params={"ticket": ticket}, headers=as_customer(customer)
            )
            body = await r.json()
            assert body["state"] == "closed", body
            if body["allocation"] is None:
                return False
            allocations[customer] = int(body["allocation"])
        return True

    await wait_for(allocated, 5, "the ballot allocation")
    assert sum(allocations.values()) == 5_000_000  # demand 6.1M > supply 5M: all of it goes
    assert all(allocations[c] <= int(asks[c]) for c in asks)
    assert allocations["d"] == 100_000  # the equal part covers the smallest subscriber
