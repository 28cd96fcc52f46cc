"""Admission delivers the configured rate, and the core sees at most rate + burst a second.

`python -m bench.admit_rate` (also a section of `make bench`; `--quick` for a test run).

Two parts, each against one private redis-server and real `gate serve` processes
(bench/servers.GateServer, SO_REUSEPORT workers, each running its own admit loop):

- **rate**: a campaign at `rate` per second with far more customers waiting than the
  window can admit; the ratio is the admitted rate, read from the campaign's audit log (each
  `admit` entry's Redis time `t` and count `n`: the customers admitted after the window's
  first entry ÷ the Redis time to its last), divided by the configured rate. Measured with
  the gate idle and with it saturated by polls (a closed loop of `GET /q/{c}/status` from
  bench/openloop.py processes, for a customer who stays waiting), with 1 and 4 processes.
  The busiest 1-s window of admissions by admit call is shown too: admission may catch up
  after a stretched call, so this figure is not the bound; the bound is on arrivals.
- **arrivals**: customers who all poll at once (every poll on the same tick, the worst
  bunching), then go to the core through `GET /gate/auth` as nginx's auth_request would,
  a third of them late (up to 1.5 s after their pass is valid). The figure is the busiest
  1-s window of /gate/auth successes (each customer's first) ÷ (rate + burst): the core's
  peak arrivals against its bound, which must be ≤ 1.0.

The references are the configured rate and rate + burst; the conditions (cores, load
average, how busy the gate processes were) are printed and kept with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench.load import Target
from bench.openloop import run_load
from bench.servers import Admin, GateServer
from gate.audit.format import decode_entry
from gate.redis_server import RedisServer
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.room.scripts import Scripts
from gate.signing import generate_keys_document, write_keys

CUSTOMER_HEADER = "X-Customer-Id"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class RateCase:
    rate: int
    burst: int
    window_s: float
    saturated: bool


@dataclass(frozen=True)
class Plan:
    workers: tuple[int, ...]
    rates: tuple[RateCase, ...]
    warmup_s: float
    load_connections: int
    load_procs: int
    arrivals_rate: int
    arrivals_burst: int
    arrivals_customers: int
    quick: bool


def plan(quick: bool, workers: tuple[int, ...] | None = None) -> Plan:
    """The full run: 10, 1,000 and 5,000/s, idle and saturated, 1 and 4 processes (the
    window long enough that one customer is under 1% of it: 20 s at 10/s)."""
    if quick:
        # enough to show the code runs and the figures are sane (200/s over 1.5 s is 300
        # admissions); the measured figures are the full run's
        rates = tuple(RateCase(200, 10, 1.5, sat) for sat in (False, True))
        return Plan(workers or (1,), rates, 0.5, 16, 1, 40, 4, 60, True)
    rates = tuple(
        RateCase(rate, burst, window, sat)
        for rate, burst, window in ((10, 2, 20.0), (1000, 50, 10.0), (5000, 250, 10.0))
        for sat in (False, True)
    )
    return Plan(workers or (1, 4), rates, 2.0, 64, 2, 100, 10, 400, False)


class PatientAdmin(Admin):
    """The admin calls, retried as an operator's client would while the gate answers 503
    (Redis stalled: on a shared disk an fsync under `appendfsync always` can hold it for
    a second); each retry is counted, a condition of the run."""

    retries = 0

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        for _ in range(60):
            try:
                return await super()._post(path, body)
            except RuntimeError as exc:
                if ": 503 " not in str(exc):
                    if ": 409 " in str(exc) and "already exists" in str(exc):
                        return {}  # a create that reached Redis before its 503
                    raise
            PatientAdmin.retries += 1
            await asyncio.sleep(0.5)
        return await super()._post(path, body)


def spec(campaign: str, rate: float, burst: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": campaign,
        "opens_at": (now - timedelta(seconds=1)).isoformat(),
        "closes_at": (now + timedelta(hours=2)).isoformat(),
        "quota": {"unit": "item", "total": 10**9},
        "admission": {
            "rate_per_s": rate,
            "burst": burst,
            "max_active": 10_000_000,
            "pass_ttl_s": 3600,
        },
    }


def digest(campaign: str, i: int) -> bytes:
    return hashlib.blake2b(f"{campaign}-{i}".encode(), digest_size=16).digest()


async def redis_us(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1_000_000 + int(micros)


class AdmitLog:
    """The campaign's `admit` entries, read as they are written (the sealer may trim the
    list's sealed head: each read starts from the next index, offset by audit_trimmed)."""

    def __init__(self, redis: Redis, campaign: str) -> None:
        self.redis = redis
        self.keys = CampaignKeys(campaign)
        self.next_index = 1
        self.missed = 0
        self.admits: list[tuple[int, int]] = []  # (Redis time us, customers admitted)

    async def read(self) -> None:
        trimmed = int(await self.redis.hget(self.keys.meta, "audit_trimmed") or 0)
        position = self.next_index - 1 - trimmed
        if position < 0:
            self.missed += -position
            position = 0
        for raw in await self.redis.lrange(self.keys.audit, position, -1):
            entry = decode_entry(raw)
            self.next_index = int(entry["i"]) + 1
            if entry.get("k") in ("admit", b"admit"):
                self.admits.append((int(entry["t"]), int(entry["n"])))

    async def follow(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.read()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        await self.read()


def busiest_window(events: list[tuple[int, int]], width_us: int = 1_000_000) -> int:
    """The most counted in any half-open window [t, t + width) of the (time us, count)s."""
    events = sorted(events)
    best = total = lo = 0
    for t, n in events:
        total += n
        while t - events[lo][0] >= width_us:
            total -= events[lo][1]
            lo += 1
        best = max(best, total)
    return best


def delivered(admits: list[tuple[int, int]], start_us: int, end_us: int) -> dict[str, Any]:
    """Admitted per second in [start, end] of Redis time: the customers of every entry after
    the first ÷ the time from the first entry to the last (both in the window), so the
    figure is exact to one customer whatever the admit calls' spacing."""
    inside = sorted((t, n) for t, n in admits if start_us <= t <= end_us)
    if len(inside) < 2:
        return {"admitted": sum(n for _, n in inside), "entries": len(inside), "per_s": None}
    span_us = inside[-1][0] - inside[0][0]
    after_first = sum(n for _, n in inside[1:])
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(inside)]
    return {
        "admitted": after_first,
        "span_s": round(span_us / 1e6, 3),
        "entries": len(inside),
        "per_s": after_first / (span_us / 1e6),
        "max_gap_ms": round(max(gaps) / 1000, 1),
        "mean_gap_ms": round(sum(gaps) / len(gaps) / 1000, 1),
    }


