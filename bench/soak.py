"""`make soak` / `python -m bench.soak`: a long run at half capacity; memory must stay flat.

One private redis-server (AOF, `appendfsync always`) and `gate serve --workers N`, started
as `make bench` starts them (bench/servers.py), with the audit log's sealed entries moved
to segment files after `--keep` entries (`audit_keep_in_redis`), so what the log holds in
Redis is bounded. Then:

1. **capacity**: `--capacity-s` seconds of closed loop, `--flows` customers at a time, each
   running the realistic flow below again and again; capacity = flows completed per second.
2. **soak**: customers *arrive* at a fixed rate, `--fraction` (0.5) of that capacity, for
   `--duration` seconds (open loop: a slow gate does not slow the arrivals). Every
   `--sample-s` seconds the run records the gate's memory (VmRSS of `gate serve` and every
   worker, from /proc), Redis's `INFO memory` used_memory, the memory of the keys that hold
   one record per customer (tickets, passes, reservations, ...), requests, errors and
   latency percentiles.

One customer's flow (7 requests on average), on one of `--campaigns` amount campaigns that
never sell out (quota 10^20 KRW): join; one join in ten retried (`created: false`); poll
`/status` as `poll_after_ms` says (capped at 1 s) until admitted; two `/gate/auth` checks
of the pass (what the proxy asks before each request to the core system); a claim of
10,000-10,000,000 KRW; the core system confirms it (nine in ten) or releases it.

An **error** is any answer other than 2xx, 409 `sold_out` and 429 (documented refusals),
a socket error, a request unanswered after 30 s, or a customer not admitted in 30 s.

After the warm-up (the first `--warmup-fraction`, 20%), a least-squares line through the
samples gives each memory figure's slope (bytes per minute) and its relative growth
(slope x window / mean). Redis memory grows by design with every new customer (their
ticket, pass and reservation records are the fairness record and are kept), so Redis is
judged on the memory of every *other* key (`bounded_keys`: the audit list, the receipt
index, the Merkle subtrees, the checkpoints, the campaign's counters; each MEMORY USAGE
counted exactly), which must be flat; the bytes per customer are reported beside it.
The last 1,000 checkpoints of each campaign stay in Redis (one per `seal_interval_ms`
while entries come in): the soak seals every 250 ms (`--seal-interval-ms`) so that this
list is full within the warm-up (at the default 1 s it fills for 17 minutes).
The run exits 1 when there was an error or when, after the warm-up,
the gate's RSS or Redis's bounded keys grew by more than `--max-growth` (5%) of its
mean *and* by more than a floor over the window (`--min-bytes`, 1 MiB, for the RSS;
`--redis-min-bytes`, 256 KiB, for Redis): both must hold, so that allocator noise on a
small base does not fail a run. The gate's
receipt cache is bounded in bytes (`receipt_cache_bytes`, 16 MiB a worker by default); the
soak sets it to `--receipt-cache-bytes` (4 MiB) so that the cache is full within the
warm-up and its filling is not taken for growth (tests/test_bounded_growth.py holds the
bound itself).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench.load import percentiles
from bench.run import _filesystem, _version, cores
from bench.servers import Admin, GateServer
from gate.redis_server import RedisServer
from gate.room.keys import CampaignKeys
from gate.signing import generate_keys_document, write_keys

CORE_TOKEN = "bench-core-token-0123456789"
REQUEST_TIMEOUT_S = 30.0
ADMIT_TIMEOUT_S = 30.0
# The keys that hold one record per customer (or per reservation): they grow with every
# new customer by design. Everything else in Redis must stay flat.
PER_CUSTOMER_KEYS = (
    "tickets",
    "passed",
    "res",
    "resexp",
    "spent",
    "holds",
    "idem",
    "active",
    "arrived",
)
DOCUMENTED_REFUSALS = {(409, "sold_out"), (429, None)}


@dataclass
class Settings:
    duration_s: float
    capacity_s: float
    fraction: float
    flows: int
    workers: int
    campaigns: int
    keep: int
    sample_s: float
    warmup_fraction: float
    max_growth: float
    min_bytes: int
    out: Path
    rate: float | None
    receipt_cache_bytes: int
    seal_interval_ms: int
    redis_min_bytes: int


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=1800, help="soak seconds (1800)")
    p.add_argument("--capacity-s", type=float, default=20, help="closed-loop seconds (20)")
    p.add_argument("--fraction", type=float, default=0.5, help="of capacity (0.5)")
    p.add_argument("--rate", type=float, help="customers/s, instead of measuring capacity")
    p.add_argument("--flows", type=int, default=32, help="closed-loop customers at a time")
    p.add_argument("--workers", type=int, help="gate workers (default min(2, cores))")
    p.add_argument("--campaigns", type=int, default=4, help="campaigns (4)")
    p.add_argument("--keep", type=int, default=1000, help="audit_keep_in_redis (1000)")
    p.add_argument("--sample-s", type=float, default=10, help="seconds between samples (10)")
    p.add_argument("--warmup-fraction", type=float, default=0.2, help="not judged (0.2)")
    p.add_argument("--max-growth", type=float, default=0.05, help="relative bound (0.05)")
    p.add_argument("--min-bytes", type=int, default=1 << 20, help="absolute floor (1 MiB)")
    p.add_argument("--receipt-cache-bytes", type=int, default=4 << 20, help="per worker (4 MiB)")
    p.add_argument("--out", type=Path, default=Path("bench/out"), help="results folder")
    p.add_argument("--seal-interval-ms", type=int, default=250, help="seal_interval_ms (250)")
    p.add_argument("--redis-min-bytes", type=int, default=256 << 10, help="floor, Redis (256 KiB)")
    a = p.parse_args(argv)
    if not 10 <= a.duration <= 86400 or not 2 <= a.capacity_s <= 600:
        p.error("--duration must be 10..86400 s and --capacity-s 2..600 s")
    if not 0 < a.fraction <= 1 or not 0 <= a.warmup_fraction < 0.9:
        p.error("--fraction must be in (0, 1] and --warmup-fraction in [0, 0.9)")
    if not 1 <= a.flows <= 2000 or not 1 <= a.campaigns <= 100 or a.keep < 10:
        p.error("--flows 1..2000, --campaigns 1..100, --keep >= 10")
    if not 1 <= a.sample_s <= 600 or (a.rate is not None and not 0 < a.rate <= 100000):
        p.error("--sample-s 1..600, --rate in (0, 100000]")
    return Settings(
        duration_s=a.duration,
        capacity_s=a.capacity_s,
        fraction=a.fraction,
        flows=a.flows,
        workers=a.workers or min(2, cores()),
        campaigns=a.campaigns,
        keep=a.keep,
        sample_s=a.sample_s,
        warmup_fraction=a.warmup_fraction,
        max_growth=a.max_growth,
        min_bytes=a.min_bytes,
        out=a.out,
        rate=a.rate,
        receipt_cache_bytes=a.receipt_cache_bytes,
        seal_interval_ms=a.seal_interval_ms,
        redis_min_bytes=a.redis_min_bytes,
    )


def campaign_spec(campaign: str, hours: float) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": campaign,
        "opens_at": (now - timedelta(seconds=1)).isoformat(),
        "closes_at": (now + timedelta(hours=hours)).isoformat(),
        "quota": {
            "unit": "KRW",
            "total": str(10**20),
            "min": "10000",
            "max": "10000000",
            "step": "10000",
        },
        "admission": {
            "rate_per_s": 5000,
            "burst": 1000,
            "max_active": 1_000_000,
            "pass_ttl_s": 120,
            "reservation_ttl_s": 60,
        },
    }


@dataclass
class Stats:
    """Requests, errors and latencies, per route, since the last `take()`."""

    requests: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    flows_done: int = 0
    refusals: int = 0

    def take(self) -> Stats:
        taken = Stats(
            self.requests,
            self.errors,
            self.error_samples,
            self.latencies,
            self.flows_done,
            self.refusals,
        )
        self.requests, self.errors, self.error_samples, self.latencies = {}, {}, [], {}
        self.flows_done = self.refusals = 0
        return taken

    def error(self, what: str, detail: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{what}: {detail[:300]}")


class FlowError(Exception):
    pass


class Customers:
    """The customers' requests against one gate, counted in `stats`."""

    def __init__(self, gate: GateServer, campaigns: list[str], stats: Stats) -> None:
        self.gate = gate
        self.campaigns = campaigns
        self.stats = stats
        self.run_id = uuid.uuid4().hex[:8]
        self.counter = 0
        # Below the gate's keep-alive bound (15 s), so that the client never sends on a
        # connection the gate is closing as idle.
        self.public = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=5),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        )
        self.core = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=5),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            headers={"Authorization": f"Bearer {CORE_TOKEN}"},
        )
        core_url = f"http://127.0.0.1:{gate.core_port}"
        self.core_url = core_url

    async def close(self) -> None:
        await self.public.close()
        await self.core.close()

    async def _call(
        self, route: str, method: str, url: str, session: aiohttp.ClientSession, **kw: Any
    ) -> tuple[int, dict[str, Any]]:
        stats = self.stats
        stats.requests[route] = stats.requests.get(route, 0) + 1
        started = time.perf_counter()
        try:
            async with session.request(method, url, **kw) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            stats.error(route, repr(exc))
            raise FlowError(route) from exc
        stats.latencies.setdefault(route, []).append(time.perf_counter() - started)
        try:
            body: dict[str, Any] = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if 200 <= status < 300:
            return status, body
        code = body.get("error", {}).get("code") if isinstance(body.get("error"), dict) else None
        if (status, code) in DOCUMENTED_REFUSALS or (status, None) in DOCUMENTED_REFUSALS:
            stats.refusals += 1
            raise FlowError(route)
        # The gate's fail-closed answer when it cannot prove the current state (its cache
        # of Redis is older than stale_after_ms, e.g. a starved event loop): an error
        # here too, but counted apart so that a reader can tell it from a wrong answer.
        label = f"{route} {status}" + (" unavailable" if code == "unavailable" else "")
        stats.error(label, raw.decode(errors="replace"))
        raise FlowError(route)

    async def flow(self) -> None:
        """One customer, from join to a confirmed (or released) reservation."""
        self.counter += 1
        n = self.counter
        customer = f"soak-{self.run_id}-{n}"
        campaign = self.campaigns[n % len(self.campaigns)]
        url = self.gate.url
        who = {"X-Customer-Id": customer}
        try:
            _, joined = await self._call(
                "join", "POST", f"{url}/q/{campaign}/join", self.public, headers=who
            )
            if n % 10 == 0:
                await self._call(
                    "join (retried)", "POST", f"{url}/q/{campaign}/join", self.public, headers=who
                )
            deadline = time.monotonic() + ADMIT_TIMEOUT_S
            pass_token = ""
            while not pass_token:
                _, status = await self._call(
                    "status",
                    "GET",
                    f"{url}/q/{campaign}/status",
                    self.public,
                    params={"ticket": joined["ticket"]},
                    headers=who,
                )
                if status.get("state") == "admitted" and status.get("pass"):
                    pass_token = status["pass"]
                elif time.monotonic() > deadline:
                    self.stats.error("not admitted", json.dumps(status))
                    return
                else:
                    wait_ms = status.get("poll_after_ms") or 100
                    await asyncio.sleep(min(1.0, max(0.05, wait_ms / 1000)))
            with_pass = {**who, "X-Gate-Pass": pass_token, "X-Gate-Campaign": campaign}
            for _ in range(2):
                await self._call("auth", "GET", f"{url}/gate/auth", self.public, headers=with_pass)
            amount = random.randrange(1, 1001) * 10000
            _, claimed = await self._call(
                "claim",
                "POST",
                f"{url}/q/{campaign}/claim",
                self.public,
                json={"amount": str(amount), "idempotency_key": f"k{n}"},
                headers=with_pass,
            )
            action = "release" if n % 10 == 5 else "confirm"
            rid = claimed["reservation"]
            await self._call(
                action,
                "POST",
                f"{self.core_url}/q/{campaign}/reservations/{rid}/{action}",
                self.core,
                json={"reason": "soak"} if action == "release" else {},
            )
            self.stats.flows_done += 1
        except FlowError:
            return


