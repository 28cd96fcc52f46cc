"""Tamper tests: every change to an export is caught, and `verify` names where.

One clean export of a small but complete campaign (a shuffled pre-queue, joins,
admissions, passes, claims, confirms, releases, expiries, blocks, revokes, operator
actions, sealed by the real sealer into several checkpoints, every entry covered), plus
join receipts. Then at least 200 seeded random tamperings: change any field of a random
entry, delete one, insert one, swap two, reorder the pre-queue shuffle, alter a receipt
or a checkpoint, sign with another key. Each must make `verify` (with the published
keys) fail and name the tampered entry, the checkpoint whose range holds it, the
checkpoint or the receipt. A tampering that leaves the file identical is drawn again.

Time is simulated for expiries by rewriting resexp / active scores to the past and
calling admit (which then expires and logs them itself).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gate.audit.format import checkpoint_message
from gate.audit.receipts import ReceiptBook
from gate.audit.report import Failure, VerificationFailed
from gate.audit.verify import verify_lines
from gate.campaign import parse_spec
from gate.prequeue import prequeue_order
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.signing import SigningKeys
from gate.tokens import customer_digest
from tests.helpers import (
    Export,
    amount_quota,
    b64url,
    create_committed,
    export_to_file,
    pack_like_redis,
    seal_everything,
    spec,
    unpack,
    wait_redis_time,
)

MIN, MAX, STEP = 1_000_000, 10_000_000, 10_000
TAMPERINGS = 240


@dataclass
class Target:
    """What verify must name for a tampering."""

    what: str
    entries: tuple[int, ...] = ()
    checkpoint: int | None = None
    receipt: str | None = None

    def named_by(self, failure: Failure) -> bool:
        if self.receipt is not None:
            return failure.receipt == self.receipt
        if self.checkpoint is not None:
            return failure.checkpoint == self.checkpoint
        for index in self.entries:
            if failure.index == index:
                return True
            if failure.entries is not None and failure.entries[0] <= index <= failure.entries[1]:
                return True
        return False


# -- the clean export --------------------------------------------------------------------


async def build_clean_export(room: Room, keys: SigningKeys, tmp_path: Path) -> Export:
    rng = random.Random(1)
    c = "tamper"
    raw = spec(
        c,
        rate_per_s=1_000_000,
        burst=1_000_000,
        max_active=100_000,
        pass_ttl_s=300,
        reservation_ttl_s=1,  # the reservations left held expire for real (Redis time)
        overbook=10,
    )
    raw["opens_at"] = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    raw["quota"] = amount_quota(200_000_000, MIN, MAX, STEP, partial_fill=True)
    raw["prequeue"] = {"window_s": 600, "shuffle": True}
    await create_committed(room, keys, parse_spec(raw))
    digests = [customer_digest(keys, c, f"t{i}") for i in range(100)]
    for i in range(0, 60, 15):
        await room.join(c, digests[i : i + 15])
    await room.block(c, digests[3], "ops", "blocked while in the pre-queue")
    seal = lambda: seal_everything(room.redis, room.scripts, keys, c)  # noqa: E731
    await seal()
    deadline = time.monotonic() + 10
    while not await room.assign_prequeue(c, chunk_size=20):
        assert time.monotonic() < deadline, "the pre-queue never opened"
        await asyncio.sleep(0.05)
    for i in range(60, 100, 5):
        await room.join(c, digests[i : i + 5])
    await seal()
    await room.update(c, parse_spec(raw), {"rate": "900000.0"}, "ops")
    await room.set_state(c, "pause", "ops")
    await room.set_state(c, "resume", "ops")
    # seqs 81..90 are admitted with a 1-s pass that expires unused (for real: the replay
    # refuses an expiry before the deadline)
    await admit_upto(room, c, 80)
    await room.update(c, parse_spec(raw), {"pass_ttl_us": "1000000"}, "ops")
    await admit_upto(room, c, 90)
    await room.update(c, parse_spec(raw), {"pass_ttl_us": "300000000"}, "ops")
    await admit_upto(room, c, 100)
    await seal()
    seq_of = {digest: seq for seq, digest in await _tickets(room, c)}
    by_seq = {seq: digest for digest, seq in seq_of.items()}
    for seq in range(1, 51):
        await room.pass_check(c, seq, by_seq[seq])
    held = []
    for seq in range(1, 41):
        result = await room.claim(c, seq, by_seq[seq], rng.randrange(MIN, MAX + 1, STEP), "k")
        if result.ok:
            held.append(result.reservation)
    await seal()
    for rid in held[:18]:
        await room.confirm(c, rid, "core")
    for rid in held[18:24]:
        await room.release(c, rid, "core", "declined")
    # the rest of the reservations (1 s) and the passes of 81..90 (1 s) expire by Redis
    # time; admit then expires and logs them
    k = CampaignKeys(c)
    due = await room.redis.zmscore(k.reservation_expiries, held[24:])
    due += await room.redis.zmscore(k.active, [str(seq) for seq in range(81, 91)])
    await wait_redis_time(room.redis, int(max(score for score in due if score is not None)))
    await room.admit(c, max_per_call=0)
    await room.revoke(c, by_seq[95], "ops", "duplicate")
    await room.block(c, by_seq[96], "ops", "fraud")
    await seal()
    await room.set_state(c, "close", "ops")
    await seal()
    path = await export_to_file(room.redis, c, keys, tmp_path / "clean.jsonl")
    export = Export.parse(await asyncio.to_thread(path.read_text))
    book = ReceiptBook(room.redis, keys, None)
    for seq in (2, 33, 60, 61, 77, 100):
        receipt = await book.receipt(c, seq)
        assert receipt is not None
        export.receipts[f"seq{seq}.json"] = receipt
    return export


async def admit_upto(room: Room, campaign: str, cursor: int) -> None:
    """Admit up to seq `cursor` exactly (revoked seqs on the way are skipped, not counted)."""
    k = CampaignKeys(campaign)
    revoked = {int(s) for s in await room.redis.smembers(k.revoked)}
    deadline = time.monotonic() + 10
    while (result := await room.admit(campaign, max_per_call=0)) is not None and (
        result.cursor < cursor
    ):
        wanted = sum(1 for s in range(result.cursor + 1, cursor + 1) if s not in revoked)
        await room.admit(campaign, max_per_call=wanted)
        assert time.monotonic() < deadline, f"admission stuck at {result.cursor}"
    assert result is not None and result.cursor == cursor, result


async def _tickets(room: Room, campaign: str) -> list[tuple[int, bytes]]:
    raw = await room.redis.hgetall(CampaignKeys(campaign).tickets)
    return [(int(seq), digest) for digest, seq in raw.items()]


def run_verify(export: Export, keys_document: dict[str, Any]) -> Any:
    return verify_lines(
        export.lines(),
        keys_document,
        keys_from="published",
        require_sealed=True,
        receipts=list(export.receipts.items()),
    )


# -- tamperings --------------------------------------------------------------------------


def mutate_value(rng: random.Random, value: Any) -> Any:
    """A different value of a plausible kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([value + rng.randint(1, 5), value - rng.randint(1, 5), value * 2 + 1])
    if isinstance(value, bytes):
        if not value:
            return b"x"
        if value.isdigit():  # an amount or a number as text
            return str(int(value) + rng.choice([STEP, 1, -STEP, 10 * STEP])).encode()
        pos = rng.randrange(len(value))
        flipped = bytes([value[pos] ^ (1 << rng.randrange(7))])
        return value[:pos] + flipped + value[pos + 1 :]
    if isinstance(value, list):
        if not value or rng.random() < 0.2:
            return [*value, value[-1] if value else 1]
        out = list(value)
        pos = rng.randrange(len(out))
        if rng.random() < 0.15:
            del out[pos]
        else:
            out[pos] = mutate_value(rng, out[pos])
        return out
    if isinstance(value, dict):
        return {**value, b"z": 1}
    return 1


