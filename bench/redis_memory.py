"""Redis per waiting customer, and the cost of a join as the queue grows.

`python -m bench.redis_memory` (or `make bench`, which runs it unless --no-redis-memory):
customers join one campaign through the gate's own join path (the process's JoinBatcher:
join.lua's ticket, its audit entry, and the batch's signed receipt record), with no HTTP in
front and no sealer behind, so every audit entry stays in Redis: the most a waiting
customer can cost it. Measured on a private redis-server on a free port:

- bytes per waiting customer: `used_memory` after the fill minus before it, divided by
  the customers (tickets, the seq index, audit entries, receipt records, allocator
  overhead; nothing else writes to this Redis);
- the cost of a join at two queue lengths, over the same number of joins each: `window`
  joins into an empty campaign (10,000 waiting at its end) and `window` more into the
  filled one (`customers` waiting at its end), in alternating turns. Redis's cost is the
  CPU time of its main thread (INFO cpu: scripts, commands and the AOF's writes) per
  join; the wall time per join is given beside it. The figure is the ratio, cost at the
  large queue ÷ cost at the small one.

The issue's bounds (issue 15): ≤ 120 B per waiting customer, ratio ≤ 1.1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.luacost import bench_spec
from gate.campaign import parse_spec
from gate.config import load_config
from gate.redis_server import RedisServer
from gate.room import JOIN_OK
from gate.service import running_gate
from gate.signing import generate_digest_document, generate_keys_document, write_keys

LARGE = "memory-bench"  # filled to the queue length measured
SMALL = "memory-bench-small"  # the reference: its queue grows from 0 to the window
BOUND_BYTES = 120
BOUND_RATIO = 1.1


def _spec(campaign: str) -> dict[str, Any]:
    """Open now, a quota nobody exhausts, and a rate that keeps everyone waiting."""
    return bench_spec(campaign, 0.001, 1)


def _digest(i: int) -> bytes:
    """A customer's 16-byte digest: as random-looking as the gate's keyed HMACs."""
    return hashlib.blake2b(i.to_bytes(8, "big"), digest_size=16).digest()


async def _join_range(gate: Any, campaign: str, start: int, stop: int, in_flight: int) -> None:
    """Customers start..stop-1 join, `in_flight` at a time (batched per event-loop tick, as
    concurrent HTTP joins are)."""
    for chunk in range(start, stop, in_flight):
        outcomes = await asyncio.gather(
            *(
                gate.batcher.join(campaign, _digest(i))
                for i in range(chunk, min(stop, chunk + in_flight))
            )
        )
        bad = [o for o in outcomes if o.status != JOIN_OK or not o.created]
        if bad:
            raise RuntimeError(f"a join was not a new ticket: {bad[0]}")


async def _redis_cpu_s(redis: Any) -> float:
    """CPU seconds of Redis's main thread (user + system: scripts, commands, the AOF)."""
    cpu = await redis.info("cpu")
    return float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])


class _Window:
    """Joins into one campaign, measured: Redis CPU, wall time, script calls."""

    def __init__(self, campaign: str, waiting_before: int) -> None:
        self.campaign = campaign
        self.waiting_before = waiting_before
        self.next = waiting_before
        self.cpu_s = self.wall_s = 0.0
        self.calls = 0

    async def run(self, gate: Any, count: int, in_flight: int) -> None:
        await gate.redis.config_resetstat()
        cpu_before = await _redis_cpu_s(gate.redis)
        began = time.perf_counter()
        await _join_range(gate, self.campaign, self.next, self.next + count, in_flight)
        self.wall_s += time.perf_counter() - began
        self.cpu_s += await _redis_cpu_s(gate.redis) - cpu_before
        stats = await gate.redis.info("commandstats")
        self.calls += int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
        self.next += count

    def to_json(self) -> dict[str, Any]:
        joins = self.next - self.waiting_before
        return {
            "waiting_before": self.waiting_before,
            "joins": joins,
            "redis_us_per_join": round(self.cpu_s * 1e6 / joins, 3),
            "wall_us_per_join": round(self.wall_s * 1e6 / joins, 1),
            "script_calls": self.calls,
        }


