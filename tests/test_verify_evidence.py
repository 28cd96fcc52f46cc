"""`gate audit verify` against what the auditor holds, and strict by default (issue 13).

An auditor who suspects the operator has the export, the published keys, and whatever
signed evidence reached them by another road: checkpoints (from a witness, a regulator's
copy, an earlier export) and customers' receipts. Each test builds a real campaign on
the session's Redis through `Room`, seals it with the real sealer, exports it, then
changes the export the way an operator could (with or without the signing key) and
checks what verify says:

- every checkpoint stripped and two customers swapped: not verified by default (before:
  "OK" with the README's command);
- the log cut back to an earlier checkpoint while a later one is held: truncation;
- the same campaign run twice with one key: the held checkpoint of run A against run B's
  export is equivocation, both roots named (before: an empty altered range);
- a receipt's own checkpoint beyond the export, a receipt whose entry is gone or altered;
- the same through the real `gate` CLI, its exit codes and messages.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gate.audit import merkle
from gate.audit.checkpoints import make_checkpoint
from gate.audit.format import checkpoint_message
from gate.audit.note import Note, checkpoint_of, origin_for, sign_note
from gate.audit.receipts import ReceiptBook
from gate.audit.report import Report, VerificationFailed
from gate.audit.verify import verify_lines
from gate.campaign import parse_spec
from gate.room import Room
from gate.signing import SigningKeys, load_or_create_keys
from tests.helpers import (
    Export,
    assert_clean_error,
    b64url,
    create_committed,
    customer_digest,
    export_to_file,
    gate_cli,
    pack_like_redis,
    seal_everything,
    spec,
    unpack,
)

CAMPAIGN = "held"


async def joins_campaign(
    room: Room, keys: SigningKeys, customers: list[int], *, batch: int = 100, seal_every: int = 5
) -> None:
    """`customers` join in batches (seq = their place in the list); the real sealer signs
    a checkpoint after every `seal_every` batches and at the end."""
    await create_committed(room, keys, parse_spec(spec(CAMPAIGN)))
    digests = [customer_digest(number) for number in customers]
    for number, start in enumerate(range(0, len(digests), batch), start=1):
        result = await room.join(CAMPAIGN, digests[start : start + batch])
        assert all(created for _, created in result.tickets)
        if number % seal_every == 0:
            await seal_everything(room.redis, room.scripts, keys, CAMPAIGN)
    await seal_everything(room.redis, room.scripts, keys, CAMPAIGN)


async def exported(room: Room, keys: SigningKeys, path: Path) -> Export:
    await export_to_file(room.redis, CAMPAIGN, keys, path)
    return Export.parse(await asyncio.to_thread(path.read_text))


def swap_customers(export: Export, seq_a: int, seq_b: int) -> None:
    """Give seq_a's customer seq_b and the other way round, in the `join` entries."""
    where: dict[int, tuple[int, int]] = {}
    for position in range(len(export.entries)):
        if export.kind(position) == b"join":
            pairs = unpack(export.raw(position))[b"s"]
            for k in range(0, len(pairs), 2):
                if pairs[k] in (seq_a, seq_b):
                    where[pairs[k]] = (position, k + 1)
    (pa, ka), (pb, kb) = where[seq_a], where[seq_b]
    entry_a, entry_b = unpack(export.raw(pa)), unpack(export.raw(pb))
    if pa == pb:
        entry_b = entry_a
    entry_a[b"s"][ka], entry_b[b"s"][kb] = entry_b[b"s"][kb], entry_a[b"s"][ka]
    export.set_raw(pa, pack_like_redis(entry_a))
    export.set_raw(pb, pack_like_redis(entry_b))


def cut_back(export: Export, checkpoints: int, extra_entries: int = 0) -> int:
    """Keep the first `checkpoints` checkpoints and the entries they cover (plus
    `extra_entries` unsealed ones); returns the size the export now ends at."""
    export.checkpoints = export.checkpoints[:checkpoints]
    size = export.checkpoints[-1]["size"] + extra_entries
    export.entries = export.entries[:size]
    return size


def resign_with_the_key(export: Export, keys: SigningKeys) -> None:
    """What an insider with the signing key does after rewriting entries: every
    checkpoint's root recomputed over the rewritten log and signed again."""
    leaves = [merkle.leaf_hash(export.raw(p)) for p in range(len(export.entries))]
    export.checkpoints = [
        make_checkpoint(
            keys, cp["campaign"], cp["size"], merkle.root(leaves[: cp["size"]]), cp["time_ms"]
        )
        for cp in export.checkpoints
    ]


def verify(export: Export, keys: SigningKeys, **options: Any) -> Report:
    return verify_lines(export.lines(), keys.public_keys(), keys_from="published", **options)