def process_cpu_s(root_pid: int) -> float:
    """CPU seconds (user + system) of a process and its direct children (the workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if pid == root_pid or ppid == root_pid:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


async def fill(room: Room, campaign: str, customers: int) -> None:
    """`customers` tickets straight through join.lua (the bench measures admission, not
    joins), 2,000 a call."""
    for first in range(0, customers, 2000):
        last = min(customers, first + 2000)
        await room.join(campaign, [digest(campaign, i) for i in range(first, last)])


async def waiting_poller(
    session: aiohttp.ClientSession, gate: GateServer, campaign: str
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A customer joined after everyone else (so waiting all the run): the poll's path and
    headers."""
    customer = f"poller-{campaign}"
    url = f"{gate.url}/q/{campaign}/join"
    async with session.post(url, headers={CUSTOMER_HEADER: customer}) as response:
        body = await response.json(content_type=None)
        if response.status not in (200, 201):
            raise RuntimeError(f"join {campaign}: {response.status} {body}")
    return f"/q/{campaign}/status?ticket={body['ticket']}", ((CUSTOMER_HEADER, customer),)


async def measure_rate(
    session: aiohttp.ClientSession,
    gate: GateServer,
    room: Room,
    redis: Redis,
    work: Path,
    case: RateCase,
    tag: str,
    settings: Plan,
) -> dict[str, Any]:
    admin = PatientAdmin(session, gate)
    campaign = f"rate-{tag}"
    await admin.create(spec(campaign, case.rate, case.burst))
    await admin.pause(campaign)
    total_s = settings.warmup_s + case.window_s + 1.0
    await fill(room, campaign, int(case.rate * total_s * 1.5) + case.burst + 100)
    path, headers = await waiting_poller(session, gate, campaign)
    log = AdmitLog(redis, campaign)
    stop = asyncio.Event()
    follower = asyncio.create_task(log.follow(stop))
    load: asyncio.Task[Any] | None = None
    if case.saturated:
        load = asyncio.create_task(
            run_load(
                Target(gate.url + path, headers=headers),
                rate=None,
                duration_s=total_s + 1.0,
                connections=settings.load_connections,
                procs=settings.load_procs,
                work_dir=work / f"load-{tag}",
            )
        )
        await asyncio.sleep(1.5)  # the generators start and connect (openloop's lead)
    await admin.resume(campaign)
    await asyncio.sleep(settings.warmup_s)
    start_us, cpu0, wall0 = await redis_us(redis), process_cpu_s(gate.pid), time.monotonic()
    await asyncio.sleep(case.window_s)
    end_us, cpu1, wall1 = await redis_us(redis), process_cpu_s(gate.pid), time.monotonic()
    await admin.close(campaign)
    stop.set()
    await follower
    poll: dict[str, Any] | None = None
    if load is not None:
        result = await load
        poll = {"requests_per_s": round(result.throughput), "errors": result.errors}
    got = delivered(log.admits, start_us, end_us)
    per_s = got.pop("per_s")
    peak = busiest_window([(t, n) for t, n in log.admits if start_us <= t <= end_us])
    return {
        **asdict(case),
        "workers": gate.workers,
        "admitted_per_s": None if per_s is None else round(per_s, 2),
        "ratio": None if per_s is None else round(per_s / case.rate, 4),
        **got,
        "peak_1s_by_admit_call": peak,
        "peak_by_admit_call_ratio": round(peak / (case.rate + case.burst), 3),
        "gate_cpu_cores": round((cpu1 - cpu0) / (wall1 - wall0), 2),
        "poll_load": poll,
        "audit_entries_missed": log.missed,
    }


