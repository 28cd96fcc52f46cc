"""Notice a new Redis primary, and reconcile before admitting or allocating again.

A Sentinel failover promotes a replica that may lack the primary's last writes, and a
standalone Redis restarted without its AOF (or from an older copy) has lost them too:
either way the primary's identity (INFO `run_id`, and its replication id) changes. Two
things watch it:

- every new connection of the gate's pools first asks INFO server (`PrimaryIdentity`, the
  pools' connect hook) and refuses to carry a command to a primary whose run id has not
  been reconciled yet: no write reaches a new primary before reconciliation, however soon
  after the switch it is sent;
- `FailoverWatch`, on a connection of its own, reads the identity every `POLL_S` (a role
  that is no longer master, or a new replication id, counts too).

On a change the process holds: every write answers 503 + Retry-After with the code
`reconciling` and `/readyz` says 503 `reconciling`. It records its marks (gate.marks: the
highest seq, reservation number and audit index it acknowledged, the sealed size it saw)
in the campaign's ``fg:{c}:fo_marks`` on the new primary, waits `SETTLE_S` of Redis time
from the first process's notice (so every gate process's marks are in), and runs
reconcile.lua per campaign, which compares them all with the primary's counters. Nothing
missing: one INFO line `event=failover_reconciled` and the process resumes once no other
process is still reconciling. Something missing: the campaign is held (paused, meta
`failover_hold` holds the report of what was lost, seq and res_n raised past everything
acknowledged, the lost seqs revoked), one ERROR line `event=failover_lost`, and the
campaign refuses claims and subscriptions (every write when its log cannot continue)
until an operator resumes it.

A new primary that lacks the whole campaign (no meta: a replica promoted before the
primary streamed it anything, a Redis restarted empty) while the marks show something
acknowledged: reconcile.lua keeps a tombstone, ``fg:{c}:fo_gone``, with the report (seqs
1..highest, reservations, audit indexes, sealed size), the same ERROR line (with
`campaign_missing=yes`) and metric follow, and the campaign is put back in the registry
(which the new primary may lack too) so that every process finds it. While the tombstone
exists the campaign is held as one whose log cannot continue: every request for it is 503
`campaign_held` (an unknown campaign's 404 included: see `is_lost`), and its id cannot be
created again (campaign_create.lua), so none of its seqs is issued twice. The way out is
the operator's: a campaign under another id, or Redis restored from a copy that holds the
campaign (reconcile.lua then counts the tombstone's figures as marks and drops it).

Restored: confirmations and releases this process acknowledged (it remembers the newest
100,000) whose reservation the new primary still holds are done again (fo_restored, the
admin view's `failover_restored`). Nothing else: the marks say what is missing, not what it
was (a lost ticket's customer joins again and gets a new seq; see docs/contract-notes.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import msgpack
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gate.audit.store import AuditStore, segment_directories
from gate.config import Config
from gate.errors import GateError, Unavailable
from gate.marks import Marks
from gate.redis_client import NotReconciled, RecheckedConnection, guarded
from gate.room import Room
from gate.room.keys import PREFIX, REGISTRY, CampaignKeys
from gate.room.scripts import Scripts

log = logging.getLogger("gate")

POLL_S = 0.25
# Every gate process notices a new primary within about one POLL_S (or at its next
# connection): the marks of all of them are in before the first reconciles.
SETTLE_S = 1.0
# A process that started reconciling and died stops holding the others after this.
PENDING_LEASE_S = 15.0
NOTES_TTL_S = 3600
HOLD_FIELD = "failover_hold"
BROKEN_FIELD = "failover_log_broken"


class Reconciling(Unavailable):
    """A new Redis primary is being reconciled: nothing is written until it is."""

    code = "reconciling"

    def __init__(self) -> None:
        super().__init__(
            "the gate is checking a new Redis primary; keep your ticket and retry",
            retry_after_s=1,
        )


class CampaignHeld(Unavailable):
    """Acknowledged state of this campaign was lost in a failover: an operator must look."""

    code = "campaign_held"

    def __init__(self) -> None:
        super().__init__(
            "this campaign is held after a Redis failover; keep your ticket and retry later",
            retry_after_s=30,
        )


@dataclass(frozen=True)
class Identity:
    run_id: str
    role: str
    replid: str
    offset: int

    @classmethod
    def from_info(cls, server: Any, replication: Any) -> Identity:
        """From the replies to INFO server and INFO replication (parsed or raw)."""
        s, r = parse_info(server), parse_info(replication)
        return cls(
            s.get("run_id", ""),
            r.get("role", ""),
            r.get("master_replid", ""),
            int(r.get("master_repl_offset", "0") or 0),
        )


def parse_info(raw: Any) -> dict[str, str]:
    """INFO's text as a dict (redis-py parses it itself on a client; a raw connection
    returns the bulk string)."""
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not name.startswith("#"):
            out[name.strip()] = value.strip()
    return out


class PrimaryIdentity:
    """The run id that writes may go to; new connections are checked against it."""

    def __init__(self) -> None:
        self.accepted: str | None = None
        self.noticed: Callable[[str], None] | None = None  # set by the watch
        # Only while a watch runs to reconcile (a gate without background tasks follows
        # whatever primary answers, as before).
        self.enforcing = False
        # Redis Cluster (gate.cluster_failover): the run ids of the masters this process
        # has reconciled with; a connection to any other master is refused, one to a
        # replica is let through (it takes no write: it answers MOVED).
        self.cluster = False
        self.accepted_masters: set[str] | None = None

    async def check_connection(self, connection: AbstractConnection) -> None:
        """redis-py's connect hook: the usual handshake, then INFO server."""
        await connection.on_connect()
        if self.cluster:
            await self._check_cluster_node(connection)
            return
        await connection.send_command("INFO", "server")
        run_id = parse_info(await connection.read_response()).get("run_id", "")
        if self.accepted is None or not self.enforcing:
            self.accepted = run_id
            return
        if run_id != self.accepted:
            if self.noticed is not None:
                self.noticed(run_id)
            # A connection error: the pool drops it, the caller answers 503.
            raise RedisConnectionError("a new Redis primary is being reconciled")

    async def _check_cluster_node(self, connection: AbstractConnection) -> None:
        await connection.send_command("INFO", "server")
        await connection.send_command("ROLE")
        run_id = parse_info(await connection.read_response()).get("run_id", "")
        role = await connection.read_response()
        master = isinstance(role, list) and bool(role) and role[0] in (b"master", "master")
        if not master and isinstance(connection, RecheckedConnection):
            connection.recheck = True  # it may be promoted while it waits in the pool
        accepted = self.accepted_masters
        if not master or accepted is None or not self.enforcing or run_id in accepted:
            return
        if self.noticed is not None:
            self.noticed(run_id)
        raise NotReconciled("a new Redis Cluster master is being reconciled")


