"""`gate audit verify`: replay an export offline and re-check everything it claims.

What an outsider needs is the export (docs/audit-format.md) and the public keys; no
Redis, no gate. The check runs in three layers:

1. Structure: a header first, every line JSON, entries with indexes 1, 2, 3, … in order
   (a deleted, inserted or swapped line shows here), each entry a msgpack map of a known
   kind whose index agrees with its line.
2. Integrity: the Merkle tree over the entries is recomputed; every checkpoint must be
   signed by a known Ed25519 key, carry the root of the first ``size`` entries, and be
   consistent with the checkpoint before it (an RFC 6962 consistency proof built from
   the entries and checked against both signed roots).
3. Invariants: the entries are replayed through a model of the Lua scripts' rules
   (`gate.audit.replay`).

The first problem found is reported with the entry (index and line) or the checkpoint
it concerns. A root mismatch can only say which range of entries changed (those between
the last good checkpoint and the bad one); an invariant failure inside that range is
named with it. An invariant failure inside the range a good checkpoint covers is
reported first: that log is authentic, so the gate itself broke the rule.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gate.audit import merkle
from gate.audit import receipts as receipt_proofs
from gate.audit.format import (
    EXPORT_FORMAT,
    CheckpointFields,
    MalformedEntry,
    PublicKeys,
    decode_entry,
    entry_from_base64,
    is_int,
    load_public_keys,
    parse_checkpoint,
    signed_by,
)
from gate.audit.merkle import LeafStore
from gate.audit.replay import EntryProblem, LateEntry, Replay, need_text
from gate.audit.report import Failure, Report, VerificationFailed

# -- the checkpoints -------------------------------------------------------------------


@dataclass
class Checkpoint:
    number: int
    line: int
    data: dict[str, Any]


def check_checkpoints(
    checkpoints: list[Checkpoint],
    campaign: str,
    keys: PublicKeys,
    store: LeafStore,
) -> tuple[Failure | None, int, int]:
    """(first failure, entries covered by the last good checkpoint, consistency proofs)."""
    previous: CheckpointFields | None = None
    proofs = 0
    verified = 0
    for cp in checkpoints:
        try:
            fields, proved = _check_checkpoint(cp, campaign, keys, store, previous)
        except CheckpointProblem as exc:
            entries = exc.entries or ((verified + 1, exc.upto) if exc.upto else None)
            return (
                Failure(str(exc), line=cp.line, checkpoint=cp.number, entries=entries),
                (verified),
                proofs,
            )
        proofs += proved
        previous = fields
        verified = fields.size
    return None, verified, proofs


class CheckpointProblem(Exception):
    """`upto`: the checkpoint's size when it blames the entries before it (those after
    the last good checkpoint); `entries`: an explicit range it blames instead."""

    def __init__(
        self, message: str, upto: int = 0, *, entries: tuple[int, int] | None = None
    ) -> None:
        super().__init__(message)
        self.upto = upto
        self.entries = entries


def _check_checkpoint(
    cp: Checkpoint,
    campaign: str,
    keys: PublicKeys,
    store: LeafStore,
    previous: CheckpointFields | None,
) -> tuple[CheckpointFields, int]:
    """A good checkpoint's fields, and the consistency proofs checked (0 or 1)."""
    try:
        fields = parse_checkpoint(cp.data, campaign)
    except ValueError as exc:
        raise CheckpointProblem(str(exc)) from None
    size, root_bytes, kid = fields.size, fields.root, fields.kid
    key = keys.get(kid)
    if key is None:
        raise CheckpointProblem(f"signed with key {kid!r}, which is not among the public keys")
    if not signed_by(key, fields.message(), fields.signature):
        raise CheckpointProblem(f"the signature does not verify with key {kid}")
    if size > store.size:
        raise CheckpointProblem(
            f"it covers {size} entries but the export has {store.size}: "
            f"entries {store.size + 1}..{size} are missing",
            entries=(store.size + 1, size),
        )
    if previous is not None and (size < previous.size or fields.time_ms < previous.time_ms):
        raise CheckpointProblem("checkpoints must come in size and time order")
    if store.root(size) != root_bytes:
        raise CheckpointProblem(
            "the entries do not hash to its root: they were altered (or removed, inserted, "
            "reordered) after it was signed",
            size,
        )
    if previous is None:
        return fields, 0
    old_size, old_root = previous.size, previous.root
    proof = store.consistency(old_size, size)
    if not merkle.verify_consistency(old_size, size, old_root, root_bytes, proof):
        raise CheckpointProblem(
            f"not consistent with the checkpoint before it (size {old_size})",
            size,
        )
    return fields, 1


