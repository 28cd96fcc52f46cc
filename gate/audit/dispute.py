"""`gate audit dispute`: one customer's story, from the log, with the proofs.

For a complaint desk: when the customer joined and their seq, how many were ahead of
them, when they were admitted (and how many went before them), whether they got a pass,
what they claimed and what became of it (confirmed, released, expired), any block or
revoke, and for a ballot what they subscribed and were allotted. Every fact comes from
an audit entry; each entry is shipped with its bytes and its inclusion proof against the
latest signed checkpoint, and the join receipt with its own proof, so the account can be
checked with the public keys alone (`check_account`).

Only this customer's data is shown (issue 13). An entry about them alone (a pass, a
claim, …) comes whole, with its bytes. An entry shared with other customers (a join
batch, an admission range, an expiry sweep, a ballot chunk) comes as this customer's part
of it and the counts (how many in the batch, how many admitted), with the entry's leaf
hash and that leaf's inclusion proof, never its bytes: those name the other customers'
digests, seqs, reservations and amounts. The proof shows the entry is at its place in
the signed log; that the part shown is what the entry says is checked by whoever holds
the export (an auditor), not by the customer. The join receipt comes likewise without
its batch's entry bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gate.audit import merkle
from gate.audit.checkpoints import verify_checkpoint
from gate.audit.format import (
    PublicKeys,
    decode_entry,
    entry_base64,
    entry_from_base64,
    parse_hex,
    text_of,
)
from gate.audit.query import CustomerTracker, entry_view, iso_us, kind_of
from gate.audit.receipts import ReceiptBook, verify_receipt, verify_receipt_proof
from gate.audit.store import AuditStore
from gate.campaign import load_stored_spec

AMOUNT_KINDS = ("claim", "confirm", "release")
# Kinds whose entry is about one customer only: shown whole, bytes and all.
OWN_KINDS = frozenset(
    {"pass", "block", "revoke", "claim", "confirm", "release", "subscribe", "admin-query"}
)


def shared_view(
    index: int, kind: str, entry: Mapping[str, Any], digest: bytes, seq: int | None
) -> dict[str, Any]:
    """This customer's part of an entry shared with others, and its counts: no other
    customer's digest, seq, reservation or amount."""
    t = entry.get("t")
    view: dict[str, Any] = {"k": kind, "i": index, "index": index, "shared": True}
    if isinstance(t, int):
        view.update(t=t, time=iso_us(t))

    def own_positions(values: Any) -> list[int]:
        return [n for n, s in enumerate(values or []) if seq is not None and s == seq]

    if kind in ("join", "prequeue", "allot"):
        flat = list(entry.get("s") or [])
        pairs = [(flat[n], flat[n + 1]) for n in range(0, len(flat) - 1, 2)]
        view["pairs"] = len(pairs)
        for first, second in pairs:
            if second == digest or (kind == "allot" and seq is not None and first == seq):
                view["s"] = [first, second.hex() if isinstance(second, bytes) else text_of(second)]
        if kind == "allot":
            view["n"] = entry.get("n")
        if kind == "prequeue":
            view["x"] = [x for x in entry.get("x") or [] if seq is not None and x == seq]
    elif kind == "prejoin":
        digests = list(entry.get("c") or [])
        view["customers"] = len(digests)
        view["c"] = [d.hex() for d in digests if d == digest]
    elif kind == "admit":
        for name in ("f", "l", "n", "d"):
            if name in entry:
                view[name] = entry[name]
        if "o" in entry:  # what each admitted customer may take: one number for all
            view["o"] = text_of(entry["o"])
        skipped = list(entry.get("x") or [])
        view["skipped"] = len(skipped)
        view["x"] = [x for x in skipped if seq is not None and x == seq]
    elif kind == "expire":
        seqs = list(entry.get("s") or [])
        view["count"] = len(seqs)
        view["s"] = [seqs[n] for n in own_positions(seqs)]
    elif kind == "expire-res":
        seqs = list(entry.get("s") or [])
        mine = own_positions(seqs)
        view["count"] = len(seqs)
        for name in ("r", "s", "m"):
            values = list(entry.get(name) or [])
            view[name] = [
                text_of(values[n]) if name != "s" else values[n] for n in mine if n < len(values)
            ]
    return view


