"""Join and claim against the hello-world, one process each (issue 15: joins and claims
batched, one Redis round trip per batch).

`python -m bench.batching [--duration 3] [--rounds 3] [--connections 64]`: a redis-server
of its own, `gate serve --workers 1` and the aiohttp hello-world (bench/hello.py), loaded
in turn by wrk (closed loop, one thread), gate then hello, `--rounds` times interleaved;
each figure is the median of the rounds' gate/hello ratios, with their range and the load
average. Join: a new customer per request. Claim: a customer admitted beforehand (joined,
admitted, its pass issued through pass.lua, as a status poll would) per request, each
claiming once (1 item of a quota that cannot sell out); the hello-world gets the same
requests. Each row also gives the CPU each server spent per request (user + system from
/proc over the wrk run; the gate's less what it spends idle, measured before the rounds),
and for the gate what Redis spent per request (its own CPU, and EVALSHA calls: requests
per call is the batch size). Results as JSON on stdout and in --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.admit_rate import process_cpu_s
from bench.servers import Admin, GateServer, HelloServer
from bench.wrk import _DONE, MARKER, wrk_binary
from gate.campaign import load_stored_spec
from gate.redis_client import connect
from gate.redis_server import RedisServer
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.room.scripts import Scripts
from gate.signing import generate_keys_document, load_or_create_keys, write_keys
from gate.tokens import PASS, TokenSigner, customer_digest

_UNIQUE_JOIN = r"""
wrk.method = "POST"
wrk.body = ""
wrk.headers["Content-Length"] = "0"
local counter = 0
function request()
  counter = counter + 1
  return wrk.format(nil, nil, {["X-Customer-Id"] = PREFIX .. "-" .. counter}, "")
