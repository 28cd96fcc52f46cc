"""Customers' privacy (issue 13): a receipt is shown to its holder only, a dispute
account holds no other customer's data, the digest key lives apart from the signing key
(one per campaign, recorded at creation), and an operator's lookup of a customer is
itself an audit entry."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import msgpack
import pytest

from gate.audit.dispute import check_account
from gate.audit.format import load_public_keys
from gate.audit.verify import verify_file
from gate.config import Config
from gate.http.admin import create_admin_app
from gate.http.public import create_public_app
from gate.room.keys import CampaignKeys
from gate.service import Gate, running_gate
from gate.signing import (
    generate_keys_document,
    load_or_create_keys,
    write_keys,
)
from gate.tokens import customer_digest
from tests.helpers import (
    ADMIN_TOKEN,
    admitted_pass,
    amount_spec,
    as_customer,
    export_to_file,
    gate_cli,
    join,
    seal_everything,
    spec,
    wait_for,
    wait_sealed,
)


async def _receipt(public: Any, campaign: str, seq: Any, **request: Any) -> tuple[int, Any]:
    r = await public.get(f"/q/{campaign}/receipt/{seq}", **request)
    return r.status, await r.json()


async def test_a_receipt_is_shown_to_its_holder_only(gate: Gate, public: Any, admin: Any) -> None:
    """Before: anyone could read any seq's digest and join time (200 with the digest to an
    anonymous GET). Now only a request with the customer's own ticket or pass for that seq
    gets it; every other request gets the same 404 as a seq that does not exist."""
    assert (await admin.post("/admin/campaigns", json=spec("pr"))).status == 201
    alice = await join(public, "pr", "alice")
    bob = await join(public, "pr", "bob")
    public.session.cookie_jar.clear()
    seq = alice["seq"]

    _, nowhere = await _receipt(public, "pr", 999999)
    assert nowhere["error"]["code"] == "unknown_receipt"
    refused = [
        {},  # anonymous
        {"headers": as_customer("bob")},  # someone named, no ticket
        {"headers": as_customer("bob"), "params": {"ticket": bob["ticket"]}},  # bob's ticket
        {"headers": as_customer("bob"), "params": {"ticket": alice["ticket"]}},  # not his
        {"params": {"ticket": alice["ticket"]}},  # alice's ticket, nobody named
        {"headers": as_customer("alice"), "params": {"ticket": "x.y"}},
    ]
    for request in refused:
        status, body = await _receipt(public, "pr", seq, **request)
        assert status == 404, (request, body)
        assert "digest" not in json.dumps(body)
        assert body["error"]["code"] == nowhere["error"]["code"], body
        # The same words for a seq that exists and one that does not.
        other = await _receipt(public, "pr", 999999, **request)
        assert other == (404, {"error": {**body["error"]}}), (request, other, body)

    status, body = await _receipt(
        public, "pr", seq, headers=as_customer("alice"), params={"ticket": alice["ticket"]}
    )
    assert status == 200, body
    assert body["receipt"]["digest"] == customer_digest(gate.keys, "pr", "alice").hex()
    # the ticket as the page keeps it (its cookie), and a pass, do as well
    status, _ = await _receipt(
        public,
        "pr",
        seq,
        headers={**as_customer("alice"), "Cookie": f"fg_ticket={alice['ticket']}"},
    )
    assert status == 200


async def _dispute_scene(gate: Gate, public: Any, admin: Any, core: Any) -> dict[str, Any]:
    """Ten customers join in one batch and are admitted; each claims, and the ten
    reservations expire in one sweep (one `expire-res` entry)."""
    c = "priv"
    body = amount_spec(c, max="2000000")  # 15 customers' worth: all ten admitted at once
    assert (await admin.post("/admin/campaigns", json=body)).status == 201
    names = ["alice"] + [f"other{n}" for n in range(9)]
    await asyncio.gather(*(join(public, c, name) for name in names))  # one join batch
    passes = {name: await admitted_pass(public, c, name) for name in names}
    rids: dict[str, str] = {}
    for n, name in enumerate(names):
        r = await public.post(
            f"/q/{c}/claim",
            json={"amount": str(1_000_000 + 10_000 * (n + 1))},
            headers=as_customer(name, **{"X-Gate-Pass": passes[name]}),
        )
        assert r.status == 201, await r.text()
        rids[name] = str((await r.json())["reservation"])
    await gate.redis.zadd(
        CampaignKeys(c).reservation_expiries, dict.fromkeys(rids.values(), 0), xx=True
    )

    async def expired() -> bool:
        return int((await gate.room.stats(c))["reservations_expired"]) == 10

    await wait_for(expired, 5, "ten reservations expired")
    await wait_sealed(gate, c)
    return {"campaign": c, "names": names, "rids": rids}


async def test_a_dispute_account_holds_no_other_customers_data(
    gate: Gate, public: Any, admin: Any, core: Any
) -> None:
    """Before: alice's account listed the nine others' reservations and amounts (the
    shared `expire-res` entry) and her batch-mates' digests (the `join` entry, twice: in
    the entries and in the receipt's inclusion). Now only her own part of a shared entry
    is shown, with the entry's leaf hash and its inclusion proof, and every proof checks."""
    scene = await _dispute_scene(gate, public, admin, core)
    c = scene["campaign"]
    r = await admin.get(f"/admin/campaigns/{c}/audit/dispute", params={"customer": "alice"})
    assert r.status == 200, await r.text()
    account = await r.json()
    text = json.dumps(account)
    raws = b"".join(base64.b64decode(item["raw"]) for item in account["entries"] if item.get("raw"))
    if account["receipt"]["inclusion"] and account["receipt"]["inclusion"].get("entry"):
        raws += base64.b64decode(account["receipt"]["inclusion"]["entry"])
    leaks = []
    for name in scene["names"][1:]:
        digest = customer_digest(gate.keys, c, name)
        rid = scene["rids"][name]
        if digest.hex() in text or digest in raws:
            leaks.append(f"{name}'s digest")
        if rid in text or rid.encode() in raws:
            leaks.append(f"{name}'s reservation")
    assert not leaks, leaks
    own_rid = scene["rids"]["alice"]
    assert own_rid in text and account["facts"]["claims"][0]["granted"] == "1010000"
    for item in account["entries"]:
        view = item["entry"]
        for field in ("r", "m"):
            if isinstance(view.get(field), list):
                assert len(view[field]) <= 1, view
    keys = load_public_keys(await (await public.get("/.well-known/fairgate/keys")).json())
    checks = check_account(account, keys)
    assert checks and all(ok for _, ok in checks), checks
    assert any("shared" in what for what, _ in checks), checks
    # a redacted entry's proof is still a proof: a wrong leaf fails
    forged = json.loads(text)
    shared = next(i for i in forged["entries"] if i.get("leaf"))
    shared["leaf"] = "00" * 32
    assert not all(ok for _, ok in check_account(forged, keys))