def _money(value: Any) -> int:
    try:
        return int(text_of(value))
    except ValueError:
        return 0


class Story:
    """What the scan learns, in log order."""

    def __init__(self, digest: bytes):
        self.tracker = CustomerTracker(digest)
        self.facts: dict[str, Any] = {"claims": []}
        self.events: list[tuple[int, int, str]] = []  # (index, t, sentence)
        self.indexes: list[int] = []
        self.admitted_total = 0  # admissions logged so far, anyone
        self.tickets = 0
        self.cursor = 0
        self.spec: dict[str, Any] = {}
        self.unit = ""
        self.prequeue_size = 0
        self.reservations: dict[str, dict[str, Any]] = {}

    def note(self, index: int, t: int, sentence: str) -> None:
        self.events.append((index, t, sentence))

    def campaign_entry(self, kind: str, entry: Mapping[str, Any]) -> None:
        if kind == "admin-create":
            try:
                spec = load_stored_spec(text_of(entry.get("spec", b"")))
            except Exception:  # a broken spec is for `verify` to report
                return
            self.spec = spec.to_json()
            self.unit = spec.quota.unit
        elif kind == "join":
            pairs = entry.get("s")
            if isinstance(pairs, list) and pairs:
                self.tickets = max(self.tickets, int(pairs[-2]))
        elif kind == "reveal":
            self.prequeue_size = int(entry.get("p") or 0)
            self.tickets = max(self.tickets, self.prequeue_size)
        elif kind == "admit":
            self.cursor = int(entry.get("l") or self.cursor)

    def customer_entry(self, index: int, kind: str, entry: Mapping[str, Any]) -> None:
        t = int(entry.get("t") or 0)
        seq = self.tracker.seq
        facts = self.facts
        self.indexes.append(index)
        if kind == "prejoin":
            facts["prequeue_joined_at"] = iso_us(t)
            self.note(index, t, "joined the pre-queue (before opening; no seq yet)")
        elif kind in ("join", "prequeue") and seq is not None and "seq" not in facts:
            facts.update(seq=seq, joined_at=iso_us(t), ahead=seq - 1, ticket_entry=index)
            how = "got seq" if kind == "join" else "was given seq by the pre-queue shuffle:"
            self.note(index, t, f"{how} {seq}; {seq - 1} customers were ahead")
        elif kind == "admit" and seq is not None:
            skipped = [int(x) for x in entry.get("x") or [] if isinstance(x, int)]
            before = self.admitted_total + sum(
                1 for s in range(int(entry["f"]), seq) if s not in skipped
            )
            if seq in skipped:
                facts["skipped_at"] = iso_us(t)
                self.note(index, t, "skipped at admission (revoked or blocked)")
            else:
                facts.update(
                    admitted_at=iso_us(t),
                    admitted_before=before,
                    pass_deadline=iso_us(int(entry.get("d") or 0)),
                )
                self.note(
                    index,
                    t,
                    f"admitted in seq order ({before} admitted before them); pass valid "
                    f"until {iso_us(int(entry.get('d') or 0))}",
                )
        elif kind == "pass":
            facts["pass_at"] = iso_us(t)
            self.note(index, t, "received a pass (first status check after admission)")
        elif kind == "expire":
            facts["pass_expired_at"] = iso_us(t)
            self.note(index, t, "admission expired unused (no claim before the deadline)")
        elif kind in ("block", "revoke"):
            facts[f"{kind}ed_at"] = iso_us(t)
            reason = text_of(entry.get("r", b"")) or "no reason given"
            self.note(index, t, f"{kind}ed by operator {text_of(entry.get('a'))}: {reason}")
        elif kind == "claim":
            rid = text_of(entry.get("r"))
            claim = {
                "reservation": rid,
                "asked": str(_money(entry.get("q"))),
                "granted": str(_money(entry.get("m"))),
                "at": iso_us(t),
                "expires_at": iso_us(int(entry.get("e") or 0)),
                "outcome": "held",
            }
            self.reservations[rid] = claim
            facts["claims"].append(claim)
            self.note(
                index,
                t,
                f"claimed {claim['asked']} {self.unit}, reserved {claim['granted']} "
                f"({rid}, held until {claim['expires_at']})",
            )
        elif kind in ("confirm", "release"):
            rid = text_of(entry.get("r"))
            outcome = "confirmed" if kind == "confirm" else "released"
            if rid in self.reservations:
                self.reservations[rid].update(outcome=outcome, outcome_at=iso_us(t))
            extra = f" ({text_of(entry.get('x'))})" if kind == "release" and entry.get("x") else ""
            self.note(
                index,
                t,
                f"reservation {rid} {outcome} by {text_of(entry.get('a'))} for "
                f"{_money(entry.get('m'))} {self.unit}{extra}",
            )
        elif kind == "expire-res":
            rids = [text_of(r) for r in entry.get("r") or []]
            seqs = list(entry.get("s") or [])
            amounts = list(entry.get("m") or [])
            for rid, s, amount in zip(rids, seqs, amounts, strict=False):
                if s == seq:
                    if rid in self.reservations:
                        self.reservations[rid].update(outcome="expired", outcome_at=iso_us(t))
                    self.note(
                        index,
                        t,
                        f"reservation {rid} expired unconfirmed; {_money(amount)} {self.unit} "
                        "went back to the pool",
                    )
        elif kind == "subscribe":
            facts["subscribed"] = str(_money(entry.get("m")))
            self.note(index, t, f"subscribed {facts['subscribed']} {self.unit} (ballot)")
        elif kind == "allot" and seq is not None:
            pairs = entry.get("s") or []
            for pos in range(0, len(pairs) - 1, 2):
                if pairs[pos] == seq:
                    facts["allotted"] = str(_money(pairs[pos + 1]))
                    self.note(index, t, f"allotted {facts['allotted']} {self.unit} by the ballot")


