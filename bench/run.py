"""`make bench` / `python -m bench.run`: fairgate's hot paths as ratios to references.

Every figure is a ratio to a reference measured in the same run on the same machine:
the HTTP paths against an aiohttp hello-world served the same way (same workers, uvloop),
the Lua scripts against a plain HSET on the same redis-server. The run's conditions are
printed and written with the figures to OUT/results.json and OUT/results.md.

    python -m bench.run --quick                 # a few minutes, for a small machine
    python -m bench.run --workers 8 --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench import admit_rate, edge, overload, redis_memory, verify_scale
from bench.auditcost import measure_audit_cost
from bench.load import LoadResult, Target
from bench.luacost import benchmark_binary, measure_lua
from bench.openloop import run_load
from bench.report import write_reports
from bench.servers import Admin, GateServer, HelloServer
from bench.wrk import run_wrk, wrk_binary, wrk_version
from gate.audit.format import decode_entry
from gate.redis_server import RedisServer
from gate.room.keys import CampaignKeys
from gate.signing import generate_keys_document, write_keys

CUSTOMER_HEADER = "X-Customer-Id"


@dataclass
class Settings:
    quick: bool
    duration_s: int
    warmup_s: int
    workers: int
    rate: float | None
    load_fraction: float
    connections: int
    threads: int
    gen_procs: int
    out: Path
    use_wrk: bool
    scale_out: bool
    lua: bool
    customers_ahead: int
    repeat: int
    lua_requests: dict[str, int] = field(default_factory=dict)
    audit_cost: bool = True
    audit_rounds: int = 21
    audit_calls: dict[int, int] = field(default_factory=dict)
    admit_rate: bool = True
    verify_scale: bool = True
    redis_memory: bool = True
    overload: bool = True
    edge: bool = False


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="fairgate benchmarks: every figure a ratio to a same-run reference.",
    )
    parser.add_argument("--quick", action="store_true", help="short runs (~2-4 min on 2 cores)")
    parser.add_argument("--duration", type=int, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up per server and path")
    parser.add_argument(
        "--workers", type=int, help="gate and hello-world processes (default min(4, cores))"
    )
    parser.add_argument(
        "--rate", type=float, help="open-loop arrival rate, requests/s (default: auto)"
    )
    parser.add_argument(
        "--load-fraction",
        type=float,
        default=0.5,
        help="auto open-loop rate = this fraction of the lower closed-loop throughput (0.5)",
    )
    parser.add_argument("--connections", type=int, help="keep-alive connections per load run")
    parser.add_argument(
        "--threads", type=int, help="wrk threads (default max(1, min(4, cores - workers)))"
    )
    parser.add_argument(
        "--gen-procs", type=int, help="open-loop generator processes (default: --threads)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure gate and hello-world this many times each, order alternating; "
        "the figures are medians (default 1)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="results folder")
    parser.add_argument("--no-wrk", action="store_true", help="closed loop without wrk")
    parser.add_argument("--no-scale-out", action="store_true", help="skip the workers=1 pass")
    parser.add_argument("--no-lua", action="store_true", help="skip the redis-benchmark part")
    parser.add_argument(
        "--no-audit-cost", action="store_true", help="skip join.lua with/without its audit write"
    )
    parser.add_argument(
        "--no-admit-rate",
        action="store_true",
        help="skip admitted/s vs the configured rate and the core's arrivals (bench/admit_rate)",
    )
    parser.add_argument(
        "--no-verify-scale",
        action="store_true",
        help="skip `gate audit verify` on 1,000,000 entries (100,000 with --quick; "
        "bench/verify_scale)",
    )
    parser.add_argument(
        "--edge",
        action="store_true",
        help="also the pass checked at the edge: nginx + njs ÷ nginx with no check, and the "
        "gate's calls per request (bench/edge.py; needs nginx's njs module and wrk)",
    )
    parser.add_argument(
        "--no-redis-memory",
        action="store_true",
        help="skip Redis bytes per waiting customer and the join's cost at 1,000,000 "
        "waiting (100,000 with --quick; bench/redis_memory)",
    )
    parser.add_argument(
        "--no-overload",
        action="store_true",
        help="skip the poll and the join at 3x capacity, shedding off and on (bench/overload)",
    )
    args = parser.parse_args(argv)

    n_cores = cores()
    workers = args.workers or min(4, n_cores)
    threads = args.threads or max(1, min(4, n_cores - workers))
    duration = args.duration or (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    connections = args.connections or (32 if args.quick else max(64, 16 * workers))
    if not 1 <= workers <= 256:
        parser.error("--workers must be between 1 and 256")
    if duration < 1 or duration > 600 or warmup < 0 or warmup > 60:
        parser.error("--duration must be 1..600 s and --warmup 0..60 s")
    if connections < 1 or connections > 10000:
        parser.error("--connections must be between 1 and 10000")
    if args.rate is not None and not 0 < args.rate <= 1_000_000:
        parser.error("--rate must be between 0 and 1e6 requests/s")
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat must be between 1 and 20")
    if not 0 < args.load_fraction <= 1:
        parser.error("--load-fraction must be in (0, 1]")
    if args.quick:
        lua = {"hset": 20000, "join1": 10000, "join100": 400, "admit": 5000}
    else:
        lua = {"hset": 200000, "join1": 100000, "join100": 4000, "admit": 50000}
    return Settings(
        quick=args.quick,
        duration_s=duration,
        warmup_s=warmup,
        workers=workers,
        rate=args.rate,
        load_fraction=args.load_fraction,
        connections=connections,
        threads=threads,
        gen_procs=args.gen_procs or threads,
        out=args.out,
        use_wrk=not args.no_wrk and wrk_binary() is not None,
        scale_out=not args.no_scale_out,
        lua=not args.no_lua,
        customers_ahead=200 if args.quick else 1000,
        repeat=args.repeat,
        lua_requests=lua,
        audit_cost=not args.no_audit_cost,
        audit_rounds=11 if args.quick else 21,
        audit_calls={1: 2000, 100: 60} if args.quick else {1: 3000, 100: 100},
        admit_rate=not args.no_admit_rate,
        verify_scale=not args.no_verify_scale,
        redis_memory=not args.no_redis_memory,
        overload=not args.no_overload,
        edge=args.edge,
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _filesystem(path: Path) -> str:
    """The file-system type under `path` (AOF fsync cost depends on it)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    best = ("", "unknown")
    for fields in mounts:
        if len(fields) > 2 and resolved.startswith(fields[1]) and len(fields[1]) > len(best[0]):
            best = (fields[1], fields[2])
    return best[1]


