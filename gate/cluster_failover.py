"""Redis Cluster: notice a new master for a campaign's slot, and reconcile that campaign
before it admits or allocates again, as gate.failover does for a single primary.

In a cluster there is no one primary: each campaign's keys live in one slot (its hash
tag), served by one master. The identity that matters is per campaign: the run id and
replication id of the master that owns its slot. `ClusterFailoverWatch` reads the
topology (CLUSTER SLOTS) and every master's identity every `POLL_S` on its own client. A
campaign whose slot's master is another run id than before (a replica took the slots
over, the node restarted, the slot moved) or another replication id (a demoted master
promoted again) is reconciled on its new master, alone:

- its writes answer 503 `reconciling` (the other campaigns, on other masters or on the
  same master but unchanged, are served as before; /readyz stays 200: the process is
  fine, and fairgate_failover_reconciling says 1);
- the new master's connections are refused by every gate connection (PrimaryIdentity,
  cluster mode: a new connection to a master whose run id this process has not accepted
  fails, one to a replica is let through and checked again before its next command, as
  the replica may be promoted meanwhile) until the master's changed campaigns are
  reconciled, so no write reaches it first however soon after the switch it is sent;
- this process's marks go to the campaign's fo_marks on the new master, and after
  SETTLE_S of that master's TIME from the first process's notice (per campaign:
  fg:{c}:fo_seen:<run id>, fg:{c}:fo_pending:<run id>) lua/reconcile.lua runs, exactly as
  on a single primary: nothing missing resumes; something missing holds the campaign
  with its report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from gate.errors import GateError, Unavailable
from gate.failover import (
    NOTES_TTL_S,
    PENDING_LEASE_S,
    FailoverWatch,
    Identity,
    Reconciling,
)
from gate.redis_client import guarded
from gate.room.keys import PREFIX, REGISTRY, CampaignKeys

log = logging.getLogger("gate")


def notes_keys(campaign: str, run_id: str) -> tuple[str, str]:
    """The campaign's failover notes on its new master (in its slot): when the first
    process noticed it (hash, first_us), and the processes still reconciling (zset)."""
    return (
        f"{PREFIX}:{{{campaign}}}:fo_seen:{run_id}",
        f"{PREFIX}:{{{campaign}}}:fo_pending:{run_id}",
    )


class ClusterFailoverWatch(FailoverWatch):
    """The failover watch of a Redis Cluster: one identity per campaign (its slot's
    master's), one campaign held while it is reconciled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.identity.cluster = True
        # campaign -> (node name, identity) of the master that served its slot when last
        # reconciled (or first seen)
        self.owners: dict[str, tuple[str, Identity]] = {}
        self.reconciling: set[str] = set()
        self._wake = asyncio.Event()

    # -- what the listeners ask ------------------------------------------------------

    def not_ready(self) -> str | None:
        return None  # one campaign reconciling does not make the process unready

    def is_reconciling(self, campaign: str | None) -> bool:
        return campaign is not None and campaign in self.reconciling

    def reconciling_any(self) -> bool:
        return bool(self.reconciling)

    def refuse(self, campaign: str | None, *, allocates: bool) -> None:
        if self.is_reconciling(campaign):
            raise Reconciling()
        super().refuse(campaign, allocates=allocates)

    def _noticed(self, run_id: str) -> None:
        # A gate connection met a master it has not accepted: the watch finds which
        # campaigns it serves at its next tick; the connection was refused meanwhile.
        if self.suspected != run_id:
            log.warning("event=failover_suspected new_run_id=%s", run_id)
        self.suspected = run_id
        self._wake.set()  # look now, not at the next poll

    # -- the loop ----------------------------------------------------------------------

    watch_errors = (*FailoverWatch.watch_errors, RedisClusterException)

    async def _pause(self) -> None:
        """Until the next tick: the poll interval, or less where a connection met a new
        master (`_noticed`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_s)
        self._wake.clear()

    def _cluster(self) -> RedisCluster:
        return cast(RedisCluster, self.redis)

    async def tick(self) -> None:
        cluster = self._cluster()
        try:
            await cluster.initialize()  # the client's first topology and command table
            await cluster.nodes_manager.initialize()  # the topology as the cluster says now
        except RedisClusterException as exc:  # no node answers CLUSTER SLOTS
            raise Unavailable() from exc
        async with guarded():
            members = await self.redis.smembers(REGISTRY)
        campaigns = {m.decode() if isinstance(m, bytes) else str(m) for m in members}
        campaigns |= set(self.marks.campaigns)
        identities: dict[str, Identity] = {}
        nodes: dict[str, ClusterNode] = {}
        for node in cluster.get_primaries():
            try:
                identities[node.name] = await self._identity_of(node)
                nodes[node.name] = node
            except (GateError, RedisError, OSError):
                continue  # down: its slots answer 503 until a replica takes them over
        changed: dict[str, list[str]] = {}
        for campaign in sorted(campaigns):
            owner = cluster.get_node_from_key(CampaignKeys(campaign).meta)
            now = identities.get(owner.name) if owner is not None else None
            if owner is None or now is None or now.role != "master":
                continue  # a topology in motion: the next tick sees where it settles
            known = self.owners.get(campaign)
            if known is None:
                self.owners[campaign] = (owner.name, now)
            elif (known[1].run_id, known[1].replid) != (now.run_id, now.replid):
                changed.setdefault(owner.name, []).append(campaign)
        for names in changed.values():
            self.reconciling.update(names)
        self._accept(identities, exclude=set(changed))
        if changed:
            await asyncio.gather(
                *(
                    self._reconcile_on(nodes[name], identities[name], names)
                    for name, names in changed.items()
                )
            )
            self._accept(identities, exclude=set())
        if self.known is None and identities:
            log.info(
                "event=redis_cluster_masters run_ids=%s",
                ",".join(sorted(i.run_id for i in identities.values())),
            )
            self.known = next(iter(identities.values()))
        await self.observe()

    def _accept(self, identities: dict[str, Identity], *, exclude: set[str]) -> None:
        """Gate connections may go to these masters (a replica's are let through anyway)."""
        self.identity.accepted_masters = {
            i.run_id for name, i in identities.items() if i.role == "master" and name not in exclude
        }

    async def _identity_of(self, node: ClusterNode) -> Identity:
        server, replication = await self._on_node(
            node, [("INFO", "server"), ("INFO", "replication")]
        )
        return Identity.from_info(server, replication)

    async def _on_node(self, node: ClusterNode, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Commands on one connection of `node` (this watch's client: no identity check),
        their raw replies."""
        connection = node.acquire_connection()
        try:
            async with guarded():
                await connection.send_packed_command(connection.pack_commands(commands))
                return [await connection.read_response() for _ in commands]
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            node.release(connection)

    async def _time_on(self, node: ClusterNode) -> int:
        (reply,) = await self._on_node(node, [("TIME",)])
        seconds, micros = reply
        return int(seconds) * 1_000_000 + int(micros)

    # -- reconciliation ----------------------------------------------------------------

    async def _reconcile_on(self, node: ClusterNode, new: Identity, campaigns: list[str]) -> None:
        started = time.monotonic()
        for campaign in campaigns:
            log.warning(
                "event=failover_detected campaign=%s old_run_id=%s new_run_id=%s node=%s",
                campaign,
                self.owners[campaign][1].run_id,
                new.run_id,
                node.name,
            )
        await self._record_disk_sizes()
        now_us = await self._time_on(node)
        async with guarded():
            pipe = self.redis.pipeline(transaction=False)
            for campaign in campaigns:
                seen, pending = notes_keys(campaign, new.run_id)
                pipe.hsetnx(seen, "first_us", now_us)
                pipe.expire(seen, NOTES_TTL_S)
                pipe.zadd(pending, {self.token: now_us + int(PENDING_LEASE_S * 1e6)})
                pipe.expire(pending, NOTES_TTL_S)
                marks = self.marks.campaigns.get(campaign)
                if marks is not None:
                    old_run = self.owners[campaign][1].run_id
                    pipe.hset(
                        CampaignKeys(campaign).failover_marks, self.token, marks.encode(old_run)
                    )
                pipe.hget(seen, "first_us")
            replies = await pipe.execute()
        firsts: dict[str, int] = {}
        at = 0
        for campaign in campaigns:
            at += 5 if campaign in self.marks.campaigns else 4
            firsts[campaign] = int(replies[at] or now_us)
            at += 1
        # Every process's marks are in SETTLE_S of the master's time after the first notice.
        settled_us = max(firsts.values()) + int(self.settle_s * 1e6)
        while True:
            now_us = await self._time_on(node)
            if now_us >= settled_us:
                break
            await asyncio.sleep(min(self.poll_s, (settled_us - now_us) / 1e6))
        lost = 0
        for campaign in campaigns:
            if campaign in self.marks.campaigns:
                lost += await self.reconcile_campaign(campaign, new.run_id, firsts[campaign])
        # Resume once every process that noticed this master has reconciled.
        async with guarded():
            pipe = self.redis.pipeline(transaction=False)
            for campaign in campaigns:
                pipe.zrem(notes_keys(campaign, new.run_id)[1], self.token)
            await pipe.execute()
        while True:
            now_us = await self._time_on(node)
            async with guarded():
                pipe = self.redis.pipeline(transaction=False)
                for campaign in campaigns:
                    pipe.zcount(notes_keys(campaign, new.run_id)[1], now_us, "+inf")
                others = sum(int(n) for n in await pipe.execute())
            if not others:
                break
            await asyncio.sleep(min(self.poll_s, 0.05))
        old_runs = sorted({self.owners[c][1].run_id for c in campaigns})
        for campaign in campaigns:
            self.owners[campaign] = (node.name, new)
        self.reconciling.difference_update(campaigns)
        self.failovers += 1
        log.info(
            "event=failover_reconciled old_run_id=%s new_run_id=%s node=%s campaigns=%d "
            "lost=%d held_ms=%.0f",
            ",".join(old_runs),
            new.run_id,
            node.name,
            len(campaigns),
            lost,
            (time.monotonic() - started) * 1000,
        )
