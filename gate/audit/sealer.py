"""Seal the audit log: extend its Merkle tree and publish signed checkpoints.

Every gate process runs a `Sealer`; per campaign, exactly one of them is active at a
time: it holds the lease ``fg:{c}:sealer`` (SET NX PX, renewed while it works), and each
new holder gets a larger fencing token that its writes carry (sealer_lease.lua,
checkpoint_add.lua, audit_trim.lua, checkpoint_trim.lua), so a holder whose lease lapsed
can never write after its successor started. The Merkle frontier is stored with each checkpoint
(``fg:{c}:frontier``), so a successor continues the same tree from the same index:
entries are read in order, none skipped, and every checkpoint is an extension of the
one before (provable with `merkle.consistency_proof`).

A round, at most every ``seal_interval_ms`` (and at most half the seal bound,
``seal_bound_ms``) while there are new entries (at once after the campaign closes): read the
entries after the sealed size, append their leaf hashes, store the completed subtrees of at
least 256 entries (``fg:{c}:mnodes``, for cheap proofs), make sure each join batch has its
receipt signature, then sign and publish the checkpoint with the new frontier in one script
call. A checkpoint's time is Redis's (TIME), not the sealing process's, so a hand-over keeps
the times in order. After a checkpoint, sealed entries beyond the newest
``audit_keep_in_redis`` may move to segment files, and their stored subtrees and receipt
index with them (store.py), so Redis stays bounded in a long campaign.

Bounded sealing (docs/audit-format.md, "Seal bound"): every entry is to be sealed within
``seal_bound_ms`` of its time. A holder that finds the oldest unsealed entry older than
that appends a ``seal-gap`` entry first (sealer_lease.lua), which `gate audit verify`
names. A lease token is a random nonce and its HMAC under the gate's key, so a token
written into Redis by anyone else (to silence the sealer while the unsealed tail is
rewritten) is recognised at once: the process that sees it takes the lease back
(``reclaim``), which appends a ``seal-gap`` entry, why ``lease-stolen``, logs
``event=sealer_lease_stolen`` and counts ``fairgate_sealer_lease_stolen_total``.

A file that cannot be written (a full disk, an I/O error) moves nothing: its entries stay
in Redis (trimmed only once their file is fsynced), sealing goes on, for this campaign
and every other, and the move is tried again every ``MOVE_RETRY_S``, also with no new
entries, so it catches up by itself once there is space. It is one WARNING line per
campaign per ``REPORT_EVERY_S``, and `SealerCollector`'s metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from gate.audit import merkle
from gate.audit.checkpoints import make_checkpoint
from gate.audit.format import decode_entry, text_of
from gate.audit.receipts import RECEIPT_KINDS, BatchReceipts, ReceiptBook, batch_pairs
from gate.audit.store import NODE_MIN_LEVEL, AuditGapError, AuditStore, node_field
from gate.config import Config
from gate.errors import GateError, Unavailable
from gate.redis_client import connect, guarded
from gate.redis_nodes import one_connection
from gate.room.durability import Durability
from gate.room.keys import REGISTRY, CampaignKeys
from gate.room.scripts import Scripts
from gate.signing import SigningKeys

log = logging.getLogger("gate.audit")

MAX_PER_ROUND = 20000  # entries per checkpoint when catching up on a backlog
RENEW_EVERY = 5000  # entries between lease renewals inside a long round
# Signed checkpoints kept in Redis; older ones move to a checkpoints file (store.py).
CHECKPOINTS_IN_REDIS = 1000
# A move to segment files that failed is tried again this often.
MOVE_RETRY_S = 2.0
# A failure that lasts (Redis away, a full disk) is logged again at most this often.
REPORT_EVERY_S = 60.0


@dataclass
class _CampaignState:
    fence: int = 0
    frontier: merkle.Frontier | None = None
    last_seal: float = 0.0
    next_attempt: float = 0.0
    behind: bool = False
    time_held: bool = False  # Redis's clock is behind the last checkpoint's time
    gap: bool = False  # a seal-gap entry was just appended: seal at once
    # The lease this process last renewed: its fence, and (monotonic) until when it holds
    # for sure (from the renewal's send time), so a lease lost before then was tampered with.
    lease_fence: int = 0
    lease_until: float = 0.0
    move_failing: bool = False  # the last move to segment files could not write a file
    next_move: float = 0.0
    move_reported: float = 0.0
    # One step at a time per campaign in this process: the loop's, or one a request
    # forces (a new campaign's commitment, gate/audit/commitment.py).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class SealStats:
    rounds: int = 0
    checkpoints: int = 0
    refused: int = 0
    entries: int = 0
    moved: int = 0
    last_round_s: float = 0.0
    errors: int = 0
    lease_stolen: int = 0  # foreign tokens found holding a lease, and taken back
    seal_gaps: int = 0  # seal-gap entries this process appended
    move_errors: int = 0  # moves to segment files that could not write their files
    fenced: dict[str, int] = field(default_factory=dict)


class Sealer:
    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        keys: SigningKeys,
        segments_dir: Path | None,
        *,
        interval_s: float,
        lease_ms: int,
        keep_in_redis: int,
        checkpoints_in_redis: int = CHECKPOINTS_IN_REDIS,
        durability: Durability | None = None,
        bound_ms: int = 0,
        publishes: bool = True,
    ):
        self.redis = redis
        # A signed checkpoint publishes a campaign's commitment (its creation) and lets
        # joins in; False where witnesses are configured: their quorum publishes it.
        self.publishes = publishes
        # Entries older than this when found unsealed get a seal-gap entry (0: no check).
        self.bound_ms = bound_ms
        # Seal only entries the configured replicas have (`_replicated_size`).
        self.durability = durability or Durability()
        self.scripts = scripts
        self.keys = keys
        self.segments_dir = segments_dir
        # The bound is met with room for a slow round and a late tick: seal at least four
        # times per bound (measured under load: docs/guarantees.md).
        self.interval_s = min(interval_s, bound_ms / 4000) if bound_ms else interval_s
        self.lease_ms = lease_ms
        self.keep_in_redis = keep_in_redis
        self.checkpoints_in_redis = checkpoints_in_redis
        self.token = lease_token(keys)
        self.book = ReceiptBook(redis, keys, segments_dir, scripts=scripts)
        self.stats = SealStats()
        self._campaigns: dict[str, _CampaignState] = {}
        self._owns_redis = False
        self._failing_since: float | None = None
        self._error_reported = 0.0

    @classmethod
    def from_config(
        cls,
        config: Config,
        scripts: Scripts,
        keys: SigningKeys,
        segments_dir: Path | None,
        *,
        durability: Durability | None = None,
    ) -> Sealer:
        # Its own small pool: long reads must not delay the cache's refresh (I7).
        redis = connect(
            config.redis_url, timeout_s=config.redis_timeout_ms / 1000, max_connections=2
        )
        sealer = cls(
            redis,
            scripts,
            keys,
            segments_dir,
            interval_s=config.seal_interval_ms / 1000,
            lease_ms=config.seal_lease_ms,
            keep_in_redis=config.audit_keep_in_redis,
            durability=durability or Durability.from_config(config),
            bound_ms=config.seal_bound_ms,
            publishes=not config.witness_keys,
        )
        sealer._owns_redis = True
        return sealer

    @property
    def tick_s(self) -> float:
        return min(self.interval_s, 0.1)

    def active(self) -> list[str]:
        """The campaigns this process seals right now."""
        return sorted(c for c, state in self._campaigns.items() if state.fence)

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away, a bug in one round: keep going
                self.stats.errors += 1
                now = time.monotonic()
                if self._failing_since is None or now - self._error_reported >= REPORT_EVERY_S:
                    # Once, then once a minute while it lasts: a partition must not
                    # write a line a second.
                    log.warning(
                        "event=seal_error error=%s detail=%s errors=%d",
                        exc.__class__.__name__,
                        exc,
                        self.stats.errors,
                    )
                    self._error_reported = now
                if self._failing_since is None:
                    self._failing_since = now
                await asyncio.sleep(1.0)  # no tight loop of failures
            else:
                if self._failing_since is not None:
                    log.info(
                        "event=seal_recovered after_s=%.1f",
                        time.monotonic() - self._failing_since,
                    )
                    self._failing_since = None
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> None:
        async with guarded():
            members = await self.redis.smembers(REGISTRY)
        for campaign in sorted(m.decode() if isinstance(m, bytes) else m for m in members):
            await self.step(campaign)

    def _lease_call(
        self, campaign: str, mode: str, foreign: str = ""
    ) -> tuple[list[str], list[Any]]:
        k = CampaignKeys(campaign)
        return [k.sealer, k.sealer_fence, k.meta, k.frontier, k.audit], [
            self.token,
            self.lease_ms,
            mode,
            self.bound_ms * 1000,
            foreign,
        ]

    async def _lease(
        self, campaign: str, mode: str = "acquire", foreign: str = ""
    ) -> tuple[int, int, str, int]:
        keys, args = self._lease_call(campaign, mode, foreign)
        held = self._campaigns.setdefault(campaign, _CampaignState())
        sent = time.monotonic()
        async with guarded():
            reply = await self.scripts.call(self.redis, "sealer_lease", keys, args)
        state = text_of(reply[2])
        fence, size, sealed = int(reply[0]), int(reply[1]), int(reply[3])
        holder, gap = text_of(reply[4]), int(reply[5])
        if gap:
            self._gap_logged(campaign, fence, sealed, size, stolen=mode == "reclaim")
        # Lost before it could have lapsed: Redis ran this call before its answer came, and
        # counts the last renewal's TTL from after that renewal was sent, so the lease was
        # overwritten or deleted in Redis, not handed over. Half the lease is kept as the
        # margin for a failover to a replica that lagged (its copy of the renewal is older).
        received = time.monotonic()
        early = bool(held.lease_fence) and received < held.lease_until and fence != held.lease_fence
        alien = bool(holder) and not lease_token_valid(
            self.keys, holder, int(reply[6]), self.lease_ms
        )
        held.lease_fence, held.lease_until = fence, 0.0
        if fence:
            held.lease_until = sent + self.lease_ms / 2000
        if mode == "acquire" and early and holder and not alien:
            # Another gate process holds it (a failover to a replica that lacked our
            # renewal, then a quicker process): not taken back; a token replayed from an
            # earlier process shows at verify as entries sealed late.
            log.warning(
                "event=sealer_lease_lost_early campaign=%s holder_sha1=%s sealed=%d audit_n=%d",
                campaign,
                hashlib.sha1(holder.encode(), usedforsecurity=False).hexdigest(),
                sealed,
                size,
            )
        elif mode == "acquire" and (early or alien):
            # Someone wrote the lease key to silence the sealer (a token no gate process
            # made, or our own lease gone before its time): take it back at once, on the
            # record (a seal-gap entry, lease-stolen; sealer_lease.lua).
            self.stats.lease_stolen += 1
            log.warning(
                "event=sealer_lease_stolen campaign=%s holder_sha1=%s how=%s sealed=%d "
                "audit_n=%d action=reclaim stolen=%d",
                campaign,
                hashlib.sha1(holder.encode(), usedforsecurity=False).hexdigest() if holder else "",
                "foreign_token" if alien else "overwritten" if holder else "deleted",
                sealed,
                size,
                self.stats.lease_stolen,
            )
            return await self._lease(campaign, "reclaim", holder)
        return fence, size, state, sealed

    def _gap_logged(
        self, campaign: str, fence: int, sealed: int, gap: int, *, stolen: bool
    ) -> None:
        self.stats.seal_gaps += 1
        self._campaigns.setdefault(campaign, _CampaignState()).gap = True
        log.warning(
            "event=seal_gap campaign=%s why=%s entries=%d..%d gap_entry=%d fence=%d",
            campaign,
            "lease-stolen" if stolen else "late_or_handover",
            sealed + 1,
            gap - 1,
            gap,
            fence,
        )

    async def _replicated_size(self, campaign: str) -> tuple[int, int] | None:
        """The lease kept and the log's size read (one script), then the campaign's mark
        and the wait on that same connection: every entry up to that size was written
        before the mark, so the wait covers them all (gate/room/durability.py). A checkpoint
        is signed, served and written to segment files: an entry that a failover could
        still lose must not be in one, or its index would be sealed twice. (fence, size);
        None when too few replicas acknowledged under `hold` (counted, no seal now);
        under `continue` the size comes back all the same (counted as degraded)."""
        k = CampaignKeys(campaign)
        keys, args = self._lease_call(campaign, "acquire")
        reply, enough = await self.durability.run(
            self.redis, self.scripts, "sealer_lease", keys, args, mark=k.durable_mark
        )
        if int(reply[5]):
            self._gap_logged(campaign, int(reply[0]), int(reply[3]), int(reply[1]), stolen=False)
        if not enough:
            try:
                self.durability.fell_short(what="seal", call="sealer_lease")
            except Unavailable:
                return None
        return int(reply[0]), int(reply[1])

    async def step(self, campaign: str, *, force: bool = False) -> bool:
        """One look at a campaign: hold or take its lease, seal when due. True when a
        checkpoint was published."""
        state = self._campaigns.setdefault(campaign, _CampaignState())
        async with state.lock:
            return await self._step(campaign, state, force)

    async def _step(self, campaign: str, state: _CampaignState, force: bool) -> bool:
        now = time.monotonic()
        if not state.fence and now < state.next_attempt and not force:
            return False
        fence, size, campaign_state, sealed = await self._lease(campaign)
        if fence != state.fence:
            if state.fence:
                log.info("event=seal_lease_lost campaign=%s fence=%d", campaign, state.fence)
            state.frontier = None
            if fence:
                log.info(
                    "event=seal_lease_taken campaign=%s fence=%d sealed=%d", campaign, fence, sealed
                )
            state.fence = fence
        if not fence:
            # Someone else seals it; look again in a fraction of the lease.
            state.next_attempt = now + max(self.tick_s, self.lease_ms / 4000)
            return False
        if state.move_failing and now >= state.next_move:
            await self._move(campaign, fence, sealed)
        if size <= sealed:
            return False
        due = now - state.last_seal >= self.interval_s
        # A gap recorded now is sealed now, with the entries it explains.
        gap, state.gap = state.gap, False
        if not (due or force or gap or state.behind or campaign_state == "closed"):
            return False
        if self.durability.active:
            replicated = await self._replicated_size(campaign)
            if replicated is None:
                return False  # hold: not this round
            renewed, size = replicated
            if renewed != fence:
                return False  # the lease moved meanwhile: the next tick sees it
        # Rounds start every interval: a slow round (a loaded machine) is not followed by
        # a whole interval more before the next one starts (the seal bound).
        state.last_seal = time.monotonic()
        published = await self.seal(campaign, fence, sealed, size)
        state.behind = 0 < published < size  # a backlog: go on at the next tick
        if published and not state.move_failing:
            await self._move(campaign, fence, published)
        return bool(published)

    # -- a sealing round -----------------------------------------------------------

    async def _frontier(self, campaign: str, sealed: int) -> merkle.Frontier:
        state = self._campaigns[campaign]
        if state.frontier is not None and state.frontier.size == sealed:
            return state.frontier.copy()
        async with guarded():
            raw = await self.redis.hget(CampaignKeys(campaign).frontier, "frontier")
        frontier = merkle.Frontier.from_bytes(raw) if isinstance(raw, bytes) else merkle.Frontier()
        if frontier.size != sealed:
            raise AuditGapError(
                f"campaign {campaign}: stored frontier has {frontier.size} entries, "
                f"the sealed size is {sealed}"
            )
        return frontier

    async def seal(self, campaign: str, fence: int, sealed: int, size: int) -> int:
        """Seal entries ``sealed+1 .. size`` (at most MAX_PER_ROUND of them) and publish a
        checkpoint; returns the new sealed size, or 0 when the write was refused."""
        started = time.monotonic()
        k = CampaignKeys(campaign)
        frontier = await self._frontier(campaign, sealed)
        target = min(size, sealed + MAX_PER_ROUND)
        store = AuditStore(self.redis, campaign, self.segments_dir)
        nodes: dict[str, bytes] = {}
        joins: list[tuple[int, dict[str, Any]]] = []
        expected = sealed + 1
        oldest_us = 0  # the first entry's time: the one that waited longest
        async for index, raw in store.entries(expected, target):
            if not oldest_us:
                oldest_us = int(decode_entry(raw).get("t") or 0)
            if index != expected:
                raise AuditGapError(f"campaign {campaign}: expected entry {expected}, got {index}")
            for level, node_index, h in frontier.append(merkle.leaf_hash(raw)):
                if level >= NODE_MIN_LEVEL:
                    nodes[node_field(level, node_index)] = h
            if b"join" in raw or b"prequeue" in raw:  # cheap filter before decoding
                entry = decode_entry(raw)
                if entry.get("k") in RECEIPT_KINDS and entry.get("s"):
                    joins.append((index, entry))
            expected += 1
            if (expected - sealed) % RENEW_EVERY == 0:
                renewed, *_ = await self._lease(campaign)
                if renewed != fence:
                    return 0
        if expected - 1 != target:
            raise AuditGapError(f"campaign {campaign}: log ends at {expected - 1}, not {target}")
        await self._sign_batches(campaign, joins)
        if nodes:
            async with guarded():
                await self.redis.hset(k.merkle_nodes, mapping=nodes)  # type: ignore[arg-type]
        checkpoint = make_checkpoint(
            self.keys, campaign, target, frontier.root(), await self._checkpoint_time_ms(k)
        )
        async with guarded():
            reply = await self.scripts.call(
                self.redis,
                "checkpoint_add",
                [k.sealer_fence, k.frontier, k.checkpoints, k.meta],
                [
                    fence,
                    sealed,
                    target,
                    frontier.to_bytes(),
                    json.dumps(checkpoint, separators=(",", ":")),
                    "1" if self.publishes else "0",
                ],
            )
        self.stats.rounds += 1
        self.stats.last_round_s = time.monotonic() - started
        state = self._campaigns[campaign]
        if int(reply[0]) != 1:
            reason = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            self.stats.refused += 1
            self.stats.fenced[reason] = self.stats.fenced.get(reason, 0) + 1
            state.frontier = None
            log.warning(
                "event=checkpoint_refused campaign=%s fence=%d reason=%s", campaign, fence, reason
            )
            return 0
        state.frontier = frontier
        if self.bound_ms and checkpoint["time_ms"] * 1000 - oldest_us > self.bound_ms * 1000:
            # The round itself took the entries past the bound: on the record at once.
            await self._lease(campaign, "late", f"{sealed + 1},{target}")
        self.stats.checkpoints += 1
        self.stats.entries += target - sealed
        log.debug(
            "event=checkpoint campaign=%s size=%d root=%s round_ms=%.1f",
            campaign,
            target,
            checkpoint["root"][:16],
            self.stats.last_round_s * 1000,
        )
        return target

    async def _checkpoint_time_ms(self, k: CampaignKeys) -> int:
        """Redis's clock, never this process's: a hand-over to a sealer whose clock lags
        must not date a checkpoint before its predecessor's. Nor may a failover to a
        primary whose clock is behind: the time is at least the last checkpoint's."""
        async with guarded():
            # one round trip; in a cluster, to the campaign's own master (its clock)
            (seconds, micros), last = await one_connection(
                self.redis, k.checkpoints, [("TIME",), ("LINDEX", k.checkpoints, -1)]
            )
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        previous = 0
        if isinstance(last, bytes | str):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                found = json.loads(last).get("time_ms")
                previous = found if isinstance(found, int) else 0
        state = self._campaigns[k.campaign]
        if previous > now_ms:
            if not state.time_held:  # once while it lasts, not once per round
                log.warning(
                    "event=checkpoint_time_held campaign=%s redis_ms=%d previous_ms=%d",
                    k.campaign,
                    now_ms,
                    previous,
                )
            state.time_held = True
            return previous
        state.time_held = False
        return now_ms

    async def _sign_batches(self, campaign: str, joins: list[tuple[int, dict[str, Any]]]) -> None:
        """Every join batch gets its receipt signature recorded, even when the process
        that ran the join died before it could (or the batch was a pre-queue chunk).
        The join records signature and seq index in one transaction, so a batch with a
        signature is indexed too."""
        if not joins:
            return
        existing = await self.book.signatures(campaign, [index for index, _ in joins])
        items: list[tuple[int, int, str, str]] = []
        for (index, entry), signature in zip(joins, existing, strict=True):
            if signature is None:
                batch = BatchReceipts(campaign, index, int(entry["t"]), batch_pairs(entry))
                items.append((index, batch.pairs[0][0], *batch.sign(self.keys)))
        await self.book.record(campaign, items)

    # -- segments ------------------------------------------------------------------

    def moves_failing(self) -> int:
        """Campaigns whose last move to segment files could not write a file."""
        return sum(1 for state in self._campaigns.values() if state.move_failing)

    async def _move(self, campaign: str, fence: int, sealed: int) -> None:
        """Move what may move to segment files; a file that cannot be written leaves
        every entry in Redis and is tried again in `MOVE_RETRY_S` (module docstring)."""
        state = self._campaigns[campaign]
        try:
            # Files an earlier, failed attempt completed are used first (and only them);
            # then what is still due moves too, not at the next checkpoint only.
            for _ in range(8):
                if not await self._maybe_move(campaign, fence, sealed):
                    break
            await self._maybe_move_checkpoints(campaign, fence)
        except OSError as exc:
            now = time.monotonic()
            self.stats.move_errors += 1
            state.next_move = now + MOVE_RETRY_S
            if not state.move_failing or now - state.move_reported >= REPORT_EVERY_S:
                log.warning(
                    "event=segments_write_failed campaign=%s errno=%s detail=%s "
                    "entries=kept_in_redis retry_s=%.0f errors=%d",
                    campaign,
                    errno.errorcode.get(exc.errno or 0, exc.errno),
                    exc.strerror,
                    MOVE_RETRY_S,
                    self.stats.move_errors,
                )
                state.move_reported = now
            state.move_failing = True
            return
        if state.move_failing:
            log.info("event=segments_write_recovered campaign=%s", campaign)
            state.move_failing = False

    async def _maybe_move(self, campaign: str, fence: int, sealed: int) -> int:
        """Move sealed entries older than the newest `keep_in_redis` to segment files,
        then trim them from Redis; returns how many moved."""
        if self.keep_in_redis <= 0 or self.segments_dir is None:
            return 0
        store = AuditStore(self.redis, campaign, self.segments_dir)
        trimmed, _ = await store.bounds()
        # Move in chunks of at least a quarter of the window, not an entry at a time.
        if sealed - trimmed < self.keep_in_redis + max(self.keep_in_redis // 4, 1):
            return 0
        upto = sealed - self.keep_in_redis
        covered = trimmed
        for segment in await store.segments():
            # Files a predecessor wrote before it could trim (same bytes: the log is
            # append-only) are used as they are.
            if segment.first <= covered + 1 <= segment.last + 1:
                covered = max(covered, segment.last)
        if covered > trimmed:
            upto = min(covered, sealed)
        else:
            moving = [raw async for _, raw in store.entries(trimmed + 1, upto)]
            if len(moving) != upto - trimmed:
                raise AuditGapError(f"campaign {campaign}: could not read {trimmed + 1}..{upto}")
            await store.write_segments(trimmed + 1, moving)
        # Their stored subtrees go to a file first, leave Redis only after the trim.
        node_fields = await store.archive_nodes(trimmed + 1, upto)
        receipt_entries = await store.archive_receipt_index(trimmed + 1, upto)
        k = CampaignKeys(campaign)
        async with guarded():
            reply = await self.scripts.call(
                self.redis,
                "audit_trim",
                [k.sealer_fence, k.frontier, k.meta, k.audit],
                [fence, trimmed, upto],
            )
        if int(reply[0]) != 1:
            log.warning("event=audit_trim_refused campaign=%s reason=%s", campaign, reply[1])
            return 0
        await store.drop_nodes(node_fields)
        await store.drop_receipt_index(receipt_entries)
        self.stats.moved += upto - trimmed
        log.info("event=audit_moved campaign=%s upto=%d", campaign, upto)
        return upto - trimmed

    async def _maybe_move_checkpoints(self, campaign: str, fence: int) -> int:
        """Move the oldest checkpoints beyond the newest `checkpoints_in_redis` to a
        file, then drop them from Redis; returns how many moved."""
        keep = self.checkpoints_in_redis
        if keep <= 0 or self.segments_dir is None:
            return 0
        k = CampaignKeys(campaign)
        async with guarded():
            pipe = self.redis.pipeline(transaction=True)
            pipe.llen(k.checkpoints)
            pipe.hget(k.meta, "checkpoints_trimmed")
            length, trimmed_raw = await pipe.execute()
        if int(length) < keep + max(keep // 4, 1):
            return 0
        count = int(length) - keep
        async with guarded():
            # Only the fenced sealer drops from the head; new ones go to the tail.
            raw = await self.redis.lrange(k.checkpoints, 0, count - 1)
        moving = [item for item in raw if isinstance(item, bytes)]
        if len(moving) != count:
            return 0
        store = AuditStore(self.redis, campaign, self.segments_dir)
        await store.archive_checkpoints(moving)
        trimmed = int(trimmed_raw or 0)
        async with guarded():
            reply = await self.scripts.call(
                self.redis,
                "checkpoint_trim",
                [k.sealer_fence, k.checkpoints, k.meta],
                [fence, trimmed, count],
            )
        if int(reply[0]) != 1:
            log.warning("event=checkpoint_trim_refused campaign=%s reason=%s", campaign, reply[1])
            return 0
        log.info("event=checkpoints_moved campaign=%s moved=%d", campaign, count)
        return count

    # -- shutdown ------------------------------------------------------------------

    async def close(self) -> None:
        """Give held leases back so another process takes over at once."""
        for campaign in self.active():
            with contextlib.suppress(GateError, Exception):
                await asyncio.wait_for(self._lease(campaign, "release"), timeout=1.0)
        self._campaigns.clear()
        if self._owns_redis:
            await self.redis.aclose()


LEASE_TOKEN_CONTEXT = b"fairgate-sealer-lease/v1\n"


def lease_token(keys: SigningKeys) -> str:
    """A sealer's lease token: a random nonce and its HMAC under the gate's current HMAC
    key, so a gate process can tell a token another gate process made from one written
    into Redis by someone without the key."""
    nonce = secrets.token_hex(16)
    mac = hmac.new(
        keys.hmac_keys[keys.hmac_current], LEASE_TOKEN_CONTEXT + nonce.encode(), "sha256"
    )
    return f"{nonce}.{keys.hmac_current}.{mac.hexdigest()[:32]}"


def lease_token_valid(keys: SigningKeys, token: str, ttl_ms: int = 0, lease_ms: int = 0) -> bool:
    """Whether a gate process can have made `token`. One MACed with an HMAC key this
    process has not loaded (a rotation rolling out) cannot be judged: it passes, unless
    its lease has no TTL or one far beyond a lease (`ttl_ms` -1, or over 2 x `lease_ms`),
    which no gate process writes. (A holder still sees its own lease replaced early.)"""
    nonce, _, rest = token.partition(".")
    kid, _, mac = rest.partition(".")
    if len(nonce) != 32 or len(mac) != 32 or not kid:
        return False
    key = keys.hmac_keys.get(kid)
    if key is None:
        return ttl_ms >= 0 and (not lease_ms or ttl_ms <= 2 * lease_ms)
    expected = hmac.new(key, LEASE_TOKEN_CONTEXT + nonce.encode(), "sha256").hexdigest()[:32]
    return hmac.compare_digest(expected, mac)


class SealerCollector(Collector):
    """The sealer's metrics: a move to segment files that cannot write its files (a full
    disk) is an alert, not an outage (the entries stay in Redis), so it is a metric."""

    def __init__(self, sealer: Sealer):
        self.sealer = sealer

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        failing = GaugeMetricFamily(
            "fairgate_segments_write_failing",
            "1 while a move of sealed entries to segment files cannot write its files "
            "(a full disk): the entries stay in Redis, which grows until it is fixed",
        )
        failing.add_metric([], 1.0 if self.sealer.moves_failing() else 0.0)
        errors = CounterMetricFamily(
            "fairgate_segments_write_errors",
            "moves to segment files that failed to write a file",
        )
        errors.add_metric([], self.sealer.stats.move_errors)
        seal_errors = CounterMetricFamily(
            "fairgate_seal_errors", "sealing rounds that failed (Redis away, ...)"
        )
        seal_errors.add_metric([], self.sealer.stats.errors)
        stolen = CounterMetricFamily(
            "fairgate_sealer_lease_stolen",
            "sealer leases found held by a token no gate process made (written into Redis "
            "by someone without the key, to silence the sealer), and taken back on the record",
        )
        stolen.add_metric([], self.sealer.stats.lease_stolen)
        gaps = CounterMetricFamily(
            "fairgate_seal_gaps",
            "seal-gap entries appended: entries found unsealed longer than seal_bound_ms, "
            "or a stolen lease taken back (gate audit verify names them)",
        )
        gaps.add_metric([], self.sealer.stats.seal_gaps)
        yield from (failing, errors, seal_errors, stolen, gaps)
