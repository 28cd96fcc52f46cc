"""Overload: the gate at three times what it can serve (issue 15, "graceful overload").

`python -m bench.overload` (or `make bench`, unless --no-overload): one `gate serve`
process (one worker) on a private redis-server. For the status poll and for the join:

1. its capacity: closed loop, 64 keep-alive connections, answers 2xx per second;
2. open loop at 3x that rate from 1,024 connections (every customer a connection of its
   own, as a crowd of browsers is), the latency of every request counted from when it was
   scheduled (coordinated omission counted, bench/openloop.py) and split by the answer:
   2xx, 503 (shed), other, unanswered by the deadline.

For the join, places are counted in Redis: tickets created (the campaign's seq, before and
after) against joins answered 2xx. A join answered 2xx without a ticket would be a lost
place; a ticket without a 2xx answer is not lost (the customer's retry gets the same seq).

The issue's bounds at 3x: p99 of answered requests ≤ 1 s, excess answered 503 within
10 ms (p99), 0 lost places, 0 5xx other than those 503s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench.load import LoadResult, Target
from bench.openloop import run_load
from bench.servers import GateServer
from gate.redis_server import RedisServer
from gate.room.keys import CampaignKeys
from gate.signing import generate_keys_document, write_keys

CUSTOMER_HEADER = "X-Customer-Id"
OVERLOAD = 3.0
CONNECTIONS = 1024


def _shape(result: LoadResult) -> dict[str, Any]:
    statuses = result.detail.get("statuses", {})
    other_5xx = sum(n for code, n in statuses.items() if code.startswith("5") and code != "503")
    return {
        "rate_target": result.rate_target,
        "answered_2xx_per_s": round(result.throughput, 1),
        "statuses": statuses,
        "unfinished": result.unfinished,
        "other_5xx": other_5xx,
        "latency_by_status_ms": result.detail.get("latency_by_status_ms", {}),
        "generator_lag_ms": result.generator_lag_ms,
    }


async def _seq(redis: Redis, campaign: str) -> int:
    return int(await redis.hget(CampaignKeys(campaign).meta, "seq") or 0)


async def _one_gate(
    redis_server: RedisServer, redis: Redis, work: Path, duration_s: float, shed_lag_ms: int
) -> dict[str, Any]:
    """Capacity, then 3x, for the poll and the join, on a fresh `gate serve`."""
    from bench.run import prepare  # bench.run imports this module

    keys_file = work / "keys.json"
    if not keys_file.exists():
        write_keys(keys_file, generate_keys_document())
    gate = GateServer(redis_server.url, work, keys_file, 1, shed_lag_ms=shed_lag_ms)
    try:
        await gate.start()
        async with aiohttp.ClientSession() as session:
            fixture = await prepare(session, gate, f"overload-{shed_lag_ms}", 200)
        poll = Target(
            f"{gate.url}/q/{fixture.poll_campaign}/status?ticket={fixture.ticket}",
            headers=((CUSTOMER_HEADER, fixture.poll_customer),),
        )
        join = Target(
            f"{gate.url}/q/{fixture.join_campaign}/join",
            method="POST",
            unique_customer_prefix=f"o{shed_lag_ms}",
        )
        paths: dict[str, Any] = {}
        for name, target in (("poll", poll), ("join", join)):
            print(f"overload: {name} capacity (closed loop, {duration_s:.0f}s)", flush=True)
            capacity = await run_load(
                target.with_prefix(f"cap{shed_lag_ms}")
                if target.unique_customer_prefix
                else target,
                rate=None,
                duration_s=duration_s,
                connections=64,
                procs=1,
                work_dir=work / "load",
            )
            rate = OVERLOAD * capacity.throughput
            print(
                f"overload: {name} open loop at {rate:.0f}/s ({OVERLOAD}x), "
                f"shed_lag_ms={shed_lag_ms}",
                flush=True,
            )
            seq_before = await _seq(redis, fixture.join_campaign)
            loaded = await run_load(
                target,
                rate=rate,
                duration_s=duration_s,
                connections=CONNECTIONS,
                procs=2,
                work_dir=work / "load",
            )
            row = {"capacity_2xx_per_s": round(capacity.throughput, 1), **_shape(loaded)}
            if name == "join":
                created = await _seq(redis, fixture.join_campaign) - seq_before
                row["tickets_created"] = created
                row["lost_places"] = max(0, loaded.ok - created)
            paths[name] = row
        return paths
    finally:
        gate.stop()


async def measure(
    work: Path, duration_s: float, shed_values: tuple[int, ...] = (0, 20)
) -> dict[str, Any]:
    """Each path at 3x capacity on a gate that does not shed (shed_lag_ms 0) and on one
    that sheds from 20 ms of loop lag (the production setting, deploy/)."""
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    redis_server = RedisServer(work / "redis")
    redis_server.start()
    redis = Redis(host="127.0.0.1", port=redis_server.port)
    loadavg_start = list(os.getloadavg())
    runs: dict[str, Any] = {}
    try:
        for shed in shed_values:
            runs[f"shed_lag_ms={shed}"] = await _one_gate(
                redis_server, redis, work, duration_s, shed
            )
    finally:
        await redis.aclose()
        redis_server.stop()
    return {
        "overload_factor": OVERLOAD,
        "connections": CONNECTIONS,
        "duration_s": duration_s,
        "workers": 1,
        "cores": os.cpu_count(),
        "loadavg_start": loadavg_start,
        "loadavg_end": list(os.getloadavg()),
        "runs": runs,
    }


def table(result: dict[str, Any]) -> str:
    """The Markdown section of bench/report.py."""
    lines = [
        f"## Overload: open loop at {result['overload_factor']}x capacity, "
        f"{result['connections']} connections, one process (bench/overload.py)",
        "",
        "| path, gate | capacity 2xx/s | 2xx/s at 3x | 2xx p99 ms (≤ 1000) | 503 p99 ms (≤ 10) "
        "| 503s | other 5xx (0) | unanswered | lost places (0) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [
        (f"{name}, {run}", row)
        for run, paths in result["runs"].items()
        for name, row in paths.items()
    ]
    for name, row in rows:
        by = row["latency_by_status_ms"]
        lines.append(
            f"| {name} | {row['capacity_2xx_per_s']} | {row['answered_2xx_per_s']} "
            f"| {by.get('2xx', {}).get('p99', '-')} | {by.get('503', {}).get('p99', '-')} "
            f"| {row['statuses'].get('503', 0)} | {row['other_5xx']} | {row['unfinished']} "
            f"| {row.get('lost_places', '-')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fairgate-overload-") as tmp:
        result = asyncio.run(measure(Path(tmp), args.duration))
    print(json.dumps(result, indent=2))
    print(table(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