async def _status(
    session: aiohttp.ClientSession, gate: GateServer, campaign: str, customer: str, ticket: str
) -> dict[str, Any] | None:
    """The customer's status, or None after a 503 (the caller waits and asks again)."""
    async with session.get(
        f"{gate.url}/q/{campaign}/status",
        params={"ticket": ticket},
        headers={CUSTOMER_HEADER: customer},
    ) as response:
        body: dict[str, Any] = await response.json(content_type=None)
        if response.status == 503:
            return None
        if response.status != 200:
            raise RuntimeError(f"status: {response.status} {body}")
        return body


async def measure_arrivals(
    session: aiohttp.ClientSession,
    gate: GateServer,
    redis: Redis,
    settings: Plan,
    tag: str,
    seed: int,
) -> dict[str, Any]:
    """Customers poll on one shared 1-s tick, then go to /gate/auth (a third of them late):
    the busiest 1-s window of first successes against rate + burst."""
    admin = PatientAdmin(session, gate)
    rate, burst, count = (
        settings.arrivals_rate,
        settings.arrivals_burst,
        settings.arrivals_customers,
    )
    campaign = f"arrive-{tag}"
    await admin.create(spec(campaign, rate, burst))
    await admin.pause(campaign)
    tickets: dict[str, str] = {}
    unavailable = 0
    for i in range(count):
        customer = f"{campaign}-c{i}"
        for _ in range(60):  # a 503 (Redis stalled a moment) is asked again, as a browser would
            async with session.post(
                f"{gate.url}/q/{campaign}/join", headers={CUSTOMER_HEADER: customer}
            ) as response:
                body = await response.json(content_type=None)
            if response.status in (200, 201):
                tickets[customer] = body["ticket"]
                break
            if response.status != 503:
                raise RuntimeError(f"join: {response.status} {body}")
            unavailable += 1
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError("a join kept answering 503")
    rng = random.Random(seed)
    late_s = {c: (rng.uniform(0, 1.5) if rng.random() < 1 / 3 else 0.0) for c in tickets}
    successes: list[float] = []
    spans: list[tuple[float, float]] = []  # (sent, answered) of each success
    scheduled: list[float] = []
    refusals = 0
    t0 = time.time()

    async def customer(name: str) -> None:
        nonlocal refusals, unavailable
        tick = 0
        while True:  # every customer polls on the same tick: the worst bunching
            body = await _status(session, gate, campaign, name, tickets[name])
            if body is None:
                unavailable += 1
            elif body.get("pass"):
                break
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick - time.time()))
        valid_from = int(body.get("not_before") or 0) / 1e6
        scheduled.append(max(valid_from, time.time()))
        await asyncio.sleep(max(0.0, valid_from - time.time()) + late_s[name])
        headers = {
            CUSTOMER_HEADER: name,
            "X-Gate-Pass": body["pass"],
            "X-Gate-Campaign": campaign,
        }
        for _ in range(10_000):
            sent = time.time()
            async with session.get(f"{gate.url}/gate/auth", headers=headers) as response:
                await response.read()
                if response.status == 200:
                    successes.append(time.time())
                    spans.append((sent, successes[-1]))
                    return
                if response.status != 401:
                    raise RuntimeError(f"/gate/auth answered {response.status}")
                if "X-Gate-Retry-After-Ms" in response.headers:
                    refusals += 1
                    wait_ms = int(response.headers["X-Gate-Retry-After-Ms"])
                else:  # 401 unavailable: the gate fails closed for a moment
                    unavailable += 1
                    wait_ms = 500
            await asyncio.sleep(wait_ms / 1000)
        raise RuntimeError("a customer never got past /gate/auth")

    await admin.resume(campaign)
    await asyncio.wait_for(asyncio.gather(*(customer(name) for name in tickets)), 120)
    await admin.close(campaign)
    # the door's own record (arrive.lua): each first success at its Redis time
    arrived = await redis.zrange(CampaignKeys(campaign).arrived, 0, -1, withscores=True)
    by_gate = busiest_window([(int(t), 1) for _, t in arrived])
    as_us = [(int(t * 1e6), 1) for t in successes]
    peak = busiest_window(as_us)
    peak_scheduled = busiest_window([(int(t * 1e6), 1) for t in scheduled])
    # the successes that surely fell in one window: sent and answered inside it (the
    # answer times above carry this process's own delays, on a busy machine)
    surely = max(
        (sum(1 for s, a in spans if start <= s and a < start + 1.0) for start, _ in spans),
        default=0,
    )
    return {
        "workers": gate.workers,
        "rate": rate,
        "burst": burst,
        "customers": count,
        "late_customers": sum(1 for v in late_s.values() if v > 0),
        "auth_successes": len(successes),
        "early_refusals": refusals,
        "unavailable_answers": unavailable,
        "peak_1s_arrivals_redis_time": by_gate,
        "peak_redis_time_ratio": round(by_gate / (rate + burst), 3),
        "arrivals_recorded": len(arrived),
        "peak_1s_arrivals": peak,
        "peak_ratio": round(peak / (rate + burst), 3),
        "peak_1s_surely": surely,
        "peak_surely_ratio": round(surely / (rate + burst), 3),
        "peak_1s_valid_from": peak_scheduled,
        "span_s": round(max(successes) - min(successes), 2) if successes else None,
    }


