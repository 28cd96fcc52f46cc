"""Audit queries: the entries about a customer, a range of seqs, or a time window.

A customer is named by the raw id an operator has; the gate turns it into the same keyed
digest the log holds (`gate.tokens.customer_digest`), so no raw id is ever stored. An
entry is about a customer when it carries their digest (join, pre-queue, pass, claim,
block, …) or, once their seq is known from their ticket, when it concerns that seq
(admission of a range that covers it, expiries, confirm/release of their reservation, …).
Filters combine: every one given must match. Results come in index order, at most
`limit` at a time; `after` continues from the last index of the previous page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gate.audit.format import decode_entry, is_int
from gate.audit.store import AuditStore
from gate.campaign import parse_zoned
from gate.errors import BadRequest

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000
# Fields whose strings are customer digests (16 raw bytes): shown as hex.
DIGEST_FIELDS = frozenset({"c"})
PAIR_KINDS = frozenset({"join", "prequeue"})  # s = [seq, digest, seq, digest, ...]


@dataclass(frozen=True)
class AuditQuery:
    customer: str | None = None
    from_seq: int | None = None
    to_seq: int | None = None
    since_us: int | None = None
    until_us: int | None = None
    after: int = 0
    limit: int = DEFAULT_LIMIT


def _bad(parameter: str, message: str) -> BadRequest:
    return BadRequest(f"{parameter}: {message}", code="bad_query")


def _whole(params: Mapping[str, str], name: str, lo: int, hi: int = 2**53) -> int | None:
    text = params.get(name)
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 16:
        raise _bad(name, f"must be a whole number, not {text[:40]!r}")
    value = int(text)
    if not lo <= value <= hi:
        raise _bad(name, f"must be between {lo} and {hi}")
    return value


def parse_time_us(text: str, parameter: str) -> int:
    """ISO 8601 with a zone (2026-12-01T00:00:00Z, +09:00) -> microseconds since the epoch."""
    try:
        moment = parse_zoned(text)
    except ValueError as exc:
        raise _bad(parameter, str(exc)) from None
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso_us(us: int) -> str:
    """Microseconds since the epoch as ISO 8601 UTC."""
    return (
        datetime.fromtimestamp(us / 1_000_000, UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def parse_query(params: Mapping[str, str]) -> AuditQuery:
    """The query parameters of GET /admin/campaigns/{c}/audit; 400 names a bad one."""
    known = {"customer", "from_seq", "to_seq", "since", "until", "after", "limit"}
    for name in params:
        if name not in known:
            raise _bad(name, f"unknown parameter; known: {', '.join(sorted(known))}")
    customer = params.get("customer")
    if customer is not None:
        customer = customer.strip()
        if not customer or len(customer) > 256 or not customer.isprintable():
            raise _bad("customer", "must be a customer id (1 to 256 printable characters)")
    from_seq = _whole(params, "from_seq", 1)
    to_seq = _whole(params, "to_seq", 1)
    if from_seq is not None and to_seq is not None and to_seq < from_seq:
        raise _bad("to_seq", "must not be below from_seq")
    since = parse_time_us(params["since"], "since") if params.get("since") else None
    until = parse_time_us(params["until"], "until") if params.get("until") else None
    if since is not None and until is not None and until < since:
        raise _bad("until", "must not be before since")
    after = _whole(params, "after", 0) or 0
    limit = _whole(params, "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT
    return AuditQuery(customer, from_seq, to_seq, since, until, after, limit)


def lookup_params(params: Mapping[str, str]) -> str:
    """A query's parameters other than the customer, as the `p` of its `admin-query`
    entry: sorted name=value pairs, at most 500 bytes (parse_query bounds each)."""
    text = "&".join(f"{name}={params[name]}" for name in sorted(params))
    return text.encode()[:500].decode("utf-8", "ignore")


# -- what an entry is about ------------------------------------------------------------


def kind_of(entry: Mapping[str, Any]) -> str:
    kind = entry.get("k")
    return kind.decode("utf-8", "replace") if isinstance(kind, bytes) else ""


def _ints(value: Any) -> list[int]:
    if isinstance(value, list):
        return [v for v in value if is_int(v)]
    if is_int(value):
        return [value]
    return []


def digests_in(kind: str, entry: Mapping[str, Any]) -> list[bytes]:
    c = entry.get("c")
    found: list[bytes] = []
    if isinstance(c, bytes):
        found.append(c)
    elif isinstance(c, list):  # prejoin: the digests of a batch
        found += [d for d in c if isinstance(d, bytes)]
    if kind in PAIR_KINDS and isinstance(entry.get("s"), list):
        found += [d for d in entry["s"][1::2] if isinstance(d, bytes)]
    return found


def seqs_in(kind: str, entry: Mapping[str, Any]) -> list[int]:
    """The seqs an entry names (an admission's range is handled by `covers`)."""
    s = entry.get("s")
    if kind in PAIR_KINDS or kind == "allot":
        return _ints(s[0::2]) if isinstance(s, list) else []
    if kind == "admit":
        return _ints(entry.get("x"))
    return _ints(s)


def seq_range(kind: str, entry: Mapping[str, Any]) -> tuple[int, int] | None:
    if kind == "admit":
        f, last = entry.get("f"), entry.get("l")
        if isinstance(f, int) and isinstance(last, int):
            return f, last
    return None


def concerns_seqs(kind: str, entry: Mapping[str, Any], lo: int, hi: int) -> bool:
    span = seq_range(kind, entry)
    if span is not None and span[0] <= hi and lo <= span[1]:
        return True
    return any(lo <= s <= hi for s in seqs_in(kind, entry))


def jsonable(kind: str, value: Any, field: str = "") -> Any:
    """A decoded entry value for JSON: digests as hex, other strings as text."""
    if isinstance(value, bytes):
        if field in DIGEST_FIELDS:
            return value.hex()
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value.hex()
    if isinstance(value, list):
        if field == "s" and kind in PAIR_KINDS:
            return [v.hex() if isinstance(v, bytes) else v for v in value]
        return [jsonable(kind, v, field) for v in value]
    if isinstance(value, dict):
        # map keys are msgpack strings too (the controller's `why`): shown as text
        return {
            (k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): jsonable(kind, v)
            for k, v in value.items()
        }
    return value


def entry_view(index: int, entry: Mapping[str, Any]) -> dict[str, Any]:
    kind = kind_of(entry)
    view = {name: jsonable(kind, value, name) for name, value in entry.items()}
    view["index"] = index
    t = entry.get("t")
    if isinstance(t, int):
        view["time"] = iso_us(t)
    return view


# -- running a query -------------------------------------------------------------------


class CustomerTracker:
    """Follows one customer through the log: their digest, then their seq once given."""

    def __init__(self, digest: bytes):
        self.digest = digest
        self.seq: int | None = None

    def matches(self, kind: str, entry: Mapping[str, Any]) -> bool:
        if self.seq is None and kind in PAIR_KINDS:
            pairs = entry.get("s")
            if isinstance(pairs, list):
                for pos in range(1, len(pairs), 2):
                    if pairs[pos] == self.digest and isinstance(pairs[pos - 1], int):
                        self.seq = pairs[pos - 1]
        if self.digest in digests_in(kind, entry):
            return True
        return self.seq is not None and concerns_seqs(kind, entry, self.seq, self.seq)


async def run_query(
    store: AuditStore, query: AuditQuery, digest: bytes | None = None
) -> dict[str, Any]:
    """Matching entries as JSON-friendly dicts, with paging information.

    `digest` is the customer digest of `query.customer` (computed by the caller, who holds
    the key). The whole log is scanned from entry 1 so a customer's seq is learned from
    their ticket before the entries that only name the seq.
    """
    tracker = CustomerTracker(digest) if digest is not None else None
    lo = query.from_seq if query.from_seq is not None else 1
    hi = query.to_seq if query.to_seq is not None else 2**63
    seq_filter = query.from_seq is not None or query.to_seq is not None
    found: list[dict[str, Any]] = []
    scanned = 0
    more_after: int | None = None
    async for index, raw in store.entries():
        scanned = index
        entry = decode_entry(raw)
        kind = kind_of(entry)
        about_customer = tracker.matches(kind, entry) if tracker is not None else True
        if index <= query.after or not about_customer:
            continue
        if seq_filter and not concerns_seqs(kind, entry, lo, hi):
            continue
        t = entry.get("t")
        t = t if isinstance(t, int) else 0
        if query.since_us is not None and t < query.since_us:
            continue
        if query.until_us is not None and t > query.until_us:
            continue
        if len(found) >= query.limit:
            more_after = found[-1]["index"]
            break
        found.append(entry_view(index, entry))
    out: dict[str, Any] = {
        "campaign": store.campaign,
        "entries": found,
        "count": len(found),
        "next_after": more_after,
        "scanned_to": scanned,
    }
    if tracker is not None:
        out["customer"] = {"digest": tracker.digest.hex(), "seq": tracker.seq}
    return out
