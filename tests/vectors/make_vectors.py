"""Write the audit test vectors: small exports and the verdict each must get.

    .venv/bin/python -m tests.vectors.make_vectors [DIR]   (default: tests/vectors)

A real campaign is run on a private redis-server through `Room` and the Lua scripts,
sealed by the real sealer and exported (docs/audit-format.md); then each vector is the
clean export changed the way an operator could, with or without the signing key. The
keys are fixed (derived from the labels below), so the published keys document is the
same on every run; the times come from Redis and change on every run, so the files are
generated once and committed (run this again after a change of the export format, and
commit what it writes).

Every verdict is checked here with `gate.audit.verify` before it is written: the failure
must be the one the vector is about (its kind, and the entry, checkpoint, receipt or held
file it names). tests/test_vectors.py runs `gate audit verify` over each one.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gate import base64url
from gate.audit.format import decode_entry
from gate.audit.receipts import RECEIPT_KINDS, BatchReceipts, ReceiptBook, batch_pairs
from gate.audit.report import Failure, VerificationFailed
from gate.audit.verify import verify_lines
from gate.campaign import parse_spec
from gate.redis_client import connect
from gate.redis_server import RedisServer
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.room.scripts import Scripts
from gate.signing import SigningKeys, parse_keys
from gate.tokens import customer_digest
from tests.helpers import (
    Export,
    amount_quota,
    create_committed,
    export_to_file,
    redis_binaries,
    seal_everything,
    spec,
    unpack,
    wait_redis_time,
)
from tests.tamper_kinds import unwatched_join_seqs
from tests.test_replay_rules import claim_without_pass, early_reservation_expiry, resign, time_back
from tests.test_tamper import admit_upto
from tests.test_verify_evidence import cut_back, swap_customers

CAMPAIGN = "vectors"
HERE = Path(__file__).parent
# Failure.kind's names (gate/audit/report.py); the manifest names the other failures
# "structure" (the file's lines), "signature" (a checkpoint's) and "replay" (a rule).
FAILURE_KINDS = (
    "unsealed",
    "truncation",
    "equivocation",
    "altered",
    "missing_receipt",
    "batch_signature",
    "seal_delay",
    "late_commitment",
)


def _fixed(label: str) -> str:
    return base64url.encode(hashlib.sha256(f"fairgate test vectors: {label}".encode()).digest())


def fixed_keys() -> SigningKeys:
    """Two Ed25519 keys (vectors1 signs, vectors2 is published beside it, as after a
    rotation), an HMAC key and a digest key, all derived from fixed labels."""
    return parse_keys(
        {
            "version": 1,
            "hmac": {"current": "hvectors", "keys": {"hvectors": _fixed("hmac")}},
            "ed25519": {
                "current": "vectors1",
                "keys": {"vectors1": _fixed("ed25519 1"), "vectors2": _fixed("ed25519 2")},
            },
            "digest_key": _fixed("digest"),
        },
        "test vectors",
    )


async def run_campaign(room: Room, keys: SigningKeys, out: Path) -> tuple[Export, dict[str, Any]]:
    """8 customers join in two batches; all admitted; 1..4 get passes; 1..3 claim; r1 is
    confirmed, r2 released; r3 expires (for real, by Redis time, 1.6 s or more after the
    third checkpoint); closed. Sealed after each step, each entry within the campaign's
    seal bound (1000 ms). Returns the export and the receipts (seq 6's as given at join,
    seq 1's answer with its checkpoint and inclusion proof)."""
    raw = spec(
        CAMPAIGN,
        rate_per_s=1000,
        burst=1000,
        max_active=1000,
        pass_ttl_s=300,
        reservation_ttl_s=1,
        overbook=10,  # all 8 admitted at once (first come strictly would admit 2)
    )
    raw["quota"] = amount_quota(20_000_000, 1_000_000, 10_000_000, 10_000)
    raw["seal_bound_ms"] = 1000  # what the admin API records by default
    await create_committed(room, keys, parse_spec(raw))
    digests = [customer_digest(keys, CAMPAIGN, f"customer-{n}") for n in range(1, 9)]
    seal = lambda: seal_everything(room.redis, room.scripts, keys, CAMPAIGN)  # noqa: E731
    await room.join(CAMPAIGN, digests[:4])
    await seal()
    await room.join(CAMPAIGN, digests[4:])
    await admit_upto(room, CAMPAIGN, 8)
    await seal()
    for seq in range(1, 5):
        state, _ = await room.pass_check(CAMPAIGN, seq, digests[seq - 1])
        assert state == "admitted", state
    held = []
    for seq, amount in ((1, 5_000_000), (2, 3_000_000), (3, 2_500_000)):
        result = await room.claim(CAMPAIGN, seq, digests[seq - 1], amount, f"k{seq}")
        assert result.ok, result
        held.append(result.reservation)
    await room.confirm(CAMPAIGN, held[0], "core")
    await room.release(CAMPAIGN, held[1], "core", "declined")
    await seal()
    due = await room.redis.zscore(CampaignKeys(CAMPAIGN).reservation_expiries, held[2])
    assert due is not None
    # past the bound after the fourth checkpoint: withheld, its entries are sealed late
    await wait_redis_time(room.redis, int(due) + 600_000)
    await room.admit(CAMPAIGN, max_per_call=0)  # logs r3's expiry
    await room.set_state(CAMPAIGN, "close", "ops")
    await seal()
    path = await export_to_file(room.redis, CAMPAIGN, keys, out / "clean.jsonl")
    export = Export.parse(await asyncio.to_thread(path.read_text))
    book = ReceiptBook(room.redis, keys, None)
    receipts = {
        "receipt-seq6.json": await book.receipt(CAMPAIGN, 6),
        "answer-seq1.json": await book.receipt_with_proof(CAMPAIGN, 1),
    }
    assert all(r is not None for r in receipts.values())
    return export, receipts


@dataclass
class Vector:
    """One verdict: `file` verified with `args` (relative to the vectors directory)."""

    name: str
    about: str
    file: str
    args: list[str]
    expect_kind: str  # "ok", a Failure.kind, or this table's name for the others
    named: Callable[[Failure], bool] = lambda failure: True
    says: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _options(args: list[str], directory: Path) -> dict[str, Any]:
    """The verify_lines options `gate audit verify` builds from these arguments."""
    options: dict[str, Any] = {"require_sealed": "--allow-unsealed" not in args}
    keys, held, receipts = None, [], []
    words = iter(args)
    for word in words:
        if word == "--keys":
            keys = json.loads((directory / next(words)).read_text())
        elif word == "--checkpoint":
            name = next(words)
            held.append((name, json.loads((directory / name).read_text())))
        elif word == "--receipt":
            name = next(words)
            receipts.append((name, json.loads((directory / name).read_text())))
    return {**options, "keys_document": keys, "checkpoints": held, "receipts": receipts}


def verdict(vector: Vector, directory: Path) -> dict[str, Any]:
    """Verify in-process, check it is the verdict intended, and say it as the manifest
    does."""
    options = _options(vector.args, directory)
    lines = (directory / vector.file).read_text().splitlines()
    try:
        report = verify_lines(lines, options.pop("keys_document"), **options)
    except VerificationFailed as exc:
        failure = exc.failure
        assert vector.expect_kind != "ok", f"{vector.name}: {failure.describe()}"
        named_kind = vector.expect_kind if vector.expect_kind in FAILURE_KINDS else None
        assert failure.kind == named_kind, (vector.name, failure)
        assert vector.named(failure), f"{vector.name}: {failure.describe()}"
        assert vector.says in failure.message, f"{vector.name}: {failure.describe()}"
        expect: dict[str, Any] = {
            "ok": False,
            "kind": vector.expect_kind,
            "index": failure.index,
            "entries": list(failure.entries) if failure.entries else None,
            "checkpoint": failure.checkpoint,
            "receipt": failure.receipt,
            "held": failure.held,
            "says": vector.says,
            "describe": failure.describe(),
        }
    else:
        assert vector.expect_kind == "ok", f"{vector.name} verified: {report.lines()}"
        expect = {"ok": True, "sealed": report.sealed, "entries": report.entries}
    return {
        "name": vector.name,
        "about": vector.about,
        "file": vector.file,
        "args": vector.args,
        "expect": expect,
    }


def write_export(export: Export, path: Path, batches: list[dict[str, Any]]) -> None:
    """The export as `gate audit export` writes it: header, entries, the join batches'
    signature lines (those of entries still in it), checkpoints."""
    lines = export.lines()
    entries = len(export.entries)
    kept = [json.dumps(line) for line in batches if line["i"] <= entries]
    path.write_text("\n".join([*lines[: entries + 1], *kept, *lines[entries + 1 :]]) + "\n")


def signed_batches(export: Export, keys: SigningKeys) -> list[dict[str, Any]]:
    """A batch line for every join and pre-queue entry, signed with the key: what the gate
    writes at join time, and what an operator holding the key can write again."""
    lines = []
    for position in range(len(export.entries)):
        entry = decode_entry(export.raw(position))
        if entry.get("k") in RECEIPT_KINDS:
            batch = BatchReceipts(CAMPAIGN, position + 1, int(entry["t"]), batch_pairs(entry))
            kid, sig = batch.sign(keys)
            lines.append({"type": "batch", "i": position + 1, "kid": kid, "sig": sig})
    return lines


def entry_at(index: int) -> Callable[[Failure], bool]:
    return lambda failure: failure.index == index


def tampered(
    clean: Export, batches: list[dict[str, Any]], keys: SigningKeys, directory: Path
) -> list[Vector]:
    """Write each changed export; the vectors that use them. `batches`: the clean export's
    batch signature lines, kept where the change leaves the joins as they were, signed
    again where the operator holds the key, left out where an insider without it would
    (they would betray the change)."""
    keys_arg = ["--keys", "keys.json"]
    vectors = [
        Vector(
            "clean",
            "the campaign as exported, every entry under a signed checkpoint",
            "clean.jsonl",
            keys_arg,
            "ok",
        ),
        Vector(
            "clean-with-evidence",
            "the same, with the checkpoints and receipts an auditor holds",
            "clean.jsonl",
            [
                *keys_arg,
                "--checkpoint",
                "held-first.json",
                "--checkpoint",
                "held-latest.json",
                "--receipt",
                "receipt-seq6.json",
                "--receipt",
                "answer-seq1.json",
            ],
            "ok",
        ),
    ]
    rng = random.Random(13)

    # unsealed tail: the last checkpoint left out
    export = copy.deepcopy(clean)
    export.checkpoints.pop()
    sealed = export.checkpoints[-1]["size"]
    write_export(export, directory / "unsealed-tail.jsonl", batches)
    tail = (sealed + 1, len(export.entries))
    vectors += [
        Vector(
            "unsealed-tail",
            "the last checkpoint left out: its entries are signed by nothing",
            "unsealed-tail.jsonl",
            keys_arg,
            "unsealed",
            lambda failure: failure.entries == tail,
            "not covered by any checkpoint",
        ),
        Vector(
            "unsealed-tail-allowed",
            "the same with --allow-unsealed: replayed, and reported NOT verified",
            "unsealed-tail.jsonl",
            [*keys_arg, "--allow-unsealed"],
            "ok",
        ),
    ]

    # stripped and swapped: no checkpoint at all, two customers swapped
    export = copy.deepcopy(clean)
    export.checkpoints = []
    a, b = unwatched_join_seqs(export)[:2]
    swap_customers(export, a, b)
    write_export(export, directory / "stripped-swapped.jsonl", [])
    write_export(export, directory / "stripped-swapped-batches.jsonl", batches)
    join = next(
        p
        for p in range(len(export.entries))
        if export.kind(p) == b"join" and a in unpack(export.raw(p))[b"s"][::2]
    )
    everything = (1, len(export.entries))
    vectors.append(
        Vector(
            "stripped-swapped",
            f"every checkpoint removed and the customers of seq {a} and {b} swapped",
            "stripped-swapped.jsonl",
            keys_arg,
            "unsealed",
            lambda failure: failure.entries == everything,
            "not covered by any checkpoint",
        )
    )
    for name, extra in (("batch-signature", []), ("batch-signature-allowed", ["--allow-unsealed"])):
        vectors.append(
            Vector(
                name,
                f"the same with the join batches' signature lines left in: join entry {join + 1} "
                "is not the batch its signature (made at join time) signs"
                + (", with --allow-unsealed too" if extra else ""),
                "stripped-swapped-batches.jsonl",
                [*keys_arg, *extra],
                "batch_signature",
                entry_at(join + 1),
                "batch signature",
            )
        )

    # a swapped pair of entry lines
    export = copy.deepcopy(clean)
    p = len(export.entries) // 2
    export.entries[p], export.entries[p + 1] = export.entries[p + 1], export.entries[p]
    write_export(export, directory / "swapped-pair.jsonl", batches)
    vectors.append(
        Vector(
            "swapped-pair",
            f"entry lines {p + 1} and {p + 2} swapped",
            "swapped-pair.jsonl",
            keys_arg,
            "structure",
            entry_at(p + 1),
            f"entry {p + 1} expected, found entry {p + 2}",
        )
    )

    # truncation: cut back to the first checkpoint; the auditor holds the latest
    export = copy.deepcopy(clean)
    size = cut_back(export, 1)
    write_export(export, directory / "truncated.jsonl", batches)
    vectors.append(
        Vector(
            "truncation",
            f"the log cut back to its first checkpoint (size {size}); the auditor holds the "
            "latest checkpoint",
            "truncated.jsonl",
            [*keys_arg, "--checkpoint", "held-latest.json"],
            "truncation",
            lambda failure: (
                failure.held == "held-latest.json"
                and failure.entries == (size + 1, clean.checkpoints[-1]["size"])
            ),
            "truncation or rollback",
        )
    )
    vectors.append(
        Vector(
            "rollback-missing-receipt",
            "the same log; the customer of seq 6 holds the receipt given at join",
            "truncated.jsonl",
            [*keys_arg, "--receipt", "receipt-seq6.json"],
            "missing_receipt",
            lambda failure: failure.receipt == "receipt-seq6.json",
            "missing receipt",
        )
    )

    # equivocation: with the key, two customers swapped and every checkpoint re-signed
    export = copy.deepcopy(clean)
    swap_customers(export, a, b)
    resign(export, keys)
    write_export(export, directory / "forked.jsonl", signed_batches(export, keys))
    vectors += [
        Vector(
            "forked-alone",
            f"with the signing key: the customers of seq {a} and {b} swapped and every "
            "checkpoint signed again; alone it verifies (no rule can see a swap)",
            "forked.jsonl",
            keys_arg,
            "ok",
        ),
        Vector(
            "equivocation",
            "the same fork against the latest checkpoint the auditor holds: two signed roots "
            "for one size",
            "forked.jsonl",
            [*keys_arg, "--checkpoint", "held-latest.json"],
            "equivocation",
            lambda failure: failure.held == "held-latest.json",
            "equivocation",
        ),
    ]

    # with the key: time travel, an early expiry, a claim without its pass
    for name, tamper, file, says, about in (
        ("time-travel", time_back, "time-travel.jsonl", "time went back", "an entry dated "),
        (
            "early-expiry",
            early_reservation_expiry,
            "early-expiry.jsonl",
            "before its deadline",
            "a reservation expired early: ",
        ),
        (
            "claim-without-pass",
            claim_without_pass,
            "claim-without-pass.jsonl",
            "without a pass",
            "a claim without a pass: ",
        ),
    ):
        export = copy.deepcopy(clean)
        target = tamper(rng, export, keys)
        write_export(export, directory / file, signed_batches(export, keys))
        vectors.append(
            Vector(
                name,
                f"with the signing key, every checkpoint signed again: {about}{target.what}",
                file,
                keys_arg,
                "replay",
                target.named_by,
                says,
            )
        )

    # a checkpoint withheld: its entries first covered by the next, past the seal bound
    export = copy.deepcopy(clean)
    withheld = export.checkpoints.pop(3)
    late = export.checkpoints[2]["size"] + 1
    write_export(export, directory / "checkpoint-withheld.jsonl", batches)
    vectors.append(
        Vector(
            "seal-delay",
            f"checkpoint 4 (size {withheld['size']}) left out: entries {late}.. are first "
            "covered by checkpoint 5, more than the campaign's seal bound (1000 ms) after "
            "they were written",
            "checkpoint-withheld.jsonl",
            keys_arg,
            "seal_delay",
            entry_at(late),
            "seal delay",
        )
    )

    # the commitment checkpoint withheld: nothing signed the rules and seed commitments
    # (entry 1) before the first join
    export = copy.deepcopy(clean)
    first_join = next(p for p in range(len(export.entries)) if export.kind(p) == b"join") + 1
    export.checkpoints = [cp for cp in export.checkpoints if cp["size"] >= first_join]
    write_export(export, directory / "commitment-withheld.jsonl", batches)
    vectors.append(
        Vector(
            "late-commitment",
            "every checkpoint signed before the first join left out: the campaign's rules "
            "and seed commitments (entry 1) are first covered by a checkpoint that also "
            f"covers the first join (entry {first_join})",
            "commitment-withheld.jsonl",
            keys_arg,
            "late_commitment",
            entry_at(first_join),
            "late commitment",
        )
    )

    # a bad signature; a key id that is not the signer's
    export = copy.deepcopy(clean)
    cp = export.checkpoints[1]
    signature = bytearray(base64url.decode(cp["sig"]))
    signature[0] ^= 1
    cp["sig"] = base64url.encode(bytes(signature))
    write_export(export, directory / "bad-signature.jsonl", batches)
    vectors.append(
        Vector(
            "bad-signature",
            "one bit of checkpoint 2's signature flipped",
            "bad-signature.jsonl",
            keys_arg,
            "signature",
            lambda failure: failure.checkpoint == 2,
            "the signature does not verify with key vectors1",
        )
    )
    for name, kid, what, words in (
        (
            "wrong-key-id",
            "vectors2",
            "checkpoint 2 names key vectors2 (published) but vectors1 signed it",
            "the signature does not verify with key vectors2",
        ),
        (
            "unknown-key-id",
            "vectors3",
            "checkpoint 2 names key vectors3, which the published keys do not have",
            "signed with key 'vectors3', which is not among the public keys",
        ),
    ):
        export = copy.deepcopy(clean)
        export.checkpoints[1]["kid"] = kid
        write_export(export, directory / f"{name}.jsonl", batches)
        vectors.append(
            Vector(
                name,
                what,
                f"{name}.jsonl",
                keys_arg,
                "signature",
                lambda failure: failure.checkpoint == 2,
                words,
            )
        )
    return vectors


async def generate(directory: Path) -> list[dict[str, Any]]:
    keys = fixed_keys()
    with tempfile.TemporaryDirectory() as scratch:
        server = RedisServer(Path(scratch), binary=redis_binaries()[0][1])
        server.start()
        redis = connect(server.url, timeout_s=10)
        try:
            scripts = Scripts()
            await scripts.load_all(redis)
            clean, receipts = await run_campaign(Room(redis, scripts), keys, directory)
        finally:
            await redis.aclose()
            server.stop()
    published = keys.public_keys()
    (directory / "keys.json").write_text(json.dumps(published, indent=2) + "\n")
    exported = [json.loads(line) for line in (directory / "clean.jsonl").read_text().splitlines()]
    batches = [line for line in exported if line["type"] == "batch"]
    assert batches == signed_batches(clean, keys), "a batch line is not the key's signature"
    write_export(clean, directory / "clean.jsonl", batches)
    for name, document in (
        ("held-first.json", clean.checkpoints[0]),
        ("held-latest.json", clean.checkpoints[-1]),
        *receipts.items(),
    ):
        (directory / name).write_text(json.dumps(document, indent=2) + "\n")
    vectors = tampered(clean, batches, keys, directory)
    manifest = [verdict(vector, directory) for vector in vectors]
    (directory / "manifest.json").write_text(
        json.dumps({"campaign": CAMPAIGN, "vectors": manifest}, indent=2) + "\n"
    )
    return manifest


def main() -> None:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    manifest = asyncio.run(generate(directory))
    for item in manifest:
        print(f"{item['name']}: {'OK' if item['expect']['ok'] else item['expect']['describe']}")
    print(f"{len(manifest)} vectors in {directory} ({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