def failure_of(export: Export, keys: SigningKeys, **options: Any) -> Any:
    with pytest.raises(VerificationFailed) as failed:
        verify(export, keys, **options)
    return failed.value.failure


# -- (i) strict by default -------------------------------------------------------------


async def test_stripped_checkpoints_and_swapped_customers_are_not_verified(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """The issue's case: every checkpoint removed, the customers at seq 1 and seq 1999
    swapped. The replay cannot tell (two joins are two joins); only a signature can, and
    there is none: without an explicit opt-in the export is not verified."""
    await joins_campaign(room, keys, list(range(2000)))
    export = await exported(room, keys, tmp_path / "clean.jsonl")
    assert verify(export, keys).sealed == len(export.entries) == 21
    export.checkpoints = []
    swap_customers(export, 1, 1999)
    failure = failure_of(export, keys)
    assert failure.kind == "unsealed" and failure.entries == (1, 21), failure.describe()
    assert "not covered by any checkpoint" in failure.message
    assert "not verified" in failure.describe()

    # the opt-out checks the unsealed entries but calls them what they are
    report = verify(export, keys, require_sealed=False)
    text = "\n".join(report.lines())
    assert report.sealed == 0 and report.entries == 21
    assert "NOT verified" in text and "checkpoints cover none of 21 entries" in text

    # only the tail unsealed: the rest is verified, the tail is not
    tail = await exported(room, keys, tmp_path / "tail.jsonl")
    last = tail.checkpoints.pop()
    before = tail.checkpoints[-1]["size"]
    swap_customers(tail, 1999, 2000)
    failure = failure_of(tail, keys)
    assert failure.kind == "unsealed" and failure.entries == (before + 1, last["size"])
    report = verify(tail, keys, require_sealed=False)
    assert f"checkpoints cover 1..{before} of 21 entries" in "\n".join(report.lines())
    # the auditor who holds the last checkpoint sees the rewrite
    failure = failure_of(tail, keys, require_sealed=False, checkpoints=[("held.json", last)])
    assert failure.kind == "altered" and failure.entries == (before + 1, 21), failure.describe()
    assert last["root"] in failure.message


# -- (ii) truncation and rollback -----------------------------------------------------


async def test_a_log_cut_back_to_an_earlier_checkpoint_is_caught_by_a_held_one(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """Cut back to its second checkpoint the export verifies on its own (every entry in
    it is sealed); the auditor's copy of a later checkpoint shows what is missing."""
    await joins_campaign(room, keys, list(range(2000)))
    export = await exported(room, keys, tmp_path / "clean.jsonl")
    assert len(export.checkpoints) >= 3
    held = export.checkpoints[-1]
    report = verify(export, keys, checkpoints=[("held.json", held)])
    assert report.held_checkpoints == 1

    size = cut_back(export, 2)
    assert verify(export, keys).entries == size  # alone, nothing shows
    failure = failure_of(export, keys, checkpoints=[("held.json", held)])
    assert failure.kind == "truncation", failure.describe()
    assert f"the export ends at entry {size}" in failure.message
    assert f"signed for size {held['size']}" in failure.message
    assert "held.json" in failure.describe()
    assert failure.entries == (size + 1, held["size"])

    # a held checkpoint is evidence only when a published key signed it
    forger = Ed25519PrivateKey.generate()
    forged = {**held, "kid": "forger"}
    forged["sig"] = b64url(
        forger.sign(checkpoint_message(CAMPAIGN, held["size"], held["root"], held["time_ms"]))
    )
    failure = failure_of(export, keys, checkpoints=[("forged.json", forged)])
    assert failure.kind is None and "not among the public keys" in failure.message
    other = failure_of(export, keys, checkpoints=[("other.json", {**held, "campaign": "x"})])
    assert "for campaign 'x'" in other.describe() and "other.json" in other.describe()

    # cut back a little further into unsealed entries, checked with the opt-out: the same
    longer = await exported(room, keys, tmp_path / "longer.jsonl")
    size = cut_back(longer, 1, extra_entries=3)
    failure = failure_of(longer, keys, require_sealed=False, checkpoints=[("held.json", held)])
    assert failure.kind == "truncation" and f"ends at entry {size}" in failure.message


# -- (iii) equivocation ---------------------------------------------------------------


async def test_the_same_campaign_run_twice_with_one_key_is_equivocation(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """Run A puts a friend at seq 41, run B (the same campaign, Redis flushed, the same
    key) at seq 1. Each export verifies alone; run A's checkpoint held against run B's
    export is a fork, named equivocation with both roots."""
    others, friend = list(range(59)), 10_000
    await joins_campaign(room, keys, [*others[:40], friend, *others[40:]], batch=10, seal_every=3)
    run_a = await exported(room, keys, tmp_path / "a.jsonl")
    await room.redis.flushall()
    await joins_campaign(room, keys, [friend, *others], batch=10, seal_every=3)
    run_b = await exported(room, keys, tmp_path / "b.jsonl")
    verify(run_a, keys)
    verify(run_b, keys)
    sizes_a = {cp["size"]: cp for cp in run_a.checkpoints}
    sizes_b = {cp["size"]: cp for cp in run_b.checkpoints}
    assert set(sizes_a) == set(sizes_b) == {1, 4, 7}  # 1: the commitment, before any join

    for size in (4, 7):
        held = sizes_a[size]
        failure = failure_of(run_b, keys, checkpoints=[("a.json", held)])
        assert failure.kind == "equivocation", failure.describe()
        assert held["root"] in failure.message and sizes_b[size]["root"] in failure.message
        assert "a.json" in failure.describe()

    # both heads in one export: equivocation, not an altered range
    both = Export.parse("\n".join(run_b.lines()))
    both.checkpoints.append(sizes_a[7])
    failure = failure_of(both, keys)
    assert failure.kind == "equivocation", failure.describe()
    assert sizes_a[7]["root"] in failure.message and sizes_b[7]["root"] in failure.message
    assert failure.entries is None or failure.entries[0] <= failure.entries[1]


def as_note(keys: SigningKeys, checkpoint: dict[str, Any], root: str | None = None) -> str:
    """The checkpoint as the gate serves it at /.well-known/fairgate/checkpoint/{c}: a
    signed note under the gate's key (with another `root`: a fork signed with the key)."""
    origin = origin_for("bank.example/fairgate", CAMPAIGN)
    text = checkpoint_of(origin, {**checkpoint, "root": root or checkpoint["root"]}).text()
    key = keys.ed25519_keys[keys.ed25519_current]
    return Note(text, (sign_note(text, origin, key),)).render()


async def test_a_held_signed_note_is_evidence_like_a_json_checkpoint(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """What a witness or an auditor keeps is the served signed note: `--checkpoint` reads
    it. A note of a later size catches the cut, one of another root is equivocation, a
    note signed by another key is no evidence."""
    await joins_campaign(room, keys, list(range(1000)))
    export = await exported(room, keys, tmp_path / "clean.jsonl")
    held = export.checkpoints[-1]
    (tmp_path / "held.note").write_text(as_note(keys, held))
    path = tmp_path / "cut.jsonl"
    size = cut_back(export, 1)
    path.write_text("\n".join(export.lines()) + "\n")
    keys_path = tmp_path / "keys.json"
    keys_path.write_text(json.dumps(keys.public_keys()))
    args = ["audit", "verify", str(path), "--keys", str(keys_path), "--checkpoint"]
    result = await gate_cli(*args, str(tmp_path / "held.note"))
    assert result.code == 1, result.out + result.err
    assert "truncation or rollback" in result.out + result.err
    assert f"ends at entry {size}" in result.out + result.err

    fork = export.checkpoints[-1]
    (tmp_path / "fork.note").write_text(as_note(keys, fork, root="00" * 32))
    result = await gate_cli(*args, str(tmp_path / "fork.note"))
    assert result.code == 1 and "equivocation" in result.out + result.err

    (tmp_path / "same.note").write_text(as_note(keys, fork))
    result = await gate_cli(*args, str(tmp_path / "same.note"))
    assert result.code == 0, result.out + result.err

    stranger = load_or_create_keys(tmp_path / "stranger.json", create=True)
    (tmp_path / "stranger.note").write_text(as_note(stranger, fork))
    result = await gate_cli(*args, str(tmp_path / "stranger.note"))
    assert result.code == 1 and "no signature from a known key" in result.out + result.err


# -- (iv) receipts ----------------------------------------------------------------------


async def test_receipts_carry_their_checkpoint_and_catch_a_changed_entry(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    await joins_campaign(room, keys, list(range(2000)))
    book = ReceiptBook(room.redis, keys, None)
    first = await book.receipt_with_proof(CAMPAIGN, 1)
    last = await book.receipt(CAMPAIGN, 1999)
    assert first is not None and first["checkpoint"] is not None and last is not None
    clean = await exported(room, keys, tmp_path / "clean.jsonl")
    receipts = [("seq1.json", first), ("seq1999.json", last)]
    report = verify(clean, keys, receipts=receipts)
    assert len(report.receipts) == 2 and report.held_checkpoints == 1

    # the checkpoint inside seq 1's receipt is beyond a cut-back export
    cut = Export.parse("\n".join(clean.lines()))
    size = cut_back(cut, 2)
    failure = failure_of(cut, keys, receipts=[("seq1.json", first)])
    assert failure.kind == "truncation" and failure.receipt == "seq1.json", failure.describe()
    assert f"the export ends at entry {size}" in failure.message

    # seq 1999's join entry is not in it at all
    failure = failure_of(cut, keys, receipts=[("seq1999.json", last)])
    assert failure.kind == "missing_receipt" and failure.receipt == "seq1999.json"
    assert "missing" in failure.message

    # an insider with the key swaps seq 1 and seq 1999 and signs every checkpoint again:
    # the export verifies alone, the receipts do not
    forged = Export.parse("\n".join(clean.lines()))
    swap_customers(forged, 1, 1999)
    resign_with_the_key(forged, keys)
    verify(forged, keys)
    failure = failure_of(forged, keys, receipts=[("seq1999.json", last)])
    assert failure.kind == "altered" and failure.receipt == "seq1999.json", failure.describe()
    assert failure.index == last["entry"]
    failure = failure_of(forged, keys, receipts=[("seq1.json", first)])
    assert failure.kind == "equivocation" and failure.receipt == "seq1.json", failure.describe()


# -- (v) the CLI ------------------------------------------------------------------------


async def test_the_cli_is_strict_and_reads_held_evidence(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    await joins_campaign(room, keys, list(range(600)))
    book = ReceiptBook(room.redis, keys, None)
    answer = await book.receipt_with_proof(CAMPAIGN, 1)
    clean = await exported(room, keys, tmp_path / "clean.jsonl")
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps(keys.public_keys()))
    receipt_file = tmp_path / "receipt.json"
    receipt_file.write_text(json.dumps(answer))
    held_lines = tmp_path / "held.jsonl"  # JSON lines, as a witness's log would keep them
    held_lines.write_text("".join(json.dumps(cp) + "\n" for cp in clean.checkpoints))
    held_list = tmp_path / "held-list.json"
    held_list.write_text(json.dumps(clean.checkpoints[:1]))
    log = str(tmp_path / "clean.jsonl")

    ok = await gate_cli(
        "audit", "verify", log, "--keys", str(keys_file),
        "--checkpoint", str(held_lines), str(held_list), "--receipt", str(receipt_file),
    )  # fmt: skip
    assert ok.code == 0, ok
    assert "campaign held: OK" in ok.out
    assert "checkpoints cover 1..7 of 7 entries" in ok.out
    assert "held checkpoints: 5 consistent" in ok.out  # 3 + 1 + the receipt's

    stripped = tmp_path / "stripped.jsonl"
    clean.checkpoints = []
    stripped.write_text("\n".join(clean.lines()) + "\n")
    for extra in ((), ("--sealed",)):
        failed = await gate_cli("audit", "verify", str(stripped), "--keys", str(keys_file), *extra)
        message = assert_clean_error(failed, "verify_failed", exit_code=1)
        assert "entries 1..7: not covered by any checkpoint" in message, message
        assert failed.out.startswith("FAILED ")
    allowed = await gate_cli(
        "audit", "verify", str(stripped), "--keys", str(keys_file), "--allow-unsealed"
    )
    assert allowed.code == 0, allowed
    assert "unsealed: entries 1..7 NOT verified" in allowed.out
    assert "checkpoints cover none of 7 entries" in allowed.out
    both = await gate_cli("audit", "verify", log, "--sealed", "--allow-unsealed")
    assert both.code == 2 and "not allowed with" in both.err

    cut = Export.parse(await asyncio.to_thread(Path(log).read_text))
    size = cut_back(cut, 1)
    cut_file = tmp_path / "cut.jsonl"
    cut_file.write_text("\n".join(cut.lines()) + "\n")
    truncated = await gate_cli(
        "audit", "verify", str(cut_file), "--keys", str(keys_file), "--checkpoint", str(held_lines)
    )
    message = assert_clean_error(truncated, "verify_failed", exit_code=1)
    assert "truncation" in message and f"the export ends at entry {size}" in message
    from_receipt = await gate_cli(
        "audit", "verify", str(cut_file), "--keys", str(keys_file), "--receipt", str(receipt_file)
    )
    assert "truncation" in assert_clean_error(from_receipt, "verify_failed", exit_code=1)

    garbage = tmp_path / "garbage.json"
    garbage.write_text("not a checkpoint")
    bad = await gate_cli("audit", "verify", log, "--checkpoint", str(garbage))
    assert "garbage.json" in assert_clean_error(bad, "bad_file")
    not_one = tmp_path / "not-one.json"
    not_one.write_text(json.dumps({"type": "entry"}))
    bad = await gate_cli("audit", "verify", log, "--checkpoint", str(not_one))
    assert "not-one.json" in assert_clean_error(bad, "bad_file")
