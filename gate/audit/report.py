"""What `gate audit verify` says: the first failure and where it is, or the summary of a
clean export (as text lines for a person, as a dict for `--json`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Failure:
    """What is wrong, and where: an entry (index, line), a checkpoint, or the header."""

    message: str
    line: int | None = None
    index: int | None = None  # the entry named
    checkpoint: int | None = None  # 1-based, in the order of the export
    entries: tuple[int, int] | None = None  # the range a failing checkpoint blames
    receipt: str | None = None  # the receipt (its name) that fails
    # What kind of failure, where it has a name of its own: "unsealed" (no checkpoint
    # covers these entries), "truncation" (a checkpoint the auditor holds is beyond the
    # export), "equivocation" (two validly signed checkpoints that cannot both be true),
    # "altered" (the entries differ from signed evidence), "missing_receipt",
    # "seal_delay" (an entry sealed later than the campaign's seal bound, no gap recorded),
    # "seal_gap" (the same, in a gap the sealer recorded), "lease_stolen" (the sealer's
    # lease was overwritten with a foreign token), "lease_lost" (it vanished early),
    # "batch_signature" (a join entry that its batch's signature, made at join time, does
    # not sign).
    kind: str | None = None
    held: str | None = None  # the held checkpoint (its file) that fails

    def describe(self) -> str:
        where: list[str] = []
        if self.receipt is not None:
            where.append(f"receipt {self.receipt}")
        if self.held is not None:
            where.append(f"held checkpoint {self.held}")
        if self.checkpoint is not None:
            where.append(f"checkpoint #{self.checkpoint}")
        if self.entries is not None:
            where.append(f"entries {self.entries[0]}..{self.entries[1]}")
        if self.index is not None:
            where.append(f"entry {self.index}")
        if self.line is not None:
            where.append(f"line {self.line}")
        return f"{', '.join(where) or 'export'}: {self.message}"


class VerificationFailed(Exception):
    def __init__(self, failure: Failure):
        super().__init__(failure.describe())
        self.failure = failure


@dataclass
class Report:
    """The summary of a clean export."""

    campaign: str
    policy: str = ""
    state: str = ""
    entries: int = 0
    checkpoints: int = 0
    sealed: int = 0  # entries 1..sealed covered by a good checkpoint (the export's or held)
    export_sealed: int = 0  # entries covered by the export's last checkpoint
    held_checkpoints: int = 0  # checkpoints held from elsewhere (files, receipts), all good
    consistency_proofs: int = 0
    keys_source: str = ""
    kinds: dict[str, int] = field(default_factory=dict)
    customers: int = 0
    admitted: int = 0
    skipped: int = 0
    expired_passes: int = 0
    passes: int = 0
    blocked: int = 0
    revoked: int = 0
    claims: int = 0
    confirms: int = 0
    releases: int = 0
    reservations_expired: int = 0
    total: int = 0
    unit: str = ""
    held: int = 0
    confirmed: int = 0
    released: int = 0
    expired_amount: int = 0
    subscriptions: int = 0
    subscribed: int = 0
    allocated: int | None = None
    prequeue: int = 0
    seed_revealed: bool = False
    receipts: list[str] = field(default_factory=list)
    seal_bound_ms: int | None = None  # the campaign's, as its log records it
    seal_delay_max_ms: int = 0  # the longest delay from an entry's time to its checkpoint
    seal_gaps: list[str] = field(default_factory=list)  # accepted (--allow-seal-gaps)
    # the size of the checkpoint that covered the campaign's commitment (entry 1) before
    # the first join (None: nobody joined, or nothing is sealed)
    commitment_checkpoint: int | None = None
    join_batches: int = 0  # join and pre-queue entries
    batch_signatures: int = 0  # of them, with their batch signature in the export (all good)

    def lines(self) -> list[str]:
        # Only a clean export gets here; entries no checkpoint covers are in it only when
        # the caller allowed them, and then they are named as not verified.
        unsealed = self.entries - self.sealed
        if not unsealed:
            verdict = "OK"
        elif self.sealed:
            verdict = f"entries 1..{self.sealed} OK, {unsealed} unsealed NOT verified"
        else:
            verdict = "NOT verified (no checkpoint covers it)"
        covered = f"1..{self.sealed}" if self.sealed else "none"
        out = [
            f"campaign {self.campaign}: {verdict} ({self.policy}, {self.state})",
            f"entries: {self.entries} (index 1..{self.entries}, gap-free)",
            f"coverage: checkpoints cover {covered} of {self.entries} entries",
            f"checkpoints: {self.checkpoints} in the export, signatures good, last covers "
            f"{self.export_sealed}; consistency proofs checked: {self.consistency_proofs}"
            if self.checkpoints
            else "checkpoints: none in the export",
        ]
        if self.seal_bound_ms:
            out.append(
                f"seal bound: {self.seal_bound_ms} ms, every sealed entry within it; longest "
                f"delay {self.seal_delay_max_ms} ms"
                + (
                    f" (with {len(self.seal_gaps)} recorded gaps accepted)"
                    if self.seal_gaps
                    else ""
                )
            )
        else:
            out.append("seal bound: none recorded (seal delays not checked)")
        if self.commitment_checkpoint is not None:
            out.append(
                "commitment: rules and seed commitments (entry 1) signed before the first "
                f"join, by the checkpoint of size {self.commitment_checkpoint}"
            )
        out += self.seal_gaps
        if self.join_batches:
            out.append(
                f"batch signatures: {self.batch_signatures} of {self.join_batches} join batches "
                "carried, each signs its entry as exported"
            )
        if self.held_checkpoints:
            out.append(
                f"held checkpoints: {self.held_checkpoints} consistent with the export "
                "(none beyond it, none with another root)"
            )
        if unsealed:
            out.append(
                f"unsealed: entries {self.sealed + 1}..{self.entries} NOT verified (no signed "
                "checkpoint covers them: replayed, but they could have been rewritten)"
            )
        out += [
            f"keys: {self.keys_source}",
            "kinds: " + ", ".join(f"{k}={v}" for k, v in sorted(self.kinds.items())),
            f"customers: {self.customers} tickets (one each), blocked {self.blocked}, "
            f"revoked {self.revoked}",
            f"admitted: {self.admitted} in seq order, skipped {self.skipped}, "
            f"passes {self.passes}, passes expired {self.expired_passes}",
        ]
        if self.prequeue:
            out.append(f"pre-queue: {self.prequeue} shuffled from the revealed seed")
        out += self.receipts
        if self.policy == "ballot":
            allocated = "not yet" if self.allocated is None else str(self.allocated)
            out.append(
                f"ballot: {self.subscriptions} subscriptions for {self.subscribed} "
                f"{self.unit}; allocated {allocated} of {self.total}"
                + (" (recomputed from the revealed seed)" if self.seed_revealed else "")
            )
        else:
            out.append(
                f"claims: {self.claims}; confirmed {self.confirms} for {self.confirmed} "
                f"{self.unit}, released {self.releases} ({self.released}), expired "
                f"{self.reservations_expired} ({self.expired_amount}), still held "
                f"{self.held}; total {self.total}, never oversold"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if not key.startswith("_")}