def change_field(rng: random.Random, export: Export) -> Target:
    position = rng.randrange(len(export.entries))
    entry = unpack(export.raw(position))
    name = rng.choice(sorted(entry))
    entry[name] = mutate_value(rng, entry[name])
    export.set_raw(position, pack_like_redis(entry))
    return Target(f"field {name!r} of entry {position + 1}", (position + 1,))


def delete_entry(rng: random.Random, export: Export) -> Target:
    position = rng.randrange(len(export.entries))
    del export.entries[position]
    return Target(f"delete entry {position + 1}", (position + 1,))


def insert_entry(rng: random.Random, export: Export) -> Target:
    position = rng.randrange(len(export.entries) + 1)
    style = rng.choice(["copy", "forged", "renumbered"])
    source = rng.randrange(len(export.entries))
    if style == "copy":  # an existing entry again, as it was
        export.entries.insert(position, copy.deepcopy(export.entries[source]))
        return Target(f"copy of entry {source + 1} at {position + 1}", (position + 1, source + 1))
    entry = unpack(export.raw(source))
    entry[b"i"] = position + 1
    entry[b"t"] = entry[b"t"] + 1
    line = {
        "type": "entry",
        "i": position + 1,
        "raw": base64.b64encode(pack_like_redis(entry)).decode(),
    }
    export.entries.insert(position, line)
    if style == "renumbered":  # every later entry renumbered to keep the index gap-free
        for later in range(position + 1, len(export.entries)):
            e = unpack(export.raw(later))
            e[b"i"] = later + 1
            export.set_raw(later, pack_like_redis(e))
            export.entries[later]["i"] = later + 1
    return Target(f"{style} entry inserted at {position + 1}", (position + 1,))


