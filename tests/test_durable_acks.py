"""Durable acknowledgements (issue 11): an answer waits for the configured durability,
on the connection that made the write, replays included; a signed token whose ticket
Redis no longer has grants nothing; reservation ids stay unique when Redis's counter goes
back; the sealer seals only what the replicas have.

Real processes: a primary with `appendfsync everysec` and one replica, both started here.
A replica that stops acknowledging is one stopped with SIGSTOP (the kernel's buffers keep
the replication stream, so nothing is lost; SIGCONT in the cleanup).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis as sync_redis
from aiohttp.test_utils import TestClient

from gate.campaign import parse_spec
from gate.config import Config
from gate.errors import GateError, Unavailable
from gate.http.admin import create_admin_app
from gate.http.public import create_public_app
from gate.redis_client import connect
from gate.redis_server import RedisServer
from gate.room import Room
from gate.room.durability import Durability
from gate.room.keys import CampaignKeys
from gate.room.scripts import Scripts
from gate.service import Gate, running_gate
from tests.helpers import (
    ADMIN_TOKEN,
    amount_spec,
    as_customer,
    sealer_for,
    spec,
    wait_for,
)

WAIT_MS = 100  # redis_wait_timeout_ms in these tests: a stopped replica costs 0.1 s


@dataclasses.dataclass
class Pair:
    primary: RedisServer
    replica: RedisServer

    def in_sync(self) -> bool:
        client = sync_redis.Redis(port=self.primary.port)
        try:
            # a write of this connection, then WAIT: the replica has everything before it
            client.incr("test:sync")
            return int(client.wait(1, 2000)) == 1
        finally:
            client.close()

    def fresh(self) -> None:
        """An empty primary whose replica is running and has caught up."""
        client = sync_redis.Redis(port=self.primary.port)
        client.flushall()
        client.close()
        assert self.in_sync()

    @contextlib.contextmanager
    def replica_stopped(self) -> Iterator[None]:
        pid = self.replica.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)
            assert self.in_sync()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("durable")
    primary = RedisServer(
        base / "primary", appendfsync="everysec", extra=("--repl-diskless-sync-delay", "0")
    )
    replica = RedisServer(
        base / "replica",
        appendfsync="everysec",
        extra=("--replicaof", "127.0.0.1", str(primary.port)),
    )
    primary.start()
    try:
        replica.start()
        both = Pair(primary, replica)
        link = sync_redis.Redis(port=replica.port)
        try:
            for _ in range(500):
                if link.info("replication").get("master_link_status") == "up":
                    break
                time.sleep(0.02)
            else:
                raise AssertionError("the replica did not link to the primary")
        finally:
            link.close()
        assert both.in_sync()
        yield both
    finally:
        if replica.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(replica.pid, signal.SIGCONT)
        replica.stop()
        primary.stop()


def durable_config(config: Config, pair: Pair, **more: Any) -> Config:
    settings: dict[str, Any] = {
        "redis_url": pair.primary.url,
        "redis_wait_replicas": 1,
        "redis_wait_timeout_ms": WAIT_MS,
        **more,
    }
    return dataclasses.replace(config, **settings)


@contextlib.asynccontextmanager
async def served(
    config: Config, aiohttp_client: Any
) -> AsyncIterator[tuple[Gate, TestClient[Any, Any], TestClient[Any, Any]]]:
    async with running_gate(config) as gate:
        await gate.wait_ready()
        public = await aiohttp_client(create_public_app(gate))
        admin = await aiohttp_client(
            create_admin_app(gate), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        yield gate, public, admin


async def create(admin: Any, campaign: str) -> None:
    r = await admin.post("/admin/campaigns", json=spec(campaign))
    assert r.status == 201, await r.text()


async def room_on(url: str, **durability: Any) -> Room:
    redis = connect(url, timeout_s=5, max_connections=8)
    scripts = Scripts()
    await scripts.load_all(redis)
    return Room(redis, scripts, **durability)


# -- (a) a join held while no replica has it, and its retries --------------------------


async def test_a_retried_join_waits_for_the_replica_too(
    pair: Pair, config: Config, aiohttp_client: Any
) -> None:
    pair.fresh()
    async with served(durable_config(config, pair), aiohttp_client) as (_, public, admin):
        await create(admin, "held")
        with pair.replica_stopped():
            first = await public.post("/q/held/join", headers=as_customer("alice"))
            assert first.status == 503, await first.text()
            assert first.headers.get("Retry-After")
            # Each retry is a replay of the ticket written above: not acknowledged either
            # while the replica lacks it (before: 200 created:false at once).
            retries = [
                (await public.post("/q/held/join", headers=as_customer("alice"))).status
                for _ in range(3)
            ]
            assert retries == [503, 503, 503]
        again = await public.post("/q/held/join", headers=as_customer("alice"))
        assert again.status == 200, await again.text()
        body = await again.json()
        assert body["created"] is False and body["seq"] == 1
    replica = sync_redis.Redis(port=pair.replica.port)
    try:
        assert replica.hlen(CampaignKeys("held").tickets) == 1
    finally:
        replica.close()


# -- (b) the WAIT goes on the connection that wrote ------------------------------------


async def test_b_a_wait_on_a_connection_that_never_wrote_still_covers_the_write(
    pair: Pair,
) -> None:
    """Another connection (here: another gate process's pool, which never wrote) must
    not acknowledge what the replica lacks: Redis's WAIT counts replicas that have the
    calling connection's own last write, and a connection that never wrote has offset 0,
    which every replica has."""
    pair.fresh()
    writer = await room_on(pair.primary.url)  # waits for nothing: the write goes through
    other = await room_on(pair.primary.url, wait_replicas=1, wait_timeout_ms=WAIT_MS)
    try:
        await writer.create(parse_spec(spec("conn")), "ops")
        with pair.replica_stopped():
            result = await writer.join("conn", [b"b" * 16])
            assert result.tickets == [(1, True)]
            # the same customer through the other process: a replay of that write
            with pytest.raises(Unavailable):
                await other.join("conn", [b"b" * 16])
            with pytest.raises(Unavailable):
                await other.durable("conn")
        assert (await other.join("conn", [b"b" * 16])).tickets == [(1, False)]
    finally:
        await writer.redis.aclose()
        await other.redis.aclose()


# -- (c) no replica acknowledges: the operator's choice --------------------------------


async def metric(public: Any, name: str) -> float:
    text = await (await public.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_c_hold_answers_503_until_a_replica_acknowledges(
    pair: Pair, config: Config, aiohttp_client: Any
) -> None:
    pair.fresh()
    settings = durable_config(config, pair, redis_replica_loss="hold")
    async with served(settings, aiohttp_client) as (gate, public, admin):
        await create(admin, "hold")
        with pair.replica_stopped():
            answers, took = [], []
            for n in range(5):
                started = time.monotonic()
                answers.append(await public.post("/q/hold/join", headers=as_customer(f"h{n}")))
                took.append(time.monotonic() - started)
            assert [a.status for a in answers] == [503] * 5
            # answered once the WAIT's timeout ran out, not held open
            assert all(WAIT_MS / 1000 <= t < WAIT_MS / 1000 + 1.0 for t in took), took
            assert all(a.headers.get("Retry-After") for a in answers)
            assert await metric(public, 'fairgate_durability_held_total{what="answer"}') == 5
            assert await metric(public, 'fairgate_durability_degraded_total{what="answer"}') == 0
        ok = await public.post("/q/hold/join", headers=as_customer("h0"))
        assert ok.status == 200 and (await ok.json())["seq"] == 1
        assert gate.durability.held_by["answer"] == 5


async def test_c_no_pass_is_issued_while_no_replica_acknowledges(
    pair: Pair, config: Config, aiohttp_client: Any
) -> None:
    pair.fresh()
    async with served(durable_config(config, pair), aiohttp_client) as (gate, public, admin):
        await create(admin, "passes")
        joined = await public.post("/q/passes/join", headers=as_customer("pia"))
        assert joined.status == 201
        ticket = (await joined.json())["ticket"]

        async def admitted() -> bool:
            live = gate.cache.campaigns.get("passes")
            return live is not None and live.state.cursor >= 1

        await wait_for(admitted, 5, "pia admitted")
        status = {"params": {"ticket": ticket}, "headers": as_customer("pia")}
        with pair.replica_stopped():
            held = await public.get("/q/passes/status", **status)
            assert held.status == 503 and held.headers.get("Retry-After")
            assert "pass" not in await held.text()
        passed = await public.get("/q/passes/status", **status)
        body = await passed.json()
        assert passed.status == 200 and body["state"] == "admitted" and body["pass"]


async def test_c_continue_answers_and_counts_and_logs_once(
    pair: Pair, config: Config, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pair.fresh()
    settings = durable_config(config, pair, redis_replica_loss="continue")
    caplog.set_level(logging.WARNING, logger="gate")
    async with served(settings, aiohttp_client) as (_, public, admin):
        await create(admin, "cont")
        with pair.replica_stopped():
            answers = [
                await public.post("/q/cont/join", headers=as_customer(f"c{n}")) for n in range(5)
            ]
            assert [a.status for a in answers] == [201] * 5
            assert await metric(public, 'fairgate_durability_degraded_total{what="answer"}') == 5
        lines = [r.getMessage() for r in caplog.records if "durability_degraded" in r.getMessage()]
        # one line per 10 s (the sealer's rounds count into it too)
        assert len(lines) == 1, lines
        assert "acked=0" in lines[0] and "wanted=1" in lines[0]


# -- (d) a signed token whose ticket Redis no longer has --------------------------------


async def admitted_room(room: Room, campaign: str, customer: bytes, **more: Any) -> int:
    raw = amount_spec(campaign, **more.pop("quota", {}))
    raw.update(more)
    await room.create(parse_spec(raw), "ops")
    seq = (await room.join(campaign, [customer])).tickets[0][0]

    async def admitted() -> bool:
        result = await room.admit(campaign)
        return result is not None and result.cursor >= seq

    await wait_for(admitted, 5, "admitted")
    return seq


async def test_d_pass_claim_subscribe_refuse_a_ticket_redis_lost(any_redis: RedisServer) -> None:
    client = sync_redis.Redis(port=any_redis.port)
    client.flushall()
    room = await room_on(any_redis.url)
    try:
        customer = b"d" * 16
        seq = await admitted_room(room, "lost", customer)
        await admitted_room(room, "lostb", customer, policy="ballot")
        for campaign in ("lost", "lostb"):
            client.hdel(CampaignKeys(campaign).tickets, customer)
        refused = []
        for attempt in (
            room.pass_check("lost", seq, customer),
            room.claim("lost", seq, customer, 1_000_000, "k1"),
            room.subscribe("lostb", seq, customer, 1_000_000),
        ):
            try:
                await attempt
            except GateError as exc:
                refused.append((exc.status, exc.code))
            else:
                refused.append((200, "granted"))
        assert refused == [(409, "ticket_unknown")] * 3
        # nothing was granted: no pass logged, no reservation, no subscription
        assert client.scard(CampaignKeys("lost").passed) == 0
        assert client.hlen(CampaignKeys("lost").reservations) == 0
        assert client.hlen(CampaignKeys("lostb").subscriptions) == 0
        # a token for another customer's seq is refused the same way
        client.hset(CampaignKeys("lost").tickets, b"e" * 16, seq)
        with pytest.raises(GateError) as found:
            await room.pass_check("lost", seq, customer)
        assert found.value.code == "ticket_unknown"
    finally:
        client.close()
        await room.redis.aclose()


async def test_d_status_with_a_lost_ticket_is_409_ticket_unknown(
    config: Config, aiohttp_client: Any
) -> None:
    async with served(config, aiohttp_client) as (gate, public, admin):
        await create(admin, "gone")
        joined = await (await public.post("/q/gone/join", headers=as_customer("zoe"))).json()
        await gate.redis.delete(CampaignKeys("gone").tickets)

        async def answered() -> bool:
            r = await public.get(
                "/q/gone/status", params={"ticket": joined["ticket"]}, headers=as_customer("zoe")
            )
            if r.status == 409:
                body = await r.json()
                assert body["error"]["code"] == "ticket_unknown"
                return True
            assert r.status == 200
            assert (await r.json())["state"] != "admitted", "a pass for a ticket Redis lost"
            return False

        await wait_for(answered, 5, "the status answer for a lost ticket")


# -- (e) reservation ids when Redis's counter goes back --------------------------------


async def test_e_reservation_ids_unique_when_the_counter_goes_back(
    any_redis: RedisServer,
) -> None:
    client = sync_redis.Redis(port=any_redis.port)
    client.flushall()
    room = await room_on(any_redis.url)
    try:
        first, second = b"f" * 16, b"g" * 16
        await admitted_room(room, "rid", first)
        seqs = (await room.join("rid", [second])).tickets

        async def admitted() -> bool:
            result = await room.admit("rid")
            return result is not None and result.cursor >= seqs[0][0]

        await wait_for(admitted, 5, "second admitted")
        one = await room.claim("rid", 1, first, 1_000_000, "k")
        client.hset(CampaignKeys("rid").meta, "res_n", 0)  # a failover lost the counter
        two = await room.claim("rid", 2, second, 1_000_000, "k")
        assert one.reservation != two.reservation
        assert client.hlen(CampaignKeys("rid").reservations) == 2
        for rid in (one.reservation, two.reservation):
            assert rid.startswith("r1-") and len(rid) == 11, rid
    finally:
        client.close()
        await room.redis.aclose()


# -- (f) the sealer seals what the replicas have ----------------------------------------


async def test_f_sealer_holds_when_no_replica_acknowledges(pair: Pair, config: Config) -> None:
    pair.fresh()
    room = await room_on(pair.primary.url)
    settings = durable_config(config, pair)
    try:
        await room.create(parse_spec(spec("seal")), "ops")
        await room.join("seal", [bytes([n]) * 16 for n in range(3)])
        sealer = sealer_for(room, settings)
        with pair.replica_stopped():
            assert await sealer.step("seal", force=True) is False
            assert await room.redis.llen(CampaignKeys("seal").checkpoints) == 0
        assert await sealer.step("seal", force=True) is True
        assert await room.redis.llen(CampaignKeys("seal").checkpoints) == 1
        assert sealer.durability.held_by == {"seal": 1}
        sealer.durability = Durability(1, WAIT_MS, replica_loss="continue")
        await room.join("seal", [b"x" * 16])
        with pair.replica_stopped():
            assert await sealer.step("seal", force=True) is True
            assert sealer.durability.degraded_by == {"seal": 1}
        assert await room.redis.llen(CampaignKeys("seal").checkpoints) == 2
    finally:
        await room.redis.aclose()


# -- the mechanism's edges ------------------------------------------------------------


async def test_waitaof_falls_back_to_wait_on_redis_before_7_2_and_says_so_once(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis 7.2 brought WAITAOF; the Redis here is older (7.0, 6.2): WAIT, logged once."""
    pair.fresh()
    caplog.set_level(logging.INFO, logger="gate")
    room = await room_on(pair.primary.url)
    try:
        durability = Durability(1, WAIT_MS, aof=True)
        await durability.probe(room.redis)
        assert durability.use_waitaof is False and durability.active
        lines = [r.getMessage() for r in caplog.records if "durability_mode" in r.getMessage()]
        assert len(lines) == 1 and "mode=wait" in lines[0], lines
        durable = Room(room.redis, room.scripts, durability=durability)
        await durable.create(parse_spec(spec("aof")), "ops")
        with pair.replica_stopped(), pytest.raises(Unavailable):
            await durable.join("aof", [b"w" * 16])
    finally:
        await room.redis.aclose()


async def test_a_durable_call_reloads_a_script_redis_forgot(pair: Pair) -> None:
    """After a failover the new primary's script cache is empty (SCRIPT LOAD is not
    replicated): the pipeline's EVALSHA answers NOSCRIPT, the script is loaded and the
    pipeline sent again, and its WAIT still covers the write."""
    pair.fresh()
    room = await room_on(pair.primary.url, wait_replicas=1, wait_timeout_ms=WAIT_MS)
    try:
        await room.create(parse_spec(spec("noscript")), "ops")
        await room.redis.script_flush()
        assert (await room.join("noscript", [b"n" * 16])).tickets == [(1, True)]
        await room.redis.script_flush()
        with pair.replica_stopped(), pytest.raises(Unavailable):
            await room.join("noscript", [b"n" * 16])
    finally:
        await room.redis.aclose()
