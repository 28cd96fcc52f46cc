"""The issue 13 tamper suite: at least 400 random tamperings of at least 25 kinds, every
one caught by `gate audit verify` in its default mode (strict: entries no checkpoint
covers are not verified), with the published keys and the evidence the auditor holds.

The kinds (tests/tamper_kinds.py) gather test_tamper's (no key), test_replay_rules'
(the operator with the key, every checkpoint re-signed) and those that only held
evidence or the strict default catch: truncation with a held checkpoint, rollback below a
receipt or its checkpoint, a fork, stripped checkpoints, a rewritten unsealed tail, the
seed substituted after its commitment, a tail rewritten under the join batches'
signatures (named even with --allow-unsealed), and more. The clean export is built once
(a real campaign on the session's Redis, sealed by the real sealer); each tampering is
applied to a copy and verified in milliseconds.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any

from gate.audit.receipts import ReceiptBook
from gate.audit.report import Report, VerificationFailed
from gate.audit.verify import verify_lines
from gate.room import Room
from gate.signing import SigningKeys
from tests.tamper_kinds import KINDS, PER_KIND, Case
from tests.test_tamper import build_clean_export

TOTAL = 400
KIND_COUNT = 25
# The issue names these; each must be in the table.
NAMED = {
    "truncation_with_held_checkpoint",
    "rollback_below_receipt",
    "rollback_below_receipts_checkpoint",
    "fork_with_held_checkpoint",
    "strip_checkpoints",
    "rewrite_unsealed_tail",
    "time_back",
    "time_future",
    "before_opening",
    "early_pass_expiry",
    "early_reservation_expiry",
    "claim_without_pass",
    "seed_substitution",
    "commitment_substitution",
}


def verify_default(case: Case, published: dict[str, Any], **options: Any) -> Report:
    """`gate audit verify EXPORT --keys published.json --checkpoint HELD... --receipt
    R...`: no --allow-unsealed, no --sealed."""
    arguments: dict[str, Any] = {
        "receipts": list(case.export.receipts.items()),
        "checkpoints": case.held,
        **options,
    }
    return verify_lines(case.lines(), published, keys_from="published", **arguments)


async def clean_case(room: Room, keys: SigningKeys, tmp_path: Path) -> Case:
    """test_tamper's clean export, with the receipt answers (GET /q/{c}/receipt/{seq}:
    the receipt, the latest checkpoint and the inclusion proof) of a few customers, and
    the export's join batch signature lines."""
    clean = await build_clean_export(room, keys, tmp_path)
    exported = (tmp_path / "clean.jsonl").read_text().splitlines()
    signatures = [line for line in map(json.loads, exported) if line["type"] == "batch"]
    book = ReceiptBook(room.redis, keys, None)
    for seq in (2, 61, 77, 100):
        answer = await book.receipt_with_proof("tamper", seq)
        assert answer is not None and answer["checkpoint"] is not None, seq
        clean.receipts[f"answer-seq{seq}.json"] = answer
    return Case(clean, signatures=signatures)


async def test_400_tamperings_of_25_kinds_all_caught_by_default(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    start = await clean_case(room, keys, tmp_path)
    clean, signatures = start.export, start.signatures
    published = keys.public_keys()
    # the clean export verifies with every piece of evidence the kinds hand the auditor
    everything = Case(
        clean,
        [(f"held-{n + 1}.json", cp) for n, cp in enumerate(clean.checkpoints)],
        batches=signatures,
    )
    report = verify_default(everything, published)
    assert report.sealed == report.entries == len(clean.entries)
    assert report.held_checkpoints == len(clean.checkpoints) + 4
    assert report.batch_signatures == report.join_batches == len(signatures) > 0

    names = [kind.name for kind in KINDS]
    assert len(set(names)) == len(names) >= KIND_COUNT, names
    assert set(names) >= NAMED, NAMED - set(names)
    rng = random.Random(20261130)
    plan = [kind for kind in KINDS for _ in range(kind.count)]
    rng.shuffle(plan)
    assert len(plan) >= TOTAL

    started = time.monotonic()
    caught: dict[str, int] = {}
    missed: list[str] = []
    misnamed: list[str] = []
    wrong_kind: list[str] = []
    not_alone: list[str] = []
    for kind in plan:
        for _ in range(20):  # drawn again when the tampering changes nothing
            case = copy.deepcopy(start)
            expect = kind.tamper(rng, case, keys)
            if case.fingerprint() != start.fingerprint():
                break
        else:
            raise AssertionError(f"{kind.name} never changed the export")
        what = f"{kind.name}: {expect.target.what}"
        try:
            verify_default(case, published)
        except VerificationFailed as exc:
            failure = exc.failure
            caught[kind.name] = caught.get(kind.name, 0) + 1
            if not expect.target.named_by(failure):
                misnamed.append(f"{what}: {failure.describe()}")
            if expect.kinds is not None and failure.kind not in expect.kinds:
                wrong_kind.append(f"{what}: {failure.kind} ({failure.describe()})")
        else:
            missed.append(what)
            continue
        if expect.alone is not None:  # what catches it is the evidence / the default
            try:
                verify_default(case, published, **expect.alone)
            except VerificationFailed as exc:
                not_alone.append(f"{what}: {exc.failure.describe()}")
        if expect.still_fails is not None:
            try:
                verify_default(case, published, **expect.still_fails)
            except VerificationFailed:
                pass
            else:
                missed.append(f"{what} (with {expect.still_fails})")
    elapsed = time.monotonic() - started
    print(f"tamperings: {len(plan)} of {len(caught)} kinds in {elapsed:.2f} s")
    for name in names:
        print(f"  {name}: {caught.get(name, 0)} caught")
    assert not missed, f"{len(missed)} of {len(plan)} verified: {missed[:8]}"
    assert not misnamed, f"{len(misnamed)} named the wrong place: {misnamed[:5]}"
    assert not wrong_kind, f"{len(wrong_kind)} failed as another kind: {wrong_kind[:5]}"
    assert not not_alone, f"{len(not_alone)} were caught by something else: {not_alone[:5]}"
    assert sum(caught.values()) == len(plan) >= TOTAL
    assert set(caught) == set(names)
    assert all(count >= PER_KIND for count in caught.values()), caught
