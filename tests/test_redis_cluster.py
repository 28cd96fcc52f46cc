"""Redis Cluster: campaigns spread over the masters of a real 3-master, 3-replica cluster,
the whole customer path on it, a master killed mid-burst; and a campaign's creation,
which writes two slots (the registry and the campaign's own), completed when retried.

The creation test runs on one private redis-server (its cause does not need a cluster):
an ACL user that may not write one of the two slots makes the create fail between them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as sync_redis
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.cluster import key_slot

from gate.config import default_config
from gate.errors import ConfigError
from gate.http.admin import create_admin_app
from gate.redis_server import RedisServer
from gate.room.keys import REGISTRY, REGISTRY_MARK, CampaignKeys
from gate.service import Gate, running_gate
from tests.helpers import (
    ADMIN_TOKEN,
    CORE_TOKEN,
    GateProcess,
    gate_cli,
    spec,
    wait_for,
    wait_sealed,
)
from tests.redis_cluster import Cluster, gate_on, running_cluster
from tests.test_audit_export_cli import run_campaign
from tests.test_failover_sentinel import (
    CAMPAIGN,
    CUSTOMERS,
    KILL_AFTER_S,
    Ledger,
    arrivals,
    audit_verify,
    campaign_spec,
    tally,
    until_served,
)

# -- the URL --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://",
        "redis+cluster://127.0.0.1",
        "redis+cluster://127.0.0.1:7000/3",
        "redis+cluster://127.0.0.1:7000,,127.0.0.1:7001",
        "redis+clusters://127.0.0.1:7000",
    ],
)
def test_bad_cluster_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        default_config(redis_url=url, redis_wait_replicas=1, redis_wait_timeout_ms=100)
    assert caught.value.message.startswith("redis_url:"), caught.value.message


def test_a_cluster_without_waiting_for_a_replica_is_refused() -> None:
    """A master's failover promotes a replica that may lack acknowledged writes."""
    url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    with pytest.raises(ConfigError) as caught:
        default_config(redis_url=url)
    assert caught.value.message.startswith("redis_wait_replicas:")
    config = default_config(redis_url=url, redis_wait_replicas=1, redis_wait_timeout_ms=100)
    assert config.redis_url == url


def test_every_key_of_a_campaign_is_in_its_slot() -> None:
    """Every script, pipeline and WAIT of a campaign stays on one master; the registry
    and its durability mark share a slot of their own."""
    for campaign in ("c1", "deposit-2026", "x"):
        k = CampaignKeys(campaign)
        names = [n for n, v in vars(CampaignKeys).items() if isinstance(v, property)]
        slots = {key_slot(getattr(k, n).encode()) for n in names}
        assert len(names) > 20 and slots == {key_slot(campaign.encode())}, campaign
    assert key_slot(REGISTRY.encode()) == key_slot(REGISTRY_MARK.encode())


# -- a create that fails between its two writes -----------------------------------------

PASSWORD = "cluster-test-pw"


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-acl"))
    server.start()
    yield server
    server.stop()


def _allow(server: RedisServer, *patterns: str) -> None:
    """The gate's ACL user may touch only the keys matching `patterns`."""
    client = sync_redis.Redis(port=server.port)
    client.execute_command("ACL", "SETUSER", "gate", "reset", "on", f">{PASSWORD}", "+@all")
    if patterns:
        client.execute_command("ACL", "SETUSER", "gate", *(f"~{p}" for p in patterns))
    client.close()


@pytest.fixture
async def acl_gate(acl_redis: RedisServer, tmp_path: Path, keys_file: Path) -> AsyncIterator[Gate]:
    sync_redis.Redis(port=acl_redis.port).flushall()
    _allow(acl_redis, "*")
    config = default_config(
        redis_url=f"redis://gate:{PASSWORD}@127.0.0.1:{acl_redis.port}/0",
        data_dir=str(tmp_path),
        signing_keys=str(keys_file),
        admin_tokens=f"ops:{ADMIN_TOKEN}",
        core_tokens=f"core:{CORE_TOKEN}",
        core_port=0,
        cookie_secure=False,
        seal_interval_ms=50,
    )
    async with running_gate(config) as gate:
        await gate.wait_ready()
        yield gate


@pytest.fixture
async def acl_admin(
    acl_gate: Gate, aiohttp_client: Any
) -> TestClient[web.Request, web.Application]:
    client: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_admin_app(acl_gate), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    return client