# -- the driver ----------------------------------------------------------------------


def _json_line(text: str | bytes, line: int) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise VerificationFailed(Failure("not a JSON line", line=line)) from None
    if not isinstance(data, dict):
        raise VerificationFailed(Failure("not a JSON object", line=line))
    return data


def verify_lines(
    lines: Iterable[str | bytes],
    keys_document: Any | None = None,
    *,
    keys_from: str = "",
    require_sealed: bool = False,
    receipts: Sequence[tuple[str, Any]] = (),
) -> Report:
    """Check an export line by line; raises VerificationFailed naming the first problem.

    `keys_document` is the JSON published at /.well-known/fairgate/keys; without it the
    keys in the export's header are used (which proves integrity, not who signed).
    `require_sealed`: entries after the last checkpoint are a failure, not a note.
    `receipts`: (name, receipt) pairs, each a receipt given at join or the answer of
    GET /q/{c}/receipt/{seq}; each must verify and match its join entry in this log.
    """
    wanted = {name: _receipt_of(document) for name, document in receipts}
    keep = {r["entry"] for r in wanted.values() if isinstance(r, dict) and is_int(r.get("entry"))}
    kept: dict[int, bytes] = {}
    iterator = iter(lines)
    line_no = 0
    header: dict[str, Any] | None = None
    for raw_line in iterator:
        line_no += 1
        if raw_line.strip():
            header = _json_line(raw_line, line_no)
            break
    if header is None:
        raise VerificationFailed(Failure("the export is empty", line=1))
    if header.get("type") != "header" or header.get("format") != EXPORT_FORMAT:
        raise VerificationFailed(
            Failure(
                f'the first line must be {{"type": "header", "format": "{EXPORT_FORMAT}"}}',
                line=line_no,
            )
        )
    campaign = header.get("campaign")
    if not isinstance(campaign, str) or not campaign:
        raise VerificationFailed(Failure("the header names no campaign", line=line_no))
    try:
        if keys_document is not None:
            keys = load_public_keys(keys_document)
            source = keys_from or "given"
        else:
            keys = load_public_keys(header.get("keys"))
            source = (
                "from the export's header (pass --keys with the published keys to prove who signed)"
            )
    except ValueError as exc:
        raise VerificationFailed(Failure(f"public keys: {exc}", line=line_no)) from None

    report = Report(campaign=campaign, keys_source=source)
    replay = Replay(campaign)
    store = LeafStore()
    checkpoints: list[Checkpoint] = []
    replay_failure: Failure | None = None
    last_line = 0
    for raw_line in iterator:
        line_no += 1
        if not raw_line.strip():
            continue
        data = _json_line(raw_line, line_no)
        kind = data.get("type")
        if kind == "checkpoint":
            checkpoints.append(Checkpoint(len(checkpoints) + 1, line_no, data))
            continue
        if kind != "entry":
            raise VerificationFailed(Failure(f"unknown line type {kind!r}", line=line_no))
        expected = store.size + 1
        if checkpoints:
            raise VerificationFailed(
                Failure(
                    "an entry after the checkpoints",
                    line=line_no,
                    index=data.get("i") if is_int(data.get("i")) else expected,
                )
            )
        index, raw_text = data.get("i"), data.get("raw")
        if not is_int(index) or not isinstance(raw_text, str):
            raise VerificationFailed(
                Failure("an entry line needs i and raw", line=line_no, index=expected)
            )
        if index != expected:
            if index == expected - 1:
                message, named = f"entry {index} appears twice (lines {last_line} and here)", index
            else:
                what = "missing" if index > expected else "out of order"
                message, named = (
                    f"entry {expected} expected, found entry {index} ({what})",
                    expected,
                )
            raise VerificationFailed(Failure(message, line=line_no, index=named))
        last_line = line_no
        try:
            raw = entry_from_base64(raw_text)
        except ValueError:
            raise VerificationFailed(
                Failure("raw is not base64", line=line_no, index=index)
            ) from None
        try:
            entry = decode_entry(raw)
            if entry.get("i") != index:
                raise EntryProblem(f"its own index is {entry.get('i')!r}, not {index}")
            kind_text = need_text(entry, "k")
            if not replay.known(kind_text):
                raise EntryProblem(f"unknown kind {kind_text!r}")
        except (MalformedEntry, EntryProblem) as exc:
            raise VerificationFailed(Failure(str(exc), line=line_no, index=index)) from None
        store.append(raw)
        if index in keep:
            kept[index] = raw
        if replay_failure is None:
            try:
                replay.apply(index, kind_text, entry)
            except EntryProblem as exc:
                replay_failure = Failure(f"{kind_text}: {exc}", line=line_no, index=index)
    report.entries = store.size
    if store.size == 0:
        raise VerificationFailed(Failure("the export has no entries", line=line_no))

    cp_failure, verified, proofs = check_checkpoints(checkpoints, campaign, keys, store)
    if replay_failure is not None and (
        cp_failure is None or (replay_failure.index or 0) <= verified
    ):
        raise VerificationFailed(replay_failure)
    if cp_failure is not None:
        if (
            replay_failure is not None
            and cp_failure.entries is not None
            and cp_failure.entries[0] <= (replay_failure.index or 0) <= cp_failure.entries[1]
        ):
            cp_failure = Failure(
                f"{cp_failure.message}; the replay first fails at entry "
                f"{replay_failure.index}: {replay_failure.message}",
                line=cp_failure.line,
                index=replay_failure.index,
                checkpoint=cp_failure.checkpoint,
                entries=cp_failure.entries,
            )
        raise VerificationFailed(cp_failure)
    for cp in checkpoints:  # all good here: no entry is dated after the one covering it
        try:
            replay.check_sealed_time(cp.data["size"], cp.data["time_ms"])
        except LateEntry as exc:
            raise VerificationFailed(
                Failure(str(exc), line=cp.line, index=exc.index, checkpoint=cp.number)
            ) from None
    if require_sealed and verified < store.size:
        raise VerificationFailed(
            Failure(
                "not covered by any checkpoint (the export was required to be sealed)",
                index=verified + 1,
                entries=(verified + 1, store.size),
            )
        )
    for name, receipt in wanted.items():
        try:
            report.receipts.append(
                check_receipt(receipt, campaign, keys, kept, verified, store.size)
            )
        except EntryProblem as exc:
            entry_of = receipt.get("entry") if isinstance(receipt, dict) else None
            raise VerificationFailed(
                Failure(str(exc), index=entry_of if is_int(entry_of) else None, receipt=name)
            ) from None
    report.checkpoints = len(checkpoints)
    report.sealed = verified
    report.consistency_proofs = proofs
    replay.fill(report)
    return report