def _children(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc's ppid fields)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def rss_bytes(pids: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
        if match:
            out[pid] = int(match.group(1)) * 1024
    return out


async def redis_sample(redis: Redis, campaigns: list[str]) -> dict[str, int]:
    """Redis's memory: in all (used_memory), in the per-customer keys (MEMORY USAGE's
    estimate from 5 samples: they are large), and in every other key, counted exactly
    (MEMORY USAGE ... SAMPLES 0: they are bounded, so small): `bounded_keys`."""
    info = await redis.info("memory")
    per_customer_names = {
        f"fg:{{{campaign}}}:{name}".encode() for campaign in campaigns for name in PER_CUSTOMER_KEYS
    }
    per_customer = bounded = 0
    async for key in redis.scan_iter(count=1000):
        if key in per_customer_names:
            per_customer += int(await redis.memory_usage(key) or 0)
        else:
            bounded += int(await redis.memory_usage(key, samples=0) or 0)
    customers = audit = checkpoints = 0
    for campaign in campaigns:
        keys = CampaignKeys(campaign)
        customers += int(await redis.hlen(keys.tickets))
        audit += int(await redis.llen(keys.audit))
        checkpoints += int(await redis.llen(keys.checkpoints))
    used = int(info["used_memory"])
    return {
        "used_memory": used,
        "used_memory_rss": int(info["used_memory_rss"]),
        "per_customer_keys": per_customer,
        "bounded_keys": bounded,
        "other": used - per_customer,
        "customers": customers,
        "audit_len": audit,
        "checkpoints_len": checkpoints,
        "dbsize": int(await redis.dbsize()),
    }


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value per minute."""
    if len(points) < 2:
        return 0.0
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx * 60


def trend(samples: list[dict[str, Any]], key: str, start_s: float) -> dict[str, float]:
    points = [(s["t"], float(s[key])) for s in samples if s["t"] >= start_s]
    if len(points) < 2:
        return {"slope_bytes_per_min": 0.0, "relative_growth": 0.0, "growth_bytes": 0.0}
    slope = slope_per_min(points)
    window_min = (points[-1][0] - points[0][0]) / 60
    mean = statistics.fmean(y for _, y in points)
    growth = slope * window_min
    return {
        "slope_bytes_per_min": round(slope, 1),
        "growth_bytes": round(growth),
        "relative_growth": round(growth / mean, 5) if mean else 0.0,
        "mean_bytes": round(mean),
        "first_bytes": round(points[0][1]),
        "last_bytes": round(points[-1][1]),
        "window_min": round(window_min, 2),
    }


async def closed_loop(customers: Customers, flows: int, seconds: float) -> tuple[float, Stats]:
    """Flows completed per second with `flows` customers at a time, each starting its next
    flow as soon as the last one ends, and what was counted meanwhile. At saturation a
    starved gate may answer its fail-closed 503: those flows do not count, and the
    errors are reported, not fatal (the capacity is only the basis of the soak's rate)."""
    end = time.monotonic() + seconds

    async def one() -> None:
        while time.monotonic() < end:
            await customers.flow()

    customers.stats.take()
    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(flows)))
    taken = customers.stats.take()
    elapsed = time.monotonic() - started
    return taken.flows_done / elapsed, taken