def _digest_document(*kids: str) -> dict[str, Any]:
    return {
        "version": 1,
        "current": kids[-1],
        "keys": {
            kid: base64.urlsafe_b64encode(hashlib.sha256(kid.encode()).digest())
            .rstrip(b"=")
            .decode()
            for kid in kids
        },
    }


def _hmac_digest(kid: str, campaign: str, customer: str) -> bytes:
    key = hashlib.sha256(kid.encode()).digest()
    message = campaign.encode() + b"\x00" + customer.encode()
    return hmac.new(key, message, hashlib.sha256).digest()[:16]


async def test_each_campaign_keeps_the_digest_key_it_was_created_with(
    config: Config, tmp_path: Path, aiohttp_client: Any
) -> None:
    """A campaign records its digest key id at creation (spec `digest_key`); after a
    rotation, new campaigns use the new key and older ones keep theirs."""
    signing = tmp_path / "signing.json"
    write_keys(signing, generate_keys_document())
    digests = tmp_path / "digest.json"
    write_keys(digests, _digest_document("k1"))
    cfg = dataclasses.replace(config, signing_keys=signing, digest_keys=digests)

    async def create_and_join(campaign: str) -> dict[str, Any]:
        async with running_gate(cfg) as gate:
            await gate.wait_ready()
            admin = await aiohttp_client(
                create_admin_app(gate), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            public = await aiohttp_client(create_public_app(gate))
            if (await admin.get(f"/admin/campaigns/{campaign}")).status == 404:
                r = await admin.post("/admin/campaigns", json=spec(campaign))
                assert r.status == 201, await r.text()
            shown = await (await admin.get(f"/admin/campaigns/{campaign}")).json()
            joined = await join(public, campaign, "alice")
            # the older campaign still knows her, under its own key
            again = await join(public, "one", "alice")
            assert again["receipt"]["digest"] == _hmac_digest("k1", "one", "alice").hex()
            return {"spec": shown["spec"], "receipt": joined["receipt"]}

    one = await create_and_join("one")
    assert one["spec"]["digest_key"] == "k1"
    assert one["receipt"]["digest"] == _hmac_digest("k1", "one", "alice").hex()
    write_keys(digests, _digest_document("k1", "k2"))  # rotation: k2 is current
    two = await create_and_join("two")
    assert two["spec"]["digest_key"] == "k2"
    assert two["receipt"]["digest"] == _hmac_digest("k2", "two", "alice").hex()
    assert two["receipt"]["digest"] != _hmac_digest("k1", "two", "alice").hex()
    # a campaign naming a digest key the gate lacks is refused, clearly
    async with running_gate(cfg) as gate:
        await gate.wait_ready()
        admin = await aiohttp_client(
            create_admin_app(gate), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        r = await admin.post("/admin/campaigns", json={**spec("three"), "digest_key": "k9"})
        assert r.status == 400 and "digest_key" in (await r.json())["error"]["message"]
        r = await admin.patch("/admin/campaigns/one", json={"digest_key": "k2"})
        assert r.status == 400


async def test_a_fresh_signing_key_file_cannot_reverse_digests(tmp_path: Path) -> None:
    """`gate keys generate` writes no digest key; `gate keys generate-digest` writes it to a
    file of its own (a second run adds a new current key, the old one kept); the digest a
    gate computes is not an HMAC under anything in the signing key file."""
    signing, digests = tmp_path / "signing.json", tmp_path / "digest.json"
    result = await gate_cli("keys", "generate", "--out", str(signing))
    assert result.code == 0, result
    document = json.loads(signing.read_text())
    assert "digest_key" not in document and "digest" not in json.dumps(document)
    result = await gate_cli("keys", "generate-digest", "--out", str(digests))
    assert result.code == 0, result
    first = json.loads(digests.read_text())
    assert digests.stat().st_mode & 0o777 == 0o600 and first["current"] in first["keys"]
    result = await gate_cli("keys", "generate-digest", "--out", str(digests))
    rotated = json.loads(digests.read_text())
    assert rotated["current"] != first["current"]
    assert rotated["keys"][first["current"]] == first["keys"][first["current"]]

    keys = load_or_create_keys(signing, create=False, digest_path=digests)
    digest = customer_digest(keys, "c1", "01012345678", keys.digest_current)
    secrets_in_file = [
        base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))
        for part in ("hmac", "ed25519")
        for v in document[part]["keys"].values()
    ]
    for secret in secrets_in_file:
        guess = hmac.new(secret, b"c1\x0001012345678", hashlib.sha256).digest()[:16]
        assert guess != digest
    # a gate left to create its own keys writes two files, the signing one without it
    created = load_or_create_keys(
        tmp_path / "data" / "keys.json",
        create=True,
        digest_path=tmp_path / "data" / "digest-keys.json",
        create_digest=True,
    )
    assert "digest_key" not in json.loads((tmp_path / "data" / "keys.json").read_text())
    assert (
        created.digest_current
        in json.loads((tmp_path / "data" / "digest-keys.json").read_text())["keys"]
    )