async def measure(
    customers: int, window: int, in_flight: int, work: Path, rounds: int = 5
) -> dict[str, Any]:
    """Fill one campaign to `customers - window` waiting (its bytes per customer), then
    `window` joins into it and `window` into a second, empty campaign, in `rounds`
    alternating turns, so that whatever else the machine does weighs on both alike."""
    if customers < 2 * window or window < rounds:
        raise ValueError("customers must be at least twice the window, the window >= rounds")
    redis_server = RedisServer(work / "redis")
    redis_server.start()
    try:
        keys_file, digest_file = work / "keys.json", work / "digest-keys.json"
        write_keys(keys_file, generate_keys_document())
        write_keys(digest_file, generate_digest_document())
        config = load_config(
            None,
            env={},
            redis_url=redis_server.url,
            signing_keys=str(keys_file),
            digest_keys=str(digest_file),
            data_dir=str(work / "data"),
        )
        async with running_gate(config, background=False) as gate:
            await gate.room.create(parse_spec(_spec(LARGE)), "bench")
            info = await gate.redis.info("memory")
            before = int(info["used_memory"])
            filled = customers - window
            last_progress = time.monotonic()
            for start in range(0, filled, 50_000):
                await _join_range(gate, LARGE, start, min(filled, start + 50_000), in_flight)
                if time.monotonic() - last_progress > 10:
                    print(f"  {start + 50_000:,} waiting", flush=True)
                    last_progress = time.monotonic()
            info = await gate.redis.info("memory")
            per_customer = (int(info["used_memory"]) - before) / filled
            await gate.room.create(parse_spec(_spec(SMALL)), "bench")
            small, large = _Window(SMALL, 0), _Window(LARGE, filled)
            for turn in range(rounds):
                count = window // rounds if turn < rounds - 1 else window - small.next
                await small.run(gate, count, in_flight)
                await large.run(gate, count, in_flight)
            waiting = int(await gate.redis.hget(f"fg:{{{LARGE}}}:meta", "seq") or 0)
            version = (await gate.redis.info("server"))["redis_version"]
    finally:
        redis_server.stop()
    s, lg = small.to_json(), large.to_json()
    return {
        "redis_version": version,
        "customers": customers,
        "tickets_in_redis": waiting,
        "bytes_per_waiting_customer": round(per_customer, 1),
        "bytes_bound": BOUND_BYTES,
        "join_small_queue": s,
        "join_large_queue": lg,
        "rounds": rounds,
        "redis_cost_ratio_large_over_small": round(
            lg["redis_us_per_join"] / s["redis_us_per_join"], 3
        ),
        "wall_ratio_large_over_small": round(lg["wall_us_per_join"] / s["wall_us_per_join"], 3),
        "ratio_bound": BOUND_RATIO,
        "in_flight": in_flight,
    }


def table(result: dict[str, Any]) -> str:
    """The Markdown section of bench/report.py."""
    small, large = result["join_small_queue"], result["join_large_queue"]

    def cost(window: dict[str, Any]) -> str:
        start, end = window["waiting_before"], window["waiting_before"] + window["joins"]
        per = window["redis_us_per_join"]
        return f"| Redis CPU µs per join, {start:,} → {end:,} waiting | {per} | |"

    return "\n".join(
        [
            f"## Redis per waiting customer, and a join's cost at {result['customers']:,} "
            "waiting (bench/redis_memory.py)",
            "",
            "| figure | measured | bound |",
            "| --- | --- | --- |",
            f"| bytes per waiting customer (ticket, index, audit entry, receipt record) "
            f"| {result['bytes_per_waiting_customer']} | ≤ {result['bytes_bound']} |",
            cost(small),
            cost(large),
            f"| ratio, large queue ÷ small | {result['redis_cost_ratio_large_over_small']} "
            f"| ≤ {result['ratio_bound']} |",
            f"| wall per join, ratio | {result['wall_ratio_large_over_small']} | |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_memory", description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=512, help="joins under way at once")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fairgate-memory-") as tmp:
        result = asyncio.run(measure(args.customers, args.window, args.in_flight, Path(tmp)))
    result["load_average_before_after"] = [load_before, os.getloadavg()]
    result["cores"] = os.cpu_count()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
