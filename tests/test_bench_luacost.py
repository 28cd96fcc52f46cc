"""bench/luacost.py and bench/auditcost.py at a few hundred calls (a real redis-server and
its redis-benchmark): they replay join.lua with the arguments the gate passes today, so a
change to the script's ARGV cannot leave them measuring an error (each failed with 'bad
argument: seed' once join.lua took the pre-queue's seed and the receipt records first).
The figures are the benchmark's to report; here only that every join call made tickets."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from bench.auditcost import measure_audit_cost
from bench.luacost import benchmark_binary, measure_lua
from gate.redis_server import RedisServer


async def test_the_lua_benchmarks_run_join_as_the_gate_calls_it(redis_server: RedisServer) -> None:
    binary = benchmark_binary(redis_server.binary)
    if binary is None:
        pytest.skip("no redis-benchmark beside redis-server or on PATH")
    redis = Redis(host="127.0.0.1", port=redis_server.port)
    try:
        lua = await measure_lua(
            redis=redis,
            port=redis_server.port,
            binary=binary,
            clients=4,
            hset_requests=200,
            join1_requests=200,
            join100_requests=4,
            admit_requests=100,
            label="test",
        )
        for batch in (1, 100):
            row = lua[f"join_{batch}"]
            assert row["rps"] > 0
            assert row["created"] > 0.9 * row["attempted"], row  # new tickets, not errors
        cost = await measure_audit_cost(
            redis=redis,
            port=redis_server.port,
            binary=binary,
            clients=4,
            requests={1: 100, 100: 3},
            rounds=1,
            label="test",
        )
        for batch in (1, 100):
            for variant, runs in cost[f"join_{batch}"]["runs"].items():
                for run in runs:
                    assert run["created"] > 0.9 * run["attempted"], (batch, variant, run)
    finally:
        await redis.aclose()