def test_a_key_file_with_both_keys_still_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Backward compatible: a key file of before (signing and digest keys together) keeps
    working, digests unchanged, and says that the digest key should move."""
    legacy = tmp_path / "keys.json"
    document = generate_keys_document(digest_key=True)
    write_keys(legacy, document)
    with caplog.at_level(logging.WARNING, logger="gate.signing"):
        keys = load_or_create_keys(
            legacy, create=False, digest_path=tmp_path / "digest-keys.json", create_digest=True
        )
    assert "digest_key_in_signing_file" in caplog.text
    assert not (tmp_path / "digest-keys.json").exists()
    key = base64.urlsafe_b64decode(document["digest_key"] + "==")
    expected = hmac.new(key, b"c1\x00alice", hashlib.sha256).digest()[:16]
    assert customer_digest(keys, "c1", "alice") == expected


async def test_an_admin_lookup_of_a_customer_is_an_audit_entry(
    gate: Gate, public: Any, admin: Any, tmp_path: Path
) -> None:
    """Before: looking a customer up left no trace. Now each lookup by customer (the
    audit query and the dispute account) is an `admin-query` entry (actor, what, the
    customer's digest, time), and the export with it verifies."""
    c = "look"
    assert (await admin.post("/admin/campaigns", json=spec(c))).status == 201
    await join(public, c, "alice")
    r = await admin.get(f"/admin/campaigns/{c}/audit", params={"customer": "alice"})
    assert r.status == 200
    r = await admin.get(f"/admin/campaigns/{c}/audit/dispute", params={"customer": "alice"})
    assert r.status == 200
    r = await admin.get(f"/admin/campaigns/{c}/audit", params={"from_seq": "1"})
    assert r.status == 200
    await seal_everything(gate.redis, gate.room.scripts, gate.keys, c)
    path = await export_to_file(gate.redis, c, gate.keys, tmp_path / "look.jsonl")
    raws = [
        base64.b64decode(line["raw"])
        for line in map(json.loads, path.read_text().splitlines())
        if line.get("type") == "entry"
    ]
    assert not any(b"alice" in raw for raw in raws)  # the raw id is never logged
    queries = [msgpack.unpackb(raw, raw=True) for raw in raws if b"admin-query" in raw]
    assert [(q[b"k"], q[b"a"], q[b"q"]) for q in queries] == [
        (b"admin-query", b"ops", b"audit"),
        (b"admin-query", b"ops", b"dispute"),
    ], queries
    assert queries[1][b"c"] == customer_digest(gate.keys, c, "alice")
    report = await asyncio.to_thread(verify_file, path, gate.keys.public_keys())
    assert report.kinds.get("admin-query") == 2, report
    r = await admin.get(f"/admin/campaigns/{c}/audit", params={"customer": "alice"})
    seen = [e for e in (await r.json())["entries"] if e["k"] == "admin-query"]
    assert [(e["a"], e["q"]) for e in seen] == [("ops", "audit"), ("ops", "dispute")]
    assert seen[0]["c"] == customer_digest(gate.keys, c, "alice").hex()