async def test_create_cut_after_the_campaign_is_completed_by_a_retry(
    acl_redis: RedisServer, acl_gate: Gate, acl_admin: Any
) -> None:
    """The registry refuses the write: nothing of the campaign is left half made, and the
    retry (once the registry takes writes again) creates, registers and seals it."""
    _allow(acl_redis, "fg:{*")  # every campaign key, not the registry
    r = await acl_admin.post("/admin/campaigns", json=spec("cut1"))
    first = r.status
    raw = sync_redis.Redis(port=acl_redis.port)
    meta_after_failure = raw.exists(CampaignKeys("cut1").meta)
    _allow(acl_redis, "*")
    r = await acl_admin.post("/admin/campaigns", json=spec("cut1"))
    retried = r.status, await r.text()
    registered = raw.sismember(REGISTRY, "cut1")
    listed = [
        c["id"] for c in (await (await acl_admin.get("/admin/campaigns")).json())["campaigns"]
    ]
    print(
        f"first={first} meta_after_failure={meta_after_failure} retried={retried[0]} "
        f"registered={registered} listed={listed}"
    )
    assert first == 503
    assert meta_after_failure == 0, "a failed create left the campaign half made"
    assert retried[0] == 201, retried
    assert registered and listed == ["cut1"]
    assert await wait_sealed(acl_gate, "cut1") >= 1
    raw.close()


async def test_create_cut_after_the_registry_is_completed_by_a_retry(
    acl_redis: RedisServer, acl_gate: Gate, acl_admin: Any
) -> None:
    """The campaign's slot refuses the write after the registry took it: the registered id
    without a campaign is ignored by every reader (listing, cache, sealer), and the retry
    completes it."""
    _allow(acl_redis, REGISTRY)
    r = await acl_admin.post("/admin/campaigns", json=spec("cut2"))
    assert r.status == 503, await r.text()
    raw = sync_redis.Redis(port=acl_redis.port)
    assert raw.sismember(REGISTRY, "cut2") and not raw.exists(CampaignKeys("cut2").meta)
    _allow(acl_redis, "*")
    listed = (await (await acl_admin.get("/admin/campaigns")).json())["campaigns"]
    assert listed == []
    errors_before = acl_gate.sealer.stats.errors
    await acl_gate.cache.refresh_once()
    assert "cut2" not in acl_gate.cache.campaigns
    r = await acl_admin.post("/admin/campaigns", json=spec("cut2"))
    assert r.status == 201, await r.text()
    assert await wait_sealed(acl_gate, "cut2") >= 1
    assert acl_gate.sealer.stats.errors == errors_before
    # and a create of an existing campaign is still refused
    r = await acl_admin.post("/admin/campaigns", json=spec("cut2"))
    assert r.status == 409, await r.text()
    raw.close()


# -- a real cluster: 3 masters, 3 replicas ----------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture(scope="module")
def cluster_gate(
    cluster: Cluster, keys_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GateProcess]:
    """A `gate serve` on the cluster that waits for one replica per acknowledgement."""
    env = {
        "GATE_SEAL_INTERVAL_MS": "100",
        "GATE_REDIS_WAIT_REPLICAS": "1",
        "GATE_REDIS_WAIT_TIMEOUT_MS": "300",
    }
    with gate_on(cluster, tmp_path_factory.mktemp("cluster-gate"), keys_file, env) as process:
        yield process


