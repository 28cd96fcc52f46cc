"""Every kind of tampering the suites know, in one drawable table (issue 13).

A tampering is applied to a `Case`: a copy of the clean export (tests/test_tamper.py's
`build_clean_export`) and the evidence the auditor holds beside it, checkpoints from
elsewhere (a witness, a regulator's copy) and customers' receipts. The kinds come from
three places and are not copied here:

* tests/test_tamper.py's `TAMPERERS`: changes without the key (a field, a deleted,
  inserted or swapped entry, the shuffle, a receipt, a checkpoint, another key);
* tests/test_replay_rules.py's `KEYED_TAMPERERS`: the operator with the signing key,
  every checkpoint re-signed (time travel, early expiry, a claim without its pass, ...);
* this module: what only the held evidence or the strict default catches (truncation,
  rollback, a fork, stripped checkpoints, a rewritten unsealed tail, a substituted seed or
  commitment), what the join batches' signature lines catch, and a few more keyed and
  structural ones.

Each kind returns an `Expect`: where verify must point (`Target`), the failure kind it
must name where it has one, and `alone`: verify options under which the tampered export
*does* verify (the held evidence left out, or --allow-unsealed), which shows that what
catches it is the auditor's evidence or the strict default, not some other check; and
`still_fails`: options under which it must fail as well.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gate.audit.checkpoints import make_checkpoint
from gate.audit.replay import CLOCK_STEP_US
from gate.audit.report import Failure
from gate.prequeue import prequeue_order
from gate.signing import SigningKeys
from tests.helpers import Export, b64url, pack_like_redis, unb64url, unpack
from tests.test_replay_rules import KEYED_TAMPERERS, entries_of, resign, rewrite
from tests.test_tamper import TAMPERERS, Target
from tests.test_verify_evidence import cut_back, swap_customers

MIN, MAX, STEP = 1_000_000, 10_000_000, 10_000


@dataclass
class Case:
    """What the auditor has: the export (its `receipts`: the receipts held) and the
    checkpoints held from elsewhere, as (name, checkpoint)."""

    export: Export
    held: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # The clean export's join batch signature lines ("batch", which tests/helpers.Export
    # leaves out), and those this case's export carries: none unless the kind keeps them.
    # verify does not require them (exports of before have none), so whoever tampers
    # leaves them out; the kinds that keep them show what they catch.
    signatures: list[dict[str, Any]] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The export's lines: header, entries, batch lines, checkpoints."""
        lines = self.export.lines()
        after = len(self.export.entries) + 1
        return [*lines[:after], *(json.dumps(b) for b in self.batches), *lines[after:]]

    def fingerprint(self) -> str:
        return self.export.fingerprint() + repr(self.held) + repr(self.batches)


@dataclass
class Where(Target):
    """A Target that may also be a held checkpoint's file, a line, or any of several
    checkpoints."""

    held: str | None = None
    line: int | None = None
    checkpoints: tuple[int, ...] = ()

    def named_by(self, failure: Failure) -> bool:
        if self.held is not None and failure.held == self.held:
            return True
        if self.line is not None and failure.line == self.line:
            return True
        if failure.checkpoint is not None and failure.checkpoint in self.checkpoints:
            return True
        return super().named_by(failure)


@dataclass
class Expect:
    target: Target
    kinds: tuple[str | None, ...] | None = None  # Failure.kind must be one of these
    alone: dict[str, Any] | None = None  # verify options under which it verifies
    still_fails: dict[str, Any] | None = None  # verify options under which it fails too


Tamper = Callable[[random.Random, Case, SigningKeys], Expect]


@dataclass(frozen=True)
class Kind:
    name: str
    tamper: Tamper
    count: int


def plain_receipts(export: Export) -> dict[str, dict[str, Any]]:
    """The receipts given at join (not the GET /q/{c}/receipt answers with a checkpoint)."""
    return {name: r for name, r in export.receipts.items() if "entry" in r}


# -- the kinds of the other suites, adapted ---------------------------------------------