async def build_account(
    store: AuditStore,
    digest: bytes,
    public_keys: dict[str, Any],
    receipts: ReceiptBook | None = None,
) -> dict[str, Any]:
    """Everything the log says about one customer (by digest), with proofs."""
    checkpoints = await store.checkpoints()
    story = Story(digest)
    leaves = merkle.LeafStore()
    raws: dict[int, bytes] = {}
    views: list[dict[str, Any]] = []
    async for index, raw in store.entries():
        leaves.append(raw)
        entry = decode_entry(raw)
        kind = kind_of(entry)
        story.campaign_entry(kind, entry)
        if story.tracker.matches(kind, entry):
            story.customer_entry(index, kind, entry)
            raws[index] = raw
            if kind in OWN_KINDS:
                views.append(entry_view(index, entry))
            else:
                views.append(shared_view(index, kind, entry, digest, story.tracker.seq))
        if kind == "admit":
            story.admitted_total += int(entry.get("n") or 0)

    checkpoint = next(
        (cp for cp in reversed(checkpoints) if cp.get("size", 0) <= leaves.size), None
    )
    entries: list[dict[str, Any]] = []
    for view in views:
        index = view["index"]
        shared = bool(view.get("shared"))
        item: dict[str, Any] = {
            "index": index,
            "entry": view,
            # a shared entry's bytes name other customers: its leaf hash instead
            "raw": None if shared else entry_base64(raws[index]),
            "leaf": merkle.leaf_hash(raws[index]).hex() if shared else None,
            "proof": None,
        }
        if checkpoint is not None and index <= checkpoint["size"]:
            item["proof"] = [p.hex() for p in leaves.inclusion(index - 1, checkpoint["size"])]
        entries.append(item)
    seq = story.tracker.seq
    receipt = None
    if receipts is not None and seq is not None:
        receipt = await receipts.receipt_with_proof(store.campaign, seq)
        if receipt is not None and receipt.get("inclusion") is not None:
            # the batch's entry bytes name the batch's other customers: its leaf only
            receipt["inclusion"] = {
                name: value for name, value in receipt["inclusion"].items() if name != "entry"
            }
    facts = story.facts
    facts["tickets_now"] = story.tickets
    facts["cursor_now"] = story.cursor
    if seq is not None and "admitted_at" not in facts and seq > story.cursor:
        facts["position_now"] = seq - story.cursor
    return {
        "campaign": store.campaign,
        "customer": {"digest": digest.hex(), "seq": seq},
        "found": bool(entries),
        "spec": story.spec,
        "prequeue_size": story.prequeue_size,
        "facts": facts,
        "timeline": [
            {"index": index, "time": iso_us(t), "text": text} for index, t, text in story.events
        ],
        "entries": entries,
        "log_size": leaves.size,
        "checkpoint": checkpoint,
        "receipt": receipt,
        "keys": public_keys,
    }