end
"""

# One customer per claim, read from a file of "customer<TAB>pass" lines, from OFFSET on.
_CLAIMS = r"""
wrk.method = "POST"
wrk.body = '{"amount": "1", "idempotency_key": "k"}'
wrk.headers["Content-Type"] = "application/json"
local pairs_ = {}
local next_ = 1
function init(args)
  local offset = tonumber(args[2] or "0")
  local n = 0
  for line in io.lines(args[1]) do
    n = n + 1
    if n > offset then
      local customer, pass = line:match("^([^\t]+)\t(.+)$")
      pairs_[#pairs_ + 1] = {customer, pass}
    end
  end
end
function request()
  local p = pairs_[next_]
  next_ = next_ + 1
  if p == nil then return wrk.format(nil, "/exhausted") end
  return wrk.format(nil, nil, {["X-Customer-Id"] = p[1], ["X-Gate-Pass"] = p[2],
    ["Content-Type"] = "application/json"}, wrk.body)
end
"""


async def wrk(
    url: str, script: str, args: list[str], seconds: int, connections: int, dir_: Path
) -> dict[str, Any]:
    path = dir_ / f"wrk-{time.monotonic_ns()}.lua"
    path.write_text(script + _DONE)
    binary = wrk_binary()
    assert binary is not None, "wrk is needed (apt-get install wrk)"
    process = await asyncio.create_subprocess_exec(
        binary,
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(path),
        url,
        "--",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    line = next(line for line in out.decode().splitlines() if line.startswith(MARKER))
    data = json.loads(line[len(MARKER) :])
    requests = int(data["requests"])
    non_2xx = int(data["status"])
    return {
        "requests": requests,
        "ok": requests - non_2xx,
        "errors": non_2xx + int(data["connect"] + data["read"] + data["write"] + data["timeout"]),
        "rps": round((requests - non_2xx) / (data["duration_us"] / 1e6), 1),
        "p99_ms": round(data["p99_us"] / 1000, 2),
    }


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def spec(campaign: str) -> dict[str, Any]:
    now = time.time()
    iso = _iso
    return {
        "id": campaign,
        "opens_at": iso(now - 2),
        "closes_at": iso(now + 6 * 3600),
        "quota": {"unit": "item", "total": 10**9},
        "admission": {
            "rate_per_s": 100000,
            "burst": 100000,
            "max_active": 10**7,
            "pass_ttl_s": 86400,
            "reservation_ttl_s": 3600,
            "overbook": 1000,
        },
    }


async def admitted_customers(
    redis_url: str, keys_file: Path, campaign: str, count: int
) -> list[str]:
    """`count` customers of `campaign`, joined, admitted and given a pass: one
    "customer<TAB>pass" line each."""
    keys = load_or_create_keys(
        keys_file, create=False, digest_path=keys_file.with_name("digest-keys.json")
    )
    signer = TokenSigner(keys)
    redis = connect(redis_url, timeout_s=30, max_connections=64)
    room = Room(redis, Scripts())
    try:
        meta = await room.meta(campaign)
        assert meta is not None
        kid = load_stored_spec(meta["spec"]).digest_key
        names = [f"claimer-{i}" for i in range(count)]
        digests = [customer_digest(keys, campaign, n, kid) for n in names]
        seqs: list[int] = []
        for i in range(0, count, 500):
            result = await room.join(campaign, digests[i : i + 500])
            seqs += [seq for seq, _ in result.tickets]
        deadline = time.monotonic() + 120
        while int(await redis.hget(CampaignKeys(campaign).meta, "cursor") or 0) < max(seqs):
            if time.monotonic() > deadline:
                raise RuntimeError("the customers were not admitted in time")
            await asyncio.sleep(0.1)
        lines: list[str] = []
        for i in range(0, count, 200):
            part = list(
                zip(names[i : i + 200], digests[i : i + 200], seqs[i : i + 200], strict=True)
            )
            answers = await asyncio.gather(*(room.pass_status(campaign, s, d) for _, d, s in part))
            for (name, digest, seq), (state, deadline_us, _) in zip(part, answers, strict=True):
                assert state == "admitted", state
                token = signer.issue(PASS, campaign, seq, digest, exp=deadline_us // 1_000_000)
                lines.append(f"{name}\t{token}")
        return lines
    finally:
        await redis.aclose()


async def redis_counters(url: str) -> tuple[float, int]:
    """Redis's CPU seconds so far (user + system, its INFO) and its EVALSHA calls."""
    redis = connect(url, timeout_s=10, max_connections=1)
    try:
        cpu = await redis.info("cpu")
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    calls = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls


async def measured(
    run: Any, pid: int, idle_cpu_per_s: float, redis_url: str | None
) -> dict[str, Any]:
    """`run()` (a wrk run) with the CPU per request of process `pid` around it, and of
    Redis when `redis_url` is given."""
    counters = await redis_counters(redis_url) if redis_url else None
    cpu0, t0 = process_cpu_s(pid), time.monotonic()
    result: dict[str, Any] = await run()
    cpu1, t1 = process_cpu_s(pid), time.monotonic()
    n = max(result["requests"], 1)
    result["cpu_us_per_request"] = round((cpu1 - cpu0) / n * 1e6, 1)
    result["cpu_us_per_request_net"] = round(
        (cpu1 - cpu0 - idle_cpu_per_s * (t1 - t0)) / n * 1e6, 1
    )
    if redis_url and counters:
        redis_cpu, calls = await redis_counters(redis_url)
        result["redis_cpu_us_per_request"] = round((redis_cpu - counters[0]) / n * 1e6, 1)
        result["requests_per_script_call"] = round(n / max(calls - counters[1], 1), 1)
    return result


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [r["gate"]["rps"] / r["hello"]["rps"] for r in rounds if r["hello"]["rps"]]
    return {
        "gate_hello": round(statistics.median(ratios), 3) if ratios else None,
        "range": [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None,
        "gate_rps": statistics.median(r["gate"]["rps"] for r in rounds),
        "hello_rps": statistics.median(r["hello"]["rps"] for r in rounds),
        "gate_errors": sum(r["gate"]["errors"] for r in rounds),
        "gate_cpu_us_per_request": statistics.median(
            r["gate"]["cpu_us_per_request_net"] for r in rounds
        ),
        "hello_cpu_us_per_request": statistics.median(
            r["hello"]["cpu_us_per_request"] for r in rounds
        ),
        "redis_cpu_us_per_request": statistics.median(
            r["gate"]["redis_cpu_us_per_request"] for r in rounds
        ),
        "requests_per_script_call": statistics.median(
            r["gate"]["requests_per_script_call"] for r in rounds
        ),
        "rounds": rounds,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fairgate-batching-"))
    redis_server = RedisServer(work / "redis")
    redis_server.start()
    keys_file = work / "keys.json"
    write_keys(keys_file, generate_keys_document())
    gate = GateServer(redis_server.url, work, keys_file, 1)
    hello = HelloServer(work, 1)
    results: dict[str, Any] = {"loadavg_start": list(os.getloadavg()), "cores": os.cpu_count()}
    try:
        await gate.start()
        await hello.start()
        async with aiohttp.ClientSession() as session:
            admin = Admin(session, gate)
            await admin.create(spec("bj"))
            await admin.create(spec("bc"))
        per_round = args.claims_per_round
        claims_file = work / "claimers.tsv"
        lines = await admitted_customers(redis_server.url, keys_file, "bc", per_round * args.rounds)
        claims_file.write_text("\n".join(lines) + "\n")
        # What the gate spends with no request (its refresh, admission and sealing loops)
        idle0, idle_t0 = process_cpu_s(gate.pid), time.monotonic()
        await asyncio.sleep(2)
        idle_cpu = (process_cpu_s(gate.pid) - idle0) / (time.monotonic() - idle_t0)
        results["gate_idle_cpu_per_s"] = round(idle_cpu, 4)
        joins: list[dict[str, Any]] = []
        claims: list[dict[str, Any]] = []
        for n in range(args.rounds):
            one: dict[str, Any] = {}
            for side, server in (("gate", gate), ("hello", hello)):
                script = f'PREFIX = "r{n}-{side}"\n' + _UNIQUE_JOIN
                one[side] = await measured(
                    lambda url=server.url, script=script: wrk(
                        url + "/q/bj/join", script, [], args.duration, args.connections, work
                    ),
                    server.pid,
                    idle_cpu if server is gate else 0.0,
                    redis_server.url if server is gate else None,
                )
            joins.append(one)
            one = {}
            for side, server in (("gate", gate), ("hello", hello)):
                offset = str(n * per_round)
                one[side] = await measured(
                    lambda url=server.url, offset=offset: wrk(
                        url + "/q/bc/claim",
                        _CLAIMS,
                        [str(claims_file), offset],
                        args.duration,
                        args.connections,
                        work,
                    ),
                    server.pid,
                    idle_cpu if server is gate else 0.0,
                    redis_server.url if server is gate else None,
                )
            claims.append(one)
            print(f"round {n + 1}: join {joins[-1]}  claim {claims[-1]}", flush=True)
        results["join"] = summary(joins)
        results["claim"] = summary(claims)
        results["loadavg_end"] = list(os.getloadavg())
        return results
    finally:
        gate.stop()
        hello.stop()
        redis_server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=3, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved gate/hello rounds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--claims-per-round",
        type=int,
        default=20000,
        help="customers admitted for each round's claims (more than it can claim)",
    )
    parser.add_argument("--out", type=Path, help="write the results (JSON) here too")
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    text = json.dumps({k: v for k, v in results.items()}, indent=1)
    if args.out:
        args.out.write_text(text)
    for row in ("join", "claim"):
        r = results[row]
        print(
            f"{row}: gate/hello {r['gate_hello']} {r['range']}  gate {r['gate_rps']}/s "
            f"hello {r['hello_rps']}/s  gate non-2xx {r['gate_errors']}; CPU per request: "
            f"gate {r['gate_cpu_us_per_request']} us (idle less), hello "
            f"{r['hello_cpu_us_per_request']} us, Redis {r['redis_cpu_us_per_request']} us; "
            f"{r['requests_per_script_call']} requests per script call"
        )
    print(f"load average {results['loadavg_start']} -> {results['loadavg_end']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
