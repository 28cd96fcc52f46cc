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

import contextlib
import json
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gate.audit import merkle
from gate.audit import receipts as receipt_proofs
from gate.audit.checkpoints import NOTE
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
    text_of,
    verify_signature,
)
from gate.audit.merkle import LeafStore
from gate.audit.note import NoteError, verify_checkpoint_note
from gate.audit.replay import EntryProblem, LateEntry, Replay, need_text
from gate.audit.report import Failure, Report, VerificationFailed

# -- the checkpoints -------------------------------------------------------------------


@dataclass
class Checkpoint:
    number: int
    line: int
    data: dict[str, Any]


@dataclass(frozen=True)
class Head:
    """A validly signed checkpoint whose root the entries have: what it is called (for a
    message that names both sides of a fork), its size and root."""

    label: str
    size: int
    root: bytes


@dataclass(frozen=True)
class Held:
    """A checkpoint the auditor brought from elsewhere (a file, a receipt's answer)."""

    name: str
    data: Any
    receipt: str | None = None  # the receipt it came in

    def label(self) -> str:
        if self.receipt is not None:
            return f"the checkpoint in receipt {self.receipt}"
        return f"held checkpoint {self.name}"

    def failure(self, message: str, **where: Any) -> Failure:
        if self.receipt is not None:
            return Failure(message, receipt=self.receipt, **where)
        return Failure(message, held=self.name, **where)


def check_checkpoints(
    checkpoints: list[Checkpoint],
    campaign: str,
    keys: PublicKeys,
    store: LeafStore,
    heads: dict[int, Head] | None = None,
) -> tuple[Failure | None, int, int]:
    """(first failure, entries covered by the last good checkpoint, consistency proofs).
    `heads` collects the good checkpoints by size."""
    previous: CheckpointFields | None = None
    proofs = 0
    verified = 0
    heads = {} if heads is None else heads
    for cp in checkpoints:
        try:
            fields, proved = _check_checkpoint(cp, campaign, keys, store, previous, heads)
        except CheckpointProblem as exc:
            entries = exc.entries or ((verified + 1, exc.upto) if exc.upto else None)
            return (
                Failure(
                    str(exc), line=cp.line, checkpoint=cp.number, entries=entries, kind=exc.kind
                ),
                (verified),
                proofs,
            )
        proofs += proved
        previous = fields
        verified = fields.size
        heads.setdefault(fields.size, Head(f"checkpoint #{cp.number}", fields.size, fields.root))
    return None, verified, proofs


