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
3. Invariants: the entries are replayed through a model of the Lua scripts' rules: one
   ticket per customer and seqs gap-free, admission in seq order (skips only for
   revoked or blocked seqs), the admission rate and active cap, no pass without an
   admission, claims only by admitted customers for valid amounts, never more held +
   confirmed than the total nor more than a customer's max, confirm/release/expiry only
   of held reservations for their exact amounts, the ballot recomputed from the
   subscriptions and the revealed seed, the pre-queue shuffle recomputed from the seed.

The first problem found is reported with the entry (index and line) or the checkpoint
it concerns. A root mismatch can only say which range of entries changed (those between
the last good checkpoint and the bad one); an invariant failure inside that range is
named with it. An invariant failure inside the range a good checkpoint covers is
reported first: that log is authentic, so the gate itself broke the rule.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gate.audit import merkle
from gate.audit import receipts as receipt_proofs
from gate.ballot import Subscription, allocate
from gate.campaign import CampaignSpec, load_stored_spec, to_us
from gate.errors import BadRequest
from gate.prequeue import prequeue_order

FORMAT = "fairgate-audit/1"
CHECKPOINT_TAG = "fairgate-checkpoint/v1"
MAX_AMOUNT_DIGITS = 30
# Perfect subtrees of at least 2**NODE_LEVEL leaves are kept while hashing, so a root or
# a consistency proof at any size reads at most 2**NODE_LEVEL leaf hashes per subtree.
NODE_LEVEL = 4


# -- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """What is wrong, and where: an entry (index, line), a checkpoint, or the header."""

    message: str
    line: int | None = None
    index: int | None = None  # the entry named
    checkpoint: int | None = None  # 1-based, in the order of the export
    entries: tuple[int, int] | None = None  # the range a failing checkpoint blames
    receipt: str | None = None  # the receipt (its name) that fails

    def describe(self) -> str:
        where: list[str] = []
        if self.receipt is not None:
            where.append(f"receipt {self.receipt}")
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


class EntryProblem(Exception):
    """An entry breaks a rule (raised inside the replay; the caller adds where)."""


