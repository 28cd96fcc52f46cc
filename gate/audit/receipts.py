"""Signed join receipts: one Ed25519 signature per batch (one `join` entry), over the root
of a small Merkle tree of the batch's canonical statements (docs/audit-format.md).

At join time the gate signs the batch right after the join script returns and answers
each new customer with their receipt; it records the signature per join entry
(``fg:{c}:rsig``: entry index -> "kid:sig") and the entry's first seq
(``fg:{c}:rjoin``), so a retried join, or ``GET /q/{c}/receipt/{seq}``, rebuilds the
same receipt later from the log. The record rides on the campaign's next join call
(join.lua writes it), so a batch costs one round trip; with no next batch within
RECORD_LATER_S it is written on its own, off any customer's answer (issue 15). Until
then this process answers its receipts from memory. When the sealer moves entries to
segment files, their index records move to a ``receipts-*.fgr`` file beside them
(store.py). The sealer fills both for any join entry that was not recorded (a process
that died in between, pre-queue assignments). Ed25519 is deterministic, so signing a
batch again with the same key gives the same signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from gate.audit import merkle
from gate.audit.checkpoints import verify_checkpoint
from gate.audit.format import (
    PublicKeys,
    decode_entry,
    entry_base64,
    entry_from_base64,
    is_int,
    parse_hex,
    sign,
    verify_signature,
)
from gate.audit.store import AuditStore
from gate.errors import Unavailable
from gate.redis_client import guarded
from gate.room.keys import CampaignKeys
from gate.room.scripts import Scripts
from gate.signing import SigningKeys

log = logging.getLogger("gate.receipts")

RECEIPT_PREFIX = "fairgate-receipt/v1\n"
# A batch's receipt record waits at most this long for the campaign's next join call to
# carry it; then it is written by itself (well before the sealer, which signs and records
# any join entry it seals unrecorded, reaches it: seal_bound_ms / 4, 250 ms by default).
RECORD_LATER_S = 0.02
# After a write that failed (Redis away), the next try by itself waits this long.
RECORD_RETRY_S = 1.0
Record = tuple[int, int, str, str]  # join entry index, its first seq, kid, sig
# Entries whose `s` = [seq, digest, ...] hands out seqs: each gets one batch signature.
RECEIPT_KINDS = (b"join", b"prequeue")
# Bytes of batches kept in memory to answer retried joins and receipt reads.
CACHE_BYTES = 16 * 1024 * 1024
# What one cached batch can hold in memory at most (CPython 3.11, 64-bit), its paths
# built: the object itself, then per (seq, digest) pair the pair, its leaf hash, its
# position entry and its share of the tree's inner hashes, and per level of the tree
# one slot in that pair's path (the paths share the tree's hash objects). Measured:
# 465 to 535 bytes a pair for batches of 100 to 5,000 (tests/test_bounded_growth.py).
_BATCH_BYTES = 2048
_PAIR_BYTES = 420
_PATH_SLOT_BYTES = 16


def batch_bytes(pairs: int) -> int:
    """An upper bound on the memory one cached batch of ``pairs`` receipts holds."""
    depth = max(pairs - 1, 0).bit_length()
    return _BATCH_BYTES + pairs * (_PAIR_BYTES + depth * _PATH_SLOT_BYTES)


def statement(campaign: str, seq: int, t: int, digest: bytes) -> bytes:
    return f"{RECEIPT_PREFIX}{campaign}\n{seq}\n{t}\n{digest.hex()}\n".encode()


def batch_pairs(entry: Mapping[str, Any]) -> list[tuple[int, bytes]]:
    """The (seq, digest) pairs of a join entry (`decode_entry`), in its order."""
    flat = entry.get("s") or []
    return [(int(flat[i]), bytes(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]


class BatchReceipts:
    """The receipts of one batch: its tree, and its signature once signed."""

    def __init__(self, campaign: str, entry: int, t: int, pairs: Sequence[tuple[int, bytes]]):
        self.campaign = campaign
        self.entry = entry
        self.t = t
        self.pairs = list(pairs)
        self.leaves = [merkle.leaf_hash(statement(campaign, s, t, d)) for s, d in self.pairs]
        self.root = merkle.root(self.leaves)
        self.signature: tuple[str, str] | None = None
        self._paths: list[list[bytes]] | None = None
        self._positions: dict[int, int] | None = None
        self.size_bytes = batch_bytes(len(self.pairs))

    def sign(self, keys: SigningKeys) -> tuple[str, str]:
        return sign(keys, self.root)

    def receipt(self, position: int, kid: str, sig: str) -> dict[str, Any]:
        if self._paths is None:
            self._paths = merkle.inclusion_proofs(self.leaves)
        seq, digest = self.pairs[position]
        return {
            "campaign": self.campaign,
            "seq": seq,
            "t": self.t,
            "digest": digest.hex(),
            "entry": self.entry,
            "root": self.root.hex(),
            "path": [p.hex() for p in self._paths[position]],
            "leaf_index": position,
            "batch_size": len(self.pairs),
            "kid": kid,
            "sig": sig,
        }

    def position_of(self, seq: int) -> int | None:
        if self._positions is None:
            self._positions = {s: position for position, (s, _) in enumerate(self.pairs)}
        return self._positions.get(seq)


# A ballot customer's receipt of their subscription (docs/audit-format.md, "Receipts").
SUBSCRIPTION = "subscription"
SUBSCRIPTION_PREFIX = "fairgate-subscription/v1\n"


def subscription_statement(
    campaign: str, seq: int, t: int, digest: bytes, amount: int, entry: int
) -> bytes:
    return (
        f"{SUBSCRIPTION_PREFIX}{campaign}\n{seq}\n{t}\n{digest.hex()}\n{amount}\n{entry}\n".encode()
    )


def subscription_receipt(
    keys: SigningKeys, campaign: str, seq: int, t: int, digest: bytes, amount: int, entry: int
) -> dict[str, Any]:
    """What the customer holds of their subscription: signed over the `subscribe` entry's
    fields, so a log whose entry `entry` says otherwise is caught (`gate audit verify
    --receipt`), even one signed again by whoever holds the key."""
    kid, sig = sign(keys, subscription_statement(campaign, seq, t, digest, amount, entry))
    return {
        "type": SUBSCRIPTION,
        "campaign": campaign,
        "seq": seq,
        "t": t,
        "digest": digest.hex(),
        "amount": str(amount),
        "entry": entry,
        "kid": kid,
        "sig": sig,
    }


def verify_subscription_receipt(receipt: Mapping[str, Any], public_keys: PublicKeys) -> bool:
    try:
        campaign, seq, t, entry = (receipt[k] for k in ("campaign", "seq", "t", "entry"))
        amount, digest = receipt["amount"], parse_hex(receipt["digest"], 16)
        if not isinstance(campaign, str) or digest is None or not isinstance(amount, str):
            return False
        if not all(is_int(n) for n in (seq, t, entry)):
            return False
        if not (amount.isascii() and amount.isdigit() and amount == str(int(amount))):
            return False  # one spelling only
        message = subscription_statement(campaign, seq, t, digest, int(amount), entry)
        return verify_signature(public_keys, receipt["kid"], message, receipt["sig"])
    except (KeyError, TypeError, ValueError):
        return False


def verify_receipt(receipt: Mapping[str, Any], public_keys: PublicKeys) -> bool:
    """The receipt is signed (by the key it names) and its statement is in the batch."""
    try:
        campaign, seq, t = receipt["campaign"], receipt["seq"], receipt["t"]
        leaf_index, size = receipt["leaf_index"], receipt["batch_size"]
        if not all(is_int(number) for number in (seq, t, leaf_index, size)):
            return False
        digest = parse_hex(receipt["digest"], 16)
        root = parse_hex(receipt["root"], merkle.HASH_SIZE)
        path = [parse_hex(p, merkle.HASH_SIZE) for p in receipt["path"]]
        if not isinstance(campaign, str) or digest is None or root is None:
            return False
        proof = [p for p in path if p is not None]
        if len(proof) != len(path):
            return False
        leaf = merkle.leaf_hash(statement(campaign, seq, t, digest))
        if not merkle.verify_inclusion(leaf, leaf_index, size, proof, root):
            return False
        return verify_signature(public_keys, receipt.get("kid"), root, receipt.get("sig"))
    except (KeyError, TypeError):
        return False


def verify_receipt_proof(answer: Mapping[str, Any], public_keys: PublicKeys) -> bool:
    """Check a `GET /q/{c}/receipt/{seq}` answer offline: the receipt, the checkpoint,
    that the included entry is the receipt's batch, and the entry's inclusion proof."""
    try:
        receipt, checkpoint, inclusion = (
            answer["receipt"],
            answer["checkpoint"],
            answer["inclusion"],
        )
        if not verify_receipt(receipt, public_keys):
            return False
        if checkpoint is None or inclusion is None:
            return False
        if not verify_checkpoint(checkpoint, public_keys, receipt["campaign"]):
            return False
        raw = entry_from_base64(inclusion["entry"])
        entry = decode_entry(raw)
        if entry.get("k") not in RECEIPT_KINDS or entry.get("i") != receipt["entry"]:
            return False
        pairs = batch_pairs(entry)
        batch = BatchReceipts(receipt["campaign"], receipt["entry"], int(entry["t"]), pairs)
        position = receipt["leaf_index"]
        if batch.t != receipt["t"] or batch.root.hex() != receipt["root"]:
            return False
        if len(pairs) != receipt["batch_size"] or not 0 <= position < len(pairs):
            return False
        if pairs[position] != (receipt["seq"], bytes.fromhex(receipt["digest"])):
            return False
        leaf = merkle.leaf_hash(raw)
        path = [parse_hex(p, merkle.HASH_SIZE) for p in inclusion["path"]]
        proof = [p for p in path if p is not None]
        if len(proof) != len(path):
            return False
        if inclusion["leaf_index"] != receipt["entry"] - 1 or inclusion["leaf"] != leaf.hex():
            return False
        if inclusion["size"] != checkpoint["size"]:
            return False
        return merkle.verify_inclusion(
            leaf, receipt["entry"] - 1, checkpoint["size"], proof, bytes.fromhex(checkpoint["root"])
        )
    except (KeyError, TypeError, ValueError):
        return False


def _parse_signature(value: Any) -> tuple[str, str] | None:
    if not isinstance(value, bytes):
        return None
    kid, sep, sig = value.decode().partition(":")
    return (kid, sig) if sep else None


class ReceiptBook:
    """Issue receipts at join, record their signatures, and rebuild them later.

    Batches are immutable once logged, so recently seen ones are kept in an
    in-process cache of at most ``cache_bytes`` (least recently used out first; a
    batch larger than the whole budget is not kept): a retried join costs one
    read-only script call per batch of joins (`receipt_locate`), and the log is read
    only for batches not cached.
    """

    def __init__(
        self,
        redis: Redis,
        keys: SigningKeys,
        segments_dir: Path | None,
        *,
        scripts: Scripts | None = None,
        cache_bytes: int = CACHE_BYTES,
    ):
        self.redis = redis
        self.keys = keys
        self.segments_dir = segments_dir
        self.scripts = scripts or Scripts()
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, int], BatchReceipts] = OrderedDict()
        self.cached_bytes = 0
        self.issued_batches = 0
        # Records of batches signed here and not written yet, per campaign, by entry.
        self._unrecorded: dict[str, dict[int, Record]] = {}
        self._record_timers: dict[str, asyncio.TimerHandle] = {}
        self._record_tasks: set[asyncio.Task[None]] = set()
        self.record_later_s = RECORD_LATER_S

    def store(self, campaign: str) -> AuditStore:
        return AuditStore(self.redis, campaign, self.segments_dir)

    def _remember(self, batch: BatchReceipts) -> None:
        key = (batch.campaign, batch.entry)
        if key in self._cache:
            self._cache.move_to_end(key)
            return
        if batch.size_bytes > self.cache_bytes:
            return
        self._cache[key] = batch
        self.cached_bytes += batch.size_bytes
        while self.cached_bytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self.cached_bytes -= old.size_bytes

    def forget(self, campaign: str) -> None:
        """Drop the campaign's cached batches: after a failover lost entries, the new
        primary gives their indexes to other entries (gate/failover.py)."""
        for key in [key for key in self._cache if key[0] == campaign]:
            self.cached_bytes -= self._cache.pop(key).size_bytes
        self.carry(campaign)
        self._unrecorded.pop(campaign, None)

    # -- records carried by the next join call -------------------------------------

    def record_later(
        self, campaign: str, items: Sequence[Record], delay_s: float | None = None
    ) -> None:
        """Keep these records for the campaign's next join call (`carry`); written by
        themselves after RECORD_LATER_S if no call carries them."""
        if not items:
            return
        self._unrecorded.setdefault(campaign, {}).update((item[0], item) for item in items)
        if campaign not in self._record_timers:
            loop = asyncio.get_running_loop()
            delay = self.record_later_s if delay_s is None else delay_s
            self._record_timers[campaign] = loop.call_later(delay, self._record_now, campaign)

    def carry(self, campaign: str) -> list[Record]:
        """The campaign's records not written yet, for a join call to write: it says
        `recorded` once it has, or `record_later` again if it failed. They stay here
        meanwhile (this process's receipts are answered from them)."""
        timer = self._record_timers.pop(campaign, None)
        if timer is not None:
            timer.cancel()
        return list(self._unrecorded.get(campaign, {}).values())

    def recorded(self, campaign: str, items: Sequence[Record]) -> None:
        kept = self._unrecorded.get(campaign)
        if kept is None:
            return
        for item in items:
            if kept.get(item[0]) == item:
                del kept[item[0]]
        if not kept:
            del self._unrecorded[campaign]

    def _record_now(self, campaign: str) -> None:
        self._record_timers.pop(campaign, None)
        task = asyncio.get_running_loop().create_task(self._write_unrecorded(campaign))
        self._record_tasks.add(task)
        task.add_done_callback(self._record_tasks.discard)

    async def _write_unrecorded(self, campaign: str) -> None:
        items = self.carry(campaign)
        try:
            await self.record(campaign, items)
        except Exception as exc:  # kept for the next call or try; the sealer fills it too
            log.warning("event=receipt_record_failed campaign=%s error=%s", campaign, exc)
            self.record_later(campaign, items, RECORD_RETRY_S)
            return
        self.recorded(campaign, items)

    async def flush(self) -> None:
        """Write every record still kept (at shutdown)."""
        for campaign in list(self._unrecorded):
            items = self.carry(campaign)
            with contextlib.suppress(Exception):
                await self.record(campaign, items)
                self.recorded(campaign, items)
        for timer in self._record_timers.values():
            timer.cancel()
        self._record_timers.clear()
        if self._record_tasks:
            await asyncio.gather(*self._record_tasks, return_exceptions=True)

    def _from_unrecorded(self, campaign: str, seqs: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Receipts of batches signed here whose records are not written yet."""
        out: dict[int, dict[str, Any]] = {}
        for entry, _, kid, sig in self._unrecorded.get(campaign, {}).values():
            batch = self._cache.get((campaign, entry))
            if batch is None:
                continue
            for seq in seqs:
                position = batch.position_of(seq)
                if position is not None:
                    out[seq] = batch.receipt(position, kid, sig)
        return out

    def sign_batch(
        self, campaign: str, entry: int, t: int, created: Sequence[tuple[int, bytes]]
    ) -> tuple[list[dict[str, Any]], tuple[int, int, str, str]]:
        """Sign one batch (``created`` = the entry's (seq, digest) pairs, in order):
        each pair's receipt, and the record to store (`record`)."""
        batch = BatchReceipts(campaign, entry, t, created)
        kid, sig = batch.sign(self.keys)
        batch.signature = (kid, sig)
        self._remember(batch)
        self.issued_batches += 1
        receipts = [batch.receipt(position, kid, sig) for position in range(len(created))]
        return receipts, (entry, created[0][0], kid, sig)

    async def issue(
        self, campaign: str, entry: int, t: int, created: Sequence[tuple[int, bytes]]
    ) -> list[dict[str, Any]]:
        receipts, item = self.sign_batch(campaign, entry, t, created)
        await self.record(campaign, [item])
        return receipts

    async def record(self, campaign: str, items: Sequence[tuple[int, int, str, str]]) -> None:
        """(entry index, first seq, kid, sig) per batch: the first signature recorded for
        an entry stays (a re-signature after a key rotation is just as valid)."""
        if not items:
            return
        k = CampaignKeys(campaign)
        async with guarded():
            pipe = self.redis.pipeline(transaction=True)  # both, or neither
            for entry, _, kid, sig in items:
                pipe.hsetnx(k.receipt_signatures, str(entry), f"{kid}:{sig}")
            pipe.zadd(k.join_entries, {str(e): first for e, first, _, _ in items}, nx=True)
            await pipe.execute()

    async def signatures(
        self, campaign: str, entries: Sequence[int]
    ) -> list[tuple[str, str] | None]:
        if not entries:
            return []
        async with guarded():
            values = await self.redis.hmget(
                CampaignKeys(campaign).receipt_signatures, [str(e) for e in entries]
            )
        return [_parse_signature(v) for v in values]

    async def receipts_for(self, campaign: str, seqs: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The receipts of these seqs' batches, as given at join (a seq whose batch is not
        indexed yet, e.g. a pre-queue chunk the sealer has not reached, is left out)."""
        wanted = sorted({s for s in seqs if s > 0})
        if not wanted:
            return {}
        out = self._from_unrecorded(campaign, wanted)
        wanted = [seq for seq in wanted if seq not in out]
        if not wanted:
            return out
        k = CampaignKeys(campaign)
        async with guarded():
            reply = await self.scripts.call(
                self.redis, "receipt_locate", [k.join_entries, k.receipt_signatures], wanted
            )
        located: dict[int, tuple[int, tuple[str, str] | None]] = {}
        for n, seq in enumerate(wanted):
            entry = int(reply[2 * n])
            if entry:
                located[seq] = (entry, _parse_signature(reply[2 * n + 1]))
        unindexed = [seq for seq in wanted if seq not in located]
        if unindexed and self.segments_dir is not None:
            # Batches moved to segment files took their index with them.
            archived = await self.store(campaign).archived_receipt_index(unindexed)
            for seq, (entry, recorded) in archived.items():
                located[seq] = (entry, _parse_signature(recorded.encode()))
        # Held here for this answer: the cache may drop a batch before it is used.
        batches: dict[int, BatchReceipts] = {}
        for entry in {e for e, _ in located.values()}:
            cached = self._cache.get((campaign, entry))
            if cached is not None:
                self._cache.move_to_end((campaign, entry))
                batches[entry] = cached
        missing = sorted({e for e, _ in located.values() if e not in batches})
        if missing:
            for index, raw in (await self.store(campaign).entries_at(missing)).items():
                logged = decode_entry(raw)
                if logged.get("k") in RECEIPT_KINDS:
                    loaded = BatchReceipts(campaign, index, int(logged["t"]), batch_pairs(logged))
                    batches[index] = loaded
                    self._remember(loaded)
        to_record: dict[int, tuple[int, int, str, str]] = {}
        for seq, (entry, signature) in located.items():
            batch = batches.get(entry)
            if batch is None:
                continue
            position = batch.position_of(seq)
            if position is None:
                continue
            if signature is None:
                # Not recorded (its process died first): sign again; Ed25519 is
                # deterministic, so with the same key this is the same signature.
                signature = batch.signature or batch.sign(self.keys)
                to_record[entry] = (entry, batch.pairs[0][0], *signature)
            out[seq] = batch.receipt(position, *signature)
        await self.record(campaign, list(to_record.values()))
        return out

    async def receipt(self, campaign: str, seq: int) -> dict[str, Any] | None:
        return (await self.receipts_for(campaign, [seq])).get(seq)

    async def receipt_with_proof(self, campaign: str, seq: int) -> dict[str, Any] | None:
        """The receipt, and once a checkpoint covers its entry, the latest checkpoint and
        the entry's inclusion proof against it."""
        receipt = await self.receipt(campaign, seq)
        if receipt is None:
            return None
        store = self.store(campaign)
        checkpoint = await store.latest_checkpoint()
        inclusion: dict[str, Any] | None = None
        if checkpoint is not None and checkpoint["size"] >= receipt["entry"]:
            index = receipt["entry"]
            raw = (await store.entries_at([index])).get(index)
            if raw is None:
                raise Unavailable()
            path = await store.inclusion_proof(index - 1, checkpoint["size"])
            inclusion = {
                "leaf_index": index - 1,
                "size": checkpoint["size"],
                "leaf": merkle.leaf_hash(raw).hex(),
                "path": [p.hex() for p in path],
                "entry": entry_base64(raw),
            }
        else:
            checkpoint = None
        return {"receipt": receipt, "checkpoint": checkpoint, "inclusion": inclusion}