def conditions(settings: Plan, redis_server: RedisServer) -> dict[str, Any]:
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "redis_server": redis_server.version(),
        "redis_appendfsync": redis_server.appendfsync,
        "workers": list(settings.workers),
        "warmup_s": settings.warmup_s,
        "poll_load": f"closed loop, {settings.load_connections} connections, "
        f"{settings.load_procs} generator process(es) (bench/openloop.py)",
        "quick": settings.quick,
        "loadavg_start": list(os.getloadavg()),
    }


async def run(settings: Plan, work: Path) -> dict[str, Any]:
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    redis_server = RedisServer(work / "redis")
    redis_server.start()
    redis = Redis(host="127.0.0.1", port=redis_server.port)
    room = Room(redis, Scripts())
    keys_file = work / "keys.json"
    write_keys(keys_file, generate_keys_document())
    results: dict[str, Any] = {"conditions": conditions(settings, redis_server)}
    rate_rows: list[dict[str, Any]] = []
    arrival_rows: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        async with aiohttp.ClientSession() as session:
            for workers in settings.workers:
                gate = GateServer(redis_server.url, work, keys_file, workers)
                try:
                    await gate.start()
                    for n, case in enumerate(settings.rates):
                        tag = f"w{workers}-{n}"
                        try:
                            row = await measure_rate(
                                session, gate, room, redis, work, case, tag, settings
                            )
                        except Exception as exc:  # keep what the other cases measured
                            failures.append(f"rate {case} workers={workers}: {exc!r}")
                            continue
                        print(_rate_line(row), flush=True)
                        rate_rows.append(row)
                    try:
                        row = await measure_arrivals(
                            session, gate, redis, settings, f"w{workers}", workers
                        )
                    except Exception as exc:
                        failures.append(f"arrivals workers={workers}: {exc!r}")
                    else:
                        print(_arrival_line(row), flush=True)
                        arrival_rows.append(row)
                except Exception as exc:
                    failures.append(f"workers={workers}: {exc!r}")
                finally:
                    gate.stop()
    finally:
        await redis.aclose()
        redis_server.stop()
    for failure in failures:
        print(f"FAILED {failure}", flush=True)
    results["rate"] = rate_rows
    results["arrivals"] = arrival_rows
    results["failures"] = failures
    results["conditions"]["loadavg_end"] = list(os.getloadavg())
    results["conditions"]["admin_503_retries"] = PatientAdmin.retries
    results["conditions"]["gate_redis_unreachable_lines"] = await asyncio.to_thread(
        _count_in_logs, work, "event=redis_unreachable"
    )
    return results


def _count_in_logs(work: Path, needle: str) -> int:
    """How often the gates' logs say `needle` (their Redis stalls are the run's conditions)."""
    return sum(log.read_text(errors="replace").count(needle) for log in work.glob("gate-*.log"))