async def top_keys(redis: Redis, n: int = 12) -> list[tuple[str, int]]:
    """The `n` biggest keys by MEMORY USAGE at the end, to see what any growth was."""
    sizes = []
    async for key in redis.scan_iter(count=1000):
        sizes.append((key.decode(errors="replace"), int(await redis.memory_usage(key) or 0)))
    return sorted(sizes, key=lambda item: -item[1])[:n]


def leftovers(log_path: Path, work: Path) -> dict[str, Any]:
    """The gate's log (its size, ERROR and WARNING lines) and the data folder's size."""
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    lines = log.splitlines()
    return {
        "gate_log": {
            "bytes": len(log),
            "error_lines": sum(1 for line in lines if " ERROR " in line),
            "warning_lines": sum(1 for line in lines if " WARNING " in line),
        },
        "data_dir_bytes": sum(f.stat().st_size for f in work.rglob("*") if f.is_file()),
    }


async def soak(settings: Settings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fairgate-soak-") as tmp:
        work = Path(tmp)
        redis_server = RedisServer(work / "redis")
        redis_server.start()
        redis = Redis(host="127.0.0.1", port=redis_server.port)
        keys_file = work / "keys.json"
        write_keys(keys_file, generate_keys_document())
        gate = GateServer(redis_server.url, work, keys_file, settings.workers)
        gate.env["GATE_CORE_TOKENS"] = f"soak:{CORE_TOKEN}"
        gate.env["GATE_AUDIT_KEEP_IN_REDIS"] = str(settings.keep)
        gate.env["GATE_RECEIPT_CACHE_BYTES"] = str(settings.receipt_cache_bytes)
        gate.env["GATE_SEAL_INTERVAL_MS"] = str(settings.seal_interval_ms)
        try:
            await gate.start()
            assert gate.process is not None
            hours = (settings.duration_s + settings.capacity_s) / 3600 + 1
            campaigns = [f"soak-{i}" for i in range(settings.campaigns)]
            async with aiohttp.ClientSession() as session:
                admin = Admin(session, gate)
                for campaign in campaigns:
                    await admin.create(campaign_spec(campaign, hours))
            await asyncio.sleep(1.5)  # every worker's cache loads the new campaigns
            stats = Stats()
            customers = Customers(gate, campaigns, stats)
            result: dict[str, Any] = {
                "conditions": {
                    "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "cores": cores(),
                    "python": sys.version.split()[0],
                    "aiohttp": _version("aiohttp"),
                    "redis_server": redis_server.version(),
                    "redis_appendfsync": redis_server.appendfsync,
                    "redis_data_fs": _filesystem(work),
                    "workers": settings.workers,
                    "campaigns": settings.campaigns,
                    "audit_keep_in_redis": settings.keep,
                    "receipt_cache_bytes": settings.receipt_cache_bytes,
                    "seal_interval_ms": settings.seal_interval_ms,
                    "duration_s": settings.duration_s,
                    "sample_s": settings.sample_s,
                    "warmup_fraction": settings.warmup_fraction,
                    "loadavg_start": list(os.getloadavg()),
                }
            }
            try:
                if settings.rate is None:
                    print(f"capacity: {settings.capacity_s:.0f} s closed loop ...", flush=True)
                    capacity, measured = await closed_loop(
                        customers, settings.flows, settings.capacity_s
                    )
                    rate = settings.fraction * capacity
                    result["capacity_errors"] = measured.errors
                    result["capacity_requests"] = sum(measured.requests.values())
                else:
                    capacity, rate = 0.0, settings.rate
                result["capacity_flows_per_s"] = round(capacity, 1)
                result["rate_customers_per_s"] = round(rate, 2)
                print(
                    f"capacity {capacity:.1f} customers/s; soak at {rate:.1f}/s "
                    f"for {settings.duration_s:.0f} s",
                    flush=True,
                )
                await asyncio.sleep(2)
                stats.take()
                result.update(await open_loop(settings, customers, rate, gate, redis, campaigns))
            finally:
                await customers.close()
            result.update(leftovers(gate.log_path, work))
            result["redis_top_keys"] = await top_keys(redis)
            result["conditions"]["loadavg_end"] = list(os.getloadavg())
            return result
        finally:
            gate.stop()
            await redis.aclose()
            redis_server.stop()


async def open_loop(
    settings: Settings,
    customers: Customers,
    rate: float,
    gate: GateServer,
    redis: Redis,
    campaigns: list[str],
) -> dict[str, Any]:
    assert gate.process is not None
    stats = customers.stats
    samples: list[dict[str, Any]] = []
    totals: dict[str, int] = {}
    all_latencies: dict[str, list[float]] = {}
    all_errors: dict[str, int] = {}
    error_samples: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    in_flight_max = 0
    start = time.monotonic()
    end = start + settings.duration_s

    async def sampler() -> None:
        nonlocal in_flight_max
        next_at = start
        while True:
            now = time.monotonic()
            if now < next_at:
                await asyncio.sleep(next_at - now)
            taken = stats.take()
            for route, count in taken.requests.items():
                totals[route] = totals.get(route, 0) + count
            for route, values in taken.latencies.items():
                all_latencies.setdefault(route, []).extend(values)
            for what, count in taken.errors.items():
                all_errors[what] = all_errors.get(what, 0) + count
            error_samples.extend(taken.error_samples[: max(0, 20 - len(error_samples))])
            assert gate.process is not None
            rss = rss_bytes(_children(gate.process.pid))
            sample: dict[str, Any] = {
                "t": round(time.monotonic() - start, 2),
                "rss_total": sum(rss.values()),
                "rss_max_process": max(rss.values(), default=0),
                "rss_by_pid": {str(pid): value for pid, value in rss.items()},
                "processes": len(rss),
                "requests": sum(taken.requests.values()),
                "errors": sum(taken.errors.values()),
                "refusals": taken.refusals,
                "flows_done": taken.flows_done,
                "in_flight": len(tasks),
                "loadavg_1m": round(os.getloadavg()[0], 2),
                "latency_ms": percentiles([v for vs in taken.latencies.values() for v in vs]),
                **await redis_sample(redis, campaigns),
            }
            samples.append(sample)
            print(
                f"t={sample['t']:7.1f}s rss={sample['rss_total'] / 2**20:7.1f} MiB "
                f"redis={sample['used_memory'] / 2**20:7.2f} MiB "
                f"(bounded keys {sample['bounded_keys'] / 2**20:6.2f}) "
                f"customers={sample['customers']} "
                f"req={sample['requests']} err={sample['errors']} "
                f"p99={sample['latency_ms'].get('p99', 0):.1f} ms in_flight={len(tasks)}",
                flush=True,
            )
            if time.monotonic() >= end - 0.5:
                return
            next_at += settings.sample_s
            next_at = min(next_at, end)

    sampling = asyncio.create_task(sampler())
    interval = 1 / rate
    k = 0
    while True:
        at = start + k * interval
        if at >= end:
            break
        now = time.monotonic()
        if now < at:
            await asyncio.sleep(at - now)
        task = asyncio.create_task(customers.flow())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        in_flight_max = max(in_flight_max, len(tasks))
        k += 1
    await sampling
    if tasks:
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + ADMIT_TIMEOUT_S)
    taken = stats.take()
    for what, count in taken.errors.items():
        all_errors[what] = all_errors.get(what, 0) + count
    for route, count in taken.requests.items():
        totals[route] = totals.get(route, 0) + count
    error_samples.extend(taken.error_samples[: max(0, 20 - len(error_samples))])

    warm = settings.warmup_fraction * settings.duration_s
    trends = {
        "gate_rss": trend(samples, "rss_total", warm),
        "redis_used_memory": trend(samples, "used_memory", warm),
        "redis_bounded_keys": trend(samples, "bounded_keys", warm),
        "redis_per_customer_keys": trend(samples, "per_customer_keys", warm),
        "redis_other_estimated": trend(samples, "other", warm),
    }
    half = settings.duration_s / 2
    last_half = {
        "gate_rss": trend(samples, "rss_total", half),
        "redis_bounded_keys": trend(samples, "bounded_keys", half),
    }
    after = [s for s in samples if s["t"] >= warm]
    # Which process grew: each one's RSS at the first and the last sample after warm-up.
    per_process = {
        pid: {
            "first_bytes": after[0]["rss_by_pid"].get(pid),
            "last_bytes": after[-1]["rss_by_pid"].get(pid),
            "role": "gate serve" if int(pid) == gate.process.pid else "child",
        }
        for pid in (after[-1]["rss_by_pid"] if after else {})
    }
    customers_slope = slope_per_min([(s["t"], s["customers"]) for s in after])
    used_slope = trends["redis_used_memory"]["slope_bytes_per_min"]
    failures = []
    errors = sum(all_errors.values())
    if errors:
        failures.append(f"{errors} errors")
    floors = {"gate_rss": settings.min_bytes, "redis_bounded_keys": settings.redis_min_bytes}
    for name, floor in floors.items():
        t = trends[name]
        if t["relative_growth"] > settings.max_growth and t.get("growth_bytes", 0) > floor:
            failures.append(
                f"{name} grew {t['growth_bytes'] / 2**20:.2f} MiB "
                f"({t['relative_growth']:.1%}) after the warm-up"
            )
    return {
        "customers_arrived": k,
        "requests": totals,
        "requests_total": sum(totals.values()),
        "requests_per_s": round(sum(totals.values()) / settings.duration_s, 1),
        "errors": all_errors,
        "errors_total": errors,
        "error_samples": error_samples,
        "in_flight_max": in_flight_max,
        "loadavg_max": max((s["loadavg_1m"] for s in samples), default=None),
        "loadavg_median": statistics.median([s["loadavg_1m"] for s in samples])
        if samples
        else None,
        "latency_ms": {route: percentiles(values) for route, values in all_latencies.items()},
        "trends": trends,
        "trends_last_half": last_half,
        "rss_per_process": per_process,
        "redis_bytes_per_customer": round(used_slope / customers_slope, 1)
        if customers_slope
        else None,
        "customers_per_min": round(customers_slope, 1),
        "thresholds": {
            "max_growth": settings.max_growth,
            "min_bytes": settings.min_bytes,
            "redis_min_bytes": settings.redis_min_bytes,
        },
        "failures": failures,
        "samples": samples,
    }


