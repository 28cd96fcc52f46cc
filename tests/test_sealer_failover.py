"""Kill -9 the gate process that seals a campaign, mid-campaign: another takes over."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from redis.asyncio import Redis

from gate.room.keys import CampaignKeys
from tests.helpers import ADMIN_TOKEN, GateProcess, assert_sealed_log, raw_audit, spec, wait_for

CAMPAIGN = "failover"


@pytest.mark.slow
async def test_kill_9_of_the_active_sealer_hands_over_without_a_gap(
    redis_url: str, tmp_path: Path, keys_file: Path
) -> None:
    """Two `gate serve` processes share Redis and the data dir; customers join through
    both. The one holding the sealer lease is killed with SIGKILL (no chance to give the
    lease back). The other takes the lease once it lapses (1 s), continues the same
    Merkle tree from the stored frontier, and after close the log is sealed to its
    last entry: indexes 1..n without a gap, every checkpoint signed and consistent
    with the one before it, across the kill."""
    env = {"GATE_SEAL_INTERVAL_MS": "100", "GATE_SEAL_LEASE_MS": "1000"}
    procs = [GateProcess(redis_url, tmp_path, keys_file, extra_env=env) for _ in range(2)]
    redis = Redis.from_url(redis_url)
    k = CampaignKeys(CAMPAIGN)
    stop_traffic = asyncio.Event()
    joined = 0
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            await proc.wait_ready()
        async with aiohttp.ClientSession() as http:
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with http.post(
                procs[0].admin_url + "/admin/campaigns", json=spec(CAMPAIGN), headers=admin
            ) as r:
                assert r.status == 201, await r.text()

            async def traffic(worker: int) -> None:
                nonlocal joined
                n = 0
                while not stop_traffic.is_set():
                    alive = [p for p in procs if p.process is not None and p.process.poll() is None]
                    proc = alive[n % len(alive)]
                    n += 1
                    try:
                        async with http.post(
                            f"{proc.url}/q/{CAMPAIGN}/join",
                            headers={"X-Customer-Id": f"w{worker}-{n}"},
                        ) as r:
                            joined += r.status == 201
                    except aiohttp.ClientError:
                        pass  # the process we were talking to was just killed

            workers = [asyncio.create_task(traffic(w)) for w in range(4)]

            async def checkpointed(count: int) -> bool:
                return int(await redis.llen(k.checkpoints)) >= count

            async def three() -> bool:
                return await checkpointed(3)

            await wait_for(three, 10, "three checkpoints before the kill")
            fence = int(await redis.get(k.sealer_fence) or 0)
            marker = f"event=seal_lease_taken campaign={CAMPAIGN} fence={fence} "
            holders = [p for p in procs if marker in p.log_path.read_text()]
            assert len(holders) == 1, [p.log_path.read_text()[-1500:] for p in procs]
            victim = holders[0]
            survivor = procs[1 - procs.index(victim)]
            assert victim.process is not None
            before_kill = int(await redis.llen(k.checkpoints))
            killed_at = time.monotonic()
            os.killpg(victim.process.pid, signal.SIGKILL)
            victim.process.wait()

            async def taken_over() -> bool:
                raw = await redis.hmget(k.frontier, ["fence"])
                return int(raw[0] or 0) == fence + 1

            await wait_for(taken_over, 10, "the survivor's first checkpoint")
            takeover_s = time.monotonic() - killed_at

            async def more() -> bool:
                return await checkpointed(before_kill + 3)

            await wait_for(more, 10, "more checkpoints from the survivor")
            stop_traffic.set()
            await asyncio.gather(*workers)
            async with http.post(
                f"{survivor.admin_url}/admin/campaigns/{CAMPAIGN}/close", headers=admin
            ) as r:
                assert r.status == 200, await r.text()
            size = int(await redis.hget(k.meta, "audit_n") or 0)

            async def all_sealed() -> bool:
                return int(await redis.hget(k.frontier, "size") or 0) == size

            await wait_for(all_sealed, 10, "the final checkpoint")
            async with http.get(survivor.url + "/.well-known/fairgate/keys") as r:
                keys_doc: dict[str, Any] = await r.json()

        entries = await raw_audit(redis_url, CAMPAIGN)
        indexes = [msgpack.unpackb(raw, raw=True)[b"i"] for raw in entries]
        assert indexes == list(range(1, size + 1))
        found = [json.loads(x) for x in await redis.lrange(k.checkpoints, 0, -1)]
        assert found[-1]["size"] == size
        assert_sealed_log(entries, found, keys_doc)
        assert int(await redis.get(k.sealer_fence) or 0) == fence + 1
        assert joined > 0
        print(
            f"\n{joined} joins, {size} entries, {len(found)} checkpoints "
            f"({before_kill} before the kill); takeover after kill -9: {takeover_s:.2f} s "
            f"(lease 1 s)"
        )
    finally:
        stop_traffic.set()
        for proc in procs:
            proc.stop()
        await redis.aclose()