def _rate_line(row: dict[str, Any]) -> str:
    load = "saturated" if row["saturated"] else "idle"
    polls = f", polls {row['poll_load']['requests_per_s']}/s" if row["poll_load"] else ""
    return (
        f"rate {row['rate']}/s burst {row['burst']} workers {row['workers']} {load}: "
        f"admitted {row['admitted_per_s']}/s = {row['ratio']} x configured "
        f"(max gap {row.get('max_gap_ms')} ms, gate cpu {row['gate_cpu_cores']} cores{polls}); "
        f"busiest 1 s by admit call {row['peak_by_admit_call_ratio']} x (rate + burst)"
    )


def _arrival_line(row: dict[str, Any]) -> str:
    return (
        f"arrivals workers {row['workers']} rate {row['rate']}/s burst {row['burst']}: "
        f"busiest 1-s window of first /gate/auth successes (Redis time) "
        f"{row['peak_1s_arrivals_redis_time']} = {row['peak_redis_time_ratio']} x (rate + burst);"
        f" by answer time {row['peak_ratio']}, surely in one window "
        f"{row['peak_surely_ratio']}; {row['late_customers']} of "
        f"{row['customers']} late, {row['early_refusals']} told to wait, "
        f"{row['unavailable_answers']} unavailable answers"
    )


def table(results: dict[str, Any]) -> str:
    """The figures as markdown, for bench/out and bench/README.md."""
    c = results["conditions"]
    lines = [
        f"{c['started_at']}, {c['cores']} cores, load average {c['loadavg_start'][0]:.1f} -> "
        f"{c.get('loadavg_end', [0.0])[0]:.1f}, Redis {c['redis_server']} (appendfsync "
        f"{c['redis_appendfsync']}); poll load: {c['poll_load']}; admin calls retried "
        f"after a 503: {c.get('admin_503_retries', 0)}, gate log lines 'redis_unreachable': "
        f"{c.get('gate_redis_unreachable_lines', 0)}",
        "",
        "| rate/s | burst | processes | gate | admitted/s | ÷ configured | max admit gap ms "
        "| busiest 1 s by admit call ÷ (rate + burst) | gate CPU (cores) | polls/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["rate"]:
        polls = r["poll_load"]["requests_per_s"] if r["poll_load"] else "-"
        lines.append(
            f"| {r['rate']:,} | {r['burst']} | {r['workers']} | "
            f"{'saturated' if r['saturated'] else 'idle'} | {r['admitted_per_s']} | "
            f"**{r['ratio']}** | {r.get('max_gap_ms')} | {r['peak_by_admit_call_ratio']} | "
            f"{r['gate_cpu_cores']} | {polls} |"
        )
    lines += [
        "",
        "| processes | rate/s | burst | customers (late) | busiest 1 s of first /gate/auth "
        "successes, Redis time | ÷ (rate + burst) | by answer time ÷ (rate + burst) "
        "| surely in one 1 s ÷ (rate + burst) | told to wait | unavailable answers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a in results["arrivals"]:
        lines.append(
            f"| {a['workers']} | {a['rate']} | {a['burst']} | {a['customers']} "
            f"({a['late_customers']}) | {a['peak_1s_arrivals_redis_time']} | "
            f"**{a['peak_redis_time_ratio']}** | {a['peak_ratio']} | {a['peak_surely_ratio']} | "
            f"{a['early_refusals']} | {a['unavailable_answers']} |"
        )
    for failure in results.get("failures", []):
        lines.append(f"\nFAILED {failure}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.admit_rate", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short case (seconds)")
    parser.add_argument("--workers", type=int, nargs="+", help="gate processes (default 1 4)")
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="results folder")
    args = parser.parse_args(argv)
    if args.workers and not all(1 <= w <= 64 for w in args.workers):
        parser.error("--workers must be between 1 and 64")
    settings = plan(args.quick, tuple(args.workers) if args.workers else None)
    with tempfile.TemporaryDirectory(prefix="fairgate-admit-") as tmp:
        try:
            results = asyncio.run(run(settings, Path(tmp)))
        finally:  # the servers' logs outlive the temporary folder, for a bad run
            logs = args.out / "logs-admit-rate"
            logs.mkdir(parents=True, exist_ok=True)
            for log in [*Path(tmp).glob("*.log"), *Path(tmp).glob("redis/*.log")]:
                shutil.copy(log, logs / log.name)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "admit_rate.json").write_text(json.dumps(results, indent=1))
    (args.out / "admit_rate.md").write_text(table(results) + "\n")
    print(table(results))
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