@pytest.mark.slow
async def test_campaigns_spread_over_masters_and_the_whole_path_verifies(
    cluster: Cluster, cluster_gate: GateProcess, tmp_path: Path
) -> None:
    names = [f"spread{i}" for i in range(6)]
    masters = {name: cluster.master_of(CampaignKeys(name).meta) for name in names}
    print(f"masters per campaign: {masters}")
    assert len(set(masters.values())) >= 2
    # two campaigns on two masters take the whole path: create, join, admit, pass,
    # claim, confirm, sealed; the export verifies offline
    first = names[0]
    second = next(n for n in names if masters[n] != masters[first])
    env = {"GATE_ADMIN_URL": cluster_gate.admin_url, "GATE_ADMIN_TOKEN": ADMIN_TOKEN}
    for name in (first, second):
        facts = await run_campaign(cluster_gate, name)
        keys = tmp_path / f"keys-{name}.json"
        keys.write_text(json.dumps(facts["keys"]))
        log = tmp_path / f"{name}.jsonl"
        exported = await gate_cli("audit", "export", name, "--out", str(log), env=env)
        assert exported.code == 0, exported
        verified = await gate_cli("audit", "verify", str(log), "--keys", str(keys), "--sealed")
        assert verified.code == 0 and f"campaign {name}: OK" in verified.out, verified
    async with aiohttp.ClientSession() as http:
        listed = await (
            await http.get(
                cluster_gate.admin_url + "/admin/campaigns",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
        ).json()
    assert sorted(c["id"] for c in listed["campaigns"]) == sorted([first, second])


@pytest.mark.slow
async def test_an_evicting_master_is_refused(cluster: Cluster, cluster_gate: GateProcess) -> None:
    """The settings check reads every master: one master set to evict turns /readyz 503
    `redis_unsafe` and joins 503 (its log line names that master); set back, 200 again."""
    master = sorted(cluster.master_ports())[1]
    node = cluster.node(master).client()
    answers: list[tuple[int, Any]] = []

    async def ready_is(status: int) -> bool:
        async with aiohttp.ClientSession() as http, http.get(cluster_gate.url + "/readyz") as r:
            answers.append((r.status, await r.json()))
            return r.status == status

    try:
        node.config_set("maxmemory-policy", "allkeys-lru")
        await wait_for(lambda: ready_is(503), 15, "/readyz 503", interval_s=0.2)
        assert answers[-1][1]["reason"] == "redis_unsafe", answers[-1]
        log = cluster_gate.log_path.read_text()
        assert f"127.0.0.1:{master} maxmemory-policy=allkeys-lru" in log
    finally:
        node.config_set("maxmemory-policy", "noeviction")
        node.close()
    await wait_for(lambda: ready_is(200), 15, "/readyz 200 again", interval_s=0.2)


# -- a master killed mid-burst ------------------------------------------------------------


async def cluster_burst(
    cluster: Cluster, gate: GateProcess, http: aiohttp.ClientSession
) -> tuple[Ledger, float, int]:
    """The Sentinel scenario's customers (tests/test_failover_sentinel.py) arrive at its
    rate; KILL_AFTER_S into the burst the master that holds the campaign's slot is killed
    with SIGKILL. Once its replica has taken the slots over, the killed node is started
    again (its supervisor's job) and comes back as the new master's replica. Returns the
    ledger, how long the takeover took and the new master's port."""
    ledger = Ledger()
    tasks: dict[str, asyncio.Task[None]] = {}
    started = time.monotonic()
    slot_key = CampaignKeys(CAMPAIGN).meta

    async def faults() -> tuple[float, int]:
        await asyncio.sleep(max(0.0, started + KILL_AFTER_S - time.monotonic()))
        master = cluster.master_of(slot_key)
        assert cluster.replica_in_sync(master)
        cluster.kill(master)
        kill_at = time.monotonic()
        promoted = await asyncio.to_thread(cluster.wait_promoted, master, slot_key, 30)
        took = time.monotonic() - kill_at
        await asyncio.to_thread(cluster.restart, master)
        return took, promoted

    fault_task = asyncio.create_task(faults())
    await arrivals(started, http, gate, ledger, tasks)
    took, promoted = await fault_task
    await until_served(tasks, ledger)
    return ledger, took, promoted


@pytest.mark.slow
async def test_master_killed_mid_burst_loses_nothing_acknowledged(
    cluster: Cluster, cluster_gate: GateProcess, keys_file: Path, tmp_path: Path
) -> None:
    """redis_wait_replicas = 1: 0 acknowledged joins lost, 0 seqs or reservation ids
    acknowledged twice, 0 acknowledged reservations or confirmations lost, 0 oversell,
    `gate audit verify` clean, after the campaign's master is killed mid-burst."""
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200), timeout=aiohttp.ClientTimeout(total=10)
    )
    try:
        async with http.post(
            f"{cluster_gate.admin_url}/admin/campaigns",
            json=campaign_spec(),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r:
            assert r.status == 201, await r.text()
        ledger, took, promoted = await cluster_burst(cluster, cluster_gate, http)
        figures = tally(ledger, promoted, keys_file)
        figures.failover_s = round(took, 2)
        figures.verify_ok, figures.verify_output = await audit_verify(cluster_gate, http, tmp_path)
    finally:
        await http.close()
    print(f"\ncluster failover figures: {figures}")
    assert figures.acknowledged_joins > CUSTOMERS // 2, figures
    assert figures.clean(), figures