def swap_entries(rng: random.Random, export: Export) -> Target:
    a, b = sorted(rng.sample(range(len(export.entries)), 2))
    style = rng.choice(["lines", "renumbered"])
    export.entries[a], export.entries[b] = export.entries[b], export.entries[a]
    if style == "renumbered":  # indexes rewritten so the order looks right
        for position in (a, b):
            e = unpack(export.raw(position))
            e[b"i"] = position + 1
            export.set_raw(position, pack_like_redis(e))
            export.entries[position]["i"] = position + 1
    return Target(f"swap {a + 1} and {b + 1} ({style})", (a + 1, b + 1))


def reorder_shuffle(rng: random.Random, export: Export) -> Target:
    chunks = [p for p in range(len(export.entries)) if export.kind(p) == b"prequeue"]
    position = rng.choice(chunks)
    entry = unpack(export.raw(position))
    pairs = entry[b"s"]
    digests = pairs[1::2]
    style = rng.choice(["swap", "reverse", "sorted"])
    if style == "swap":
        i, j = rng.sample(range(len(digests)), 2)
        digests[i], digests[j] = digests[j], digests[i]
    elif style == "reverse":
        digests.reverse()
    else:
        digests.sort()
    pairs[1::2] = digests
    export.set_raw(position, pack_like_redis(entry))
    return Target(f"shuffle chunk {position + 1} reordered ({style})", (position + 1,))


def alter_receipt(rng: random.Random, export: Export) -> Target:
    name = rng.choice(sorted(export.receipts))
    receipt = export.receipts[name]
    fieldname = rng.choice(sorted(receipt))
    value = receipt[fieldname]
    if fieldname == "path" and value:
        receipt["path"] = list(value)
        pos = rng.randrange(len(value))
        receipt["path"][pos] = _flip_hex(rng, value[pos]) if rng.random() < 0.7 else value[0]
        if rng.random() < 0.3 or receipt["path"] == value:
            # a sibling moved to where it already was (pos 0) changes nothing: then the
            # path grows by one instead, so that every case is a real alteration
            receipt["path"].append(value[-1])
    elif fieldname in ("digest", "root"):
        receipt[fieldname] = _flip_hex(rng, value)
    elif fieldname == "sig":
        receipt[fieldname] = _flip_b64(rng, value)
    elif fieldname in ("kid", "campaign"):
        receipt[fieldname] = value + "x"
    elif isinstance(value, int):
        receipt[fieldname] = value + rng.choice([1, 2, -1])
    else:
        receipt[fieldname] = None
    return Target(f"receipt {name} field {fieldname}", receipt=name)


