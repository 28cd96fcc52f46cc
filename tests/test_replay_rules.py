"""The complete replay (issue 13): rules only the replay can catch.

Two kinds of adversary:

* an insider with Redis access but no key, whose changes the real sealer then signs
  (a competitor's reservation or pass expired early by rewriting its score): the log
  is authentic, the replay must find the rule the gate was made to break;
* the operator *with* the signing key: any change to the log, after which every
  checkpoint's root is recomputed and re-signed with the real key (`resign`), so no
  signature or Merkle check can see it. Time travel (an entry dated before opening, or
  in 2100), an expiry before its deadline, a claim without its pass, a changed
  subscription amount, an operator action the state did not allow.

Each must fail verification naming the entry. The tamper kinds here are drawable like
those of tests/test_tamper.py (`KEYED_TAMPERERS`: (rng, export, keys) -> Target).
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gate.audit import merkle
from gate.audit.checkpoints import make_checkpoint
from gate.audit.report import VerificationFailed
from gate.audit.verify import verify_lines
from gate.campaign import parse_spec, to_us
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.signing import SigningKeys
from gate.tokens import customer_digest
from tests.helpers import (
    Export,
    amount_quota,
    create_committed,
    export_to_file,
    pack_like_redis,
    seal_everything,
    spec,
    unpack,
    wait_redis_time,
)
from tests.test_tamper import Target, admit_upto, build_clean_export, tally

MIN, MAX, STEP = 1_000_000, 10_000_000, 10_000
YEAR_2100_US = 4_102_444_800_000_000

# -- the operator's pen: change the log, renumber, rebuild the tree, re-sign -------------


def entries_of(export: Export) -> list[dict[bytes, Any]]:
    return [unpack(export.raw(p)) for p in range(len(export.entries))]


def rewrite(export: Export, entries: list[dict[bytes, Any]], shifts: list[tuple[int, int]]) -> None:
    """Put `entries` (renumbered 1, 2, …) in the export; `shifts`: (0-based position,
    +1 inserted there / -1 deleted there), in the order they were made, to move the
    checkpoint sizes with them."""
    for cp in export.checkpoints:
        for position, delta in shifts:
            if position < cp["size"]:
                cp["size"] += delta
    lines = []
    for number, entry in enumerate(entries, start=1):
        entry[b"i"] = number
        lines.append({"type": "entry", "i": number, "raw": ""})
    export.entries = lines
    for position, entry in enumerate(entries):
        export.set_raw(position, pack_like_redis(entry))


def resign(export: Export, keys: SigningKeys) -> None:
    """Every checkpoint over the log as it now is, signed with the real key (its time
    kept): what an operator holding the key can publish."""
    leaves = [merkle.leaf_hash(export.raw(p)) for p in range(len(export.entries))]
    export.checkpoints = [
        make_checkpoint(
            keys, cp["campaign"], cp["size"], merkle.root(leaves[: cp["size"]]), cp["time_ms"]
        )
        for cp in export.checkpoints
    ]


def positions(entries: list[dict[bytes, Any]], kind: bytes) -> list[int]:
    return [p for p, e in enumerate(entries) if e[b"k"] == kind]


def closing(entries: list[dict[bytes, Any]]) -> int:
    """The position of the entry that closed the campaign (or the end)."""
    for p, e in enumerate(entries):
        if e[b"k"] in (b"admin-close", b"close"):
            return p
    return len(entries)


# -- the tamper kinds (with the key) ------------------------------------------------------


def time_back(rng: random.Random, export: Export, keys: SigningKeys) -> Target:
    """An entry dated earlier than the one before it by more than the tolerance."""
    entries = entries_of(export)
    p = rng.randrange(1, len(entries))
    before = max(e[b"t"] for e in entries[:p])
    entries[p][b"t"] = before - rng.choice([1_000_001, 5_000_000, 3_600_000_000, 86_400_000_000])
    rewrite(export, entries, [])
    resign(export, keys)
    return Target(f"entry {p + 1} dated before entry {p}", (p + 1,))


def time_future(rng: random.Random, export: Export, keys: SigningKeys) -> Target:
    """An entry dated 2100 (the last one: only its checkpoint's time bounds it), or a
    run of entries moved hours ahead of the ones after them."""
    entries = entries_of(export)
    if rng.random() < 0.4:
        p = len(entries) - 1
        entries[p][b"t"] = YEAR_2100_US
        rewrite(export, entries, [])
        resign(export, keys)
        return Target("the last entry dated 2100", (p + 1,))
    p = rng.randrange(0, len(entries) - 1)
    entries[p][b"t"] = rng.choice([YEAR_2100_US, entries[p][b"t"] + 7_200_000_000])
    rewrite(export, entries, [])
    resign(export, keys)
    return Target(f"entry {p + 1} dated in the future", (p + 1, p + 2))


def before_opening(rng: random.Random, export: Export, keys: SigningKeys) -> Target:
    """A claim or a pass dated before opens_at (the entries before it moved with it, so
    time still runs forward)."""
    entries = entries_of(export)
    opens = to_us(parse_spec(_spec_of(entries)).opens_at)
    p = rng.choice(positions(entries, b"claim") + positions(entries, b"pass"))
    shift = entries[p][b"t"] - opens + rng.choice([1, 1_000, 60_000_000])
    for e in entries[: p + 1]:
        e[b"t"] -= shift
        for name in (b"d", b"e", b"nb"):
            if name in e:
                e[name] -= shift
    rewrite(export, entries, [])
    resign(export, keys)
    return Target(f"entries 1..{p + 1} moved before opens_at", tuple(range(1, p + 2)))


def early_pass_expiry(rng: random.Random, export: Export, keys: SigningKeys) -> Target:
    """An `expire` of a customer's pass inserted before its deadline."""
    entries = entries_of(export)
    passed = {e[b"s"]: p for p, e in enumerate(entries) if e[b"k"] == b"pass"}
    touched = {e[b"s"] for e in entries if e[b"k"] in (b"claim", b"subscribe")}
    touched |= {s for e in entries if e[b"k"] == b"expire" for s in e[b"s"]}
    touched |= {e[b"s"] for e in entries if e[b"k"] in (b"block", b"revoke")}
    seq = rng.choice(sorted(set(passed) - touched))
    end = closing(entries)
    p = rng.randrange(passed[seq] + 1, end + 1)
    t = entries[p - 1][b"t"]
    entries.insert(p, {b"k": b"expire", b"s": [seq], b"t": t})
    rewrite(export, entries, [(p, 1)])
    resign(export, keys)
    return Target(f"seq {seq}'s pass expired early at {p + 1}", (p + 1,))


def early_reservation_expiry(rng: random.Random, export: Export, keys: SigningKeys) -> Target:
    """A reservation that expired for real expired instead 1 ms after its claim."""
    entries = entries_of(export)
    claims = {e[b"r"]: p for p, e in enumerate(entries) if e[b"k"] == b"claim"}
    expired = [
        (p, n)
        for p, e in enumerate(entries)
        if e[b"k"] == b"expire-res"
        for n in range(len(e[b"r"]))
    ]
    at, n = rng.choice(expired)
    old = entries[at]
    rid, seq, amount = old[b"r"][n], old[b"s"][n], old[b"m"][n]
    shifts = []
    if len(old[b"r"]) == 1:
        del entries[at]
        shifts.append((at, -1))
    else:
        for name in (b"r", b"s", b"m"):
            del old[name][n]
    claim = claims[rid]
    t = entries[claim][b"t"] + rng.choice([1, 1_000, 500_000])
    entries.insert(
        claim + 1, {b"k": b"expire-res", b"r": [rid], b"s": [seq], b"m": [amount], b"t": t}
    )
    shifts.append((claim + 1, 1))
    rewrite(export, entries, shifts)
    resign(export, keys)
    return Target(f"reservation {rid!r} expired early at {claim + 2}", (claim + 2,))


def claim_without_pass(rng: random.Random, export: Export, keys: SigningKeys) -> Target:
    """The pass entry of a customer who then claimed, deleted."""
    entries = entries_of(export)
    passes = {e[b"s"]: p for p, e in enumerate(entries) if e[b"k"] == b"pass"}
    claims = [p for p in positions(entries, b"claim") + positions(entries, b"subscribe")]
    claim = rng.choice(claims)
    seq = entries[claim][b"s"]
    del entries[passes[seq]]
    rewrite(export, entries, [(passes[seq], -1)])
    resign(export, keys)
    return Target(f"seq {seq}'s pass deleted, its claim at {claim}", (claim,))


def operator_not_allowed(rng: random.Random, export: Export, keys: SigningKeys) -> Target:
    """An operator action the campaign's state did not allow, inserted: resume while
    open, pause / close / update after close, a field no update may change, an old value
    that was not in force."""
    entries = entries_of(export)
    end = closing(entries)
    pause = positions(entries, b"admin-pause")[0]
    style = rng.choice(["resume-open", "after-close", "field", "old"])
    if style == "resume-open":
        p = rng.randrange(1, pause + 1)
        entry: dict[bytes, Any] = {b"k": b"admin-resume", b"a": b"ops"}
    elif style == "after-close":
        p = rng.randrange(end + 1, len(entries) + 1)
        entry = rng.choice(
            [
                {b"k": b"admin-close", b"a": b"ops"},
                {b"k": b"admin-pause", b"a": b"ops"},
                {b"k": b"admin-resume", b"a": b"ops"},
                {
                    b"k": b"admin-update",
                    b"a": b"ops",
                    b"f": [b"rate"],
                    b"o": [b"900000.0"],
                    b"n": [b"5"],
                },
            ]
        )
    else:
        p = rng.randrange(1, end)
        field = b"q_total" if style == "field" else b"burst"
        entry = {b"k": b"admin-update", b"a": b"ops", b"f": [field], b"o": [b"7"], b"n": [b"9"]}
    entry[b"t"] = entries[p - 1][b"t"]
    entries.insert(p, entry)
    rewrite(export, entries, [(p, 1)])
    resign(export, keys)
    return Target(f"{style}: {entry[b'k'].decode()} at {p + 1}", (p + 1,))


def _spec_of(entries: list[dict[bytes, Any]]) -> dict[str, Any]:
    import json

    parsed: dict[str, Any] = json.loads(entries[0][b"spec"])
    return parsed


KeyedTamper = Callable[[random.Random, Export, SigningKeys], Target]

KEYED_TAMPERERS: list[tuple[KeyedTamper, int]] = [
    (time_back, 12),
    (time_future, 12),
    (before_opening, 10),
    (early_pass_expiry, 12),
    (early_reservation_expiry, 12),
    (claim_without_pass, 12),
    (operator_not_allowed, 12),
]


# -- fixtures -------------------------------------------------------------------------------


async def build_ballot_export(room: Room, keys: SigningKeys, tmp_path: Path) -> Export:
    """A closed ballot: 12 customers joined, admitted, given passes, subscribed (more
    than the total), allotted in chunks from the revealed seed, sealed."""
    c = "ballot"
    raw = spec(c, rate_per_s=1000, burst=1000, max_active=1000, pass_ttl_s=300)
    raw["policy"] = "ballot"
    raw["quota"] = amount_quota(30_000_000, MIN, MAX, STEP)
    await create_committed(room, keys, parse_spec(raw))
    digests = [customer_digest(keys, c, f"b{i}") for i in range(12)]
    await room.join(c, digests)
    await admit_upto(room, c, 12)
    rng = random.Random(12)
    for seq in range(1, 13):
        state, _ = await room.pass_check(c, seq, digests[seq - 1])
        assert state == "admitted", state
        result = await room.subscribe(c, seq, digests[seq - 1], rng.randrange(MIN, MAX, STEP))
        assert result.ok, result
    await room.set_state(c, "close", "ops")
    assert await room.finalize_ballot(c, chunk_size=5)
    await seal_everything(room.redis, room.scripts, keys, c)
    path = await export_to_file(room.redis, c, keys, tmp_path / "ballot.jsonl")
    return Export.parse(await asyncio.to_thread(path.read_text))


def verify(export: Export, keys: SigningKeys) -> Any:
    return verify_lines(
        export.lines(), keys.public_keys(), keys_from="published", require_sealed=True
    )


def assert_caught(export: Export, keys: SigningKeys, target: Target, *words: str) -> str:
    with pytest.raises(VerificationFailed) as failed:
        verify(export, keys)
    failure = failed.value.failure
    assert target.named_by(failure), f"{target.what}: {failure.describe()}"
    for word in words:
        assert word in failure.message, failure.describe()
    return failure.describe()


# -- the tests ------------------------------------------------------------------------------


async def test_each_keyed_tampering_is_caught_by_the_replay(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """With the signing key (every checkpoint re-signed over the changed log): 82
    tamperings of 7 kinds, each caught and the entry named. The clean export verifies."""
    clean = await build_clean_export(room, keys, tmp_path)
    clean.receipts = {}
    report = verify(clean, keys)
    assert report.expired_passes >= 10 and report.reservations_expired >= 1
    rng = random.Random(1313)
    plan = [tamper for tamper, count in KEYED_TAMPERERS for _ in range(count)]
    rng.shuffle(plan)

    def draw(tamper: Any) -> tuple[Export, Target]:
        export = copy.deepcopy(clean)
        target = tamper(rng, export, keys)
        assert export.fingerprint() != clean.fingerprint(), target.what
        return export, target

    caught, missed, misnamed = tally(plan, draw, lambda export: verify(export, keys))
    print(f"keyed tamperings: {len(plan)}, caught per kind: {caught}")
    assert not missed, f"{len(missed)} of {len(plan)} verified: {missed[:8]}"
    assert not misnamed, f"{len(misnamed)} named the wrong place: {misnamed[:5]}"


async def test_the_auditors_five_with_the_key(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """The issue's list, each re-signed with the key: a claim dated before opening, an
    entry dated 2100, a reservation expired 1 ms after it was made, a claim without a
    pass. Each fails naming the entry."""
    clean = await build_clean_export(room, keys, tmp_path)
    clean.receipts = {}
    entries = entries_of(clean)

    # a claim dated before opening (its time alone)
    export = copy.deepcopy(clean)
    p = positions(entries, b"claim")[3]
    changed = entries_of(export)
    changed[p][b"t"] = to_us(parse_spec(_spec_of(entries)).opens_at) - 1_000_000
    changed[p][b"e"] = changed[p][b"t"] + 1_000_000
    rewrite(export, changed, [])
    resign(export, keys)
    print(assert_caught(export, keys, Target("claim before opening", (p + 1,)), "before"))

    # an entry dated 2100: the last one (a revoke before close would do as well)
    export = copy.deepcopy(clean)
    changed = entries_of(export)
    changed[-1][b"t"] = YEAR_2100_US
    rewrite(export, changed, [])
    resign(export, keys)
    print(assert_caught(export, keys, Target("2100", (len(changed),)), "checkpoint"))

    # a reservation expired 1 ms after it was made
    export = copy.deepcopy(clean)
    target = early_reservation_expiry(random.Random(3), export, keys)
    print(assert_caught(export, keys, target, "before its deadline"))

    # a claim without a pass
    export = copy.deepcopy(clean)
    target = claim_without_pass(random.Random(4), export, keys)
    print(assert_caught(export, keys, target, "pass"))


async def test_a_changed_subscription_amount_with_the_key(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """A ballot whose subscription amount was changed, every checkpoint re-signed: the
    allotments recomputed from the subscriptions and the seed differ, and the failure
    names the subscription entry. (A change that moves no allotment is consistent with
    every other entry: only evidence the customer holds could show it.)"""
    clean = await build_ballot_export(room, keys, tmp_path)
    verify(clean, keys)
    entries = entries_of(clean)
    subs = positions(entries, b"subscribe")
    for p in subs[:4]:
        export = copy.deepcopy(clean)
        changed = entries_of(export)
        old = int(changed[p][b"m"])
        new = MAX if old < MAX // 2 else MIN  # enough to move the ballot's outcome
        changed[p][b"m"] = str(new).encode()
        rewrite(export, changed, [])
        resign(export, keys)
        with pytest.raises(VerificationFailed) as failed:
            verify(export, keys)
        print(failed.value.failure.describe())
        assert f"(subscription: entry {p + 1})" in failed.value.failure.message


async def test_an_insider_expires_a_competitors_reservation_early(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """Redis access, no key: the score of a competitor's reservation moved 120 s early
    (and another customer's pass), then admit expires them and the real sealer signs the
    log. The replay names both expiries (each in its own campaign)."""
    for what in ("reservation", "pass"):
        c = f"insider-{what}"
        raw = spec(c, rate_per_s=1000, burst=1000, max_active=1000, pass_ttl_s=300)
        raw["quota"] = amount_quota(100_000_000, MIN, MAX, STEP)
        raw["admission"]["reservation_ttl_s"] = 120
        raw["opens_at"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        await create_committed(room, keys, parse_spec(raw))
        digests = [customer_digest(keys, c, f"i{i}") for i in range(3)]
        await room.join(c, digests)
        await admit_upto(room, c, 3)
        for seq in (1, 2, 3):
            assert (await room.pass_check(c, seq, digests[seq - 1]))[0] == "admitted"
        k = CampaignKeys(c)
        if what == "reservation":
            claim = await room.claim(c, 2, digests[1], 2_000_000, "k")
            assert claim.ok
            await room.redis.zadd(
                k.reservation_expiries, {claim.reservation: claim.expires_us - 120_000_000}
            )
            await wait_redis_time(room.redis, claim.expires_us - 120_000_000)
        else:
            await room.redis.zadd(k.active, {"3": 0}, xx=True)
        await room.admit(c, max_per_call=0)
        await seal_everything(room.redis, room.scripts, keys, c)
        path = await export_to_file(room.redis, c, keys, tmp_path / f"{c}.jsonl")
        export = Export.parse(await asyncio.to_thread(path.read_text))
        kind = b"expire-res" if what == "reservation" else b"expire"
        p = positions(entries_of(export), kind)[0]
        print(assert_caught(export, keys, Target(what, (p + 1,)), "before its deadline"))