@dataclass
class Report:
    """The summary of a clean export."""

    campaign: str
    policy: str = ""
    state: str = ""
    entries: int = 0
    checkpoints: int = 0
    sealed: int = 0  # entries covered by the last checkpoint
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

    def lines(self) -> list[str]:
        unsealed = self.entries - self.sealed
        out = [
            f"campaign {self.campaign}: OK ({self.policy}, {self.state})",
            f"entries: {self.entries} (index 1..{self.entries}, gap-free)",
            f"checkpoints: {self.checkpoints}, signatures good, last covers {self.sealed}"
            + (f" ({unsealed} later entries not yet sealed)" if unsealed else "")
            + f"; consistency proofs checked: {self.consistency_proofs}",
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


# -- small parsers -------------------------------------------------------------------


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical_b64url(text: str) -> bytes | None:
    """The bytes of unpadded base64url text, or None when it is not the one encoding of
    them (trailing bits set, padding): such a text could be altered without a trace."""
    try:
        data = unb64url(text)
    except (ValueError, binascii.Error):
        return None
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != text:
        return None
    return data


def load_public_keys(document: Any) -> dict[str, Ed25519PublicKey]:
    """kid -> key from the JSON served at /.well-known/fairgate/keys (or an export header)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('the keys document must be {"keys": [...]}')
    out: dict[str, Ed25519PublicKey] = {}
    for item in document["keys"]:
        if not isinstance(item, Mapping):
            raise ValueError("each key must be an object")
        kid, public = item.get("kid"), item.get("public_key")
        if not isinstance(kid, str) or not isinstance(public, str):
            raise ValueError("each key needs kid and public_key")
        if item.get("alg", "Ed25519") != "Ed25519":
            continue
        try:
            out[kid] = Ed25519PublicKey.from_public_bytes(unb64url(public))
        except (ValueError, binascii.Error):
            raise ValueError(f"key {kid}: not an Ed25519 public key") from None
    if not out:
        raise ValueError("no Ed25519 key in the keys document")
    return out


def checkpoint_message(campaign: str, size: int, root_hex: str, time_ms: int) -> bytes:
    return f"{CHECKPOINT_TAG}\n{campaign}\n{size}\n{root_hex}\n{time_ms}\n".encode()


def decode_entry(raw: bytes) -> dict[str, Any]:
    """The msgpack map of one entry, keys as text, strings left as bytes."""
    try:
        entry = msgpack.unpackb(raw, raw=True, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types for bad bytes
        raise EntryProblem(f"not a msgpack entry ({exc.__class__.__name__})") from None
    if not isinstance(entry, dict):
        raise EntryProblem("not a msgpack map")
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if not isinstance(key, bytes):
            raise EntryProblem(f"field name {key!r} is not a string")
        out[key.decode("utf-8", "replace")] = value
    return out


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def need_int(entry: Mapping[str, Any], name: str, lo: int = 0) -> int:
    value = entry.get(name)
    if not _is_int(value) or value < lo:
        raise EntryProblem(f"field {name} must be an integer >= {lo}, not {value!r}")
    return int(value)


def need_text(entry: Mapping[str, Any], name: str) -> str:
    value = entry.get(name)
    if not isinstance(value, bytes):
        raise EntryProblem(f"field {name} must be a string, not {value!r}")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise EntryProblem(f"field {name} is not UTF-8") from None


def need_digest(entry: Mapping[str, Any], name: str) -> bytes:
    value = entry.get(name)
    if not isinstance(value, bytes) or len(value) != 16:
        raise EntryProblem(f"field {name} must be a 16-byte customer digest")
    return value


def need_list(entry: Mapping[str, Any], name: str) -> list[Any]:
    value = entry.get(name)
    if isinstance(value, dict) and not value:
        return []  # Lua's cmsgpack writes an empty table as an empty map
    if not isinstance(value, list):
        raise EntryProblem(f"field {name} must be a list, not {value!r}")
    return value


def parse_money(value: Any, what: str) -> int:
    """A decimal-string amount as Lua writes it: "0" or digits without a leading zero."""
    if isinstance(value, bytes):
        text = value.decode("ascii", "replace")
        if (
            text.isascii()
            and text.isdigit()
            and len(text) <= MAX_AMOUNT_DIGITS
            and (text == "0" or not text.startswith("0"))
        ):
            return int(text)
    raise EntryProblem(f"{what} must be a decimal-string amount, not {value!r}")


def need_money(entry: Mapping[str, Any], name: str) -> int:
    return parse_money(entry.get(name), f"field {name}")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bytes):
        try:
            return float(value.decode())
        except (UnicodeDecodeError, ValueError):
            pass
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise EntryProblem(f"{what} must be a number, not {value!r}")


# -- the replay ----------------------------------------------------------------------


@dataclass
class Reservation:
    rid: str
    seq: int
    amount: int
    state: str = "held"


UPDATABLE = ("rate", "burst", "max_active", "closes_at_us", "pass_ttl_us", "overbook")
MOVES = {
    "admin-pause": ({"open"}, "paused"),
    "admin-resume": ({"paused"}, "open"),
    "admin-close": ({"open", "paused"}, "closed"),
}


class Replay:
    """A model of the scripts' rules; `apply` raises EntryProblem for a bad entry."""

    def __init__(self, campaign: str):
        self.campaign = campaign
        self.spec: CampaignSpec | None = None
        self.seed_hash = ""
        self.pq_seed_hash = ""
        self.pq_seed_revealed = False
        self.state = ""
        self.settings: dict[str, float] = {}
        self.opens_at_us = 0
        self.prequeue_from_us = 0
        self.res_ttl_us = 0
        self.total = self.minimum = self.maximum = self.step = 0
        self.partial = False
        self.policy = "first_come"
        # tickets
        self.next_seq = 0  # the meta field seq: the last seq a join gave out
        self.digest_of: dict[int, bytes] = {}
        self.seq_of: dict[bytes, int] = {}
        self.blocked: set[bytes] = set()
        self.revoked: set[int] = set()
        # admission
        self.cursor = 0
        self.admitted = 0
        self.skipped = 0
        self.expired_passes = 0
        self.active: dict[int, int] = {}  # seq -> deadline (us), as the active zset
        self.admitted_at: dict[int, int] = {}
        self.passed: set[int] = set()
        self.tokens = 0.0  # an upper bound on the bucket's level
        self.bucket_us = 0
        # quota
        self.reservations: dict[str, Reservation] = {}
        self.res_n = 0
        self.holds: dict[int, str] = {}
        self.spent: dict[int, int] = {}
        self.held = self.confirmed = self.released = self.expired_amount = 0
        self.counts: dict[str, int] = {}
        # ballot
        self.subs: dict[int, Subscription] = {}
        self.allot_next = 0
        self.allotted: dict[int, int] = {}
        self.ballot_done = False
        self.allocated: int | None = None
        # pre-queue
        self.pq_shuffle = False
        self.pq_state = ""  # "" collecting, "assigning" (frozen), "done"
        self.pq_set: set[bytes] = set()
        self.pq_order: list[bytes] = []
        self.pq_next = 0
        self.prequeue_count = 0
        self.seed: bytes | None = None
        self.handlers: dict[str, Callable[[int, dict[str, Any]], None]] = {
            "admin-create": self._create,
            "admin-update": self._update,
            "admin-pause": self._move,
            "admin-resume": self._move,
            "admin-close": self._move,
            "close": self._scheduled_close,
            "join": self._join,
            "admit": self._admit,
            "expire": self._expire,
            "pass": self._pass,
            "block": self._block,
            "revoke": self._revoke,
            "claim": self._claim,
            "confirm": self._finish,
            "release": self._finish,
            "expire-res": self._expire_reservations,
            "subscribe": self._subscribe,
            "allot": self._allot,
            "ballot-result": self._ballot_result,
            "prejoin": self._prejoin,
            "reveal": self._reveal_prequeue,
            "prequeue": self._prequeue,
        }

    # -- dispatch ----------------------------------------------------------------------

    def known(self, kind: str) -> bool:
        return kind in self.handlers

    def apply(self, index: int, kind: str, entry: dict[str, Any]) -> None:
        t = need_int(entry, "t", 1)
        if self.spec is None and kind != "admin-create":
            raise EntryProblem(f"the log must start with admin-create, not {kind}")
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.handlers[kind](t, entry)

    # -- campaign ----------------------------------------------------------------------

    def _create(self, t: int, entry: dict[str, Any]) -> None:
        if self.spec is not None:
            raise EntryProblem("a second admin-create")
        need_text(entry, "a")
        try:
            spec = load_stored_spec(need_text(entry, "spec"))
        except (BadRequest, ValueError) as exc:
            raise EntryProblem(f"the campaign spec is invalid: {exc}") from None
        if spec.id != self.campaign:
            raise EntryProblem(f"the spec is for campaign {spec.id!r}, not {self.campaign!r}")
        seed_hash = need_text(entry, "h")
        if len(seed_hash) != 64 or not all(c in "0123456789abcdef" for c in seed_hash):
            raise EntryProblem("h must be the SHA-256 hex of the seed")
        pq_seed_hash = need_text(entry, "hq")
        if len(pq_seed_hash) != 64 or not all(c in "0123456789abcdef" for c in pq_seed_hash):
            raise EntryProblem("hq must be the SHA-256 hex of the pre-queue seed")
        self.pq_seed_hash = pq_seed_hash
        self.spec, self.seed_hash, self.state = spec, seed_hash, "open"
        adm, quota = spec.admission, spec.quota
        self.opens_at_us = to_us(spec.opens_at)
        self.prequeue_from_us = self.opens_at_us - spec.prequeue.window_s * 1_000_000
        self.res_ttl_us = adm.reservation_ttl_s * 1_000_000
        self.settings = {
            "rate": float(adm.rate_per_s),
            "burst": float(adm.burst),
            "max_active": float(adm.max_active),
            "closes_at_us": float(to_us(spec.closes_at)),
            "pass_ttl_us": float(adm.pass_ttl_s * 1_000_000),
            "overbook": float(adm.overbook),
        }
        self.total, self.minimum, self.maximum = quota.total, quota.min, quota.max
        self.step, self.partial, self.policy = quota.step, quota.partial_fill, spec.policy
        self.pq_shuffle = spec.prequeue.shuffle and spec.prequeue.window_s > 0
        self.bucket_us = t

    def _refill(self, t: int) -> None:
        capacity = max(self.settings["burst"], 1.0)
        elapsed = max(t - self.bucket_us, 0)
        self.tokens = min(capacity, self.tokens + self.settings["rate"] * elapsed / 1e6)
        self.bucket_us = max(self.bucket_us, t)

    def _update(self, t: int, entry: dict[str, Any]) -> None:
        need_text(entry, "a")
        if self.state == "closed":
            raise EntryProblem("admin-update of a closed campaign")
        fields = need_list(entry, "f")
        old, new = need_list(entry, "o"), need_list(entry, "n")
        if not fields or len(old) != len(fields) or len(new) != len(fields):
            raise EntryProblem("f, o and n must list the same fields")
        self._refill(t)
        for name_raw, before, after in zip(fields, old, new, strict=True):
            name = name_raw.decode() if isinstance(name_raw, bytes) else ""
            if name not in UPDATABLE:
                raise EntryProblem(f"admin-update of field {name_raw!r}, which cannot change")
            value = _number(after, f"new {name}")
            if before is not False and _number(before, f"old {name}") != self.settings[name]:
                raise EntryProblem(
                    f"old {name} {before!r} is not the value in force ({self.settings[name]:g})"
                )
            self.settings[name] = value
        self.tokens = min(self.tokens, max(self.settings["burst"], 1.0))

    def _move(self, t: int, entry: dict[str, Any]) -> None:
        need_text(entry, "a")
        kind = need_text(entry, "k")
        allowed, target = MOVES[kind]
        if self.state not in allowed:
            raise EntryProblem(f"{kind} of a campaign that is {self.state}")
        self.state = target

    def _scheduled_close(self, t: int, entry: dict[str, Any]) -> None:
        if need_text(entry, "a") != "schedule":
            raise EntryProblem("a close entry is made by the schedule")
        if self.state == "closed":
            raise EntryProblem("close of a campaign already closed")
        if t < self.settings["closes_at_us"]:
            raise EntryProblem("closed by schedule before closes_at")
        self.state = "closed"

    def _open_for_joins(self, t: int) -> None:
        if self.state == "closed" or t >= self.settings["closes_at_us"]:
            raise EntryProblem("a join after the campaign closed")
        if t < self.prequeue_from_us:
            raise EntryProblem("a join before the queue opened")

    # -- tickets -----------------------------------------------------------------------

    def _ticket(self, seq: int, digest: bytes) -> None:
        if digest in self.seq_of:
            raise EntryProblem(
                f"a second ticket (seq {seq}) for the customer of seq {self.seq_of[digest]}"
            )
        self.digest_of[seq] = digest
        self.seq_of[digest] = seq

    def _join(self, t: int, entry: dict[str, Any]) -> None:
        self._open_for_joins(t)
        if self.pq_shuffle and not self.pq_state:
            raise EntryProblem("a join with a seq before the pre-queue was shuffled")
        pairs = need_list(entry, "s")
        if not pairs or len(pairs) % 2:
            raise EntryProblem("s must list seq, digest pairs")
        for pos in range(0, len(pairs), 2):
            seq, digest = pairs[pos], pairs[pos + 1]
            if not _is_int(seq) or not isinstance(digest, bytes) or len(digest) != 16:
                raise EntryProblem(f"s[{pos}] is not a seq and a 16-byte digest")
            if seq != self.next_seq + 1:
                raise EntryProblem(f"seq {seq} given, expected {self.next_seq + 1} (gap-free)")
            if digest in self.blocked:
                raise EntryProblem(f"a ticket (seq {seq}) for a blocked customer")
            if self.pq_state == "assigning" and digest in self.pq_set:
                raise EntryProblem(f"seq {seq} for a customer waiting for a pre-queue seq")
            self._ticket(seq, digest)
            self.next_seq = seq

    # -- the pre-queue -----------------------------------------------------------------

    def _prejoin(self, t: int, entry: dict[str, Any]) -> None:
        self._open_for_joins(t)
        if not self.pq_shuffle or self.pq_state:
            raise EntryProblem("a pre-queue join, but no pre-queue is collecting")
        if t >= self.opens_at_us:
            raise EntryProblem("a pre-queue join after opens_at")
        digests = need_list(entry, "c")
        if not digests:
            raise EntryProblem("a prejoin entry with no digests")
        for digest in digests:
            if not isinstance(digest, bytes) or len(digest) != 16:
                raise EntryProblem("c must list 16-byte digests")
            if digest in self.pq_set:
                raise EntryProblem("a customer joined the pre-queue twice")
            if digest in self.blocked:
                raise EntryProblem("a blocked customer joined the pre-queue")
            self.pq_set.add(digest)

    def _reveal_prequeue(self, t: int, entry: dict[str, Any]) -> None:
        size = need_int(entry, "p")
        if not self.pq_shuffle or self.pq_state:
            raise EntryProblem("a pre-queue reveal, but no pre-queue is collecting")
        if t < self.opens_at_us:
            raise EntryProblem("the pre-queue was shuffled before opens_at")
        if self.next_seq != 0:
            raise EntryProblem("seqs were given before the pre-queue was shuffled")
        if size != len(self.pq_set):
            raise EntryProblem(f"p = {size}, but {len(self.pq_set)} customers joined the pre-queue")
        seed = self._open_prequeue_seed(need_text(entry, "seed"))
        self.pq_order = prequeue_order(seed, self.pq_set)
        self.pq_state = "assigning" if size else "done"
        self.next_seq = size
        self.prequeue_count = size

    def _prequeue(self, t: int, entry: dict[str, Any]) -> None:
        pairs = need_list(entry, "s")
        revoked = need_list(entry, "x") if "x" in entry else []
        if self.pq_state != "assigning":
            raise EntryProblem("pre-queue seqs given outside the shuffle")
        if not pairs or len(pairs) % 2:
            raise EntryProblem("s must list seq, digest pairs")
        blocked_here: list[int] = []
        for pos in range(0, len(pairs), 2):
            seq, digest = pairs[pos], pairs[pos + 1]
            if not _is_int(seq) or not isinstance(digest, bytes) or len(digest) != 16:
                raise EntryProblem(f"s[{pos}] is not a seq and a 16-byte digest")
            if seq != self.pq_next + 1 or seq > len(self.pq_order):
                raise EntryProblem(f"pre-queue seq {seq}, expected {self.pq_next + 1}")
            if digest != self.pq_order[seq - 1]:
                raise EntryProblem(
                    f"seq {seq} went to a digest out of the shuffled order "
                    "(SHA-256(seed || digest) ascending)"
                )
            self._ticket(seq, digest)
            self.pq_next = seq
            if digest in self.blocked:
                blocked_here.append(seq)
                self.revoked.add(seq)
        if revoked != blocked_here:
            raise EntryProblem(f"x = {revoked}, but the blocked customers here are {blocked_here}")
        if self.pq_next == len(self.pq_order):
            self.pq_state = "done"
            self.pq_set = set()

    def _seq_with_digest(self, entry: dict[str, Any]) -> tuple[int, bytes]:
        seq, digest = need_int(entry, "s", 1), need_digest(entry, "c")
        if self.digest_of.get(seq) != digest:
            raise EntryProblem(f"seq {seq} does not belong to the customer digest given")
        return seq, digest

    # -- admission ---------------------------------------------------------------------

    def _admit(self, t: int, entry: dict[str, Any]) -> None:
        first, last = need_int(entry, "f", 1), need_int(entry, "l", 1)
        count, deadline = need_int(entry, "n"), need_int(entry, "d")
        skipped = need_list(entry, "x") if "x" in entry else []
        if self.state != "open":
            raise EntryProblem(f"admission while the campaign is {self.state}")
        if t < self.opens_at_us or t >= self.settings["closes_at_us"]:
            raise EntryProblem("admission outside the campaign's window")
        if self.pq_shuffle and self.pq_state != "done":
            raise EntryProblem("admission before the pre-queue's seqs were all given")
        if first != self.cursor + 1:
            raise EntryProblem(f"admission from seq {first}, expected {self.cursor + 1}")
        if last < first or last > self.next_seq:
            raise EntryProblem(f"admission up to seq {last} of {self.next_seq} tickets")
        if not all(_is_int(s) for s in skipped) or skipped != sorted(set(skipped)):
            raise EntryProblem("x must list skipped seqs in order")
        skip = set(skipped)
        if any(not first <= s <= last for s in skip):
            raise EntryProblem("x lists a seq outside the admitted range")
        for seq in range(first, last + 1):
            if seq not in self.digest_of:
                raise EntryProblem(f"admission of seq {seq}, which has no ticket")
            if (seq in self.revoked) != (seq in skip):
                what = "skipped though not revoked" if seq in skip else "admitted though revoked"
                raise EntryProblem(f"seq {seq} {what}")
        if count != last - first + 1 - len(skip):
            raise EntryProblem(f"n = {count}, but the range admits {last - first + 1 - len(skip)}")
        if deadline != t + self.settings["pass_ttl_us"]:
            raise EntryProblem("the pass deadline is not t + pass_ttl")
        # I6: the token bucket and the active cap
        self._refill(t)
        if count > math.floor(self.tokens + 1e-6):
            raise EntryProblem(
                f"{count} admitted, more than the rate allows ({math.floor(self.tokens)} tokens)"
            )
        if count > self.settings["max_active"] - len(self.active):
            raise EntryProblem(
                f"{count} admitted with {len(self.active)} active of max "
                f"{self.settings['max_active']:g}"
            )
        if self.policy == "first_come":
            servable = (self.total - self.held - self.confirmed) // self.minimum
            can_serve = 10**12 if servable >= 10**12 else servable
            if can_serve > 0:
                can_serve = math.floor(float(can_serve) * self.settings["overbook"])
            cap = max(0, can_serve - (len(self.active) - len(self.holds)))
            if count > cap:
                raise EntryProblem(
                    f"{count} admitted, but the quota left can serve only {cap} more"
                )
        self.tokens -= count
        for seq in range(first, last + 1):
            if seq not in skip:
                self.active[seq] = deadline
                self.admitted_at[seq] = t
        self.cursor = last
        self.admitted += count
        self.skipped += len(skip)

    def _expire(self, t: int, entry: dict[str, Any]) -> None:
        seqs = need_list(entry, "s")
        if not seqs:
            raise EntryProblem("an expire entry with no seqs")
        if self.state == "closed":
            raise EntryProblem("passes expired after close")
        for seq in seqs:
            if not _is_int(seq) or seq not in self.active:
                raise EntryProblem(f"expiry of seq {seq!r}, which is not active")
            del self.active[seq]
        self.expired_passes += len(seqs)

    def _pass(self, t: int, entry: dict[str, Any]) -> None:
        seq, _ = self._seq_with_digest(entry)
        deadline = need_int(entry, "d")
        if self.state == "closed":
            raise EntryProblem("a pass after close")
        if seq > self.cursor or seq not in self.admitted_at:
            raise EntryProblem(f"a pass for seq {seq}, which was never admitted")
        if seq in self.revoked:
            raise EntryProblem(f"a pass for seq {seq}, which is revoked")
        if seq in self.passed:
            raise EntryProblem(f"a second pass entry for seq {seq}")
        if seq in self.holds or self.spent.get(seq, 0) or seq in self.subs:
            raise EntryProblem(f"a pass for seq {seq}, which has already claimed")
        if seq not in self.active or t >= self.active[seq]:
            raise EntryProblem(f"a pass for seq {seq}, whose admission has expired")
        if deadline != self.active[seq]:
            raise EntryProblem(f"the pass deadline is not seq {seq}'s admission deadline")
        self.passed.add(seq)

    def _block(self, t: int, entry: dict[str, Any]) -> None:
        digest, seq = need_digest(entry, "c"), need_int(entry, "s")
        need_text(entry, "a")
        need_text(entry, "r")
        if seq != self.seq_of.get(digest, 0):
            raise EntryProblem(
                f"block names seq {seq}, but the customer's seq is {self.seq_of.get(digest, 0)}"
            )
        self.blocked.add(digest)
        if seq:
            self.revoked.add(seq)
            self.active.pop(seq, None)

    def _revoke(self, t: int, entry: dict[str, Any]) -> None:
        digest, seq = need_digest(entry, "c"), need_int(entry, "s", 1)
        need_text(entry, "a")
        need_text(entry, "r")
        if seq != self.seq_of.get(digest, 0):
            raise EntryProblem(f"revoke names seq {seq}, which is not the customer's")
        self.revoked.add(seq)
        self.active.pop(seq, None)

    # -- quota -------------------------------------------------------------------------

    def _may_claim(self, t: int, seq: int) -> None:
        if self.state == "closed":
            raise EntryProblem("a claim after close")
        if seq in self.revoked:
            raise EntryProblem(f"a claim by seq {seq}, which is revoked")
        if seq not in self.active or t >= self.active[seq]:
            raise EntryProblem(f"a claim by seq {seq}, which is not admitted (or expired)")

    def _claim(self, t: int, entry: dict[str, Any]) -> None:
        seq, _ = self._seq_with_digest(entry)
        rid, grant, asked = need_text(entry, "r"), need_money(entry, "m"), need_money(entry, "q")
        expires = need_int(entry, "e")
        if self.policy != "first_come":
            raise EntryProblem("a claim in a ballot campaign")
        self._may_claim(t, seq)
        if seq in self.holds:
            raise EntryProblem(f"a second held reservation for seq {seq}")
        if asked < self.minimum:
            raise EntryProblem(f"asked {asked}, below the minimum {self.minimum}")
        if asked % self.step:
            raise EntryProblem(f"asked {asked}, not a multiple of the step {self.step}")
        spent = self.spent.get(seq, 0)
        if asked > self.maximum or spent + asked > self.maximum:
            raise EntryProblem(f"asked {asked} with {spent} already, over the max {self.maximum}")
        remaining = self.total - self.held - self.confirmed
        if asked <= remaining:
            expected = asked
        else:
            expected = remaining - remaining % self.step
            if not self.partial or expected < self.minimum:
                raise EntryProblem(f"granted {grant} with only {remaining} left (oversold)")
        if grant != expected:
            raise EntryProblem(f"granted {grant} for {asked} asked, expected {expected}")
        if rid != f"r{self.res_n + 1}":
            raise EntryProblem(f"reservation id {rid}, expected r{self.res_n + 1}")
        if expires != t + self.res_ttl_us:
            raise EntryProblem("the reservation expiry is not t + reservation_ttl")
        self.res_n += 1
        self.reservations[rid] = Reservation(rid, seq, grant)
        self.holds[seq] = rid
        self.spent[seq] = spent + grant
        self.held += grant
        if self.held + self.confirmed > self.total:
            raise EntryProblem(f"held + confirmed {self.held + self.confirmed} > {self.total}")
        if self.spent[seq] > self.maximum:
            raise EntryProblem(f"seq {seq} holds {self.spent[seq]}, over the max")
        self.active[seq] = max(self.active[seq], expires)

    def _close_reservation(self, rid: str, seq: int, amount: int, to: str) -> None:
        r = self.reservations.get(rid)
        if r is None:
            raise EntryProblem(f"{to} of reservation {rid}, which was never claimed")
        if r.state != "held":
            raise EntryProblem(f"{to} of reservation {rid}, which is {r.state}")
        if seq != r.seq or amount != r.amount:
            raise EntryProblem(
                f"{to} of {rid} for seq {seq} amount {amount}; it holds seq {r.seq} "
                f"amount {r.amount}"
            )
        r.state = to
        self.held -= amount
        if to == "confirmed":
            self.confirmed += amount
        else:
            self.spent[seq] -= amount
            if to == "released":
                self.released += amount
            else:
                self.expired_amount += amount
        self.holds.pop(seq, None)
        self.active.pop(seq, None)

    def _finish(self, t: int, entry: dict[str, Any]) -> None:
        kind = need_text(entry, "k")
        rid, seq, amount = need_text(entry, "r"), need_int(entry, "s", 1), need_money(entry, "m")
        need_text(entry, "a")
        if kind == "release":
            need_text(entry, "x")
        self._close_reservation(rid, seq, amount, "confirmed" if kind == "confirm" else "released")

    def _expire_reservations(self, t: int, entry: dict[str, Any]) -> None:
        rids, seqs, amounts = need_list(entry, "r"), need_list(entry, "s"), need_list(entry, "m")
        if not rids or not len(rids) == len(seqs) == len(amounts):
            raise EntryProblem("r, s and m must list the same reservations")
        for rid, seq, amount in zip(rids, seqs, amounts, strict=True):
            if not isinstance(rid, bytes) or not _is_int(seq):
                raise EntryProblem("r must list reservation ids and s seqs")
            money = parse_money(amount, "an amount in m")
            self._close_reservation(rid.decode("utf-8", "replace"), seq, money, "expired")

    # -- ballot ------------------------------------------------------------------------

    def _subscribe(self, t: int, entry: dict[str, Any]) -> None:
        seq, digest = self._seq_with_digest(entry)
        amount = need_money(entry, "m")
        if self.policy != "ballot":
            raise EntryProblem("a subscription in a first_come campaign")
        self._may_claim(t, seq)
        if seq in self.subs:
            raise EntryProblem(f"a second subscription by seq {seq}")
        if amount < self.minimum or amount > self.maximum or amount % self.step:
            raise EntryProblem(f"subscription of {amount} outside min/max/step")
        self.subs[seq] = Subscription(seq, digest, amount)
        del self.active[seq]

    def _allot(self, t: int, entry: dict[str, Any]) -> None:
        chunk, pairs = need_int(entry, "n"), need_list(entry, "s")
        if self.policy != "ballot" or self.state != "closed" or self.ballot_done:
            raise EntryProblem("an allotment outside a closed, unfinished ballot")
        if chunk != self.allot_next:
            raise EntryProblem(f"allotment chunk {chunk}, expected {self.allot_next}")
        if not pairs or len(pairs) % 2:
            raise EntryProblem("s must list seq, amount pairs")
        for pos in range(0, len(pairs), 2):
            seq = pairs[pos]
            if not _is_int(seq) or seq in self.allotted:
                raise EntryProblem(f"allotment to seq {seq!r} twice or not a seq")
            self.allotted[seq] = parse_money(pairs[pos + 1], f"the amount of seq {seq}")
        self.allot_next += 1

    def _ballot_result(self, t: int, entry: dict[str, Any]) -> None:
        seed_hex, total = need_text(entry, "seed"), need_money(entry, "m")
        if self.policy != "ballot" or self.state != "closed" or self.ballot_done:
            raise EntryProblem("a ballot result outside a closed, unfinished ballot")
        seed = self._reveal(seed_hex)
        expected = allocate(self.total, self.step, list(self.subs.values()), seed)
        if expected != self.allotted:
            wrong = sorted(
                seq
                for seq in set(expected) | set(self.allotted)
                if expected.get(seq) != self.allotted.get(seq)
            )
            raise EntryProblem(
                f"the allotments differ from the ballot recomputed from the seed "
                f"(first at seq {wrong[0]})"
            )
        if total != sum(self.allotted.values()) or total > self.total:
            raise EntryProblem(
                f"m = {total}, but the allotments sum to "
                f"{sum(self.allotted.values())} of {self.total}"
            )
        self.ballot_done = True
        self.allocated = total

    def _open_prequeue_seed(self, seed_hex: str) -> bytes:
        """The pre-queue's own seed, committed as hq at creation (not the ballot's)."""
        try:
            seed = bytes.fromhex(seed_hex)
        except ValueError:
            raise EntryProblem("the revealed pre-queue seed is not hex") from None
        if hashlib.sha256(seed).hexdigest() != self.pq_seed_hash:
            raise EntryProblem(
                "the revealed pre-queue seed does not match the commitment hq of admin-create"
            )
        self.pq_seed_revealed = True
        return seed

    def _reveal(self, seed_hex: str) -> bytes:
        try:
            seed = bytes.fromhex(seed_hex)
        except ValueError:
            raise EntryProblem("the revealed seed is not hex") from None
        if hashlib.sha256(seed).hexdigest() != self.seed_hash:
            raise EntryProblem("the revealed seed does not match the commitment h of admin-create")
        if self.seed is not None and seed != self.seed:
            raise EntryProblem("a different seed revealed twice")
        self.seed = seed
        return seed

    # -- the summary -------------------------------------------------------------------

    def fill(self, report: Report) -> None:
        report.policy, report.state = self.policy, self.state
        report.kinds = dict(self.counts)
        report.customers = len(self.digest_of)
        report.admitted, report.skipped = self.admitted, self.skipped
        report.expired_passes, report.passes = self.expired_passes, len(self.passed)
        report.blocked, report.revoked = len(self.blocked), len(self.revoked)
        report.claims = self.counts.get("claim", 0)
        report.confirms = self.counts.get("confirm", 0)
        report.releases = self.counts.get("release", 0)
        report.reservations_expired = sum(
            1 for r in self.reservations.values() if r.state == "expired"
        )
        report.total, report.unit = self.total, self.spec.quota.unit if self.spec else ""
        report.held, report.confirmed = self.held, self.confirmed
        report.released, report.expired_amount = self.released, self.expired_amount
        report.subscriptions = len(self.subs)
        report.subscribed = sum(s.amount for s in self.subs.values())
        report.allocated = self.allocated
        report.prequeue = self.prequeue_count
        report.seed_revealed = self.seed is not None


# -- the tree and the checkpoints ------------------------------------------------------


class LeafStore:
    """Leaf hashes (32 bytes each) plus the perfect subtrees of 2**NODE_LEVEL+ leaves."""

    def __init__(self) -> None:
        self.leaves = bytearray()
        self.frontier = merkle.Frontier()
        self.nodes: dict[tuple[int, int], bytes] = {}

    @property
    def size(self) -> int:
        return self.frontier.size

    def append(self, data: bytes) -> None:
        leaf = merkle.leaf_hash(data)
        self.leaves += leaf
        for level, index, digest in self.frontier.append(leaf):
            if level >= NODE_LEVEL:
                self.nodes[(level, index)] = digest

    def leaf(self, i: int) -> bytes:
        return bytes(self.leaves[32 * i : 32 * i + 32])

    def node(self, level: int, index: int) -> bytes | None:
        return self.nodes.get((level, index))

    def root(self, size: int) -> bytes:
        if size == 0:
            return merkle.EMPTY_ROOT
        return merkle.range_hash(0, size, self.leaf, self.node)

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        return [
            merkle.range_hash(lo, hi, self.leaf, self.node)
            for lo, hi in merkle.consistency_ranges(old_size, new_size)
        ]


@dataclass
class Checkpoint:
    number: int
    line: int
    data: dict[str, Any]


def _checkpoint_fields(cp: Checkpoint, campaign: str) -> tuple[int, bytes, int, str, bytes]:
    d = cp.data
    size, root_hex, time_ms = d.get("size"), d.get("root"), d.get("time_ms")
    kid, sig = d.get("kid"), d.get("sig")
    if d.get("campaign") != campaign:
        raise EntryProblem(f"for campaign {d.get('campaign')!r}, not {campaign!r}")
    if not _is_int(size) or size < 0:
        raise EntryProblem("size must be a whole number")
    if not _is_int(time_ms) or time_ms < 0:
        raise EntryProblem("time_ms must be a whole number")
    if not isinstance(root_hex, str) or len(root_hex) != 64:
        raise EntryProblem("root must be 64 hex digits")
    try:
        root_bytes = bytes.fromhex(root_hex)
    except ValueError:
        raise EntryProblem("root must be 64 hex digits") from None
    if root_hex != root_bytes.hex():
        raise EntryProblem("root must be lower-case hex")
    if not isinstance(kid, str) or not isinstance(sig, str):
        raise EntryProblem("kid and sig are required")
    signature = canonical_b64url(sig)
    if signature is None:
        raise EntryProblem("sig is not (canonical, unpadded) base64url")
    return size, root_bytes, time_ms, kid, signature


def check_checkpoints(
    checkpoints: list[Checkpoint],
    campaign: str,
    keys: Mapping[str, Ed25519PublicKey],
    store: LeafStore,
) -> tuple[Failure | None, int, int]:
    """(first failure, entries covered by the last good checkpoint, consistency proofs)."""
    previous: tuple[int, bytes, int] | None = None  # size, root, time_ms
    proofs = 0
    verified = 0
    for cp in checkpoints:
        try:
            size, root_bytes, proved = _check_checkpoint(cp, campaign, keys, store, previous)
        except CheckpointProblem as exc:
            entries = exc.entries or ((verified + 1, exc.upto) if exc.upto else None)
            return (
                Failure(str(exc), line=cp.line, checkpoint=cp.number, entries=entries),
                (verified),
                proofs,
            )
        proofs += proved
        previous = (size, root_bytes, int(cp.data["time_ms"]))
        verified = size
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
    keys: Mapping[str, Ed25519PublicKey],
    store: LeafStore,
    previous: tuple[int, bytes, int] | None,
) -> tuple[int, bytes, int]:
    """(size, root, consistency proofs checked) of a good checkpoint."""
    try:
        size, root_bytes, time_ms, kid, signature = _checkpoint_fields(cp, campaign)
    except EntryProblem as exc:
        raise CheckpointProblem(str(exc)) from None
    key = keys.get(kid)
    if key is None:
        raise CheckpointProblem(f"signed with key {kid!r}, which is not among the public keys")
    try:
        key.verify(signature, checkpoint_message(campaign, size, root_bytes.hex(), time_ms))
    except InvalidSignature:
        raise CheckpointProblem(f"the signature does not verify with key {kid}") from None
    if size > store.size:
        raise CheckpointProblem(
            f"it covers {size} entries but the export has {store.size}: "
            f"entries {store.size + 1}..{size} are missing",
            entries=(store.size + 1, size),
        )
    if previous is not None and (size < previous[0] or time_ms < previous[2]):
        raise CheckpointProblem("checkpoints must come in size and time order")
    if store.root(size) != root_bytes:
        raise CheckpointProblem(
            "the entries do not hash to its root: they were altered (or removed, inserted, "
            "reordered) after it was signed",
            size,
        )
    if previous is None:
        return size, root_bytes, 0
    old_size, old_root, _ = previous
    proof = store.consistency(old_size, size)
    if not merkle.verify_consistency(old_size, size, old_root, root_bytes, proof):
        raise CheckpointProblem(
            f"not consistent with the checkpoint before it (size {old_size})",
            size,
        )
    return size, root_bytes, 1


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
    keep = {r["entry"] for r in wanted.values() if isinstance(r, dict) and _is_int(r.get("entry"))}
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
    if header.get("type") != "header" or header.get("format") != FORMAT:
        raise VerificationFailed(
            Failure(
                f'the first line must be {{"type": "header", "format": "{FORMAT}"}}', line=line_no
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
                    index=data.get("i") if _is_int(data.get("i")) else expected,
                )
            )
        index, raw_text = data.get("i"), data.get("raw")
        if not _is_int(index) or not isinstance(raw_text, str):
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
            raw = base64.b64decode(raw_text, validate=True)
            if base64.b64encode(raw).decode() != raw_text:
                raise ValueError("not canonical")
        except (ValueError, binascii.Error):
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
        except EntryProblem as exc:
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
                Failure(str(exc), index=entry_of if _is_int(entry_of) else None, receipt=name)
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
    keys: Mapping[str, Ed25519PublicKey],
    entries: Mapping[int, bytes],
    sealed: int,
    size: int,
) -> str:
    """A receipt must verify with the public keys and be the batch of its join entry."""
    if not isinstance(receipt, dict):
        raise EntryProblem("a receipt is a JSON object")
    seq, index = receipt.get("seq"), receipt.get("entry")
    if not _is_int(seq):
        raise EntryProblem("the receipt has no seq")
    if receipt.get("campaign") != campaign:
        raise EntryProblem(f"the receipt is for campaign {receipt.get('campaign')!r}")
    if not receipt_proofs.verify_receipt(receipt, keys):
        raise EntryProblem(
            f"the receipt for seq {seq} does not verify (signature, statement or path altered)"
        )
    if not _is_int(index) or not 1 <= index <= size or index not in entries:
        raise EntryProblem(f"the receipt names entry {index!r}, which is not in the export")
    entry = decode_entry(entries[index])
    kind = entry.get("k")
    if kind not in receipt_proofs.RECEIPT_KINDS:
        raise EntryProblem(f"the receipt names entry {index}, a {kind!r} entry, not a join")
    batch = receipt_proofs.BatchReceipts(
        campaign,
        index,
        int(entry.get("t") or 0),
        receipt_proofs.batch_pairs({b"s": entry.get("s")}),
    )
    if batch.t != receipt["t"] or batch.root.hex() != receipt["root"]:
        raise EntryProblem(f"the receipt for seq {seq} is not the batch of join entry {index}")
    if len(batch.pairs) != receipt.get("batch_size"):
        raise EntryProblem(f"the receipt's batch_size is not the size of join entry {index}")
    if not isinstance(receipt.get("sig"), str) or canonical_b64url(receipt["sig"]) is None:
        raise EntryProblem("the receipt's sig is not canonical base64url")
    if batch.position_of(seq) != receipt["leaf_index"]:
        raise EntryProblem(f"seq {seq} is not at the receipt's place in join entry {index}")
    where = f"sealed (checkpoint size {sealed})" if index <= sealed else "not sealed yet"
    return f"receipt seq {seq}: signed by {receipt.get('kid')}, join entry {index}, {where}"


def verify_file(path: Path | str, keys_document: Any | None = None, **options: Any) -> Report:
    with open(path, "rb") as fh:
        return verify_lines(fh, keys_document, **options)