@dataclass
class FailoverStats:
    failovers: int = 0
    reconciled: int = 0
    lost: dict[str, int] | None = None


class FailoverWatch:
    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        marks: Marks,
        identity: PrimaryIdentity,
        segments_dir: Path | None,
        *,
        poll_s: float = POLL_S,
        settle_s: float = SETTLE_S,
    ):
        self.redis = redis  # its own connection: not subject to the identity check
        self.scripts = scripts
        self.marks = marks
        self.identity = identity
        self.segments_dir = segments_dir
        self.poll_s = poll_s
        self.settle_s = settle_s
        self.token = secrets.token_hex(8)
        self.known: Identity | None = None
        self.holding = False
        self.suspected: str | None = None
        self.held: dict[str, dict[str, Any]] = {}
        self.broken: set[str] = set()
        # held campaigns the primary lacks whole (a tombstone, fg:{c}:fo_gone), also broken
        self.lost: set[str] = set()
        self.failovers = 0
        self.lost_campaigns: dict[str, int] = {}
        # Called with a campaign that lost entries: caches keyed by entry index drop it.
        self.forget: list[Callable[[str], None]] = []
        # Does confirmations and releases again (on this watch's connection), set by the gate.
        self.room: Room | None = None
        identity.noticed = self._noticed

    # -- what the listeners ask ------------------------------------------------------

    def not_ready(self) -> str | None:
        return "reconciling" if self.holding else None

    def is_reconciling(self, campaign: str | None) -> bool:
        """Whether `campaign`'s writes wait for a reconciliation (all of them, here)."""
        return self.holding

    def reconciling_any(self) -> bool:
        return self.holding

    def refuse(self, campaign: str | None, *, allocates: bool) -> None:
        """503 while reconciling; for a held campaign, 503 for what allocates (claim,
        subscribe) and, when its log cannot continue, for every write."""
        if self.holding:
            raise Reconciling()
        if campaign is None:
            return
        if campaign in self.broken or (allocates and campaign in self.held):
            raise CampaignHeld()

    def is_lost(self, campaign: str | None) -> bool:
        """Whether `campaign` is held because a failover lost it whole: where it would be
        unknown (404), it is held (503 campaign_held) instead."""
        return campaign is not None and campaign in self.lost

    def _noticed(self, run_id: str) -> None:
        if not self.holding:
            log.warning("event=failover_suspected new_run_id=%s", run_id)
        self.holding = True
        self.suspected = run_id

    # -- the loop ----------------------------------------------------------------------

    # What a tick may fail with and the loop outlives. Redis away: the cache already
    # fails the gate closed; after it, the identity is checked again before anything is
    # written.
    watch_errors: ClassVar[tuple[type[Exception], ...]] = (GateError, RedisError, OSError)

    async def run(self) -> None:
        self.identity.enforcing = True
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except self.watch_errors as exc:
                log.debug("event=failover_watch_error error=%s", exc.__class__.__name__)
            await self._pause()

    async def _pause(self) -> None:
        """Until the next tick."""
        await asyncio.sleep(self.poll_s)

    async def read_identity(self) -> Identity:
        async with guarded():
            pipe = self.redis.pipeline(transaction=False)
            pipe.info("server")
            pipe.info("replication")
            server, replication = await pipe.execute()
        return Identity.from_info(server, replication)

    async def tick(self) -> None:
        now = await self.read_identity()
        if self.known is None:
            if self.identity.accepted not in (None, now.run_id):
                self._noticed(now.run_id)  # a pool saw another primary before the watch
            else:
                self.known = now
                self.identity.accepted = now.run_id
                log.info("event=redis_primary run_id=%s", now.run_id)
        if now.role != "master":
            # A demoted primary: writes fail READONLY anyway; hold until a primary answers.
            self._noticed(now.run_id)
            return
        known = self.known
        changed = known is None or now.run_id != known.run_id or now.replid != known.replid
        if changed or self.holding:
            await self.reconcile(known, now)
        else:
            await self.observe()

    async def observe(self) -> None:
        """The sealed size of every campaign (a checkpoint may have been served), and
        which campaigns are held (another process may have held them)."""
        async with guarded():
            members = await self.redis.smembers(REGISTRY)
            campaigns = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
            pipe = self.redis.pipeline(transaction=False)
            for campaign in campaigns:
                k = CampaignKeys(campaign)
                pipe.hget(k.frontier, "size")
                pipe.hmget(k.meta, [HOLD_FIELD, BROKEN_FIELD])
                pipe.get(k.failover_gone)
            rows = await pipe.execute()
        held: dict[str, dict[str, Any]] = {}
        broken: set[str] = set()
        lost: set[str] = set()
        for i, campaign in enumerate(campaigns):
            size, (report, is_broken), gone = rows[3 * i : 3 * i + 3]
            if size is not None:
                self.marks.sealed(campaign, int(size))
            if gone is not None and report is None:
                held[campaign] = _report(gone)
                broken.add(campaign)
                lost.add(campaign)
            elif report is not None:
                held[campaign] = _report(report)
                if is_broken is not None:
                    broken.add(campaign)
        self.held, self.broken, self.lost = held, broken, lost

    # -- reconciliation ----------------------------------------------------------------

    async def reconcile(self, old: Identity | None, new: Identity) -> None:
        if not self.holding:
            log.warning(
                "event=failover_detected old_run_id=%s new_run_id=%s",
                old.run_id if old else "",
                new.run_id,
            )
        self.holding = True
        started = time.monotonic()
        notes = f"{PREFIX}:failover:{new.run_id}"
        pending = f"{notes}:pending"
        old_run = old.run_id if old else ""
        await self._record_disk_sizes()
        now_us = await self._redis_us()
        async with guarded():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hsetnx(notes, "first_us", now_us)
            pipe.expire(notes, NOTES_TTL_S)
            pipe.zadd(pending, {self.token: now_us + int(PENDING_LEASE_S * 1e6)})
            pipe.expire(pending, NOTES_TTL_S)
            for campaign, marks in self.marks.campaigns.items():
                pipe.hset(CampaignKeys(campaign).failover_marks, self.token, marks.encode(old_run))
            pipe.hget(notes, "first_us")
            *_, first_raw = await pipe.execute()
        first_us = int(first_raw or now_us)
        # Wait for every process's marks: SETTLE_S of Redis time after the first notice.
        settled_us = first_us + int(self.settle_s * 1e6)
        while True:
            now_us = await self._redis_us()
            if now_us >= settled_us:
                break
            await asyncio.sleep(min(self.poll_s, (settled_us - now_us) / 1e6))
        lost = 0
        for campaign in sorted(self.marks.campaigns):
            lost += await self.reconcile_campaign(campaign, new.run_id, first_us)
        # Resume once every process that noticed this primary has reconciled.
        async with guarded():
            await self.redis.zrem(pending, self.token)
        while True:
            now_us = await self._redis_us()
            async with guarded():
                others = await self.redis.zcount(pending, now_us, "+inf")
            if not others:
                break
            await asyncio.sleep(min(self.poll_s, 0.05))
        await self.observe()
        self.failovers += 1
        self.known = new
        self.identity.accepted = new.run_id
        self.suspected = None
        self.holding = False
        log.info(
            "event=failover_reconciled old_run_id=%s new_run_id=%s campaigns=%d lost=%d "
            "held_ms=%.0f",
            old_run,
            new.run_id,
            len(self.marks.campaigns),
            lost,
            (time.monotonic() - started) * 1000,
        )

    async def reconcile_campaign(self, campaign: str, run_id: str, first_us: int) -> int:
        """reconcile.lua for one campaign (every process's marks); 1 when it lost
        something, after the report is logged and what can be restored is."""
        k = CampaignKeys(campaign)
        async with guarded():
            reply = await self.scripts.call(
                self.redis,
                "reconcile",
                [
                    k.meta,
                    k.audit,
                    k.failover_marks,
                    k.revoked,
                    k.failover_restored,
                    k.failover_gone,
                ],
                [run_id, first_us],
            )
        lost = 0
        if int(reply[0]) == 1 and int(reply[1]) == 1:
            lost = 1
            report = self._lost(campaign, reply[2])
            if report.get("campaign_missing") is True:
                # The new primary may lack the registry's entry too: without it no process
                # would find the tombstone (observe and the admin list read the registry).
                async with guarded():
                    await self.redis.sadd(REGISTRY, campaign)
        if int(reply[0]) == 1:
            await self._restore(campaign)
        return lost

    def _lost(self, campaign: str, raw: Any) -> dict[str, Any]:
        report = _report(raw)
        self.lost_campaigns[campaign] = self.lost_campaigns.get(campaign, 0) + 1
        for forget in self.forget:
            forget(campaign)

        def span(name: str) -> str:
            value = report.get(name)
            return f"{value[0]}..{value[1]}" if isinstance(value, list) else "-"

        res = report.get("reservations")
        log.error(
            "event=failover_lost campaign=%s seqs=%s reservations=%s audit=%s log_broken=%s "
            "campaign_missing=%s old_run_id=%s new_run_id=%s action=held",
            campaign,
            span("seqs"),
            f"r{res[0]}..r{res[1]}" if isinstance(res, list) else "-",
            span("audit"),
            "yes" if report.get("log_broken") else "no",
            "yes" if report.get("campaign_missing") else "no",
            report.get("previous_primary", ""),
            report.get("primary", ""),
        )
        return report

    async def _restore(self, campaign: str) -> None:
        """Do again the confirmations and releases this process acknowledged that the new
        primary lacks (the reservation is there, still held): the core system acted on
        them. One whose reservation is gone, or ended otherwise, is recorded as lost."""
        journal = self.marks.of(campaign).finished
        if self.room is None or not journal:
            return
        k = CampaignKeys(campaign)
        rids = list(journal)
        async with guarded():
            held, broken = await self.redis.hmget(k.meta, [HOLD_FIELD, BROKEN_FIELD])
            records = await self.redis.hmget(k.reservations, rids)
        if held is None:
            return  # nothing lost here
        outcomes: dict[str, str] = {}
        for rid, raw in zip(rids, records, strict=True):
            script, args = journal[rid]
            wanted = "confirmed" if script == "confirm" else "released"
            state = _reservation_state(raw)
            if state == wanted:
                continue
            if broken is not None:
                # Nothing may be appended to a log that cannot continue: the operator
                # must still be told which acknowledged finish the new primary lacks.
                outcomes[rid] = f"lost: {wanted}, now {state or 'missing'}; the log cannot continue"
            elif state != "held":
                outcomes[rid] = f"lost: {wanted}, then {state or 'missing'} on the new primary"
            else:
                if script == "confirm":
                    outcome = await self.room.confirm(campaign, rid, *args)
                else:
                    outcome = await self.room.release(campaign, rid, *args)
                outcomes[rid] = f"{wanted} again" if outcome.ok else f"lost: now {outcome.state}"
            log.log(
                logging.INFO if outcomes[rid].endswith("again") else logging.ERROR,
                "event=failover_restore campaign=%s reservation=%s outcome=%s",
                campaign,
                rid,
                outcomes[rid].replace(" ", "_"),
            )
        if outcomes:
            async with guarded():
                await self.redis.hset(k.failover_restored, mapping=outcomes)  # type: ignore[arg-type]

    async def _record_disk_sizes(self) -> None:
        """Segment files on disk are sealed entries too (and outlive Redis)."""
        if self.segments_dir is None:
            return
        for campaign in list(self.marks.campaigns):
            with contextlib.suppress(GateError, OSError, ValueError):
                store = AuditStore(self.redis, campaign, self.segments_dir)
                _, size = await store.bounds()
                segments = await store.segments()
                if not size:
                    # The new primary lacks the campaign's meta, whose seed commitment names
                    # the directory: every one of this id counts (more is held, never less).
                    segments = []
                    for directory in segment_directories(self.segments_dir, campaign):
                        store.directory = directory
                        segments += await store.segments()
                if segments:
                    self.marks.sealed(campaign, max(s.last for s in segments))

    async def _redis_us(self) -> int:
        async with guarded():
            seconds, micros = await self.redis.time()
        return int(seconds) * 1_000_000 + int(micros)