def alter_checkpoint(rng: random.Random, export: Export) -> Target:
    number = rng.randrange(len(export.checkpoints))
    cp = export.checkpoints[number]
    fieldname = rng.choice(["size", "root", "time_ms", "kid", "sig", "campaign"])
    if fieldname == "root":
        cp["root"] = _flip_hex(rng, cp["root"])
    elif fieldname == "sig":
        cp["sig"] = _flip_b64(rng, cp["sig"])
    elif fieldname in ("kid", "campaign"):
        cp[fieldname] = cp[fieldname] + "x"
    else:
        cp[fieldname] = cp[fieldname] + rng.choice([1, -1, 7])
    return Target(f"checkpoint {number + 1} field {fieldname}", checkpoint=number + 1)


def sign_with_other_key(rng: random.Random, export: Export) -> Target:
    """A forger's key: re-sign one checkpoint (same kid or their own, also slipped into
    the export's header), or a receipt. The published keys do not know it."""
    forger = Ed25519PrivateKey.generate()
    if rng.random() < 0.3:
        name = rng.choice(sorted(export.receipts))
        receipt = export.receipts[name]
        receipt["sig"] = b64url(forger.sign(bytes.fromhex(receipt["root"])))
        return Target(f"receipt {name} signed by another key", receipt=name)
    number = rng.randrange(len(export.checkpoints))
    cp = export.checkpoints[number]
    if rng.random() < 0.5:
        cp["kid"] = "forger"
        export.header["keys"] = {
            "keys": [
                *export.header["keys"]["keys"],
                {
                    "kid": "forger",
                    "alg": "Ed25519",
                    "public_key": b64url(forger.public_key().public_bytes_raw()),
                },
            ]
        }
    if rng.random() < 0.5:  # and move the checkpoint's root to a forged log state
        cp["time_ms"] += 1
    message = checkpoint_message(cp["campaign"], cp["size"], cp["root"], cp["time_ms"])
    cp["sig"] = b64url(forger.sign(message))
    return Target(f"checkpoint {number + 1} signed by another key", checkpoint=number + 1)


def _flip_hex(rng: random.Random, text: str) -> str:
    pos = rng.randrange(len(text))
    return (
        text[:pos] + rng.choice([c for c in "0123456789abcdef" if c != text[pos]]) + text[pos + 1 :]
    )


def _flip_b64(rng: random.Random, text: str) -> str:
    pos = rng.randrange(len(text))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return text[:pos] + rng.choice([c for c in alphabet if c != text[pos]]) + text[pos + 1 :]


TAMPERERS: list[tuple[Callable[[random.Random, Export], Target], int]] = [
    (change_field, 90),
    (delete_entry, 20),
    (insert_entry, 25),
    (swap_entries, 25),
    (reorder_shuffle, 20),
    (alter_receipt, 25),
    (alter_checkpoint, 20),
    (sign_with_other_key, 15),
]


# -- the tests ---------------------------------------------------------------------------