def conditions(settings: Settings, redis: RedisServer, data_dir: Path) -> dict[str, Any]:
    wrk = wrk_binary()
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": cores(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "aiohttp": _version("aiohttp"),
        "uvloop": _version("uvloop"),
        "redis_py": _version("redis"),
        "redis_server": redis.version(),
        "redis_binary": redis.binary,
        "redis_appendfsync": redis.appendfsync,
        "redis_data_fs": _filesystem(data_dir),
        "workers": settings.workers,
        "scale_out_workers": [settings.workers, 1] if settings.scale_out else [settings.workers],
        "connections": settings.connections,
        "wrk_threads": settings.threads,
        "generator_procs": settings.gen_procs,
        "closed_loop_tool": (
            (wrk_version(wrk) if wrk else "") if settings.use_wrk else "openloop.py (no wrk)"
        ),
        "gate_env_overrides": sorted(
            name
            for name in os.environ
            if name.startswith("GATE_") and "TOKEN" not in name and "KEY" not in name
        ),
        "duration_s": settings.duration_s,
        "warmup_s": settings.warmup_s,
        "repeat": settings.repeat,
        "open_loop_rate": settings.rate if settings.rate else f"auto x{settings.load_fraction}",
        "quick": settings.quick,
        "loadavg_start": list(os.getloadavg()),
    }