def render_markdown(result: dict[str, Any]) -> str:
    c = result["conditions"]
    mib = 2**20
    lines = [
        f"# fairgate soak, {c['started_at']}",
        "",
        f"- {c['cores']} cores, Python {c['python']}, aiohttp {c['aiohttp']}, Redis "
        f"{c['redis_server']} (appendfsync {c['redis_appendfsync']}, data on "
        f"{c['redis_data_fs']}); gate with {c['workers']} workers, {c['campaigns']} amount "
        f"campaigns, audit_keep_in_redis {c['audit_keep_in_redis']}",
        f"- load average {c['loadavg_start']} at the start, {c.get('loadavg_end')} at the end",
        f"- capacity {result.get('capacity_flows_per_s')} customers/s (closed loop); soak at "
        f"{result.get('rate_customers_per_s')} customers/s for {c['duration_s']:.0f} s: "
        f"{result.get('customers_arrived')} customers, {result.get('requests_total')} "
        f"requests ({result.get('requests_per_s')}/s)",
        f"- capacity phase: {result.get('capacity_requests')} requests, errors "
        f"{result.get('capacity_errors') or 0} (not judged)",
        f"- errors: **{result.get('errors_total')}** {result.get('errors') or ''} "
        f"(`unavailable`: the gate's fail-closed 503, or 401 on /gate/auth, while its view "
        f"of Redis was older than stale_after_ms)",
        f"- load average (1 min) during the soak: max {result.get('loadavg_max')}, "
        f"median {result.get('loadavg_median')}",
        f"- judged after the first {c['warmup_fraction']:.0%} (warm-up)",
        "",
        "| memory | first → last (MiB) | slope (KiB/min) | growth over the window |",
        "| --- | --- | --- | --- |",
    ]
    for name, t in result.get("trends", {}).items():
        if "first_bytes" not in t:
            continue
        lines.append(
            f"| {name} | {t['first_bytes'] / mib:.2f} → {t['last_bytes'] / mib:.2f} | "
            f"{t['slope_bytes_per_min'] / 1024:.1f} | {t['relative_growth']:.2%} |"
        )
    for name, t in result.get("trends_last_half", {}).items():
        if "first_bytes" in t:
            lines.append(
                f"| {name}, last half only | {t['first_bytes'] / mib:.2f} → "
                f"{t['last_bytes'] / mib:.2f} | {t['slope_bytes_per_min'] / 1024:.1f} | "
                f"{t['relative_growth']:.2%} |"
            )
    lines += [
        "",
        f"Redis bytes per new customer: {result.get('redis_bytes_per_customer')} "
        f"({result.get('customers_per_min')} customers/min)",
        "",
        "| route | requests | p50 ms | p99 ms | p99.9 ms | max ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for route, lat in result.get("latency_ms", {}).items():
        lines.append(
            f"| {route} | {result['requests'].get(route, 0)} | {lat.get('p50')} | "
            f"{lat.get('p99')} | {lat.get('p999')} | {lat.get('max')} |"
        )
    log = result.get("gate_log", {})
    lines += [
        "",
        f"Gate log: {log.get('bytes')} bytes, {log.get('error_lines')} ERROR and "
        f"{log.get('warning_lines')} WARNING lines. Verdict: "
        + ("**pass**" if not result.get("failures") else f"**FAIL** {result['failures']}"),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    result = asyncio.run(soak(settings))
    settings.out.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.now(UTC):%Y-%m-%d}-{cores()}core-soak-{settings.duration_s:.0f}s"
    json_path = settings.out / f"{stem}.json"
    md_path = settings.out / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(render_markdown(result))
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 1 if result.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