def _receipt_of(document: Any) -> Any:
    """A receipt, or the receipt inside a GET /q/{c}/receipt/{seq} answer."""
    if isinstance(document, dict) and isinstance(document.get("receipt"), dict):
        return document["receipt"]
    return document


def check_receipt(
    receipt: Any,
    campaign: str,
    keys: PublicKeys,
    entries: Mapping[int, bytes],
    sealed: int,
    size: int,
) -> str:
    """A receipt must verify with the public keys and be the batch of its join entry."""
    if not isinstance(receipt, dict):
        raise EntryProblem("a receipt is a JSON object")
    seq, index = receipt.get("seq"), receipt.get("entry")
    if not is_int(seq):
        raise EntryProblem("the receipt has no seq")
    if receipt.get("campaign") != campaign:
        raise EntryProblem(f"the receipt is for campaign {receipt.get('campaign')!r}")
    if not receipt_proofs.verify_receipt(receipt, keys):
        raise EntryProblem(
            f"the receipt for seq {seq} does not verify (signature, statement or path altered)"
        )
    if not is_int(index) or not 1 <= index <= size or index not in entries:
        raise EntryProblem(f"the receipt names entry {index!r}, which is not in the export")
    entry = decode_entry(entries[index])
    kind = entry.get("k")
    if kind not in receipt_proofs.RECEIPT_KINDS:
        raise EntryProblem(f"the receipt names entry {index}, a {kind!r} entry, not a join")
    batch = receipt_proofs.BatchReceipts(
        campaign,
        index,
        int(entry.get("t") or 0),
        receipt_proofs.batch_pairs(entry),
    )
    if batch.t != receipt["t"] or batch.root.hex() != receipt["root"]:
        raise EntryProblem(f"the receipt for seq {seq} is not the batch of join entry {index}")
    if len(batch.pairs) != receipt.get("batch_size"):
        raise EntryProblem(f"the receipt's batch_size is not the size of join entry {index}")
    if batch.position_of(seq) != receipt["leaf_index"]:
        raise EntryProblem(f"seq {seq} is not at the receipt's place in join entry {index}")
    where = f"sealed (checkpoint size {sealed})" if index <= sealed else "not sealed yet"
    return f"receipt seq {seq}: signed by {receipt.get('kid')}, join entry {index}, {where}"


def verify_file(path: Path | str, keys_document: Any | None = None, **options: Any) -> Report:
    with open(path, "rb") as fh:
        return verify_lines(fh, keys_document, **options)
