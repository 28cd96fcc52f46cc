"""The sealer: checkpoints of a real campaign verify and extend each other; one sealer
per campaign across gates; a sealer whose lease lapsed is fenced off."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from gate.audit import merkle
from gate.audit.store import AuditStore, segments_root
from gate.campaign import parse_spec
from gate.config import Config
from gate.http.public import create_public_app
from gate.redis_client import connect
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.service import Gate, running_gate
from gate.signing import load_or_create_keys
from gate.tokens import customer_digest
from tests.helpers import assert_sealed_log, raw_audit, sealer_for, spec, wait_for

ACTOR = "ops"


def fast(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, seal_interval_ms=50, **changes)


async def checkpoints(redis: Redis, campaign: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in await redis.lrange(CampaignKeys(campaign).checkpoints, 0, -1)]


async def sealed_size(redis: Redis, campaign: str) -> int:
    return int(await redis.hget(CampaignKeys(campaign).frontier, "size") or 0)


async def audit_size(redis: Redis, campaign: str) -> int:
    return int(await redis.hget(CampaignKeys(campaign).meta, "audit_n") or 0)


async def wait_sealed(redis: Redis, campaign: str, timeout_s: float = 10) -> int:
    """Until a checkpoint covers the whole log as it is now."""
    target = await audit_size(redis, campaign)

    async def covered() -> bool:
        return await sealed_size(redis, campaign) >= target

    await wait_for(covered, timeout_s, f"a checkpoint of {campaign} covering {target}")
    return target


async def test_checkpoints_of_a_real_campaign_verify_and_extend_each_other(
    config: Config, aiohttp_client: Any
) -> None:
    """Joins over HTTP (batched) and one by one, admin actions, close: every checkpoint
    is signed, its root is that of the log's prefix (recomputed here from the raw list),
    successive ones are consistent, and the proofs the store builds from its stored
    subtrees equal those computed from every leaf."""
    cfg = fast(config)
    async with running_gate(cfg) as gate:
        await gate.wait_ready()
        public = await aiohttp_client(create_public_app(gate))
        await gate.room.create(parse_spec(spec("sealed")), ACTOR)
        for round_ in range(4):
            answers = await asyncio.gather(
                *(
                    public.post("/q/sealed/join", headers={"X-Customer-Id": f"c{round_}-{n}"})
                    for n in range(60)
                )
            )
            assert {a.status for a in answers} == {201}
            for n in range(90):  # one entry each: enough entries for stored subtrees
                digest = customer_digest(gate.keys, "sealed", f"solo{round_}-{n}")
                await gate.room.join("sealed", [digest])
            await wait_sealed(gate.redis, "sealed")
        await gate.room.set_state("sealed", "pause", ACTOR)
        await gate.room.set_state("sealed", "resume", ACTOR)
        await gate.room.set_state("sealed", "close", ACTOR)
        closed_at = time.monotonic()
        size = await wait_sealed(gate.redis, "sealed")
        close_to_checkpoint_s = time.monotonic() - closed_at
        keys_doc = await (await public.get("/.well-known/fairgate/keys")).json()

        entries = await raw_audit(cfg.redis_url, "sealed")
        found = await checkpoints(gate.redis, "sealed")
        assert len(entries) == size >= 4 * 90
        assert found[-1]["size"] == size
        assert len(found) >= 5
        assert_sealed_log(entries, found, keys_doc)

        leaves = [merkle.leaf_hash(raw) for raw in entries]
        store = AuditStore(gate.redis, "sealed", segments_root(cfg))
        assert await store.root(size) == bytes.fromhex(found[-1]["root"])
        rng = random.Random(5)
        for index in [0, 255, 256, size - 1, *rng.sample(range(size), 10)]:
            want = merkle.inclusion_proof(leaves, index)
            assert await store.inclusion_proof(index, size) == want, index
        for cp in found[:-1]:
            want = merkle.consistency_proof(leaves, cp["size"])
            assert await store.consistency_proof(cp["size"], size) == want
        nodes = await gate.redis.hlen(CampaignKeys("sealed").merkle_nodes)
        assert nodes == sum(size >> level for level in range(8, size.bit_length()))
    print(
        f"\n{size} entries, {len(found)} checkpoints; final checkpoint "
        f"{close_to_checkpoint_s * 1000:.0f} ms after close (interval 50 ms)"
    )
    assert close_to_checkpoint_s < 2


async def test_one_sealer_per_campaign_and_a_graceful_handover(config: Config) -> None:
    """Two gates, three campaigns under traffic: at every sample each campaign has one
    active sealer, the one whose token holds the lease. When that gate stops, it gives
    the lease back and the other continues the same tree."""
    cfg = fast(config, seal_lease_ms=1000)
    campaigns = ["a1", "a2", "a3"]
    async with running_gate(cfg) as first, running_gate(cfg) as second:
        await first.wait_ready()
        await second.wait_ready()
        for c in campaigns:
            await first.room.create(parse_spec(spec(c)), ACTOR)
        gates = [first, second]
        samples = 0
        deadline = time.monotonic() + 1.5
        n = 0
        while time.monotonic() < deadline:
            for c in campaigns:
                gate = gates[n % 2]
                await gate.room.join(c, [customer_digest(gate.keys, c, f"x{n}")])
                n += 1
            for c in campaigns:
                active = [g for g in gates if c in g.sealer.active()]
                assert len(active) <= 1, c
                holder = await first.redis.get(CampaignKeys(c).sealer)
                if active:
                    assert holder == active[0].sealer.token.encode()
            samples += 1
            await asyncio.sleep(0.01)
        for c in campaigns:
            await wait_sealed(first.redis, c)
        holders = {c: next(g for g in gates if c in g.sealer.active()) for c in campaigns}
        leaving = holders["a1"]
        staying = second if leaving is first else first
        before = await checkpoints(first.redis, "a1")
        handed_at = time.monotonic()
        await leaving.stop()  # the fixture's own stop later is harmless
        for k in range(50):
            await staying.room.join("a1", [customer_digest(staying.keys, "a1", f"late{k}")])

        async def taken_over() -> bool:
            return "a1" in staying.sealer.active()

        await wait_for(taken_over, 5, "the other gate to take a1's lease")
        handover_s = time.monotonic() - handed_at
        await wait_sealed(staying.redis, "a1")
        after = await checkpoints(staying.redis, "a1")
        assert after[: len(before)] == before and len(after) > len(before)
        keys_doc = staying.keys.public_keys()
        for c in campaigns:
            assert_sealed_log(
                await raw_audit(cfg.redis_url, c), await checkpoints(staying.redis, c), keys_doc
            )
        fence = int(await staying.redis.get(CampaignKeys("a1").sealer_fence) or 0)
        assert fence == 2  # taken once by each gate, never stolen back and forth
    print(f"\n{samples} samples, {n} joins; graceful handover in {handover_s * 1000:.0f} ms")


async def test_a_sealer_whose_lease_lapsed_cannot_write(room: Room, config: Config) -> None:
    """A sealer paused past its lease (it lets its 1-s lease lapse) keeps its old
    fencing token; its successor's token is larger, and every write of the old one
    (checkpoint, trim) is refused, so the published checkpoints stay one chain. (A lease
    key that vanishes before it could have lapsed is tampering: test_seal_bound.py.)"""
    redis, scripts = room.redis, room.scripts
    keys = load_or_create_keys(config.keys_path, create=False)
    await room.create(parse_spec(spec("fence")), ACTOR)
    old, new = sealer_for(room, config), sealer_for(room, config)

    async def grow(count: int) -> None:
        for n in range(count):
            await room.join("fence", [customer_digest(keys, "fence", f"{count}-{n}-{time.time()}")])

    await grow(5)
    assert await old.step("fence", force=True)
    assert await new.step("fence", force=True) is False  # the lease is taken
    assert old.active() == ["fence"] and new.active() == []
    k = CampaignKeys("fence")

    async def lapsed() -> bool:  # old's lease lapses while it is paused
        return not await redis.exists(k.sealer)

    await wait_for(lapsed, 5, "the old sealer's lease to lapse", interval_s=0.02)
    await grow(5)
    assert await new.step("fence", force=True)
    assert new.active() == ["fence"]
    published = await checkpoints(redis, "fence")
    await grow(5)
    sealed, size = await sealed_size(redis, "fence"), await audit_size(redis, "fence")
    assert await old.seal("fence", 1, sealed, size) == 0
    assert old.stats.fenced == {"fenced": 1}
    assert await checkpoints(redis, "fence") == published
    trim = await scripts.call(
        redis, "audit_trim", [k.sealer_fence, k.frontier, k.meta, k.audit], [1, 0, 3]
    )
    assert trim == [0, b"fenced"]
    # The current holder's own writes are checked too: same start, growing, in the log.
    frontier = merkle.Frontier().to_bytes()
    add_keys = [k.sealer_fence, k.frontier, k.checkpoints, k.meta]
    assert await scripts.call(redis, "checkpoint_add", add_keys, [2, 0, 3, frontier, "{}"]) == [
        0,
        b"moved",
    ]
    assert await scripts.call(
        redis, "checkpoint_add", add_keys, [2, sealed, sealed, frontier, "{}"]
    ) == [0, b"not_growing"]
    assert await scripts.call(
        redis, "checkpoint_add", add_keys, [2, sealed, size + 1, frontier, "{}"]
    ) == [0, b"beyond_log"]
    # The old sealer finds out at its next look and stands down; the new one goes on.
    assert await old.step("fence", force=True) is False
    assert old.active() == []
    assert await new.step("fence", force=True)
    assert_sealed_log(
        await raw_audit(config.redis_url, "fence"),
        await checkpoints(redis, "fence"),
        keys.public_keys(),
    )


async def test_gate_stop_releases_and_config_is_validated(config: Config) -> None:
    from gate.config import default_config
    from gate.errors import ConfigError

    for field, bad in [("seal_interval_ms", 5), ("seal_lease_ms", 100), ("audit_keep_in_redis", 3)]:
        with pytest.raises(ConfigError, match=field):
            default_config(**{field: bad})
    assert default_config(audit_keep_in_redis=0).audit_keep_in_redis == 0
    gate = Gate(fast(config), load_or_create_keys(config.keys_path, create=False))
    await gate.start()
    try:
        await gate.wait_ready()
        await gate.room.create(parse_spec(spec("rel")), ACTOR)

        async def holding() -> bool:
            return gate.sealer.active() == ["rel"]

        await wait_for(holding, 5, "the lone gate to take the lease")
    finally:
        await gate.stop()
    redis = connect(config.redis_url, timeout_s=2)
    try:
        assert await redis.get(CampaignKeys("rel").sealer) is None
    finally:
        await redis.aclose()
