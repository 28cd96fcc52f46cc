"""Sealed entries move from Redis to segment files: Redis stays bounded, readers see
every index exactly once, proofs and receipts still work."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import msgpack

from gate.audit import merkle
from gate.audit.store import AuditStore, segments_root
from gate.campaign import parse_spec
from gate.config import Config
from gate.http.public import create_public_app
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.service import running_gate
from gate.signing import load_or_create_keys
from gate.tokens import customer_digest
from tests.helpers import as_holder, assert_sealed_log, check_offline, sealer_for, spec, wait_for

ACTOR = "ops"
KEEP = 100


async def read_all(store: AuditStore, start: int = 1, stop: int | None = None) -> list[bytes]:
    """Every entry, asserting the indexes come in order, each exactly once."""
    out: list[bytes] = []
    expected = start
    async for index, raw in store.entries(start, stop):
        assert index == expected, (index, expected)
        assert msgpack.unpackb(raw, raw=True)[b"i"] == index
        out.append(raw)
        expected += 1
    return out


async def test_a_long_campaign_keeps_the_redis_log_bounded(
    config: Config, aiohttp_client: Any
) -> None:
    cfg = dataclasses.replace(config, seal_interval_ms=20, audit_keep_in_redis=KEEP)
    c = "long"
    k = CampaignKeys(c)
    async with running_gate(cfg) as gate:
        await gate.wait_ready()
        public = await aiohttp_client(create_public_app(gate))
        await gate.room.create(parse_spec(spec(c)), ACTOR)
        first = await (await public.post(f"/q/{c}/join", headers={"X-Customer-Id": "first"})).json()
        store = AuditStore(gate.redis, c, segments_root(cfg))
        done = asyncio.Event()
        longest = 0
        full_reads = 0

        async def sample() -> None:
            nonlocal longest
            while not done.is_set():
                longest = max(longest, int(await gate.redis.llen(k.audit)))
                await asyncio.sleep(0.005)

        async def read_while_moving() -> None:
            nonlocal full_reads
            while not done.is_set():
                _, size = await store.bounds()
                assert len(await read_all(store, 1, size)) == size
                full_reads += 1
                await asyncio.sleep(0.05)

        watchers = [asyncio.create_task(sample()), asyncio.create_task(read_while_moving())]
        started = time.monotonic()
        for n in range(2000):
            await gate.room.join(c, [customer_digest(gate.keys, c, f"c{n}")])
        fill_s = time.monotonic() - started
        await gate.room.set_state(c, "close", ACTOR)
        size = int(await gate.redis.hget(k.meta, "audit_n") or 0)

        async def moved() -> bool:
            trimmed, _ = await store.bounds()
            sealed = int(await gate.redis.hget(k.frontier, "size") or 0)
            return sealed == size and size - trimmed <= KEEP + KEEP // 4

        await wait_for(moved, 15, "the log sealed and moved to segments")
        done.set()
        await asyncio.gather(*watchers)

        trimmed, _ = await store.bounds()
        in_redis = int(await gate.redis.llen(k.audit))
        assert in_redis == size - trimmed <= KEEP + KEEP // 4
        assert longest < 500 < size, (longest, size)
        segments = await store.segments()
        assert segments and segments[0].first == 1 and segments[-1].last == trimmed
        assert all(s.path.parent.parent == segments_root(cfg) for s in segments)

        entries = await read_all(store)
        assert len(entries) == size
        assert (
            await read_all(store, trimmed - 20, trimmed + 20)
            == entries[trimmed - 21 : trimmed + 20]
        )
        assert await read_all(store, 7, 7) == [entries[6]]
        checkpoints = await store.checkpoints()
        keys_doc = await (await public.get("/.well-known/fairgate/keys")).json()
        # The roots were signed while the entries were in Redis: the moved bytes are equal.
        assert_sealed_log(entries, checkpoints, keys_doc)
        assert merkle.root([merkle.leaf_hash(e) for e in entries]).hex() == checkpoints[-1]["root"]

        # A receipt whose join entry now lives in a segment still proves its inclusion.
        holder = as_holder("first", first["ticket"])
        answer = await (await public.get(f"/q/{c}/receipt/{first['seq']}", **holder)).json()
        assert answer["receipt"]["entry"] <= trimmed
        check_offline(answer, keys_doc, first["receipt"]["digest"])
    print(
        f"\n{size} entries in {fill_s:.1f} s; Redis list at most {longest} entries "
        f"(keep {KEEP}), {in_redis} at the end; {len(segments)} segment files; "
        f"{full_reads} full reads during the moves"
    )
    assert full_reads >= 1


async def test_a_move_interrupted_before_the_trim_is_finished_by_the_next_sealer(
    room: Room, config: Config
) -> None:
    """A sealer that wrote segment files and died before trimming Redis: its successor
    uses those files as they are (no second copy) and trims; a stale writer's
    overlapping file (same bytes) changes nothing for readers."""
    redis = room.redis
    keys = load_or_create_keys(config.keys_path, create=False)
    c = "resume"
    await room.create(parse_spec(spec(c)), ACTOR)
    for n in range(120):
        await room.join(c, [customer_digest(keys, c, f"r{n}")])
    sealer = sealer_for(room, config, keep_in_redis=20)
    sealer.keep_in_redis = 0  # seal only, for now
    assert await sealer.step(c, force=True)
    store = AuditStore(redis, c, segments_root(config))
    entries = await read_all(store)
    sealed = len(entries)

    # The predecessor's files: 1..60, then it died.
    await store.write_segments(1, entries[:60])
    assert (await store.bounds())[0] == 0
    sealer.keep_in_redis = 20
    fence = int(await redis.get(CampaignKeys(c).sealer_fence) or 0)
    assert await sealer._maybe_move(c, fence, sealed) == 60
    names = sorted(s.path.name for s in await store.segments())
    assert names == ["seg-000000000001-000000000060.fgs"]
    assert (await store.bounds())[0] == 60
    # A stale writer's overlapping copy of 50..70.
    await store.write_segments(50, entries[49:70])
    assert await read_all(store) == entries
    # The next move takes what that file already holds past the trim point (61..70),
    # the one after writes only new entries.
    assert await sealer._maybe_move(c, fence, sealed) == 10
    assert await read_all(store) == entries
    assert await sealer._maybe_move(c, fence, sealed) == sealed - 20 - 70
    assert (await store.bounds())[0] == sealed - 20
    assert await read_all(store) == entries
    assert int(await redis.llen(CampaignKeys(c).audit)) == 20
    checkpoints = [json.loads(x) for x in await redis.lrange(CampaignKeys(c).checkpoints, 0, -1)]
    assert_sealed_log(entries, checkpoints, keys.public_keys())
    # A proof over entries that now sit in segments.
    leaves = [merkle.leaf_hash(e) for e in entries]
    assert await store.inclusion_proof(3, sealed) == merkle.inclusion_proof(leaves, 3)