def _report(raw: Any) -> dict[str, Any]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        value = json.loads(text)
    except ValueError:
        return {"unreadable": text}
    if not isinstance(value, dict):
        return {"unreadable": text}
    # Lua's cjson writes an empty table as {}: a range that is not there is null.
    for name in ("seqs", "reservations", "audit"):
        if not isinstance(value.get(name), list):
            value[name] = None
    return value


def _reservation_state(raw: Any) -> str:
    """A reservation record's state (msgpack {seq, amount, state, ...}), "" when absent."""
    if not isinstance(raw, bytes):
        return ""
    try:
        record = msgpack.unpackb(raw, raw=True)
        state = record[2]
    except (ValueError, IndexError, TypeError, msgpack.UnpackException):
        return "unreadable"
    return state.decode() if isinstance(state, bytes) else str(state)


async def restored_report(redis: Redis, campaign: str) -> dict[str, str]:
    """What became of the confirmations and releases a failover lost (fo_restored)."""
    async with guarded():
        raw = await redis.hgetall(CampaignKeys(campaign).failover_restored)
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def lost_report(redis: Redis, campaign: str) -> dict[str, Any] | None:
    """The report of a campaign a failover lost whole (its tombstone), None if none."""
    async with guarded():
        raw = await redis.get(CampaignKeys(campaign).failover_gone)
    return None if raw is None else _report(raw)


