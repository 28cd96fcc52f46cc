"""`gate audit dispute`: one customer's account, from the log, with checkable proofs."""

from __future__ import annotations

import base64
import copy
from typing import Any

from gate.audit.dispute import check_account, render_text
from gate.audit.format import load_public_keys
from gate.room.keys import CampaignKeys
from gate.service import Gate
from tests.helpers import admitted_pass, amount_spec, as_customer, wait_for, wait_sealed


async def claim(public: Any, campaign: str, customer: str, pass_token: str, amount: str) -> str:
    r = await public.post(
        f"/q/{campaign}/claim",
        json={"amount": amount},
        headers=as_customer(customer, **{"X-Gate-Pass": pass_token}),
    )
    assert r.status == 201, await r.text()
    return str((await r.json())["reservation"])


async def account_of(admin: Any, campaign: str, customer: str) -> dict[str, Any]:
    r = await admin.get(f"/admin/campaigns/{campaign}/audit/dispute", params={"customer": customer})
    assert r.status == 200, await r.text()
    account: dict[str, Any] = await r.json()
    return account


async def test_dispute_accounts_with_proofs(gate: Gate, public: Any, admin: Any, core: Any) -> None:
    c = "dep"
    assert (await admin.post("/admin/campaigns", json=amount_spec(c))).status == 201
    passes = {name: await admitted_pass(public, c, name) for name in ("alice", "bob", "carol")}
    rid = await claim(public, c, "alice", passes["alice"], "10000000")
    assert (await core.post(f"/q/{c}/reservations/{rid}/confirm")).status == 200
    rid = await claim(public, c, "bob", passes["bob"], "5000000")
    r = await core.post(f"/q/{c}/reservations/{rid}/release", json={"reason": "card declined"})
    assert r.status == 200
    rid = await claim(public, c, "carol", passes["carol"], "3000000")
    # carol's reservation falls due: its score goes to the past, the admission loop expires it
    await gate.redis.zadd(CampaignKeys(c).reservation_expiries, {rid: 0}, xx=True)

    async def expired() -> bool:
        return int((await gate.room.stats(c))["reservations_expired"]) == 1

    await wait_for(expired, 5, "carol's reservation expired")
    r = await admin.post(f"/admin/campaigns/{c}/block", json={"customer": "dave", "reason": "x"})
    assert r.status == 200
    await wait_sealed(gate, c)
    keys = load_public_keys(await (await public.get("/.well-known/fairgate/keys")).json())

    alice = await account_of(admin, c, "alice")
    facts = alice["facts"]
    assert alice["found"] and alice["customer"]["seq"] == 1
    assert facts["seq"] == 1 and facts["ahead"] == 0 and facts["admitted_before"] == 0
    assert "pass_at" in facts and facts["claims"][0]["outcome"] == "confirmed"
    assert facts["claims"][0]["granted"] == "10000000"
    checks = check_account(alice, keys)
    assert checks and all(ok for _, ok in checks), checks
    kinds = {e["entry"]["k"] for e in alice["entries"]}
    assert kinds == {"join", "admit", "pass", "claim", "confirm"}
    assert all(e["proof"] is not None for e in alice["entries"])
    assert any("receipt" in what for what, _ in checks)
    text = render_text(alice, checks)
    for phrase in (
        "Seq 1, given at",
        "0 customers were ahead of them",
        "Admitted at",
        "Received a pass at",
        "Claimed 10000000 KRW",
        "confirmed at",
        "[ok] join receipt (seq 1)",
        "[ok] entry",
    ):
        assert phrase in text, (phrase, text)
    assert "FAILED" not in text

    bob = await account_of(admin, c, "bob")
    assert bob["facts"]["ahead"] == 1 and bob["facts"]["claims"][0]["outcome"] == "released"
    assert "card declined" in render_text(bob, check_account(bob, keys))
    carol = await account_of(admin, c, "carol")
    assert carol["facts"]["claims"][0]["outcome"] == "expired"
    assert "expired unconfirmed" in render_text(carol, check_account(carol, keys))

    dave = await account_of(admin, c, "dave")  # blocked, never joined
    assert dave["found"] and dave["customer"]["seq"] is None
    assert "Blocked by an operator" in render_text(dave, check_account(dave, keys))
    nobody = await account_of(admin, c, "nobody")
    assert not nobody["found"]
    assert "no entry about this customer" in render_text(nobody, check_account(nobody, keys))

    # an account whose entry was altered, or whose checkpoint was, no longer checks out
    forged = copy.deepcopy(alice)
    claim_item = next(e for e in forged["entries"] if e["entry"]["k"] == "claim")
    raw = bytearray(base64.b64decode(claim_item["raw"]))
    raw[-1] ^= 1
    claim_item["raw"] = base64.b64encode(bytes(raw)).decode()
    bad = [what for what, ok in check_account(forged, keys) if not ok]
    assert bad == [f"entry {claim_item['index']} is in the signed log"], bad
    forged = copy.deepcopy(alice)
    forged["checkpoint"]["size"] += 1
    assert not any(ok for what, ok in check_account(forged, keys) if "checkpoint" in what)
    assert "FAILED" in render_text(forged, check_account(forged, keys))


async def test_dispute_needs_a_customer(gate: Gate, admin: Any) -> None:
    assert (await admin.post("/admin/campaigns", json=amount_spec("d2"))).status == 201
    for query in ("", "?customer=", "?customer=a&seq=1"):
        r = await admin.get(f"/admin/campaigns/d2/audit/dispute{query}")
        assert r.status == 400, query
        assert (await r.json())["error"]["code"] == "bad_query"
