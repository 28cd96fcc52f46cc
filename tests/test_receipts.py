"""Signed join receipts: given at join, one signature per batch, verifiable offline with
the published public key alone, tied to a later checkpoint by an inclusion proof."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import msgpack

from gate.audit.format import load_public_keys
from gate.audit.receipts import BatchReceipts, verify_receipt, verify_receipt_proof
from gate.campaign import parse_spec
from gate.config import Config
from gate.http.public import create_public_app
from gate.room.keys import CampaignKeys
from gate.service import Gate, running_gate
from gate.signing import generate_keys_document, load_or_create_keys, write_keys
from gate.tokens import TICKET, customer_digest
from tests.helpers import (
    as_holder,
    assert_sealed_log,
    check_offline,
    join,
    raw_audit,
    spec,
    wait_for,
)

ACTOR = "ops"


def fast(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, seal_interval_ms=50, **changes)


async def wait_sealed_past(gate: Gate, campaign: str, entry: int) -> None:
    async def covered() -> bool:
        raw = await gate.redis.hget(CampaignKeys(campaign).frontier, "size")
        return int(raw or 0) >= entry

    await wait_for(covered, 10, f"a checkpoint covering entry {entry}")


async def test_a_receipt_given_at_join_verifies_offline_against_a_later_checkpoint(
    config: Config, aiohttp_client: Any
) -> None:
    cfg = fast(config)
    async with running_gate(cfg) as gate:
        await gate.wait_ready()
        public = await aiohttp_client(create_public_app(gate))
        await gate.room.create(parse_spec(spec("rc")), ACTOR)
        crowd = await asyncio.gather(*(join(public, "rc", f"crowd{n}") for n in range(150)))
        alice = await join(public, "rc", "alice")
        receipt = alice["receipt"]
        keys_doc = await (await public.get("/.well-known/fairgate/keys")).json()
        public_keys = load_public_keys(keys_doc)
        assert verify_receipt(receipt, public_keys)
        assert receipt["seq"] == alice["seq"] and receipt["campaign"] == "rc"
        alice_hex = customer_digest(gate.keys, "rc", "alice").hex()
        assert receipt["digest"] == alice_hex

        # Altered in any field, it no longer verifies.
        forged_sig = receipt["sig"][:-2] + ("AA" if receipt["sig"][-2:] != "AA" else "BB")
        for change in [
            {"seq": receipt["seq"] + 1},
            {"t": receipt["t"] + 1},
            {"digest": "00" * 16},
            {"campaign": "other"},
            {"sig": forged_sig},
            {"kid": "nobody"},
            {"root": "00" * 32},
            {"leaf_index": receipt["leaf_index"] + 1},
            {"batch_size": receipt["batch_size"] + 1},
        ]:
            assert not verify_receipt({**receipt, **change}, public_keys), change

        # One signature per batch: receipts of one join entry share root and signature.
        by_entry: dict[int, set[tuple[str, str]]] = {}
        for body in crowd:
            r = body["receipt"]
            assert verify_receipt(r, public_keys)
            by_entry.setdefault(r["entry"], set()).add((r["root"], r["sig"]))
        assert all(len(sigs) == 1 for sigs in by_entry.values())
        joins = [e for e in await gate.room.audit_entries("rc") if e["k"] == b"join"]
        assert gate.receipts.issued_batches == len(joins) == len(by_entry) + 1
        assert len(by_entry) < 150  # concurrent joins did share batches
        print(f"\n151 joins in {len(joins)} batches: {len(joins)} signatures")

        # A retried join gets the receipt it was given the first time.
        again = await join(public, "rc", "alice")
        assert again["created"] is False and again["receipt"] == receipt

        # Before any checkpoint covers it, the receipt comes alone.
        await wait_sealed_past(gate, "rc", receipt["entry"])
        for n in range(5):
            await join(public, "rc", f"later{n}")
        await wait_sealed_past(gate, "rc", receipt["entry"] + 5)
        r = await public.get(f"/q/rc/receipt/{alice['seq']}", **as_holder("alice", alice["ticket"]))
        assert r.status == 200
        answer = await r.json()
        assert answer["receipt"] == receipt
        assert answer["checkpoint"]["size"] > receipt["entry"]
        check_offline(answer, keys_doc, alice_hex)

        # Tampered answers are caught.
        bad_path = [*answer["inclusion"]["path"]]
        bad_path[0] = "00" * 32
        bad = {**answer, "inclusion": {**answer["inclusion"], "path": bad_path}}
        assert not verify_receipt_proof(bad, public_keys)
        other_cp = {**answer["checkpoint"], "size": answer["checkpoint"]["size"] + 1}
        assert not verify_receipt_proof({**answer, "checkpoint": other_cp}, public_keys)

        assert (await public.get("/q/rc/receipt/999999")).status == 404
        assert (await public.get("/q/rc/receipt/0")).status == 404
        assert (await public.get("/q/rc/receipt/abc")).status == 404
        assert (await public.get("/q/nope/receipt/1")).status == 404


async def test_a_batch_the_join_did_not_record_gets_its_signature_from_the_sealer(
    config: Config, aiohttp_client: Any
) -> None:
    """A join whose process died before recording the batch signature (simulated: the
    script called directly, no batcher) still gets a receipt: the sealer signs and
    records every join entry it seals."""
    async with running_gate(fast(config)) as gate:
        await gate.wait_ready()
        public = await aiohttp_client(create_public_app(gate))
        await gate.room.create(parse_spec(spec("rs")), ACTOR)
        digests = [customer_digest(gate.keys, "rs", f"d{n}") for n in range(3)]
        result = await gate.room.join("rs", digests)
        assert result.entry > 0
        k = CampaignKeys("rs")
        assert await gate.redis.hget(k.receipt_signatures, str(result.entry)) is None
        await wait_sealed_past(gate, "rs", result.entry)
        assert await gate.redis.hget(k.receipt_signatures, str(result.entry)) is not None
        seq = result.tickets[1][0]
        ticket = gate.signer.issue(TICKET, "rs", seq, digests[1])
        answer = await (await public.get(f"/q/rs/receipt/{seq}", **as_holder("d1", ticket))).json()
        keys_doc = await (await public.get("/.well-known/fairgate/keys")).json()
        check_offline(answer, keys_doc, digests[1].hex())
        assert answer["receipt"]["batch_size"] == 3 and answer["receipt"]["leaf_index"] == 1


async def test_key_rotation_keeps_old_receipts_and_checkpoints_valid(
    config: Config, aiohttp_client: Any, tmp_path: Path
) -> None:
    """Receipts and checkpoints signed before a rotation keep verifying against the
    public keys published after it (by kid); new ones use the new key; a retried join
    still gets its original receipt."""
    async with running_gate(fast(config)) as gate:
        await gate.wait_ready()
        public = await aiohttp_client(create_public_app(gate))
        await gate.room.create(parse_spec(spec("rot")), ACTOR)
        alice_joined = await join(public, "rot", "alice")
        alice = alice_joined["receipt"]
        await wait_sealed_past(gate, "rot", alice["entry"])
        old_kid = gate.keys.ed25519_current
    assert alice["kid"] == old_kid

    document = json.loads(config.keys_path.read_text())
    fresh = generate_keys_document()["ed25519"]
    new_kid = fresh["current"]
    document["ed25519"]["keys"].update(fresh["keys"])
    document["ed25519"]["current"] = new_kid
    rotated = tmp_path / "rotated.json"
    write_keys(rotated, document)
    assert load_or_create_keys(rotated, create=False).ed25519_current == new_kid

    async with running_gate(fast(config, signing_keys=rotated)) as gate:
        await gate.wait_ready()
        public = await aiohttp_client(create_public_app(gate))
        bob = (await join(public, "rot", "bob"))["receipt"]
        assert bob["kid"] == new_kid
        again = await join(public, "rot", "alice")
        assert again["receipt"] == alice
        await wait_sealed_past(gate, "rot", bob["entry"])
        keys_doc = await (await public.get("/.well-known/fairgate/keys")).json()
        assert {k["kid"] for k in keys_doc["keys"]} == {old_kid, new_kid}
        public_keys = load_public_keys(keys_doc)
        assert verify_receipt(alice, public_keys) and verify_receipt(bob, public_keys)
        checkpoints = [
            json.loads(x) for x in await gate.redis.lrange(CampaignKeys("rot").checkpoints, 0, -1)
        ]
        assert {cp["kid"] for cp in checkpoints} == {old_kid, new_kid}
        assert_sealed_log(await raw_audit(config.redis_url, "rot"), checkpoints, keys_doc)
        holder = as_holder("alice", alice_joined["ticket"])
        answer = await (await public.get(f"/q/rot/receipt/{alice['seq']}", **holder)).json()
        assert answer["receipt"]["kid"] == old_kid
        check_offline(answer, keys_doc, alice["digest"])
        # Without the old key published, the old receipt no longer verifies.
        only_new = {"keys": [k for k in keys_doc["keys"] if k["kid"] == new_kid]}
        assert not verify_receipt(alice, load_public_keys(only_new))


def test_signing_costs_microseconds_per_join(config: Config) -> None:
    """One signature per batch: the cost per join falls with the batch size."""
    keys = load_or_create_keys(config.keys_path, create=False)
    digest = bytes(range(16))
    figures: dict[int, float] = {}
    for size in (1, 10, 100, 500):
        pairs = [(1000 + n, digest) for n in range(size)]
        rounds = max(2000 // size, 5)
        started = time.perf_counter()
        for r in range(rounds):
            batch = BatchReceipts("cost", r + 1, 1_700_000_000_000_000 + r, pairs)
            kid, sig = batch.sign(keys)
            receipts = [batch.receipt(p, kid, sig) for p in range(size)]
        elapsed = time.perf_counter() - started
        assert len(receipts) == size
        figures[size] = elapsed / rounds / size * 1e6
    print(
        "\nreceipt cost per join (sign + tree + paths): "
        + ", ".join(f"batch {size}: {us:.1f} us" for size, us in figures.items())
    )
    assert figures[500] < 200, figures
    assert figures[1] < 2000, figures


async def test_pre_queue_customers_get_receipts_once_their_chunk_is_sealed(
    config: Config,
) -> None:
    """Seqs 1..P come from `prequeue` entries (the shuffle at opening), not from a join:
    the sealer signs each chunk like a join batch; a retried join then gets that receipt."""
    from datetime import UTC, datetime, timedelta

    from gate.audit.receipts import ReceiptBook
    from gate.audit.sealer import Sealer
    from gate.audit.store import segments_root
    from gate.batcher import JoinBatcher
    from gate.redis_client import connect
    from gate.room import PREQUEUED, Room
    from gate.room.scripts import Scripts

    keys = load_or_create_keys(config.keys_path, create=False)
    redis = connect(config.redis_url, timeout_s=2)
    scripts = Scripts()
    await scripts.load_all(redis)
    room = Room(redis, scripts)
    book = ReceiptBook(redis, keys, segments_root(config), scripts=scripts)
    batcher = JoinBatcher(room, window_s=0.001, max_batch=100, receipts=book)
    sealer = Sealer(
        redis, scripts, keys, segments_root(config), interval_s=0, lease_ms=5000, keep_in_redis=0
    )
    c = "pq-receipts"
    now = datetime.now(UTC)
    pq = {
        **spec(c),
        "opens_at": (now + timedelta(seconds=1.5)).isoformat(),
        "prequeue": {"window_s": 600, "shuffle": True},
    }
    try:
        await room.create(parse_spec(pq), ACTOR)
        digests = [customer_digest(keys, c, f"early{n}") for n in range(20)]
        early = await asyncio.gather(*(batcher.join(c, d) for d in digests))
        assert all(o.seq == PREQUEUED and o.receipt is None for o in early)

        async def assigned() -> bool:
            return await room.assign_prequeue(c, chunk_size=7)

        await wait_for(assigned, 10, "the pre-queue shuffled after opening", 0.05)
        again = await batcher.join(c, digests[3])
        assert again.seq > 0 and not again.created
        assert again.receipt is None  # its chunk is not sealed (indexed) yet
        while await sealer.step(c, force=True):
            pass
        public_keys = load_public_keys(keys.public_keys())
        retried = await asyncio.gather(*(batcher.join(c, d) for d in digests))
        for digest, outcome in zip(digests, retried, strict=True):
            receipt = outcome.receipt
            assert receipt is not None and receipt["seq"] == outcome.seq
            assert receipt["digest"] == digest.hex()
            assert verify_receipt(receipt, public_keys)
        answer = await book.receipt_with_proof(c, retried[0].seq)
        assert answer is not None and verify_receipt_proof(answer, public_keys)
        entry = msgpack.unpackb(base64.b64decode(answer["inclusion"]["entry"]), raw=True)
        assert entry[b"k"] == b"prequeue"
        assert sorted(o.seq for o in retried) == list(range(1, 21))
    finally:
        await batcher.close()
        await sealer.close()
        await redis.aclose()