async def test_clean_export_verifies_and_reencodes_exactly(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """The baseline: the clean export passes, and re-encoding any entry gives its bytes
    back (so a tampering changes only what it means to)."""
    export = await build_clean_export(room, keys, tmp_path)
    report = run_verify(export, keys.public_keys())
    assert report.prequeue == 60 and report.checkpoints >= 5 and report.skipped == 1
    assert report.sealed == report.entries == len(export.entries)
    assert len(report.receipts) == len(export.receipts)
    for position in range(len(export.entries)):
        raw = export.raw(position)
        assert pack_like_redis(unpack(raw)) == raw, position + 1
    # the shuffle really is the seed's order
    reveal = next(
        unpack(export.raw(p)) for p in range(len(export.entries)) if export.kind(p) == b"reveal"
    )
    prejoined = [
        d
        for p in range(len(export.entries))
        if export.kind(p) == b"prejoin"
        for d in unpack(export.raw(p))[b"c"]
    ]
    given = [
        d
        for p in range(len(export.entries))
        if export.kind(p) == b"prequeue"
        for d in unpack(export.raw(p))[b"s"][1::2]
    ]
    assert given == prequeue_order(bytes.fromhex(reveal[b"seed"].decode()), prejoined)


def tally(
    plan: list[Any],
    draw: Callable[[Any], tuple[Export, Target]],
    verify: Callable[[Export], Any],
) -> tuple[dict[str, int], list[str], list[str]]:
    """Each tampering of `plan` made on a copy (`draw`: the export and what it targets)
    and verified: (caught per kind, those that verified, those whose failure named
    another place)."""
    caught: dict[str, int] = {}
    missed: list[str] = []
    misnamed: list[str] = []
    for tamper in plan:
        export, target = draw(tamper)
        try:
            verify(export)
        except VerificationFailed as exc:
            caught[tamper.__name__] = caught.get(tamper.__name__, 0) + 1
            if not target.named_by(exc.failure):
                misnamed.append(f"{target.what}: {exc.failure.describe()}")
        else:
            missed.append(target.what)
    return caught, missed, misnamed


@pytest.mark.slow
async def test_200_random_tamperings_all_caught(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """At least 200 seeded random tamperings across every kind: 100% make verify fail,
    and each failure names the tampered entry (or the checkpoint range that holds it),
    the checkpoint, or the receipt."""
    clean = await build_clean_export(room, keys, tmp_path)
    published = keys.public_keys()
    run_verify(clean, published)
    rng = random.Random(20260601)
    plan = [tamper for tamper, count in TAMPERERS for _ in range(count)]
    rng.shuffle(plan)
    assert len(plan) >= 200

    def draw(tamper: Any) -> tuple[Export, Target]:
        for _ in range(20):  # draw again when the tampering changes nothing
            export = copy.deepcopy(clean)
            target = tamper(rng, export)
            if export.fingerprint() != clean.fingerprint():
                return export, target
        raise AssertionError(f"{tamper.__name__} never changed the export")

    caught, missed, misnamed = tally(plan, draw, lambda export: run_verify(export, published))
    print(f"tamperings: {len(plan)}, caught per kind: {caught}")
    assert not missed, f"{len(missed)} tamperings passed verify: {missed[:10]}"
    assert not misnamed, f"{len(misnamed)} failures named the wrong place: {misnamed[:5]}"
    assert sum(caught.values()) == len(plan) >= 200
    assert set(caught) == {t.__name__ for t, _ in TAMPERERS}


async def test_forged_keys_in_header_need_the_published_keys(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """A forger who rewrites an entry (a release's reason: no rule depends on it),
    re-signs every checkpoint with their own key and puts that key in the export's header
    fools only a verifier who trusts the header: with the published keys (--keys), the
    first checkpoint is named."""
    export = await build_clean_export(room, keys, tmp_path)
    forger = Ed25519PrivateKey.generate()
    position = next(p for p in range(len(export.entries)) if export.kind(p) == b"release")
    entry = unpack(export.raw(position))
    entry[b"x"] = b"customer cancelled"
    export.set_raw(position, pack_like_redis(entry))
    forged = Export.parse("\n".join(export.lines()))
    # recompute every root over the forged log and sign it
    from gate.audit import merkle

    leaves = [merkle.leaf_hash(forged.raw(p)) for p in range(len(forged.entries))]
    for cp in forged.checkpoints:
        cp["root"] = merkle.root(leaves[: cp["size"]]).hex()
        cp["kid"] = "forger"
        cp["sig"] = b64url(
            forger.sign(checkpoint_message(cp["campaign"], cp["size"], cp["root"], cp["time_ms"]))
        )
    forged.header["keys"] = {
        "keys": [
            {
                "kid": "forger",
                "alg": "Ed25519",
                "public_key": b64url(forger.public_key().public_bytes_raw()),
            }
        ]
    }
    with pytest.raises(VerificationFailed) as failed:
        verify_lines(forged.lines(), keys.public_keys(), require_sealed=True)
    assert failed.value.failure.checkpoint == 1
    assert "forger" in failed.value.failure.message
    # trusting the header instead only proves the log matches *some* key's checkpoints
    report = verify_lines(forged.lines(), None)
    assert "header" in report.keys_source