def spec(campaign: str, **admission: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    adm: dict[str, Any] = {"rate_per_s": 1, "burst": 1, "max_active": 1_000_000}
    adm.update(pass_ttl_s=86400, **admission)
    return {
        "id": campaign,
        "opens_at": (now - timedelta(seconds=1)).isoformat(),
        "closes_at": (now + timedelta(hours=6)).isoformat(),
        "quota": {"unit": "item", "total": 10**9},
        "admission": adm,
    }


@dataclass
class Fixture:
    """What one pass measures against: a waiting ticket, a valid pass, a join campaign."""

    poll_campaign: str
    poll_customer: str
    ticket: str
    position: int
    auth_campaign: str
    auth_customer: str
    pass_token: str
    join_campaign: str


async def _join(
    session: aiohttp.ClientSession, gate: GateServer, campaign: str, customer: str
) -> dict[str, Any]:
    url = f"{gate.url}/q/{campaign}/join"
    deadline = time.monotonic() + 30
    while True:
        async with session.post(url, headers={CUSTOMER_HEADER: customer}) as response:
            body: dict[str, Any] = await response.json(content_type=None)
            if response.status in (200, 201):
                return body
            if response.status != 503 or time.monotonic() > deadline:
                raise RuntimeError(f"join {campaign}: {response.status} {body}")
        # A gate that sheds while its loop is late (shed_lag_ms): come back, as a client does
        await asyncio.sleep(0.05)


async def prepare(
    session: aiohttp.ClientSession, gate: GateServer, tag: str, customers_ahead: int
) -> Fixture:
    admin = Admin(session, gate)
    poll_c, auth_c, join_c = f"poll-{tag}", f"auth-{tag}", f"join-{tag}"

    # A paused campaign: its customers wait as long as the benchmark runs.
    await admin.create(spec(poll_c))
    await admin.pause(poll_c)
    semaphore = asyncio.Semaphore(50)

    async def join_one(i: int) -> dict[str, Any]:
        async with semaphore:
            return await _join(session, gate, poll_c, f"ahead-{i}")

    joined = await asyncio.gather(*(join_one(i) for i in range(customers_ahead)))
    last = max(joined, key=lambda body: int(body["seq"]))
    poll_customer = f"ahead-{joined.index(last)}"
    deadline = time.monotonic() + 30
    while True:
        async with session.get(
            f"{gate.url}/q/{poll_c}/status",
            params={"ticket": last["ticket"]},
            headers={CUSTOMER_HEADER: poll_customer},
        ) as response:
            status = await response.json(content_type=None)
        if response.status != 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)  # shed while the gate's loop was late: ask again
    if response.status != 200 or status.get("state") != "waiting":
        raise RuntimeError(f"the polling customer is not waiting: {response.status} {status}")

    # A fast campaign: the customer is admitted at once and holds a day-long pass.
    await admin.create(spec(auth_c, rate_per_s=1000, burst=100))
    auth_customer = "auth-customer"
    ticket = (await _join(session, gate, auth_c, auth_customer))["ticket"]
    deadline = time.monotonic() + 20
    pass_token = ""
    while not pass_token:
        async with session.get(
            f"{gate.url}/q/{auth_c}/status",
            params={"ticket": ticket},
            headers={CUSTOMER_HEADER: auth_customer},
        ) as response:
            body = await response.json(content_type=None)
            if body.get("state") == "admitted":
                pass_token = body["pass"]
            elif time.monotonic() > deadline:
                raise RuntimeError(f"the auth customer was not admitted: {body}")
            else:
                await asyncio.sleep(0.05)
    await _wait_auth_everywhere(gate, auth_c, auth_customer, pass_token)

    await admin.create(spec(join_c, rate_per_s=0.001))
    return Fixture(
        poll_c,
        poll_customer,
        last["ticket"],
        int(status["position"]),
        auth_c,
        auth_customer,
        pass_token,
        join_c,
    )


def auth_headers(fixture: Fixture) -> tuple[tuple[str, str], ...]:
    """What nginx's auth_request sends (deploy/nginx/fairgate-locations.conf)."""
    return (
        ("X-Gate-Pass", fixture.pass_token),
        (CUSTOMER_HEADER, fixture.auth_customer),
        ("X-Gate-Campaign", fixture.auth_campaign),
    )


async def _wait_auth_everywhere(gate: GateServer, campaign: str, customer: str, token: str) -> None:
    """Every worker must know the campaign (its cache loads new ones within a second)."""
    headers = {"X-Gate-Pass": token, CUSTOMER_HEADER: customer, "X-Gate-Campaign": campaign}
    deadline = time.monotonic() + 20
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        while True:
            codes = []
            for _ in range(8 * gate.workers):
                async with session.get(f"{gate.url}/gate/auth", headers=headers) as response:
                    codes.append(response.status)
            if all(code == 200 for code in codes):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"/gate/auth still refuses the pass on some worker: {codes}")
            await asyncio.sleep(0.2)


