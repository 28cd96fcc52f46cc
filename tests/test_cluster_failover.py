"""Redis Cluster: a master's replica takes its slots over without the master's last
acknowledged writes; the gate notices it for the campaigns of those slots only, holds
them (503 `reconciling`), reconciles on the new master with every process's marks, and
never gives a seq or a reservation id out twice. The other masters' campaigns go on.

A real 3-master + 3-replica cluster (tests/redis_cluster.py) and a real `gate serve` with
redis_wait_replicas = 0 (allowed only with redis_replica_loss = "continue": the documented
escape). The replica is made to lag for real: its master's default user may no longer
PSYNC/SYNC and the replication link is cut, so writes acknowledged after it never reach the
replica; then `CLUSTER FAILOVER TAKEOVER` on that replica.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import redis as sync_redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection

from gate.failover import PrimaryIdentity
from gate.redis_client import NotReconciled, connect
from gate.room.keys import CampaignKeys
from tests.helpers import ADMIN_TOKEN, GateProcess, as_customer, spec, wait_for
from tests.redis_cluster import Cluster, gate_on, running_cluster

pytestmark = pytest.mark.slow  # a cluster, a takeover, a clean failover: 17-20 s


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster-fo")) as started:
        yield started


@pytest.fixture(scope="module")
def gate(
    cluster: Cluster, keys_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GateProcess]:
    env = {
        # No checkpoint after the first: the sealed log stays behind the lost writes.
        "GATE_SEAL_INTERVAL_MS": "600000",
        "GATE_REDIS_WAIT_REPLICAS": "0",
        "GATE_REDIS_REPLICA_LOSS": "continue",
    }
    with gate_on(cluster, tmp_path_factory.mktemp("cluster-fo-gate"), keys_file, env) as process:
        yield process


@pytest.fixture
async def http(gate: GateProcess) -> AsyncIterator[dict[str, aiohttp.ClientSession]]:
    async with (
        aiohttp.ClientSession(base_url=gate.url) as public,
        aiohttp.ClientSession(
            base_url=gate.admin_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as admin,
    ):
        yield {"public": public, "admin": admin}


def on_two_masters(cluster: Cluster, prefix: str) -> tuple[str, str]:
    """Two campaign ids whose slots are on two different masters."""
    names = [f"{prefix}{i}" for i in range(20)]
    first = names[0]
    master = cluster.master_of(CampaignKeys(first).meta)
    second = next(n for n in names if cluster.master_of(CampaignKeys(n).meta) != master)
    return first, second


def replica_of(cluster: Cluster, master: int) -> int:
    with cluster.node(master).client() as client:
        info = client.info("replication")
    return int(info["slave0"]["port"])


def info_of(cluster: Cluster, port: int, section: str) -> dict[str, Any]:
    with cluster.node(port).client() as client:
        return dict(client.info(section))


class Campaign:
    def __init__(self, name: str, http: dict[str, aiohttp.ClientSession]):
        self.name = name
        self.public = http["public"]
        self.admin = http["admin"]
        self.tickets: dict[str, tuple[int, str]] = {}

    async def create(self) -> None:
        body = spec(self.name)
        body["quota"] = {"unit": "item", "total": 100}
        body["admission"]["reservation_ttl_s"] = 600
        r = await self.admin.post("/admin/campaigns", json=body)
        assert r.status == 201, await r.text()

    async def join(self, customer: str) -> aiohttp.ClientResponse:
        return await self.public.post(f"/q/{self.name}/join", headers=as_customer(customer))

    async def joined(self, customer: str) -> int:
        r = await self.join(customer)
        assert r.status in (200, 201), await r.text()
        body = await r.json()
        self.tickets[customer] = (int(body["seq"]), str(body["ticket"]))
        return int(body["seq"])

    async def pass_of(self, customer: str) -> str:
        found: dict[str, Any] = {}

        async def admitted() -> bool:
            r = await self.public.get(
                f"/q/{self.name}/status",
                params={"ticket": self.tickets[customer][1]},
                headers=as_customer(customer),
            )
            if r.status == 200:
                found.update(await r.json())
            return found.get("state") == "admitted"

        await wait_for(admitted, 10, f"{customer} admitted")
        self.public.cookie_jar.clear()
        return str(found["pass"])

    async def claim(self, customer: str, pass_token: str, key: str) -> aiohttp.ClientResponse:
        return await self.public.post(
            f"/q/{self.name}/claim",
            json={"amount": 1, "idempotency_key": key},
            headers=as_customer(customer, **{"X-Gate-Pass": pass_token}),
        )

    async def reservation(self, customer: str, pass_token: str, key: str) -> int:
        r = await self.claim(customer, pass_token, key)
        assert r.status == 201, await r.text()
        return int(str((await r.json())["reservation"])[1:].partition("-")[0])

    async def view(self) -> dict[str, Any]:
        r = await self.admin.get(f"/admin/campaigns/{self.name}")
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


def cut_replication(cluster: Cluster, master: int, replica: int) -> None:
    """The replica stops receiving the master's writes: the master's default user may no
    longer PSYNC or SYNC, and the replication link is cut (the replica retries, refused)."""
    with cluster.node(master).client() as client:
        client.execute_command("ACL", "SETUSER", "default", "-psync", "-sync")
        client.execute_command("CLIENT", "KILL", "TYPE", "replica")
    deadline = time.monotonic() + 10
    while info_of(cluster, replica, "replication").get("master_link_status") != "down":
        assert time.monotonic() < deadline, "the replication link was not cut"
        time.sleep(0.02)


def in_sync(cluster: Cluster, master: int) -> bool:
    info = info_of(cluster, master, "replication")
    slave = info.get("slave0")
    return isinstance(slave, dict) and int(slave["offset"]) == int(info["master_repl_offset"])


async def test_takeover_by_a_lagging_replica_holds_only_its_campaigns(
    cluster: Cluster, gate: GateProcess, http: dict[str, aiohttp.ClientSession]
) -> None:
    x_name, y_name = on_two_masters(cluster, "lag")
    x, y = Campaign(x_name, http), Campaign(y_name, http)
    await x.create()
    await y.create()
    assert [await x.joined(c) for c in "abc"] == [1, 2, 3]
    passes = {c: await x.pass_of(c) for c in "abc"}
    assert await x.reservation("a", passes["a"], "k-a") == 1
    assert [await y.joined(c) for c in "pq"] == [1, 2]

    master = cluster.master_of(CampaignKeys(x.name).meta)
    replica = replica_of(cluster, master)
    old_run_id = info_of(cluster, master, "server")["run_id"]
    await wait_for(lambda: asyncio.to_thread(in_sync, cluster, master), 10, "replica in sync")
    cut_replication(cluster, master, replica)
    try:
        # Acknowledged on the master only: seqs 4..6 and r2.
        assert [await x.joined(c) for c in "def"] == [4, 5, 6]
        assert await x.reservation("b", passes["b"], "k-b") == 2
        assert await y.joined("r") == 3

        with cluster.node(replica).client() as client:
            client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        await asyncio.to_thread(cluster.wait_promoted, master, CampaignKeys(x.name).meta, 20)
        new_run_id = info_of(cluster, replica, "server")["run_id"]

        # While x is reconciled, y's customers are served (another master's slot).
        y_answers: list[int] = []
        y_refused: list[tuple[int, str, int]] = []
        x_answers: list[tuple[int, str]] = []
        seq_g: list[int] = []

        async def x_answers_again() -> bool:
            r = await y.join(f"y{len(y_answers)}")
            y_answers.append(r.status)
            if r.status != 201:
                y_refused.append(
                    (r.status, (await r.json()).get("error", {}).get("code", ""), len(x_answers))
                )
            r = await x.join("g")
            body = await r.json()
            if r.status in (200, 201):
                seq_g.append(int(body["seq"]))
                return True
            x_answers.append((r.status, body.get("error", {}).get("code", "")))
            return False

        await wait_for(x_answers_again, 20, "a join on x after the takeover", interval_s=0.02)
    finally:
        with cluster.node(master).client() as client:
            client.execute_command("ACL", "SETUSER", "default", "+@all")
    given = {seq for seq, _ in x.tickets.values()}
    print(
        f"\nx={x.name} seq_g={seq_g} x_answers_before={sorted(set(x_answers))} "
        f"({len(x_answers)}) y_answers={sorted(set(y_answers))} ({len(y_answers)}) "
        f"y_refused={y_refused}"
    )
    assert seq_g[0] not in given, f"seq {seq_g[0]} issued twice (given: {sorted(given)})"
    assert seq_g == [7]
    assert (503, "reconciling") in x_answers, x_answers
    # y is served while x is held: its joins go on (most of them 201; a refresh of the
    # cache that met the new master's refused connection before the watch noticed may
    # have made one or two of them 503 + Retry-After `unavailable`: 0-1 of 17-26 measured).
    assert all(status == 503 and code == "unavailable" for status, code, _ in y_refused)
    assert len(y_refused) <= len(y_answers) // 3, (y_refused, y_answers)
    assert y_answers.count(201) >= 2 * len(y_answers) // 3, y_answers

    shown = await x.view()
    report = shown["failover_hold"]
    assert shown["state"] == "paused" and report is not None, shown
    assert report["seqs"] == [4, 6] and report["reservations"] == [2, 2], report
    assert report["previous_primary"] == old_run_id and report["primary"] == new_run_id
    assert report["log_broken"] is False
    other = await y.view()
    assert other["state"] == "open" and other["failover_hold"] is None, other
    log = gate.log_path.read_text()
    assert re.search(
        rf"event=failover_lost campaign={x.name} seqs=4\.\.6 reservations=r2\.\.r2 ", log
    ), log[-3000:]
    assert f"event=failover_lost campaign={y.name}" not in log

    # Held: no allocation until an operator resumes; then r2 is never given again.
    r = await x.claim("c", passes["c"], "k-c")
    assert r.status == 503 and (await r.json())["error"]["code"] == "campaign_held"
    r = await x.admin.post(f"/admin/campaigns/{x.name}/resume", json={})
    assert r.status == 200, await r.text()
    claimed: list[int] = []

    async def claims() -> bool:
        r = await x.claim("c", passes["c"], "k-c")
        if r.status == 503:
            return False
        assert r.status == 201, await r.text()
        claimed.append(int(str((await r.json())["reservation"])[1:].partition("-")[0]))
        return True

    await wait_for(claims, 5, "a claim once resumed", interval_s=0.05)
    assert claimed == [3]
    assert await y.joined("s") == 4 + len([s for s in y_answers if s in (200, 201)])


async def test_a_clean_master_failover_resumes_by_itself(
    cluster: Cluster, gate: GateProcess, http: dict[str, aiohttp.ClientSession]
) -> None:
    await asyncio.to_thread(cluster.wait_healthy, 30)
    name, _ = on_two_masters(cluster, "clean")
    z = Campaign(name, http)
    await z.create()
    assert [await z.joined(c) for c in "ab"] == [1, 2]
    master = cluster.master_of(CampaignKeys(z.name).meta)
    replica = replica_of(cluster, master)
    with cluster.node(replica).client() as client:
        client.execute_command("CLUSTER", "FAILOVER")  # the replica catches up first
    await asyncio.to_thread(cluster.wait_promoted, master, CampaignKeys(z.name).meta, 20)
    new_run_id = info_of(cluster, replica, "server")["run_id"]

    async def reconciled() -> bool:
        return bool(
            re.search(
                rf"event=failover_reconciled .*new_run_id={new_run_id} .*lost=0",
                gate.log_path.read_text(),
            )
        )

    await wait_for(reconciled, 10, "the clean failover reconciled", interval_s=0.05)

    async def joins() -> bool:
        r = await z.join("c")
        if r.status == 503:
            return False
        assert r.status in (200, 201), await r.text()
        z.tickets["c"] = (int((await r.json())["seq"]), "")
        return True

    await wait_for(joins, 10, "a join after the clean failover", interval_s=0.05)
    assert z.tickets["c"][0] == 3
    shown = await z.view()
    assert shown["state"] == "open" and shown["failover_hold"] is None
    assert f"event=failover_lost campaign={z.name}" not in gate.log_path.read_text()
    with sync_redis.Redis(port=cluster.master_of(CampaignKeys(z.name).meta)) as client:
        assert client.info("server")["run_id"] == new_run_id


async def test_new_connections_go_only_to_accepted_masters_and_replicas(cluster: Cluster) -> None:
    """The per-connection check on cluster nodes: a connection to a master whose run id the
    process has not accepted is refused (and the watch told), one to a replica (it takes
    no write) and one to an accepted master are made."""
    await asyncio.to_thread(cluster.wait_healthy, 30)
    masters = sorted(cluster.master_ports())
    run_ids = {port: info_of(cluster, port, "server")["run_id"] for port in masters}
    identity = PrimaryIdentity()
    identity.cluster = True
    identity.enforcing = True
    identity.accepted_masters = {run_ids[p] for p in masters[1:]}  # not the first
    noticed: list[str] = []
    identity.noticed = noticed.append

    async def connects(port: int) -> bool:
        connection = Connection(
            host="127.0.0.1", port=port, redis_connect_func=identity.check_connection
        )
        try:
            await connection.connect()
            return True
        except sync_redis.RedisError:
            return False
        finally:
            await connection.disconnect()

    assert not await connects(masters[0])
    assert noticed == [run_ids[masters[0]]]
    assert await connects(masters[1])
    assert await connects(replica_of(cluster, masters[0]))
    assert noticed == [run_ids[masters[0]]]


async def test_a_pooled_connection_to_a_replica_is_checked_again_once_promoted(
    cluster: Cluster,
) -> None:
    """The client asks any node, replicas included, for the topology (CLUSTER SLOTS) and
    keeps that connection in the node's pool. A replica's connection is let through (it
    takes no write), but once the replica is promoted the same pooled connection must not
    carry a write to a master this process has not reconciled with: it is checked again
    before its next command. (Seen in CI: a join on a lagging replica's takeover got seq 4
    again before the watch noticed.)"""
    await asyncio.to_thread(cluster.wait_healthy, 30)
    identity = PrimaryIdentity()
    identity.cluster = True
    identity.enforcing = True
    noticed: list[str] = []
    identity.noticed = noticed.append
    client = cast(
        RedisCluster, connect(cluster.url, timeout_s=2.0, on_connect=identity.check_connection)
    )
    try:
        await client.initialize()
        name, _ = on_two_masters(cluster, "pooled")
        key = CampaignKeys(name).meta
        master = cluster.master_of(key)
        replica = replica_of(cluster, master)
        identity.accepted_masters = {
            info_of(cluster, port, "server")["run_id"] for port in cluster.master_ports()
        }

        async def replica_listed() -> bool:
            # CLUSTER SLOTS lists a replica once it has synced (offset > 0)
            with cluster.node(master).client() as direct:
                direct.incr(f"{{{name}}}:nudge")
            await client.nodes_manager.initialize()
            return client.get_node(host="127.0.0.1", port=replica) is not None

        await wait_for(replica_listed, 15, "the replica in the client's topology")
        node = client.get_node(host="127.0.0.1", port=replica)
        assert node is not None
        await node.execute_command("CLUSTER", "SLOTS")  # a pooled connection to the replica
        assert noticed == []

        with cluster.node(replica).client() as admin:
            admin.execute_command("CLUSTER", "FAILOVER")
        await asyncio.to_thread(cluster.wait_promoted, master, key, 20)
        promoted = info_of(cluster, replica, "server")["run_id"]

        with pytest.raises(NotReconciled):
            await node.execute_command("SET", key, "written before any reconciliation")
        assert noticed == [promoted]
        with sync_redis.Redis(port=replica) as direct:
            assert direct.exists(key) == 0
    finally:
        await client.aclose()
