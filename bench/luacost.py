"""What the Lua scripts cost Redis, measured with redis-benchmark against a plain HSET.

Every figure comes from the same redis-server in the same run: requests per second of
`EVALSHA join` with a batch of 1 and of 100 new digests, of `EVALSHA admit` (idle, and
admitting up to 10 per call), and of `HSET key <new field> 1` as the reference. The
digests are `dig-` + the 12-digit `__rand_int__` placeholder of redis-benchmark, exactly
the 16 bytes join.lua demands, so nearly every digest is new and creates a ticket (the
created count is read back from the campaign's `seq` and reported).

Two bases, each a ratio to HSET measured the same way just before:
- wall: Redis runs one command at a time, so 1 / (calls per second) is its time per call,
  the fsync of `appendfsync always` and the client included;
- CPU: `usec_per_call` of INFO commandstats (reset before each run), Redis's own time in
  the command, no fsync, no client.
Dividing by the batch size gives the cost per customer.
"""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from gate.campaign import parse_spec
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.room.scripts import ScriptArg, Scripts

ADMIT_MAX = 10  # admit busy: customers admitted per call
ADMIT_EXPIRE = 100
KEYSPACE = 1_000_000_000  # -r: __rand_int__ becomes a 12-digit number below this
DIGEST = "dig-__rand_int__"  # 4 + 12 = 16 bytes, the digest length join.lua checks


class RecordingScripts(Scripts):
    """The gate's script registry, remembering the keys and arguments of each last call."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, tuple[list[str], list[str]]] = {}

    async def call(
        self, redis: Redis, name: str, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> Any:
        self.last[name] = ([str(key) for key in keys], [_text(arg) for arg in args])
        return await super().call(redis, name, keys, args)


def _text(arg: ScriptArg) -> str:
    # campaign_create's one argument is msgpack, not text; only join's and admit's
    # (ASCII) arguments are replayed through redis-benchmark
    return arg.decode(errors="surrogateescape") if isinstance(arg, bytes) else str(arg)


def benchmark_binary(redis_server_binary: str) -> str | None:
    beside = Path(redis_server_binary).with_name("redis-benchmark")
    if beside.exists():
        return str(beside)
    return shutil.which("redis-benchmark")


def bench_spec(campaign: str, rate: float, burst: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": campaign,
        "opens_at": (now - timedelta(seconds=1)).isoformat(),
        "closes_at": (now + timedelta(hours=6)).isoformat(),
        "quota": {"unit": "item", "total": 10**12},
        "admission": {
            "rate_per_s": rate,
            "burst": burst,
            "max_active": 10_000_000,
            "pass_ttl_s": 86400,
        },
    }


async def _redis_benchmark(
    binary: str, port: int, requests: int, clients: int, command: list[str]
) -> float:
    argv = [binary, "-h", "127.0.0.1", "-p", str(port), "-n", str(requests)]
    argv += ["-c", str(clients), "-r", str(KEYSPACE), "--csv", *command]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 300)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError("redis-benchmark did not finish in 300 s") from None
    text = out.decode(errors="replace")
    rows = [row for row in csv.reader(io.StringIO(text)) if len(row) >= 2]
    data = [row for row in rows if row[0] != "test"]
    if process.returncode != 0 or not data:
        raise RuntimeError(f"redis-benchmark failed: {text[-500:]} {err.decode()[-500:]}")
    return float(data[-1][1])


async def measure_lua(
    *,
    redis: Redis,
    port: int,
    binary: str,
    clients: int,
    hset_requests: int,
    join1_requests: int,
    join100_requests: int,
    admit_requests: int,
    label: str,
) -> dict[str, Any]:
    scripts = RecordingScripts()
    await scripts.load_all(redis)
    room = Room(redis, scripts)
    join_campaign = f"lua-join-{label}"
    idle_campaign = f"lua-idle-{label}"
    await room.create(parse_spec(bench_spec(join_campaign, 1e6, 1_000_000)), "bench")
    await room.create(parse_spec(bench_spec(idle_campaign, 0.001, 1)), "bench")
    jk = CampaignKeys(join_campaign)
    # The keys and arguments exactly as the gate passes them, whatever they are today.
    await room.join(join_campaign, [b"dig-000000000000"])
    join_keys = [str(key) for key in scripts.last["join"][0]]
    await room.admit(idle_campaign, max_per_call=ADMIT_MAX, expire_limit=ADMIT_EXPIRE)
    idle_keys, admit_args = scripts.last["admit"]
    await room.admit(join_campaign, max_per_call=0, expire_limit=ADMIT_EXPIRE)
    busy_keys = scripts.last["admit"][0]
    join_sha = scripts["join"].sha
    admit_sha = scripts["admit"].sha

    async def seq() -> int:
        return int(await redis.hget(jk.meta, "seq") or 0)

    async def admitted() -> int:
        return int(await redis.hget(jk.meta, "admitted") or 0)

    async def measure(requests: int, command: list[str]) -> tuple[float, float | None]:
        """(calls per second, Redis CPU µs per call from INFO commandstats)."""
        await redis.config_resetstat()
        rps = await _redis_benchmark(binary, port, requests, clients, command)
        stats = await redis.info("commandstats")
        entry = stats.get(f"cmdstat_{command[0].lower()}")
        cpu = float(entry["usec_per_call"]) if isinstance(entry, dict) else None
        return rps, cpu

    def row(rps: float, cpu: float | None, per: float = 1.0) -> dict[str, Any]:
        """Costs per call, and per `per` customers, in µs and in HSETs (wall and CPU)."""
        wall_us = 1e6 / rps
        out: dict[str, Any] = {
            "rps": rps,
            "us_per_call": wall_us,
            "cpu_us_per_call": cpu,
            "hsets": (wall_us / per) / hset_wall,
            "cpu_hsets": (cpu / per) / hset_cpu if cpu is not None and hset_cpu else None,
        }
        return out

    results: dict[str, Any] = {}
    rps, hset_cpu = await measure(hset_requests, ["HSET", f"bench:{label}:hash", DIGEST, "1"])
    hset_wall = 1e6 / rps
    results["hset"] = {"rps": rps, "us_per_call": hset_wall, "cpu_us_per_call": hset_cpu}

    for batch, requests in ((1, join1_requests), (100, join100_requests)):
        before = await seq()
        # ARGV: no pre-queue seed, no receipt records carried, then the digests
        digests = [DIGEST] * batch
        command = ["EVALSHA", join_sha, str(len(join_keys)), *join_keys, "", "0", *digests]
        rps, cpu = await measure(requests, command)
        results[f"join_{batch}"] = {
            **row(rps, cpu, per=batch),
            "batch": batch,
            "created": await seq() - before,
            "attempted": requests * batch,
        }

    def admit(keys: list[str]) -> list[str]:
        return ["EVALSHA", admit_sha, str(len(keys)), *keys, *admit_args]

    rps, cpu = await measure(admit_requests, admit(idle_keys))
    results["admit_idle"] = row(rps, cpu)

    waiting = await seq() - int(await redis.hget(jk.meta, "cursor") or 0)
    busy_requests = max(100, min(admit_requests, waiting // ADMIT_MAX))
    before = await admitted()
    rps, cpu = await measure(busy_requests, admit(busy_keys))
    moved = await admitted() - before
    results["admit_busy"] = {
        **row(rps, cpu),
        "max_per_call": ADMIT_MAX,
        "mean_admitted_per_call": round(moved / busy_requests, 2),
    }
    return results