async def join_audit(redis: Redis, campaign: str, start: int) -> tuple[int, int, int]:
    """(join entries, tickets they created, list length) from index `start` of the audit list."""
    key = CampaignKeys(campaign).audit
    end = int(await redis.llen(key))
    entries = created = 0
    for first in range(start, end, 5000):
        for raw in await redis.lrange(key, first, min(end, first + 5000) - 1):
            entry = decode_entry(raw if isinstance(raw, bytes) else raw.encode())
            kind = entry.get("k")
            if kind in (b"join", "join"):
                entries += 1
                created += len(entry.get("s", [])) // 2
    return entries, created, end


class Runner:
    def __init__(self, settings: Settings, work_dir: Path, redis: Redis) -> None:
        self.settings = settings
        self.work_dir = work_dir
        self.redis = redis
        self.wrk = wrk_binary() if settings.use_wrk else None
        self.run_id = uuid.uuid4().hex[:8]
        self.counter = 0

    def fresh(self, target: Target) -> Target:
        """Joins: a customer-id prefix never used before in this run."""
        self.counter += 1
        return target.with_prefix(f"b{self.run_id}-{self.counter}")

    async def closed(
        self, target: Target, duration_s: int, *, connections: int | None = None
    ) -> LoadResult:
        s = self.settings
        target = self.fresh(target)
        connections = connections or s.connections
        if self.wrk is not None:
            return await run_wrk(
                self.wrk,
                target,
                duration_s=duration_s,
                connections=connections,
                threads=s.threads,
                script_dir=self.work_dir,
            )
        return await run_load(
            target,
            rate=None,
            duration_s=duration_s,
            connections=connections,
            procs=s.gen_procs,
            work_dir=self.work_dir,
        )

    async def open(self, target: Target, rate: float) -> LoadResult:
        s = self.settings
        return await run_load(
            self.fresh(target),
            rate=rate,
            duration_s=s.duration_s,
            connections=s.connections,
            procs=s.gen_procs,
            work_dir=self.work_dir,
            grace_s=max(2.0, min(10.0, s.duration_s / 2)),
        )

    async def _gate_run(
        self, load: Any, join_campaign: str | None, batches: list[dict[str, Any]]
    ) -> LoadResult:
        """A gate run; for joins, also what the audit log says about its batches."""
        start = 0
        if join_campaign is not None:
            start = int(await self.redis.llen(CampaignKeys(join_campaign).audit))
        result: LoadResult = await load
        if join_campaign is not None:
            entries, created, _ = await join_audit(self.redis, join_campaign, start)
            batches.append({"entries": entries, "created": created, "ok": result.ok})
        return result

    async def compare(
        self,
        name: str,
        gate: Target,
        hello: Target,
        *,
        open_loop: bool,
        join_campaign: str | None = None,
    ) -> dict[str, Any]:
        """Gate and hello-world in turns, `repeat` times, the order alternating each time."""
        s = self.settings
        if s.warmup_s:
            await self.closed(gate, s.warmup_s)
            await self.closed(hello, s.warmup_s)
        result: dict[str, Any] = {}
        closed_runs: list[dict[str, Any]] = []
        batches: list[dict[str, Any]] = []
        for rep in range(s.repeat):
            print(f"  {name}: closed loop {rep + 1}/{s.repeat} ({s.duration_s}s each)", flush=True)
            runs: dict[str, LoadResult] = {}
            for side in ("gate", "hello") if rep % 2 == 0 else ("hello", "gate"):
                if side == "gate":
                    load = self.closed(gate, s.duration_s)
                    runs[side] = await self._gate_run(load, join_campaign, batches)
                else:
                    runs[side] = await self.closed(hello, s.duration_s)
            ratio = _ratio(runs["gate"].throughput, runs["hello"].throughput)
            closed_runs.append(
                {
                    "order": "gate first" if rep % 2 == 0 else "hello first",
                    "gate": runs["gate"].to_json(),
                    "hello": runs["hello"].to_json(),
                    "throughput_ratio": ratio,
                }
            )
            gate_rps, hello_rps = runs["gate"].throughput, runs["hello"].throughput
            print(
                f"    gate {gate_rps:,.0f}/s  hello {hello_rps:,.0f}/s"
                f"  ratio {ratio}  errors {runs['gate'].errors}/{runs['hello'].errors}",
                flush=True,
            )
        result.update(_summarise_closed(closed_runs))
        if join_campaign is not None:
            result["batching_closed"] = _batching(batches)
        if not open_loop:
            return result
        rate = s.rate or s.load_fraction * min(result["gate_rps"], result["hello_rps"])
        rate = max(1.0, round(rate))
        open_runs: list[dict[str, Any]] = []
        batches = []
        for rep in range(s.repeat):
            print(f"  {name}: open loop {rep + 1}/{s.repeat} at {rate:,.0f}/s", flush=True)
            runs = {}
            for side in ("gate", "hello") if rep % 2 == 0 else ("hello", "gate"):
                if side == "gate":
                    runs[side] = await self._gate_run(self.open(gate, rate), join_campaign, batches)
                else:
                    runs[side] = await self.open(hello, rate)
            g, h = runs["gate"].latency_ms, runs["hello"].latency_ms
            open_runs.append(
                {
                    "order": "gate first" if rep % 2 == 0 else "hello first",
                    "gate": runs["gate"].to_json(),
                    "hello": runs["hello"].to_json(),
                    "p50_ratio": _ratio(g.get("p50"), h.get("p50")),
                    "p99_ratio": _ratio(g.get("p99"), h.get("p99")),
                }
            )
            print(
                f"    p50 {g.get('p50')} / {h.get('p50')} ms  p99 {g.get('p99')} / {h.get('p99')}"
                f" ms  errors {runs['gate'].errors}/{runs['hello'].errors}",
                flush=True,
            )
        result["open_rate"] = rate
        result.update(_summarise_open(open_runs))
        if join_campaign is not None:
            result["batching_open"] = _batching(batches)
        return result