def check_account(account: Mapping[str, Any], public_keys: PublicKeys) -> list[tuple[str, bool]]:
    """Re-check the proofs in an account with the public keys alone: (what, ok) each."""
    results: list[tuple[str, bool]] = []
    checkpoint = account.get("checkpoint")
    campaign = account.get("campaign")
    if checkpoint is not None:
        good = verify_checkpoint(checkpoint, public_keys, campaign)
        results.append(
            (
                f"checkpoint (size {checkpoint.get('size')}) signed by key {checkpoint.get('kid')}",
                good,
            )
        )
        root = bytes.fromhex(checkpoint["root"]) if good else b""
        for item in account.get("entries", []):
            if item.get("proof") is None:
                continue
            shared = item.get("raw") is None
            try:
                if shared:
                    leaf = parse_hex(item["leaf"], merkle.HASH_SIZE)
                else:
                    raw = entry_from_base64(item["raw"])
                    leaf = merkle.leaf_hash(raw)
                path = [parse_hex(p, merkle.HASH_SIZE) for p in item["proof"]]
                proof = [p for p in path if p is not None]
                ok = (
                    leaf is not None
                    and len(proof) == len(path)
                    and merkle.verify_inclusion(
                        leaf, item["index"] - 1, checkpoint["size"], proof, root
                    )
                    and (shared or decode_entry(raw).get("i") == item["index"])
                )
            except (ValueError, TypeError, KeyError):
                ok = False
            what = f"entry {item.get('index')} is in the signed log"
            if shared:
                what += " (shared with other customers: their part withheld, its leaf proven)"
            results.append((what, bool(good and ok)))
    answer = account.get("receipt")
    if answer is not None:
        receipt = answer.get("receipt") or {}
        results.append(
            (
                f"join receipt (seq {receipt.get('seq')}) signed by key {receipt.get('kid')}",
                verify_receipt(receipt, public_keys),
            )
        )
        inclusion = answer.get("inclusion")
        if inclusion is not None and "entry" in inclusion:
            results.append(
                (
                    f"join entry {receipt.get('entry')} of the receipt is in the signed log",
                    verify_receipt_proof(answer, public_keys),
                )
            )
        elif inclusion is not None:
            results.append(
                (
                    f"join entry {receipt.get('entry')} of the receipt is in the signed log "
                    "(shared with other customers: its leaf proven)",
                    _receipt_leaf_included(answer, public_keys),
                )
            )
    return results


def _receipt_leaf_included(answer: Mapping[str, Any], public_keys: PublicKeys) -> bool:
    """The receipt's join entry, by its leaf hash, is in the receipt's signed checkpoint."""
    try:
        receipt, checkpoint, inclusion = (
            answer["receipt"],
            answer["checkpoint"],
            answer["inclusion"],
        )
        if checkpoint is None or not verify_checkpoint(
            checkpoint, public_keys, receipt["campaign"]
        ):
            return False
        leaf = parse_hex(inclusion["leaf"], merkle.HASH_SIZE)
        path = [parse_hex(p, merkle.HASH_SIZE) for p in inclusion["path"]]
        proof = [p for p in path if p is not None]
        if leaf is None or len(proof) != len(path):
            return False
        if (
            inclusion["leaf_index"] != receipt["entry"] - 1
            or inclusion["size"] != checkpoint["size"]
        ):
            return False
        return merkle.verify_inclusion(
            leaf,
            receipt["entry"] - 1,
            checkpoint["size"],
            proof,
            parse_hex(checkpoint["root"], merkle.HASH_SIZE) or b"",
        )
    except (KeyError, TypeError, ValueError):
        return False


