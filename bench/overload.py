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

Three gates: one that does not shed (`shed_lag_ms` 0, the default), one that sheds from
20 ms of loop lag, and the first behind real nginx (1 worker) with the shipped
fairgate-maps.conf, fairgate-locations.conf and the gate's upstreams of
deploy/nginx/nginx.conf, whose cap on requests in flight (max_conns) answers the excess
busy at once (docs/proxy.md, "Overload"); the bank's login there is a stand-in nginx that
names the customer the request names. Its capacity is measured through the same nginx.
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

from bench.edge import (
    NGINX_LOGIN_CHECK,
    Nginx,
    _common,
    _temp_paths,
    nginx_binary,
    shipped_gate_upstreams,
    upstream_conf,
)
from bench.load import LoadResult, Target
from bench.openloop import run_load
from bench.servers import GateServer
from gate.redis_server import RedisServer, free_port
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


def front_conf(root: Path, port: int, login_port: int, gate_port: int) -> str:
    """nginx in front of the gate with the shipped maps, locations and gate upstreams (its
    cap included); the login check asks the stand-in at `login_port`."""
    deploy = Path(__file__).resolve().parent.parent / "deploy" / "nginx"
    return f"""{_common(root, "front")}
http {{
    access_log off;
{_temp_paths(root, "front")}
{shipped_gate_upstreams(gate_port)}
    upstream bank_login {{ server 127.0.0.1:{login_port}; keepalive 64; }}
    upstream core_bank {{ server 127.0.0.1:{login_port}; keepalive 64; }}
    include {deploy}/fairgate-maps.conf;
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        set $fairgate_campaign "-";
        set $fairgate_proxy_secret "";
{NGINX_LOGIN_CHECK}        location @bank_login {{ return 302 /login; }}
        include {deploy}/fairgate-locations.conf;
    }}
}}
"""


async def _fronted(root: Path, gate_port: int) -> tuple[list[Nginx], str]:
    """The login stand-in and the front nginx, started; the front's base URL."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    login_port, port = free_port(), free_port()
    started: list[Nginx] = []
    for name, conf, at in (
        ("upstream", upstream_conf(root, login_port, "$http_x_customer_id"), login_port),
        ("front", front_conf(root, port, login_port, gate_port), port),
    ):
        server = Nginx(binary, root, name, conf, at)
        server.start()
        started.append(server)
        await server.wait()
    return started, f"http://127.0.0.1:{port}"


async def _one_gate(
    redis_server: RedisServer,
    redis: Redis,
    work: Path,
    duration_s: float,
    shed_lag_ms: int,
    front: bool = False,
) -> dict[str, Any]:
    """Capacity, then 3x, for the poll and the join, on a fresh `gate serve`; with
    `front`, through nginx with the shipped configs."""
    from bench.run import prepare  # bench.run imports this module

    keys_file = work / "keys.json"
    if not keys_file.exists():
        write_keys(keys_file, generate_keys_document())
    gate = GateServer(redis_server.url, work, keys_file, 1, shed_lag_ms=shed_lag_ms)
    proxies: list[Nginx] = []
    tag = f"{shed_lag_ms}{'n' if front else ''}"
    try:
        await gate.start()
        async with aiohttp.ClientSession() as session:
            fixture = await prepare(session, gate, f"overload-{tag}", 200)
        base = gate.url
        if front:
            proxies, base = await _fronted(work / f"nginx-{tag}", gate.port)
        poll = Target(
            f"{base}/q/{fixture.poll_campaign}/status?ticket={fixture.ticket}",
            headers=((CUSTOMER_HEADER, fixture.poll_customer),),
        )
        join = Target(
            f"{base}/q/{fixture.join_campaign}/join",
            method="POST",
            unique_customer_prefix=f"o{tag}",
        )
        paths: dict[str, Any] = {}
        for name, target in (("poll", poll), ("join", join)):
            print(f"overload: {name} capacity (closed loop, {duration_s:.0f}s)", flush=True)
            capacity = await run_load(
                target.with_prefix(f"cap{tag}") if target.unique_customer_prefix else target,
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
        for proxy in proxies:
            proxy.stop()
        gate.stop()


async def measure(
    work: Path, duration_s: float, shed_values: tuple[int, ...] = (0, 20), front: bool = True
) -> dict[str, Any]:
    """Each path at 3x capacity on a gate that does not shed (shed_lag_ms 0), on one that
    sheds from 20 ms of loop lag, and (`front`, where nginx is installed) on the first
    behind nginx with the shipped cap."""
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
        if front and nginx_binary() is not None:
            runs["shed_lag_ms=0 behind nginx (shipped cap)"] = await _one_gate(
                redis_server, redis, work, duration_s, 0, front=True
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