def _unkeyed(tamper: Callable[[random.Random, Export], Target]) -> Tamper:
    """test_tamper's kinds: the auditor holds the receipts given at join."""

    def apply(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
        case.export.receipts = plain_receipts(case.export)
        return Expect(tamper(rng, case.export))

    return apply


def _keyed(tamper: Callable[[random.Random, Export, SigningKeys], Target]) -> Tamper:
    """test_replay_rules' kinds: the log rewritten and re-signed; the auditor has the
    export alone (a receipt would catch an entry renumbered, before the replay names it)."""

    def apply(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
        case.export.receipts = {}
        return Expect(tamper(rng, case.export, keys))

    return apply


# -- what the auditor's evidence catches --------------------------------------------------

NO_EVIDENCE: dict[str, Any] = {"checkpoints": (), "receipts": ()}
ALLOW_UNSEALED: dict[str, Any] = {"require_sealed": False}


def _held(export: Export, number: int) -> tuple[str, dict[str, Any]]:
    """Checkpoint `number` (0-based) of the clean export, as a file the auditor holds."""
    return (f"held-{number + 1}.json", copy.deepcopy(export.checkpoints[number]))


def truncation_with_held_checkpoint(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """The log cut back to an earlier checkpoint (it verifies alone: every entry left is
    sealed); the auditor holds a later checkpoint."""
    export = case.export
    export.receipts = {}
    sizes = sorted({cp["size"] for cp in export.checkpoints})
    keep = rng.randrange(1, len(sizes))  # checkpoints kept: those up to sizes[keep - 1]
    later = [n for n, cp in enumerate(export.checkpoints) if cp["size"] > sizes[keep - 1]]
    case.held = [_held(export, rng.choice(later))]
    kept = sum(1 for cp in export.checkpoints if cp["size"] <= sizes[keep - 1])
    size = cut_back(export, kept)
    return Expect(
        Where(f"cut back to {size}", (size + 1,), held=case.held[0][0]),
        ("truncation",),
        NO_EVIDENCE,
    )


def rollback_below_receipt(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """The log rolled back to a checkpoint before a customer's join: the customer holds
    the receipt given at join (no checkpoint in it)."""
    export = case.export
    first = export.checkpoints[0]["size"]
    plain = {k: r for k, r in plain_receipts(export).items() if r["entry"] > first}
    name = rng.choice(sorted(plain))
    entry = plain[name]["entry"]
    export.receipts = {name: plain[name]}
    below = [n for n, cp in enumerate(export.checkpoints) if cp["size"] < entry]
    size = cut_back(export, rng.choice(below) + 1)
    return Expect(
        Target(f"rolled back to {size}, below {name}'s entry {entry}", receipt=name),
        ("missing_receipt",),
        NO_EVIDENCE,
    )


def rollback_below_receipts_checkpoint(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """The log rolled back to an earlier checkpoint; the customer holds the receipt
    answer (GET /q/{c}/receipt/{seq}) with the checkpoint it came with."""
    export = case.export
    answers = {k: v for k, v in export.receipts.items() if v.get("checkpoint")}
    name = rng.choice(sorted(answers))
    export.receipts = {name: answers[name]}
    signed = answers[name]["checkpoint"]["size"]
    below = [n for n, cp in enumerate(export.checkpoints) if cp["size"] < signed]
    size = cut_back(export, rng.choice(below) + 1)
    return Expect(
        Target(f"rolled back to {size}, below {name}'s checkpoint {signed}", receipt=name),
        ("truncation",),
        NO_EVIDENCE,
    )


def unwatched_join_seqs(export: Export) -> list[int]:
    """Seqs given by join entries whose customers nothing else names with their digest
    (no pass, claim, block or revoke): two of them swapped, the replay cannot tell."""
    joined: set[int] = set()
    named: set[int] = set()
    for position in range(len(export.entries)):
        entry = unpack(export.raw(position))
        if entry[b"k"] == b"join":
            joined.update(entry[b"s"][0::2])
        elif b"c" in entry and isinstance(entry.get(b"s"), int):
            named.add(entry[b"s"])
    return sorted(joined - named)


def _swap_two_joined(rng: random.Random, export: Export) -> tuple[int, int, int]:
    """Two unwatched customers swapped; returns them and the first entry changed."""
    a, b = sorted(rng.sample(unwatched_join_seqs(export), 2))
    swap_customers(export, a, b)
    first = min(
        p
        for p in range(len(export.entries))
        if export.kind(p) == b"join" and {a, b} & set(unpack(export.raw(p))[b"s"][0::2])
    )
    return a, b, first + 1


def fork_with_held_checkpoint(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """With the key: two customers' seqs swapped and every checkpoint signed again (the
    export verifies alone); the auditor holds a checkpoint of the real log that covers
    the swap: two signed heads for one size."""
    export = case.export
    export.receipts = {}
    a, b, first = _swap_two_joined(rng, export)
    covering = [n for n, cp in enumerate(export.checkpoints) if cp["size"] >= first]
    case.held = [_held(export, rng.choice(covering))]
    resign(export, keys)
    return Expect(
        Where(f"seqs {a} and {b} swapped, re-signed", held=case.held[0][0]),
        ("equivocation",),
        NO_EVIDENCE,
    )


def equivocation_in_export(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """With the key: the log forked (two customers swapped, re-signed), and a checkpoint
    of the real log left among the export's own."""
    export = case.export
    export.receipts = {}
    original = copy.deepcopy(export.checkpoints)
    a, b, first = _swap_two_joined(rng, export)
    resign(export, keys)
    real = rng.choice([cp for cp in original if cp["size"] >= first])
    export.checkpoints.append(real)
    return Expect(
        Where(f"a real checkpoint beside the fork of {a}/{b}", checkpoints=(len(original) + 1,)),
        ("equivocation",),
    )


def strip_checkpoints(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """Every checkpoint removed (and, half the time, two customers swapped): nothing is
    signed, so nothing is verified by default."""
    export = case.export
    export.receipts = {}
    export.checkpoints = []
    what = "checkpoints stripped"
    if rng.random() < 0.5:
        a, b, _ = _swap_two_joined(rng, export)
        what += f", seqs {a} and {b} swapped"
    return Expect(Target(what, (1,)), ("unsealed",), ALLOW_UNSEALED)


def withhold_commitment(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """The checkpoints signed before the first join left out (and, half the time, the
    spec's max_active in admin-create raised, every later checkpoint re-signed with the key):
    nothing shows the rules and seed commitments were fixed before anyone joined."""
    export = case.export
    export.receipts = {}
    entries = entries_of(export)
    first = next(p for p, e in enumerate(entries) if e[b"k"] in (b"join", b"prejoin")) + 1
    export.checkpoints = [cp for cp in export.checkpoints if cp["size"] >= first]
    what = "the commitment checkpoint withheld"
    if rng.random() < 0.5:
        spec = json.loads(entries[0][b"spec"])
        spec["admission"]["max_active"] += rng.choice([1, 100, 99999])
        entries[0][b"spec"] = json.dumps(spec).encode()
        rewrite(export, entries, [])
        resign(export, keys)
        what += ", the rules changed and re-signed"
    return Expect(Target(what, (first,)), ("late_commitment",))


def rewrite_unsealed_tail(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """The checkpoints over the tail dropped (a sealer silenced), then the tail rewritten
    where no rule can see it: two customers swapped, money moved between two confirmed
    reservations, a release's reason changed."""
    export = case.export
    export.receipts = {}
    entries = entries_of(export)
    style = rng.choice(["swap", "money", "reason"])
    if style == "swap":
        a, b, first = _swap_two_joined(rng, export)
        what = f"seqs {a} and {b} swapped"
    elif style == "money":
        first, what = _move_money(rng, export, entries)
    else:
        releases = [p for p, e in enumerate(entries) if e[b"k"] == b"release"]
        position = rng.choice(releases)
        entries[position][b"x"] = b"customer cancelled"
        export.set_raw(position, pack_like_redis(entries[position]))
        first, what = position + 1, f"release {position + 1}'s reason"
    export.checkpoints = [cp for cp in export.checkpoints if cp["size"] < first]
    sealed = export.checkpoints[-1]["size"] if export.checkpoints else 0
    return Expect(
        Target(f"tail {sealed + 1}.. unsealed: {what}", (first,)), ("unsealed",), ALLOW_UNSEALED
    )


def _move_money(
    rng: random.Random, export: Export, entries: list[dict[bytes, Any]]
) -> tuple[int, str]:
    """Move an amount from one confirmed reservation to another (claims and confirms
    alike): the total is the same, each stays within min..max. Returns the first entry
    changed."""
    confirmed = {e[b"r"]: p for p, e in enumerate(entries) if e[b"k"] == b"confirm"}
    claims = {
        e[b"r"]: p for p, e in enumerate(entries) if e[b"k"] == b"claim" and e[b"r"] in confirmed
    }
    pairs = [
        (x, y)
        for x in claims
        for y in claims
        if x != y
        and int(entries[claims[x]][b"m"]) + STEP <= MAX
        and int(entries[claims[y]][b"m"]) - STEP >= MIN
    ]
    gains, loses = rng.choice(pairs)
    room = min(MAX - int(entries[claims[gains]][b"m"]), int(entries[claims[loses]][b"m"]) - MIN)
    amount = rng.randrange(STEP, room + 1, STEP)
    for rid, delta in ((gains, amount), (loses, -amount)):
        for position, names in ((claims[rid], (b"m", b"q")), (confirmed[rid], (b"m",))):
            for name in names:
                entries[position][name] = str(int(entries[position][name]) + delta).encode()
            export.set_raw(position, pack_like_redis(entries[position]))
    first = min(claims[gains], claims[loses]) + 1
    return first, f"{amount} moved from {loses!r} to {gains!r}"


# -- the join batches' signatures, made at join time ------------------------------------


def rewrite_tail_under_batch_signatures(
    rng: random.Random, case: Case, keys: SigningKeys
) -> Expect:
    """The unsealed tail rewritten (two customers of the join batches swapped, the
    checkpoints over them dropped), the export keeping its batch lines: each join batch
    was signed when it was made, so the swap is named even with --allow-unsealed."""
    export = case.export
    export.receipts = {}
    case.batches = copy.deepcopy(case.signatures)
    a, b, first = _swap_two_joined(rng, export)
    export.checkpoints = [cp for cp in export.checkpoints if cp["size"] < first]
    return Expect(
        Target(f"seqs {a} and {b} swapped under their batch signatures", (first,)),
        ("batch_signature",),
        still_fails=ALLOW_UNSEALED,
    )


def alter_batch_line(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """A join batch's signature line altered: a bit of its signature, its key id, or the
    entry it names."""
    case.export.receipts = {}
    case.batches = copy.deepcopy(case.signatures)
    line = rng.choice(case.batches)
    style = rng.choice(["sig", "kid", "i"])
    if style == "sig":
        signature = bytearray(unb64url(line["sig"]))
        signature[rng.randrange(len(signature))] ^= 1 << rng.randrange(8)
        line["sig"] = b64url(bytes(signature))
    elif style == "kid":
        line["kid"] = keys.ed25519_current + "0"
    else:
        line["i"] = rng.choice(
            [i for i in range(1, len(case.export.entries) + 1) if i != line["i"]]
        )
    return Expect(
        Target(f"batch line of entry {line['i']}: {style}", (line["i"],)), ("batch_signature", None)
    )


# -- the seeds: substituted after the commitment -----------------------------------------


def _reshuffle(
    entries: list[dict[bytes, Any]], seed: bytes
) -> tuple[int, dict[int, bytes], dict[int, bytes]]:
    """The reveal given `seed` and the pre-queue's seqs given again in its order:
    (the reveal's position, seq -> digest before, seq -> digest after)."""
    reveal = next(p for p, e in enumerate(entries) if e[b"k"] == b"reveal")
    entries[reveal][b"seed"] = seed.hex().encode()
    prejoined = [d for e in entries if e[b"k"] == b"prejoin" for d in e[b"c"]]
    blocked = {e[b"c"] for e in entries if e[b"k"] == b"block"}
    order = prequeue_order(seed, prejoined)
    before: dict[int, bytes] = {}
    for e in entries:
        if e[b"k"] != b"prequeue":
            continue
        pairs = e[b"s"]
        for k in range(0, len(pairs), 2):
            before[pairs[k]] = pairs[k + 1]
            pairs[k + 1] = order[pairs[k] - 1]
        revoked = [pairs[k] for k in range(0, len(pairs), 2) if pairs[k + 1] in blocked]
        if revoked or b"x" in e:
            e[b"x"] = revoked
    return reveal, before, dict(enumerate(order, start=1))


def seed_substitution(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """With the key: the revealed pre-queue seed replaced after its commitment (hq of
    admin-create) and the pre-queue's seqs given in the new seed's order, re-signed."""
    case.export.receipts = {}
    entries = entries_of(case.export)
    reveal, _, _ = _reshuffle(entries, rng.randbytes(32))
    rewrite(case.export, entries, [])
    resign(case.export, keys)
    return Expect(Target(f"reveal {reveal + 1} with another seed", (reveal + 1,)))


def commitment_substitution(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """With the key: the seed *and* its commitment replaced, the pre-queue given in the
    new order and every later entry made to agree (the export verifies alone). The
    auditor holds the commitment checkpoint, published before opening: a fork."""
    export = case.export
    export.receipts = {}
    case.held = [_held(export, 0)]
    entries = entries_of(export)
    blocked = {e[b"c"] for e in entries if e[b"k"] == b"block"}
    prejoined = [d for e in entries if e[b"k"] == b"prejoin" for d in e[b"c"]]
    reveal = next(e for e in entries if e[b"k"] == b"reveal")
    real = prequeue_order(bytes.fromhex(reveal[b"seed"].decode()), prejoined)
    while True:  # a seed under which the blocked customers keep their seqs
        seed = rng.randbytes(32)
        order = prequeue_order(seed, prejoined)
        if all(order.index(d) == real.index(d) for d in blocked if d in real):
            break
    _, _, after = _reshuffle(entries, seed)
    entries[0][b"hq"] = hashlib.sha256(seed).hexdigest().encode()
    for e in entries:
        if b"c" in e and isinstance(e.get(b"s"), int) and e[b"s"] in after:
            e[b"c"] = after[e[b"s"]]
    rewrite(export, entries, [])
    resign(export, keys)
    return Expect(
        Where("seed and hq replaced", held=case.held[0][0]), ("equivocation",), NO_EVIDENCE
    )


# -- more with the key --------------------------------------------------------------------


def _keyed_change(
    export: Export, keys: SigningKeys, change: Callable[[list[dict[bytes, Any]]], int]
) -> int:
    export.receipts = {}
    entries = entries_of(export)
    position = change(entries)
    rewrite(export, entries, [])
    resign(export, keys)
    return position


def second_ticket(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """With the key: a join gives a seq to a customer who already holds one."""

    def change(entries: list[dict[bytes, Any]]) -> int:
        joins = [p for p, e in enumerate(entries) if e[b"k"] == b"join"]
        position = rng.choice(joins)
        seen = [
            d
            for e in entries[:position]
            for d in (e[b"s"][1::2] if e[b"k"] in (b"join", b"prequeue") else [])
        ]
        pairs = entries[position][b"s"]
        pairs[2 * rng.randrange(len(pairs) // 2) + 1] = rng.choice(seen)
        return position

    position = _keyed_change(case.export, keys, change)
    return Expect(Target(f"join {position + 1} gives a second ticket", (position + 1,)))


def admission_out_of_order(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """With the key: an admission that skips seqs, starts again, or leaves out a revoked
    seq's skip."""

    def change(entries: list[dict[bytes, Any]]) -> int:
        admits = [p for p, e in enumerate(entries) if e[b"k"] == b"admit"]
        position = rng.choice(admits)
        e = entries[position]
        style = rng.choice(["first", "skip"])
        if style == "first" or not e.get(b"x"):
            e[b"f"] += rng.choice([1, -1]) if e[b"f"] > 1 else 1
        else:
            e[b"x"] = e[b"x"][1:]
        return position

    position = _keyed_change(case.export, keys, change)
    return Expect(Target(f"admission {position + 1} out of seq order", (position + 1,)))


def oversold_grant(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """With the key: a claim granted more than it asked (or the quota had)."""

    def change(entries: list[dict[bytes, Any]]) -> int:
        claims = [p for p, e in enumerate(entries) if e[b"k"] == b"claim"]
        position = rng.choice(claims)
        e = entries[position]
        e[b"m"] = str(int(e[b"m"]) + rng.choice([STEP, 10 * STEP, 200_000_000])).encode()
        return position

    position = _keyed_change(case.export, keys, change)
    return Expect(Target(f"claim {position + 1} granted more", (position + 1,)))


def finished_amount_changed(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """With the key: a confirm or release for another amount than its reservation held."""

    def change(entries: list[dict[bytes, Any]]) -> int:
        done = [p for p, e in enumerate(entries) if e[b"k"] in (b"confirm", b"release")]
        position = rng.choice(done)
        e = entries[position]
        e[b"m"] = str(int(e[b"m"]) + rng.choice([STEP, -STEP, 5_000_000])).encode()
        return position

    position = _keyed_change(case.export, keys, change)
    return Expect(Target(f"entry {position + 1}'s amount changed", (position + 1,)))


# -- the file itself ------------------------------------------------------------------------


def reorder_checkpoints(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """Two of the export's checkpoints of different sizes swapped."""
    cps = case.export.checkpoints
    i, j = sorted(
        rng.choice(
            [
                (i, j)
                for i in range(len(cps))
                for j in range(len(cps))
                if cps[i]["size"] < cps[j]["size"]
            ]
        )
    )
    cps[i], cps[j] = cps[j], cps[i]
    return Expect(Where(f"checkpoints {i + 1} and {j + 1}", checkpoints=tuple(range(i + 1, j + 2))))


def alter_header(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """The header's campaign, format or type changed."""
    header = case.export.header
    name = rng.choice(["campaign", "format", "type"])
    header[name] = f"{header[name]}x" if isinstance(header[name], str) else 2
    return Expect(Where(f"header {name}", (1,), line=1, checkpoints=(1,)))


def garble_line(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """An entry line broken: raw not base64, raw not an entry, its i or its entry's own
    index changed, or a line of an unknown type put in."""
    export = case.export
    position = rng.randrange(len(export.entries))
    line = export.entries[position]
    style = rng.choice(["base64", "msgpack", "line-i", "entry-i", "type"])
    if style == "base64":
        line["raw"] = "!" + line["raw"][1:]
    elif style == "msgpack":
        line["raw"] = base64.b64encode(b"\xc1" + rng.randbytes(8)).decode()
    elif style == "line-i":
        line["i"] = line["i"] + rng.choice([1, 2, -1])
    elif style == "entry-i":
        entry = unpack(export.raw(position))
        entry[b"i"] += rng.choice([1, -1, 1000])
        export.set_raw(position, pack_like_redis(entry))
    else:
        export.entries.insert(position, {"type": "note", "i": position + 1})
    return Expect(
        Where(f"line of entry {position + 1}: {style}", (position + 1,), line=position + 2)
    )


def wrong_key_id(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """A checkpoint whose kid names another key than the one that signed it."""
    cps = case.export.checkpoints
    number = rng.randrange(len(cps))
    cps[number] = {**cps[number], "kid": rng.choice(["e00000000", "", keys.ed25519_current + "0"])}
    return Expect(Where(f"checkpoint {number + 1}'s kid", checkpoints=(number + 1,)))


def late_checkpoint_time(rng: random.Random, case: Case, keys: SigningKeys) -> Expect:
    """With the key: a checkpoint signed again with a time before the entries it covers
    (beyond the clock-step tolerance), its root kept."""
    case.export.receipts = {}
    cps = case.export.checkpoints
    number = rng.randrange(len(cps))
    cp = cps[number]
    latest_ms = max(e[b"t"] for e in entries_of(case.export)[: cp["size"]]) // 1000
    time_ms = latest_ms - CLOCK_STEP_US // 1000 - rng.choice([2, 2_000, 86_400_000])
    root = bytes.fromhex(cp["root"])
    cps[number] = make_checkpoint(keys, cp["campaign"], cp["size"], root, time_ms)
    return Expect(Where(f"checkpoint {number + 1} dated early", checkpoints=(number + 1,)))


# -- the table -------------------------------------------------------------------------------

PER_KIND = 15

KINDS: list[Kind] = [
    *(Kind(t.__name__, _unkeyed(t), PER_KIND) for t, _ in TAMPERERS),
    *(Kind(t.__name__, _keyed(t), PER_KIND) for t, _ in KEYED_TAMPERERS),
    *(
        Kind(t.__name__, t, PER_KIND)
        for t in (
            truncation_with_held_checkpoint,
            rollback_below_receipt,
            rollback_below_receipts_checkpoint,
            fork_with_held_checkpoint,
            equivocation_in_export,
            strip_checkpoints,
            withhold_commitment,
            rewrite_unsealed_tail,
            rewrite_tail_under_batch_signatures,
            alter_batch_line,
            seed_substitution,
            commitment_substitution,
            second_ticket,
            admission_out_of_order,
            oversold_grant,
            finished_amount_changed,
            reorder_checkpoints,
            alter_header,
            garble_line,
            wrong_key_id,
            late_checkpoint_time,
        )
    ),
]