def render_text(account: Mapping[str, Any], checks: list[tuple[str, bool]]) -> str:
    """The plain-text account for a complaint desk."""
    facts = account.get("facts", {})
    spec = account.get("spec", {})
    customer = account.get("customer", {})
    unit = (spec.get("quota") or {}).get("unit", "")
    lines = [
        f"Campaign {account.get('campaign')}"
        + (
            f" ({spec.get('policy')}, opens {spec.get('opens_at')}, closes {spec.get('closes_at')})"
            if spec
            else ""
        ),
        f"Customer digest {customer.get('digest')} (a keyed hash of the customer id; the "
        "log never holds the id itself)",
        "",
    ]
    if not account.get("found"):
        lines.append(
            "The audit log has no entry about this customer: no ticket was ever "
            "issued to this id in this campaign."
        )
        return "\n".join(lines) + "\n"
    seq = customer.get("seq")
    summary: list[str] = []
    if "prequeue_joined_at" in facts:
        summary.append(
            f"Joined the pre-queue at {facts['prequeue_joined_at']}; "
            f"{account.get('prequeue_size', 0)} customers were in it, and their order was "
            "drawn at opening from a seed committed in advance."
        )
    if seq is not None:
        summary.append(
            f"Seq {seq}, given at {facts.get('joined_at')}: {facts.get('ahead')} customers "
            "were ahead of them."
        )
    else:
        summary.append("No seq yet (still in the pre-queue).")
    if "admitted_at" in facts:
        summary.append(
            f"Admitted at {facts['admitted_at']}, in seq order: "
            f"{facts['admitted_before']} customers were admitted before them."
        )
    elif "skipped_at" in facts:
        summary.append(f"Not admitted: skipped at {facts['skipped_at']} (revoked or blocked).")
    elif "position_now" in facts:
        summary.append(f"Not admitted yet: {facts['position_now']} places from the front.")
    else:
        summary.append("Not admitted.")
    if "pass_at" in facts:
        summary.append(f"Received a pass at {facts['pass_at']}.")
    elif "admitted_at" in facts:
        summary.append("Never fetched a pass.")
    if "pass_expired_at" in facts:
        summary.append(f"The admission expired unused at {facts['pass_expired_at']}.")
    for claim in facts.get("claims", []):
        outcome = claim["outcome"]
        when = f" at {claim['outcome_at']}" if "outcome_at" in claim else ""
        summary.append(
            f"Claimed {claim['asked']} {unit} at {claim['at']}; {claim['granted']} {unit} "
            f"reserved ({claim['reservation']}); {outcome}{when}."
        )
    if "subscribed" in facts:
        allotted = facts.get("allotted")
        summary.append(
            f"Subscribed {facts['subscribed']} {unit}; allotted "
            + (f"{allotted} {unit}." if allotted is not None else "nothing yet (not drawn).")
        )
    for what in ("blocked", "revoked"):
        if f"{what}_at" in facts:
            summary.append(f"{what.capitalize()} by an operator at {facts[f'{what}_at']}.")
    lines += summary
    lines += ["", "Timeline (audit entry index, Redis time UTC):"]
    for event in account.get("timeline", []):
        lines.append(f"  #{event['index']:<8} {event['time']}  {event['text']}")
    lines += ["", "Proofs:"]
    checkpoint = account.get("checkpoint")
    if checkpoint is None:
        lines.append("  no signed checkpoint covers these entries yet")
    else:
        lines.append(
            f"  latest checkpoint: {checkpoint['size']} entries, root {checkpoint['root']}, "
            f"signed {iso_us(int(checkpoint['time_ms']) * 1000)} by key {checkpoint['kid']}"
        )
    if account.get("receipt") is None:
        lines.append("  no join receipt")
    for what, ok in checks:
        lines.append(f"  [{'ok' if ok else 'FAILED'}] {what}")
    unsealed = [i["index"] for i in account.get("entries", []) if i.get("proof") is None]
    if unsealed:
        lines.append(f"  not sealed yet (no checkpoint covers them): entries {unsealed}")
    return "\n".join(lines) + "\n"