def hold_report(meta: dict[str, str]) -> dict[str, Any] | None:
    """A campaign's failover report (meta failover_hold), for the admin view."""
    raw = meta.get(HOLD_FIELD)
    if raw is None:
        return None
    report = _report(raw)
    report["log_broken"] = BROKEN_FIELD in meta
    return report


def config_is_cluster(config: Config) -> bool:
    return config.redis_url.startswith("redis+cluster://")


class FailoverCollector(Collector):
    """fairgate_failovers_total, fairgate_failover_reconciling, fairgate_failover_lost."""

    def __init__(self, watch: FailoverWatch):
        self.watch = watch

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        total = CounterMetricFamily(
            "fairgate_failovers", "new Redis primaries this process reconciled with"
        )
        total.add_metric([], self.watch.failovers)
        reconciling = GaugeMetricFamily(
            "fairgate_failover_reconciling", "1 while a new Redis primary is reconciled"
        )
        reconciling.add_metric([], 1.0 if self.watch.reconciling_any() else 0.0)
        lost = GaugeMetricFamily(
            "fairgate_failover_lost",
            "1 while a campaign is held because a failover lost acknowledged state",
            labels=["campaign"],
        )
        for campaign in sorted(self.watch.held):
            lost.add_metric([campaign], 1.0)
        yield total
        yield reconciling
        yield lost