class CheckpointProblem(Exception):
    """`upto`: the checkpoint's size when it blames the entries before it (those after
    the last good checkpoint); `entries`: an explicit range it blames instead."""

    def __init__(
        self,
        message: str,
        upto: int = 0,
        *,
        entries: tuple[int, int] | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.upto = upto
        self.entries = entries
        self.kind = kind


def _equivocation(size: int, one: tuple[str, bytes], other: Head) -> str:
    return (
        f"equivocation: two validly signed checkpoints for size {size} with different "
        f"roots, {one[1].hex()} ({one[0]}) and {other.root.hex()} ({other.label}): the log "
        "was forked (the same campaign's history signed twice, differently)"
    )


def _check_checkpoint(
    cp: Checkpoint,
    campaign: str,
    keys: PublicKeys,
    store: LeafStore,
    previous: CheckpointFields | None,
    heads: Mapping[int, Head],
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
    same = heads.get(size)
    if same is not None and same.root != root_bytes:
        raise CheckpointProblem(
            _equivocation(size, (f"checkpoint #{cp.number}", root_bytes), same),
            kind="equivocation",
        )
    if size > store.size:
        raise CheckpointProblem(
            f"it covers {size} entries but the export has {store.size}: "
            f"entries {store.size + 1}..{size} are missing",
            entries=(store.size + 1, size),
            kind="truncation",
        )
    if previous is not None and (size < previous.size or fields.time_ms < previous.time_ms):
        raise CheckpointProblem("checkpoints must come in size and time order")
    if store.root(size) != root_bytes:
        raise CheckpointProblem(
            "the entries do not hash to its root: they were altered (or removed, inserted, "
            "reordered) after it was signed",
            size,
            kind="altered",
        )
    if previous is None:
        return fields, 0
    old_size, old_root = previous.size, previous.root
    proof = store.consistency(old_size, size)
    if not merkle.verify_consistency(old_size, size, old_root, root_bytes, proof):
        raise CheckpointProblem(
            f"not consistent with the checkpoint before it (size {old_size})",
            size,
            kind="altered",
        )
    return fields, 1


def _held_head(item: Held, campaign: str, keys: PublicKeys) -> tuple[int, bytes] | Failure:
    """The (size, root) a held checkpoint signs, a JSON checkpoint or a signed note (as
    `/.well-known/fairgate/checkpoint/{c}` serves it), or why it is no evidence."""
    label = item.label()
    if isinstance(item.data, Mapping) and item.data.get("type") == NOTE:
        try:
            checkpoint, _ = verify_checkpoint_note(str(item.data.get("text")), keys, campaign)
        except NoteError as exc:
            return item.failure(f"{label}: {exc}")
        return checkpoint.size, checkpoint.root
    if not isinstance(item.data, Mapping) or item.data.get("type") != "checkpoint":
        return item.failure(f"{label} is not a checkpoint")
    try:
        fields = parse_checkpoint(item.data, campaign)
    except ValueError as exc:
        return item.failure(f"{label}: {exc}")
    key = keys.get(fields.kid)
    if key is None:
        return item.failure(
            f"{label} is signed with key {fields.kid!r}, which is not among the public keys"
        )
    if not signed_by(key, fields.message(), fields.signature):
        return item.failure(f"the signature of {label} does not verify with key {fields.kid}")
    return fields.size, fields.root


def check_held(
    held: Sequence[Held],
    campaign: str,
    keys: PublicKeys,
    store: LeafStore,
    heads: dict[int, Head],
) -> tuple[Failure | None, int]:
    """Check the checkpoints the auditor holds against the export: (the first failure,
    the largest size a good one covers). Each must be signed by a known key; one beyond
    the export's last entry is a truncation (or rollback); one whose root the entries do
    not have is a fork, named equivocation where another validly signed checkpoint (the
    export's, or another held one) commits to those entries, else the entries were
    altered after it was signed. A good one joins `heads`."""
    covered = 0
    for item in held:
        label = item.label()
        signed = _held_head(item, campaign, keys)
        if isinstance(signed, Failure):
            return signed, covered
        size, root = signed
        same = heads.get(size)
        if same is not None and same.root != root:
            return item.failure(
                _equivocation(size, (label, root), same), kind="equivocation"
            ), covered
        if size > store.size:
            return item.failure(
                f"truncation or rollback: the export ends at entry {store.size}, but {label} "
                f"is signed for size {size} (root {root.hex()}): entries "
                f"{store.size + 1}..{size} are missing from the export",
                entries=(store.size + 1, size),
                kind="truncation",
            ), covered
        actual = store.root(size)
        if actual != root:
            larger = [h for s, h in sorted(heads.items()) if s > size]
            if larger:
                other = larger[0]
                return item.failure(
                    f"equivocation: {label} (size {size}, root {root.hex()}) and "
                    f"{other.label} (size {other.size}, root {other.root.hex()}) are both "
                    f"validly signed but cannot both be true: the first {size} entries under "
                    f"{other.label} hash to {actual.hex()} (a forked log)",
                    kind="equivocation",
                ), covered
            below = max([s for s in heads if s < size], default=0)
            return item.failure(
                f"altered: the export's entries 1..{size} hash to {actual.hex()}, not to the "
                f"root {root.hex()} that {label} signs: entries {below + 1}..{size} were "
                "changed after it was signed (or the log was forked)",
                entries=(below + 1, size),
                kind="altered",
            ), covered
        heads.setdefault(size, Head(label, size, root))
        covered = max(covered, size)
    return None, covered


# -- batch signatures ----------------------------------------------------------------


def check_batch_signatures(
    lines: Sequence[tuple[int, Mapping[str, Any]]], roots: Mapping[int, bytes], keys: PublicKeys
) -> tuple[Failure | None, int]:
    """Each batch line (a join batch's signature, made at join time) must sign the root of
    its join entry's batch as the export has it (receipts.py): a join entry rewritten after
    the join fails here even when a checkpoint signed the rewrite. (first failure, lines
    checked.)"""
    seen: set[int] = set()
    for line, data in lines:
        index, kid, sig = data.get("i"), data.get("kid"), data.get("sig")
        if not is_int(index) or not isinstance(kid, str) or not isinstance(sig, str):
            return Failure("a batch line needs i, kid and sig", line=line), len(seen)
        root = roots.get(index)
        if root is None:
            return (
                Failure(
                    "a batch signature for an entry that is not a join batch in the export",
                    line=line,
                    index=index,
                    kind="batch_signature",
                ),
                len(seen),
            )
        if index in seen:
            return Failure("a second batch signature for the entry", line=line, index=index), len(
                seen
            )
        seen.add(index)
        if not verify_signature(keys, kid, root, sig):
            return (
                Failure(
                    "batch signature: join entry is not the batch its signature (made at join "
                    "time, before any checkpoint) signs: its customers, seqs or time were "
                    "changed after the join"
                    + (
                        f" (or key {kid!r} is not among the public keys)" if kid not in keys else ""
                    ),
                    line=line,
                    index=index,
                    kind="batch_signature",
                ),
                len(seen),
            )
    return None, len(seen)


# -- the seal bound ------------------------------------------------------------------

# What verify allows beyond a campaign's seal bound: a checkpoint's time is Redis TIME read
# after its round, and a failover may date it on another primary's clock.
SEAL_TOLERANCE_MS = 100


@dataclass(frozen=True)
class SealGap:
    """A seal-gap entry (lua/sealer_lease.lua): entries first..last were found unsealed
    longer than the bound (why handover or late), or the sealer's lease was taken back from
    a foreign token while they were unsealed (why lease-stolen; `foreign`: its SHA-1)."""

    index: int
    why: str
    first: int
    last: int
    foreign: str = ""

    @classmethod
    def of(cls, index: int, entry: Mapping[str, Any]) -> SealGap:
        why, foreign = entry.get("w"), entry.get("h")
        first, last = entry.get("f"), entry.get("l")
        return cls(
            index,
            why.decode() if isinstance(why, bytes) else str(why),
            first if is_int(first) else 0,
            last if is_int(last) else 0,
            foreign.decode() if isinstance(foreign, bytes) else "",
        )


def check_seal_delays(
    checkpoints: Sequence[Checkpoint],
    times: Sequence[int],
    gaps: Sequence[SealGap],
    bound_ms: int | None,
    *,
    allow_gaps: bool = False,
) -> tuple[Failure | None, int, list[str]]:
    """Every entry must be sealed within the campaign's seal bound (+ SEAL_TOLERANCE_MS):
    its time `t` to the time of the first checkpoint that covers it. One sealed later fails
    as seal_delay, unless a seal-gap entry covers it: then seal_gap (accepted, and reported,
    with `allow_gaps`). A lease taken back from a foreign token fails as lease_stolen,
    late or not. (first failure, the longest seal delay in ms, the accepted gaps)."""
    lost = next((g for g in gaps if g.why == "lease-lost"), None)
    if lost is not None and not allow_gaps:
        return (
            Failure(
                "lease lost: the sealer's lease vanished from Redis before it could have "
                "lapsed (deleted by someone with Redis access, or lost in a Redis failover) "
                + (
                    f"while entries {lost.first}..{lost.last} were unsealed"
                    if lost.last >= lost.first
                    else "while nothing was unsealed"
                )
                + ": they could have been rewritten without the key (the sealer recorded it "
                "in this entry; --allow-seal-gaps accepts it)",
                index=lost.index,
                entries=(lost.first, lost.last) if lost.last >= lost.first else None,
                kind="lease_lost",
            ),
            0,
            [],
        )
    for gap in gaps:
        if gap.why == "lease-stolen":
            unsealed = (
                f"entries {gap.first}..{gap.last} were unsealed"
                if gap.last >= gap.first
                else "nothing was unsealed"
            )
            return (
                Failure(
                    "lease stolen: the sealer's lease was overwritten in Redis with a token no "
                    f"gate process made (SHA-1 {gap.foreign}) while {unsealed}: whoever wrote "
                    "it could stop the sealing and rewrite them without the key (the sealer "
                    "took its lease back and recorded it in this entry)",
                    index=gap.index,
                    entries=(gap.first, gap.last) if gap.last >= gap.first else None,
                    kind="lease_stolen",
                ),
                0,
                [],
            )
    if not bound_ms:
        return None, 0, []
    limit_us = (bound_ms + SEAL_TOLERANCE_MS) * 1000
    longest_us = 0
    accepted = [
        f"lease lost accepted: entries {g.first}..{g.last} unsealed when the sealer's lease "
        f"vanished (recorded in entry {g.index})"
        for g in gaps
        if g.why == "lease-lost"
    ]
    done = 0
    for cp in checkpoints:
        size, time_us = cp.data["size"], cp.data["time_ms"] * 1000
        if size <= done:
            continue
        first, done = done, size
        oldest = min(times[first:size])
        longest_us = max(longest_us, time_us - oldest)
        if time_us - oldest <= limit_us:
            continue
        late = [i + 1 for i in range(first, size) if time_us - times[i] > limit_us]
        for index in late:
            # recorded before the checkpoint (found at the sealer's look) or after it (the
            # round itself was slow)
            found = next((g for g in gaps if g.first <= index <= g.last), None)
            delay_ms = (time_us - times[index - 1]) // 1000
            if found is None:
                return (
                    Failure(
                        f"seal delay: sealed {delay_ms} ms after it was written, beyond the "
                        f"campaign's seal bound of {bound_ms} ms (+{SEAL_TOLERANCE_MS} ms): "
                        "while unsealed it could have been rewritten without the key, and "
                        "the log records no gap that explains it",
                        line=cp.line,
                        index=index,
                        checkpoint=cp.number,
                        kind="seal_delay",
                    ),
                    longest_us // 1000,
                    accepted,
                )
            gap = found
            if not allow_gaps:
                return (
                    Failure(
                        f"seal gap: entries {gap.first}..{gap.last} were sealed up to "
                        f"{(time_us - oldest) // 1000} ms after they were written, beyond "
                        f"the campaign's seal bound of {bound_ms} ms; the sealer recorded the "
                        f"gap in entry {gap.index} ({gap.why}): while unsealed they could "
                        "have been rewritten without the key (--allow-seal-gaps accepts a "
                        "gap the log records)",
                        index=gap.index,
                        entries=(gap.first, gap.last),
                        checkpoint=cp.number,
                        kind="seal_gap",
                    ),
                    longest_us // 1000,
                    accepted,
                )
            note = (
                f"seal gap accepted: entries {gap.first}..{gap.last} sealed up to "
                f"{(time_us - oldest) // 1000} ms late ({gap.why}, recorded in entry {gap.index})"
            )
            if note not in accepted:
                accepted.append(note)
    return None, longest_us // 1000, accepted


# The kinds of entry a customer's first step writes: every other customer entry follows one.
FIRST_CUSTOMER_KINDS = frozenset(("join", "prejoin"))


def check_commitment(
    first_join: int | None,
    first_join_t: int,
    heads: Mapping[int, Head],
    in_export: Sequence[Checkpoint],
) -> tuple[Failure | None, int | None]:
    """The campaign's commitment (entry 1, admin-create: its rules and seed commitments)
    must have been signed before anyone joined: a good checkpoint (the export's or a held
    one) covering entry 1 and not the first join; one from the export must also be dated
    no later than that join. (first failure, the commitment checkpoint's size; None when
    nobody joined, or nothing is sealed: then the log is not verified at all)."""
    if first_join is None:
        return None, None
    early = sorted(size for size in heads if 1 <= size < first_join)
    dated = {cp.data["size"]: cp.data["time_ms"] for cp in in_export}
    for size in early:
        time_ms = dated.get(size)
        if time_ms is None or time_ms * 1000 <= first_join_t:
            return None, size
    if not heads:
        return None, None  # nothing sealed at all: unsealed (or, allowed, NOT verified)
    return (
        Failure(
            "late commitment: no checkpoint signed before the first join covers the "
            "campaign's rules and seed commitments (entry 1, admin-create): they could "
            "have been changed after seeing who joined (the gate answers joins only once "
            "that checkpoint is published)",
            index=first_join,
            entries=(1, first_join),
            kind="late_commitment",
        ),
        None,
    )


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
    require_sealed: bool = True,
    allow_seal_gaps: bool = False,
    receipts: Sequence[tuple[str, Any]] = (),
    checkpoints: Sequence[tuple[str, Any]] = (),
) -> Report:
    """Check an export line by line; raises VerificationFailed naming the first problem.

    `keys_document` is the JSON published at /.well-known/fairgate/keys; without it the
    keys in the export's header are used (which proves integrity, not who signed).
    `require_sealed` (the default): entries no good checkpoint covers (the export's own
    or a held one) are a failure; False checks them all the same but leaves them out of
    what is verified (the report names them NOT verified).
    `receipts`: (name, receipt) pairs, each a receipt given at join or the answer of
    GET /q/{c}/receipt/{seq}; each must verify and match its join entry in this log, and
    the checkpoint in an answer is checked as a held one.
    `checkpoints`: (name, checkpoint) pairs the auditor holds from elsewhere
    (`gate.audit.checkpoints.read_checkpoints`): each must be signed by a known key and
    agree with the export (no truncation, rollback or fork).
    `allow_seal_gaps`: entries sealed later than the campaign's seal bound pass where a
    seal-gap entry records the gap (a handover or a late sealer; `check_seal_delays`).
    """
    held = [Held(name, data) for name, data in checkpoints] + [
        Held(name, document["checkpoint"], receipt=name)
        for name, document in receipts
        if isinstance(document, dict) and isinstance(document.get("checkpoint"), dict)
    ]
    wanted = [_receipt_of(document) for _, document in receipts]
    keep = {r["entry"] for r in wanted if isinstance(r, dict) and is_int(r.get("entry"))}
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
    in_export: list[Checkpoint] = []
    replay_failure: Failure | None = None
    times = array("q")  # each entry's t, for the seal delays
    batch_roots: dict[int, bytes] = {}  # join entry -> the root its batch signature signs
    batch_lines: list[tuple[int, dict[str, Any]]] = []
    gaps: list[SealGap] = []
    first_join: int | None = None  # the first customer's entry, and its time
    first_join_t = 0
    last_line = 0
    for raw_line in iterator:
        line_no += 1
        if not raw_line.strip():
            continue
        data = _json_line(raw_line, line_no)
        kind = data.get("type")
        if kind == "checkpoint":
            in_export.append(Checkpoint(len(in_export) + 1, line_no, data))
            continue
        if kind == "batch":
            batch_lines.append((line_no, data))
            continue
        if kind != "entry":
            raise VerificationFailed(Failure(f"unknown line type {kind!r}", line=line_no))
        expected = store.size + 1
        if in_export:
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
        t = entry.get("t")
        times.append(t if is_int(t) and 0 <= t < 2**63 else 0)
        if kind_text == "seal-gap":
            gaps.append(SealGap.of(index, entry))
        elif kind_text in ("join", "prequeue") and replay_failure is None:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                batch_roots[index] = receipt_proofs.BatchReceipts(
                    campaign, index, int(entry["t"]), receipt_proofs.batch_pairs(entry)
                ).root
        if first_join is None and kind_text in FIRST_CUSTOMER_KINDS:
            first_join, first_join_t = index, times[-1]
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

    heads: dict[int, Head] = {}
    cp_failure, verified, proofs = check_checkpoints(in_export, campaign, keys, store, heads)
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
    for cp in in_export:  # all good here: no entry is dated after the one covering it
        try:
            replay.check_sealed_time(cp.data["size"], cp.data["time_ms"])
        except LateEntry as exc:
            raise VerificationFailed(
                Failure(str(exc), line=cp.line, index=exc.index, checkpoint=cp.number)
            ) from None
    batch_failure, report.batch_signatures = check_batch_signatures(batch_lines, batch_roots, keys)
    if batch_failure is not None:
        raise VerificationFailed(batch_failure)
    report.join_batches = len(batch_roots)
    bound = replay.spec.seal_bound_ms if replay.spec is not None else None
    seal_failure, report.seal_delay_max_ms, report.seal_gaps = check_seal_delays(
        in_export, times, gaps, bound, allow_gaps=allow_seal_gaps
    )
    if seal_failure is not None:
        raise VerificationFailed(seal_failure)
    report.seal_bound_ms = bound
    held_failure, held_covered = check_held(held, campaign, keys, store, heads)
    if held_failure is not None:
        raise VerificationFailed(held_failure)
    commitment_failure, report.commitment_checkpoint = check_commitment(
        first_join, first_join_t, heads, in_export
    )
    if commitment_failure is not None:
        raise VerificationFailed(commitment_failure)
    for name, document in receipts:
        receipt = _receipt_of(document)
        try:
            line = check_receipt(
                receipt, campaign, keys, kept, max(verified, held_covered), store.size
            )
            proved = isinstance(document, dict) and document.get("inclusion") is not None
            if proved and not receipt_proofs.verify_receipt_proof(document, keys):
                raise ReceiptProblem(
                    "altered: its inclusion proof does not tie its entry to its checkpoint"
                )
            report.receipts.append(line)
        except (EntryProblem, ReceiptProblem) as exc:
            entry_of = receipt.get("entry") if isinstance(receipt, dict) else None
            raise VerificationFailed(
                Failure(
                    str(exc),
                    index=entry_of if is_int(entry_of) else None,
                    receipt=name,
                    kind=exc.kind if isinstance(exc, ReceiptProblem) else None,
                )
            ) from None
    covered = max(verified, held_covered)
    if require_sealed and covered < store.size:
        raise VerificationFailed(
            Failure(
                "not covered by any checkpoint, so not verified: without a signature they "
                "could have been rewritten (an export taken before the sealer caught up: "
                "take it again once sealed; --allow-unsealed checks them anyway and reports "
                "them NOT verified)",
                entries=(covered + 1, store.size),
                kind="unsealed",
            )
        )
    report.checkpoints = len(in_export)
    report.sealed = covered
    report.export_sealed = verified
    report.held_checkpoints = len(held)
    report.consistency_proofs = proofs
    replay.fill(report)
    return report


def _receipt_of(document: Any) -> Any:
    """A receipt, or the receipt inside a GET /q/{c}/receipt/{seq} answer."""
    if isinstance(document, dict) and isinstance(document.get("receipt"), dict):
        return document["receipt"]
    return document


class ReceiptProblem(Exception):
    """A receipt that does not hold against the export: `kind` is "missing_receipt" (its
    entry is not in the export) or "altered" (its entry is, with other contents)."""

    def __init__(self, message: str, kind: str = "altered") -> None:
        super().__init__(message)
        self.kind = kind


def check_receipt(
    receipt: Any,
    campaign: str,
    keys: PublicKeys,
    entries: Mapping[int, bytes],
    sealed: int,
    size: int,
) -> str:
    """A receipt must verify with the public keys and be the batch of its join entry (a
    subscription receipt: its subscribe entry). EntryProblem: the receipt itself is bad;
    ReceiptProblem: a good receipt that the export contradicts."""
    if not isinstance(receipt, dict):
        raise EntryProblem("a receipt is a JSON object")
    if receipt.get("type") == receipt_proofs.SUBSCRIPTION:
        return _check_subscription(receipt, campaign, keys, entries, sealed, size)
    seq, index = receipt.get("seq"), receipt.get("entry")
    if not is_int(seq):
        raise EntryProblem("the receipt has no seq")
    if receipt.get("campaign") != campaign:
        raise EntryProblem(f"the receipt is for campaign {receipt.get('campaign')!r}")
    if not receipt_proofs.verify_receipt(receipt, keys):
        raise EntryProblem(
            f"the receipt for seq {seq} does not verify (signature, statement or path altered)"
        )
    if not is_int(index) or index < 1:
        raise EntryProblem(f"the receipt names entry {index!r}, which is no entry")
    entry = _receipt_entry(f"receipt for seq {seq} is in join", index, size, entries)
    kind = entry.get("k")
    altered = f"altered: join entry {index} is not the batch the signed receipt for seq {seq}"
    if kind not in receipt_proofs.RECEIPT_KINDS:
        raise ReceiptProblem(f"{altered} names: it is a {kind!r} entry")
    batch = receipt_proofs.BatchReceipts(
        campaign,
        index,
        int(entry.get("t") or 0),
        receipt_proofs.batch_pairs(entry),
    )
    if batch.t != receipt["t"] or batch.root.hex() != receipt["root"]:
        raise ReceiptProblem(f"{altered} names (its time, customers or their order differ)")
    if len(batch.pairs) != receipt.get("batch_size"):
        raise ReceiptProblem(f"{altered} names (batch_size {receipt.get('batch_size')})")
    if batch.position_of(seq) != receipt["leaf_index"]:
        raise ReceiptProblem(f"{altered} names (seq {seq} is not at its place)")
    where = f"sealed (checkpoint size {sealed})" if index <= sealed else "not sealed yet"
    return f"receipt seq {seq}: signed by {receipt.get('kid')}, join entry {index}, {where}"


def _check_subscription(
    receipt: dict[str, Any],
    campaign: str,
    keys: PublicKeys,
    entries: Mapping[int, bytes],
    sealed: int,
    size: int,
) -> str:
    """A subscription receipt: signed, and the log's entry `entry` is that subscription."""
    seq, index = receipt.get("seq"), receipt.get("entry")
    if receipt.get("campaign") != campaign:
        raise EntryProblem(f"the receipt is for campaign {receipt.get('campaign')!r}")
    if not receipt_proofs.verify_subscription_receipt(receipt, keys):
        raise EntryProblem(f"the subscription receipt for seq {seq} does not verify")
    assert is_int(index) and is_int(seq)  # verify_subscription_receipt checked them
    entry = _receipt_entry(f"subscription of seq {seq} is", index, size, entries)
    held = (receipt["t"], seq, bytes.fromhex(receipt["digest"]), receipt["amount"])
    logged = (entry.get("t"), entry.get("s"), entry.get("c"), entry.get("m"))
    kind = text_of(entry.get("k"))
    if kind != "subscribe" or logged[:3] != held[:3] or text_of(logged[3]) != held[3]:
        says = f"a subscription of {text_of(logged[3])}" if kind == "subscribe" else repr(kind)
        raise ReceiptProblem(
            f"altered: entry {index} is not the subscription the signed receipt of seq {seq} "
            f"names ({receipt['amount']} at t {receipt['t']}): the log says {says}"
        )
    where = f"sealed (checkpoint size {sealed})" if index <= sealed else "not sealed yet"
    return (
        f"receipt seq {seq}: subscription of {receipt['amount']}, signed by "
        f"{receipt.get('kid')}, subscribe entry {index}, {where}"
    )


def _receipt_entry(names: str, index: int, size: int, entries: Mapping[int, bytes]) -> Any:
    """The entry a good receipt names, decoded; beyond the export: a missing receipt."""
    if index > size or index not in entries:
        raise ReceiptProblem(
            f"missing receipt: the signed {names} entry {index}, but the export ends at "
            f"entry {size} (truncated or rolled back)",
            kind="missing_receipt",
        )
    return decode_entry(entries[index])


def verify_file(path: Path | str, keys_document: Any | None = None, **options: Any) -> Report:
    with open(path, "rb") as fh:
        return verify_lines(fh, keys_document, **options)