def _median(values: list[float | None]) -> float | None:
    present = sorted(v for v in values if v is not None)
    return statistics.median(present) if present else None


def _spread(values: list[float | None]) -> list[float] | None:
    present = [v for v in values if v is not None]
    return [min(present), max(present)] if present else None


def _summarise_closed(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [run["throughput_ratio"] for run in runs]
    return {
        "closed_runs": runs,
        "gate_rps": _median([run["gate"]["throughput_rps"] for run in runs]),
        "hello_rps": _median([run["hello"]["throughput_rps"] for run in runs]),
        "throughput_ratio": _median(ratios),
        "throughput_ratio_range": _spread(ratios),
        "errors": {side: sum(run[side]["errors"] for run in runs) for side in ("gate", "hello")},
    }


def _summarise_open(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"open_runs": runs}
    for q in ("p50", "p99"):
        for side in ("gate", "hello"):
            summary[f"{side}_{q}_ms"] = _median([run[side]["latency_ms"].get(q) for run in runs])
        summary[f"{q}_ratio"] = _median([run[f"{q}_ratio"] for run in runs])
        summary[f"{q}_ratio_range"] = _spread([run[f"{q}_ratio"] for run in runs])
    summary["open_errors"] = {
        side: sum(run[side]["errors"] for run in runs) for side in ("gate", "hello")
    }
    lags = [run[side]["generator_lag_ms"].get("p99") for run in runs for side in ("gate", "hello")]
    summary["generator_lag_p99_ms_max"] = max((v for v in lags if v is not None), default=None)
    return summary


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def _batching(batches: list[dict[str, Any]]) -> dict[str, Any]:
    entries = sum(b["entries"] for b in batches)
    created = sum(b["created"] for b in batches)
    return {
        "join_audit_entries": entries,
        "tickets_created": created,
        "joins_answered_2xx": sum(b["ok"] for b in batches),
        "mean_batch": round(created / entries, 2) if entries else None,
        "per_run": batches,
    }


async def run_pass(
    runner: Runner,
    session: aiohttp.ClientSession,
    redis_server: RedisServer,
    keys_file: Path,
    data_dir: Path,
    workers: int,
    full: bool,
) -> dict[str, Any]:
    s = runner.settings
    print(f"workers={workers}: starting gate and hello-world ...", flush=True)
    gate = GateServer(redis_server.url, data_dir, keys_file, workers)
    hello = HelloServer(data_dir, workers)
    try:
        await gate.start()
        await hello.start()
        fixture = await prepare(session, gate, f"w{workers}-{runner.run_id}", s.customers_ahead)
        results: dict[str, Any] = {
            "workers": workers,
            "gate_config": gate.effective_config(),
            "poll_position": fixture.position,
        }
        poll_path = f"/q/{fixture.poll_campaign}/status?ticket={fixture.ticket}"
        poll_headers = ((CUSTOMER_HEADER, fixture.poll_customer),)
        results["poll"] = await runner.compare(
            "poll",
            Target(gate.url + poll_path, headers=poll_headers),
            Target(hello.url + poll_path, headers=poll_headers),
            open_loop=full or not s.quick,  # --quick: the scale-out pass is throughput only
        )
        if full:
            # The cost of recording metrics on the poll: the same gate with metrics off is
            # the reference (docs/metrics.md); the ratio is on ÷ off, in this run.
            # Two fresh gates started together, alike but for `metrics`: neither holds the
            # sealing or controller leases that the first gate took, neither is older.
            counted = GateServer(redis_server.url, data_dir, keys_file, workers, apart=True)
            quiet = GateServer(
                redis_server.url, data_dir, keys_file, workers, metrics=False, apart=True
            )
            try:
                await asyncio.gather(counted.start(), quiet.start())
                results["poll_metrics"] = await metrics_cost(
                    runner,
                    (counted, Target(counted.url + poll_path, headers=poll_headers)),
                    (quiet, Target(quiet.url + poll_path, headers=poll_headers)),
                )
            finally:
                counted.stop()
                quiet.stop()
            results["auth"] = await runner.compare(
                "auth",
                Target(gate.url + "/gate/auth", headers=auth_headers(fixture)),
                Target(hello.url + "/gate/auth", headers=auth_headers(fixture)),
                open_loop=True,
            )
        join_path = f"/q/{fixture.join_campaign}/join"
        results["join"] = await runner.compare(
            "join",
            Target(gate.url + join_path, method="POST", unique_customer_prefix="x"),
            Target(hello.url + join_path, method="POST", unique_customer_prefix="x"),
            open_loop=full,
            join_campaign=fixture.join_campaign,
        )
        return results
    finally:
        gate.stop()
        hello.stop()


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children (`gate serve`'s workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def metrics_cost(
    runner: Runner, on: tuple[GateServer, Target], off: tuple[GateServer, Target]
) -> dict[str, Any]:
    """The poll on a gate that records metrics ÷ the same gate with `metrics = false`, both
    loaded at the same time (half the connections each), at least 5 times: whatever else
    the machine does then disturbs both alike. Closed-loop throughput, and the servers' own
    CPU time per answered request (user + system of every worker). Both as on ÷ off where
    higher is better: throughput on/off, and CPU per request off/on."""
    s = runner.settings
    if s.warmup_s:
        await runner.closed(on[1], s.warmup_s)
        await runner.closed(off[1], s.warmup_s)
    # What each server spends with no request at all (cache refresh, admission, sealing):
    # taken out of its CPU time under load, so that a round with fewer requests does not
    # look dearer per request for it.
    idle_s = max(2.0, s.duration_s / 2)
    idle_before = {"on": tree_cpu_s(on[0].pid), "off": tree_cpu_s(off[0].pid)}
    await asyncio.sleep(idle_s)
    idle_rate = {
        "on": (tree_cpu_s(on[0].pid) - idle_before["on"]) / idle_s,
        "off": (tree_cpu_s(off[0].pid) - idle_before["off"]) / idle_s,
    }
    runs: list[dict[str, Any]] = []
    for rep in range(max(5, s.repeat)):
        print(f"  poll metrics on/off: closed loop {rep + 1} ({s.duration_s}s)", flush=True)
        measured: dict[str, dict[str, Any]] = {}
        cpu_before = {"on": tree_cpu_s(on[0].pid), "off": tree_cpu_s(off[0].pid)}
        loads = await asyncio.gather(
            runner.closed(on[1], s.duration_s, connections=max(1, s.connections // 2)),
            runner.closed(off[1], s.duration_s, connections=max(1, s.connections // 2)),
        )
        for side, (server, _), result in zip(("on", "off"), (on, off), loads, strict=True):
            cpu = tree_cpu_s(server.pid) - cpu_before[side]
            busy = max(0.0, cpu - idle_rate[side] * result.duration_s)
            measured[side] = {
                **result.to_json(),
                "cpu_s": cpu,
                "idle_cpu_s_per_s": idle_rate[side],
                "cpu_us_per_request": busy / result.ok * 1e6 if result.ok else None,
            }
        runs.append(
            {
                "on": measured["on"],
                "off": measured["off"],
                "throughput_ratio": _ratio(
                    measured["on"]["throughput_rps"], measured["off"]["throughput_rps"]
                ),
                "cpu_ratio": _ratio(
                    measured["off"]["cpu_us_per_request"], measured["on"]["cpu_us_per_request"]
                ),
            }
        )
        last = runs[-1]
        print(
            f"    on {measured['on']['throughput_rps']:,.0f}/s "
            f"{measured['on']['cpu_us_per_request'] or 0:,.0f} µs CPU/req  "
            f"off {measured['off']['throughput_rps']:,.0f}/s "
            f"{measured['off']['cpu_us_per_request'] or 0:,.0f} µs CPU/req  "
            f"ratios {last['throughput_ratio']} (throughput) {last['cpu_ratio']} (CPU)",
            flush=True,
        )
    return {
        "runs": runs,
        "gate_rps": _median([run["on"]["throughput_rps"] for run in runs]),
        "hello_rps": _median([run["off"]["throughput_rps"] for run in runs]),
        "throughput_ratio": _median([run["throughput_ratio"] for run in runs]),
        "throughput_ratio_range": _spread([run["throughput_ratio"] for run in runs]),
        "cpu_ratio": _median([run["cpu_ratio"] for run in runs]),
        "cpu_ratio_range": _spread([run["cpu_ratio"] for run in runs]),
        "errors": {side: sum(run[side]["errors"] for run in runs) for side in ("on", "off")},
    }


async def run_lua(settings: Settings, redis_server: RedisServer, redis: Redis) -> dict[str, Any]:
    binary = benchmark_binary(redis_server.binary)
    if binary is None:
        return {"skipped": "no redis-benchmark next to redis-server or on PATH"}
    results: dict[str, Any] = {"redis_benchmark": binary, "clients": 50}
    r = settings.lua_requests
    for fsync in ("always", "no"):
        print(f"lua: redis-benchmark with appendfsync {fsync} ...", flush=True)
        await redis.config_set("appendfsync", fsync)
        try:
            results[f"appendfsync_{fsync}"] = await measure_lua(
                redis=redis,
                port=redis_server.port,
                binary=binary,
                clients=50,
                hset_requests=r["hset"],
                join1_requests=r["join1"],
                join100_requests=r["join100"],
                admit_requests=r["admit"],
                label=f"{fsync}-{uuid.uuid4().hex[:6]}",
            )
        finally:
            await redis.config_set("appendfsync", redis_server.appendfsync)
        lua = results[f"appendfsync_{fsync}"]
        print(
            f"  HSETs (wall): join x1 {lua['join_1']['hsets']:.2f}/customer"
            f"  join x100 {lua['join_100']['hsets']:.2f}/customer"
            f"  admit idle {lua['admit_idle']['hsets']:.2f}/call",
            flush=True,
        )
    return results


async def run_audit_cost(
    settings: Settings, redis_server: RedisServer, redis: Redis
) -> dict[str, Any]:
    """bench/auditcost.py on the run's redis-server, with `appendfsync no` meanwhile (the
    disk would add the same fsync to both variants and hide the difference)."""
    binary = benchmark_binary(redis_server.binary)
    if binary is None:
        return {"skipped": "no redis-benchmark next to redis-server or on PATH"}
    print("audit cost: join.lua with and without its audit write ...", flush=True)
    await redis.config_set("appendfsync", "no")
    try:
        results = await measure_audit_cost(
            redis=redis,
            port=redis_server.port,
            binary=binary,
            requests=settings.audit_calls,
            rounds=settings.audit_rounds,
        )
    finally:
        await redis.config_set("appendfsync", redis_server.appendfsync)
    results["appendfsync"] = "no"
    results["redis_version"] = redis_server.version()
    return results


def scale_out(passes: dict[str, Any], many: int) -> dict[str, Any]:
    one = passes.get("workers=1")
    top = passes.get(f"workers={many}")
    if one is None or top is None or many == 1:
        return {}
    out: dict[str, Any] = {"workers": many}
    for path in ("poll", "join"):
        g1, h1 = one[path]["gate_rps"], one[path]["hello_rps"]
        gn, hn = top[path]["gate_rps"], top[path]["hello_rps"]
        out[path] = {
            "gate_vs_hello_workers_1": one[path]["throughput_ratio"],
            "gate_vs_hello_workers_n": top[path]["throughput_ratio"],
            "gate_speedup": _ratio(gn, g1),
            "hello_speedup": _ratio(hn, h1),
            "speedup_vs_hello_speedup": _ratio(_ratio(gn, g1), _ratio(hn, h1)),
        }
    return out


async def _part(
    results: dict[str, Any], failures: list[str], key: str, measure: Awaitable[Any]
) -> None:
    """One optional part of the run: its figures under `key`, or its failure named (what
    the other parts measured is kept either way); the part's own `failures` carried over."""
    label = key.replace("_", " ")
    try:
        results[key] = await measure
    except Exception as exc:
        failures.append(f"{label}: {exc!r}")
        print(f"FAILED {label}: {exc!r}", flush=True)
        return
    if isinstance(results[key], dict):
        failures += [f"{label}: {f}" for f in results[key].get("failures", [])]


async def main_async(settings: Settings) -> dict[str, Any]:
    out = settings.out
    with tempfile.TemporaryDirectory(prefix="fairgate-bench-") as tmp:
        work = Path(tmp)
        redis_server = RedisServer(work / "redis")
        redis_server.start()
        redis = Redis(host="127.0.0.1", port=redis_server.port)
        try:
            keys_file = work / "keys.json"
            write_keys(keys_file, generate_keys_document())
            results: dict[str, Any] = {"conditions": conditions(settings, redis_server, work)}
            _print_conditions(results["conditions"])
            runner = Runner(settings, work / "load", redis)
            passes: dict[str, Any] = {}
            failures: list[str] = []
            worker_counts = [settings.workers]
            if settings.scale_out and settings.workers > 1:
                worker_counts.append(1)
            async with aiohttp.ClientSession() as session:
                for index, workers in enumerate(worker_counts):
                    try:
                        passes[f"workers={workers}"] = await run_pass(
                            runner, session, redis_server, keys_file, work, workers, index == 0
                        )
                    except Exception as exc:  # keep what the other parts measured
                        failures.append(f"workers={workers}: {exc!r}")
                        print(f"FAILED workers={workers}: {exc!r}", flush=True)
            results["passes"] = passes
            results["scale_out"] = scale_out(passes, settings.workers)
            if settings.lua:
                await _part(results, failures, "lua", run_lua(settings, redis_server, redis))
            if settings.audit_cost:
                await _part(
                    results, failures, "audit_cost", run_audit_cost(settings, redis_server, redis)
                )
            if settings.admit_rate:
                print("admission rate and the core's arrivals (bench/admit_rate.py) ...")
                plan = admit_rate.plan(settings.quick)
                await _part(
                    results, failures, "admit_rate", admit_rate.run(plan, work / "admit-rate")
                )
            if settings.verify_scale:
                print("gate audit verify on a real export (bench/verify_scale.py) ...")
                scale = verify_scale.plan(settings.quick)
                await _part(
                    results,
                    failures,
                    "verify_scale",
                    verify_scale.run(scale, work / "verify-scale"),
                )
            if settings.redis_memory:
                print("Redis per waiting customer, join cost vs queue length ...", flush=True)
                customers = 100_000 if settings.quick else 1_000_000
                memory = redis_memory.measure(customers, 10_000, 512, work / "redis-memory")
                await _part(results, failures, "redis_memory", memory)
            if settings.edge:
                print("the pass checked at the edge (bench/edge.py) ...")
                await _part(results, failures, "edge", edge.run(settings.quick, work / "edge"))
            if settings.overload:
                print("overload: 3x capacity, shedding off and on ...", flush=True)
                seconds = 3.0 if settings.quick else 10.0
                await _part(
                    results, failures, "overload", overload.measure(work / "overload", seconds)
                )
            results["failures"] = failures
            results["conditions"]["loadavg_end"] = list(os.getloadavg())
            results["conditions"]["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            return results
        finally:
            await redis.aclose()
            redis_server.stop()
            _copy_logs(work, out / "logs")


def _copy_logs(work: Path, logs: Path) -> None:
    """The servers' logs outlive the temporary folder, for a look after a bad run."""
    logs.mkdir(parents=True, exist_ok=True)
    for log in work.glob("*.log"):
        shutil.copy(log, logs / log.name)
    redis_log = work / "redis" / "redis.log"
    if redis_log.exists():
        shutil.copy(redis_log, logs / "redis.log")


def _print_conditions(cond: dict[str, Any]) -> None:
    print("conditions:", flush=True)
    for key, value in cond.items():
        print(f"  {key}: {value}", flush=True)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    started = time.monotonic()
    results = asyncio.run(main_async(settings))
    results["conditions"]["elapsed_s"] = round(time.monotonic() - started, 1)
    json_path, md_path = write_reports(results, settings.out)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 1 if results.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
