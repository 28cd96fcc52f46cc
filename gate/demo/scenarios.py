"""`gate demo --scenario NAME`: the seed incidents, replayed without the gate and with it.

Each scenario runs twice with the same arrivals (same seed, same amounts, same times):
once straight at the simulated core bank (`gate.demo.sim_core`, its own process) and once
through a real gate (embedded Redis, AOF always) in front of the same core. The customers
run in their own process (`gate.demo.crowd`). The summary table has one row for each run.

Default sizes are small so a scenario ends in well under a minute on a 2-core machine;
`--full` runs the issue's sizes (100,000 customers within one second for special-deposit).
The gate's `max_active` is set to what the core can hold (sessions + queue). The admission
rate is the campaign's `rate_per_s`, fixed, except in slow-bureau: there it is adaptive
(`admission.adaptive`, gate/controller.py) between `rate_min` and the scenario's rate, and
follows the core's own health endpoint (`GET /health` of the simulated core, polled by the
gate: a probe down a deposit's path, see gate/demo/sim_core.py). The core's target there is
a p99 latency reached again within a stated reaction time after the slowdown
(gate/demo/slowdown.py); "rate changes" counts the controller's entries in the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gate.demo import slowdown
from gate.demo.children import child
from gate.demo.crowd import CrowdSpec
from gate.demo.html_report import table_order, table_rows, write_html
from gate.demo.sim_core import CoreParams, per_second
from gate.errors import GateError
from gate.redis_server import RedisServer

CAMPAIGN = "special-deposit"
NOT_YET: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    customers: int
    full_customers: int
    spread_s: float  # arrivals uniform over this long
    total: int  # KRW, for `customers` (scaled with the number of customers)
    full_total: int  # KRW, for `full_customers` (`--full`)
    amount_min: int = 1_000_000
    amount_max: int = 10_000_000
    step: int = 10_000
    rate: float = 400.0
    core: CoreParams = field(default_factory=CoreParams)
    bureau_change: tuple[float, float] | None = None  # (at s after the first arrival, x)
    retries: int = 3
    stream: bool = False  # arrivals at a steady rate (spread_s grows with the customers)
    redis_kill: tuple[float, float] | None = None  # (kill -9 at s after the first, down s)
    policy: str = "first_come"  # or "ballot": subscriptions in a window, allotted at close
    full_rate: float | None = None  # `--full`: the admission rate (default: `rate`)
    full_spread_s: float | None = None  # `--full`: arrivals over this long
    # Adaptive admission between rate_min and `rate`, on the core's GET /health (None: the
    # rate is fixed); the controller calls the core unhealthy over health_target_ms.
    rate_min: float | None = None
    health_target_ms: float = 350.0
    # The core's p99 target (ms) after a slowdown, met from reaction_s after it on.
    latency_target_ms: float | None = None
    reaction_s: float = 5.0

    @property
    def max_active(self) -> int:
        """What the core can hold at once: its sessions and its queue."""
        return self.core.capacity + self.core.queue_max


SCENARIOS: dict[str, Scenario] = {
    "special-deposit": Scenario(
        name="special-deposit",
        what=(
            "a 5% special deposit: 10,000,000,000 KRW in all, 1-10 million KRW each in steps "
            "of 10,000, first come; every customer arrives within one second"
        ),
        customers=2000,
        full_customers=100_000,
        spread_s=1.0,
        total=5_000_000_000,  # about half of them get theirs
        full_total=10_000_000_000,  # the incident: about 1 in 55
    ),
    "slow-bureau": Scenario(
        name="slow-bureau",
        what=(
            "a steady stream of 200 customers/s; the credit bureau the core calls in every "
            "session becomes ten times slower 3 s in (the core then serves ~140/s, a third "
            "of what it did)"
        ),
        customers=2400,
        full_customers=20_000,
        spread_s=12.0,
        # never sells out: the scenario is about the core's health
        total=10_000_000 * 2400,
        full_total=10_000_000 * 20_000,
        bureau_change=(3.0, 10.0),
        stream=True,
        rate=250.0,
        # what the core takes even with the bureau slow (~140/s): a floor that a noisy probe
        # cannot push the rate below
        rate_min=60.0,
        latency_target_ms=800.0,
        reaction_s=8.0,
    ),
}
SCENARIOS["failover"] = dataclasses.replace(
    SCENARIOS["special-deposit"],
    name="failover",
    what=(
        "the special deposit's burst; behind the gate, its Redis is killed (kill -9) 1 s "
        "in and restarted from its AOF (appendfsync always) 1 s later"
    ),
    redis_kill=(1.0, 1.0),
)
SCENARIOS["ipo-rush"] = Scenario(
    name="ipo-rush",
    what=(
        "an IPO subscription: customers subscribe 1-10 million KRW each (steps of 10,000) "
        "in a window, the core holds each deposit; at close the ballot allots the shares "
        "(half equally, half pro rata, the committed lottery for the remainder)"
    ),
    customers=1500,
    full_customers=1_000_000,
    spread_s=1.0,
    total=2_000_000_000,  # about 4x oversubscribed
    full_total=1_000_000_000_000,
    policy="ballot",
    full_rate=5000.0,
    full_spread_s=60.0,
)
ALL = (*SCENARIOS, *NOT_YET)


def sized(scenario: Scenario, count: int, full: bool) -> Scenario:
    """The scenario for `count` customers: the stock scales with them (same share sold)."""
    base, total = (
        (scenario.full_customers, scenario.full_total)
        if full
        else (scenario.customers, scenario.total)
    )
    stock = total * count // base
    stock -= stock % scenario.step
    # A burst arrives within spread_s whatever its size; a stream keeps its rate.
    spread = (
        scenario.spread_s * count / scenario.customers if scenario.stream else scenario.spread_s
    )
    rate = scenario.rate
    if full:
        spread = scenario.full_spread_s or spread
        rate = scenario.full_rate or rate
    return dataclasses.replace(
        scenario, total=max(stock, scenario.amount_min), spread_s=spread, rate=rate
    )


def validate(name: str) -> Scenario:
    if name in NOT_YET:
        raise GateError(
            f"scenario {name!r}: not yet (implemented: {', '.join(SCENARIOS)})",
            code="not_yet",
        )
    if name not in SCENARIOS:
        raise GateError(
            f"unknown scenario {name!r}; choose from: {', '.join(ALL)}", code="bad_scenario"
        )
    return SCENARIOS[name]


# --- processes ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sim_core(params: CoreParams, work: Path) -> AsyncIterator[str]:
    """The simulated core in its own process; yields its base URL."""
    path = work / f"core-{secrets.token_hex(4)}.json"
    path.write_text(json.dumps(dataclasses.asdict(params)))
    async with child(
        "-m", "gate.demo.sim_core", str(path), stdout=asyncio.subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        if not line.strip().isdigit():
            raise GateError("the simulated core did not start", code="demo")
        yield f"http://127.0.0.1:{int(line)}"


CROWD_WORKERS = 2  # processes of a large crowd (gate.demo.crowd)
CROWD_STALL_S = 120.0  # past its time bound, no customer answered for this long: stuck


def crowd_gave_out(now: float, limit: float, last_answer: float) -> bool:
    """The crowd is stuck: past its time bound (its arrivals, then its deadline) and no
    customer answered for CROWD_STALL_S. A crowd still answering customers is not: at
    --full sizes one process answers a few hundred customers a second, and a bound from the
    scenario's rate alone cut off a working crowd (ipo-rush at 100,000, after 200 s)."""
    return now >= limit and now - last_answer >= CROWD_STALL_S


async def run_crowd(
    spec: CrowdSpec,
    work: Path,
    on_progress: Callable[[int], None],
    at_times: Sequence[tuple[float, Callable[[], Any]]] = (),
) -> dict[str, Any]:
    """The customers in their own process; `at_times` are (s after the crowd's first
    customer, coroutine fn). The crowd's clock starts when its progress file first appears
    (0.1 s before its first customer), not at launch: a loaded machine starts a process late."""
    tag = secrets.token_hex(4)
    spec_path, result_path = work / f"crowd-{tag}.json", work / f"crowd-{tag}-result.json"
    progress = work / f"crowd-{tag}.progress"
    spec_path.write_text(json.dumps(dataclasses.asdict(spec)))
    launched = time.monotonic()
    cpu = time.process_time()
    pending = sorted(at_times, key=lambda a: a[0])
    async with child(
        "-m",
        "gate.demo.crowd",
        str(spec_path),
        str(result_path),
        str(progress),
        stdout=asyncio.subprocess.PIPE,
    ) as process:
        waiter = asyncio.create_task(process.wait())
        limit = launched + spec.spread_s + spec.deadline_s + 60
        began: float | None = None
        answered, last_answer = -1, launched
        while not waiter.done() and not crowd_gave_out(time.monotonic(), limit, last_answer):
            await asyncio.wait({waiter}, timeout=0.02 if pending else 0.1)
            with contextlib.suppress(OSError, ValueError):
                done = int(progress.read_text() or 0)
                on_progress(done)
                if done != answered:
                    answered, last_answer = done, time.monotonic()
                began = time.monotonic() + 0.1 if began is None else began
            while pending and began is not None and time.monotonic() - began >= pending[0][0]:
                await pending.pop(0)[1]()
        if not waiter.done():
            waiter.cancel()
            raise GateError("the customers' process did not finish in time", code="demo")
        code = waiter.result()
    if code == 0:
        on_progress(spec.customers)  # every customer has an outcome (the bar ends full)
    if code != 0 or not result_path.exists():
        raise GateError(f"the customers' process failed (exit code {code})", code="demo")
    # This process's CPU while the customers ran (behind the gate: the gate's, it serves here)
    spent = time.process_time() - cpu
    data: dict[str, Any] = orjson.loads(result_path.read_bytes())  # ~350 MB at 1,000,000
    data["parent_cpu_s"] = round(spent, 2)
    return data


async def _admin_call(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> dict[str, Any]:
    async with session.post(url, json=body) as response:
        data = await response.json(content_type=None)
        if response.status >= 300:
            raise GateError(f"admin API POST {url}: {response.status} {data}", code="demo")
        return data if isinstance(data, dict) else {}


async def _get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url) as response:
        data = await response.json(content_type=None)
        return data if isinstance(data, dict) else {}


async def _bureau_control(core_url: str, latency_ms: float) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{core_url}/control", json={"bureau_ms": latency_ms}) as r,
    ):
        if r.status != 200:
            raise GateError(f"core /control answered {r.status}", code="demo")


# --- figures -----------------------------------------------------------------------------


def kendall_distance(arrival: Sequence[float], service: Sequence[float]) -> int:
    """Pairs (i, j) that arrived i first but were served j first, or j only.

    `service[i]` is math.inf for a customer never served (tied among themselves, so two
    unserved customers are no inversion). O(n log n) with a Fenwick tree.
    """
    order = sorted(range(len(arrival)), key=lambda i: arrival[i])
    keys = sorted(set(service))
    rank = {k: r + 1 for r, k in enumerate(keys)}
    tree = [0] * (len(keys) + 1)
    inversions = 0
    for seen, i in enumerate(order):
        r = rank[service[i]]
        at_most = 0
        j = r
        while j > 0:
            at_most += tree[j]
            j -= j & -j
        inversions += seen - at_most  # earlier arrivals served strictly later (or never)
        j = r
        while j < len(tree):
            tree[j] += 1
            j += j & -j
    return inversions


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def admission_times(audit: Sequence[dict[str, Any]]) -> dict[int, tuple[float, int]]:
    """seq -> (Redis time of its admit entry, seq): the order the gate let customers in."""
    out: dict[int, tuple[float, int]] = {}
    for entry in audit:
        kind = entry.get("k")
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind != "admit":
            continue
        t = int(entry["t"]) / 1_000_000
        skipped = {int(s) for s in entry.get("x") or []}
        for seq in range(int(entry["f"]), int(entry["l"]) + 1):
            if seq not in skipped:
                out[seq] = (t, seq)
    return out


def rate_changes(audit: Sequence[dict[str, Any]]) -> int:
    """The rate changes the controller made (its `admin-update` entries that change `rate`)."""
    return len(slowdown.rate_log(audit, 0.0))


ANSWERED = ("booked", "sold_out", "told_soldout")
CORE_FAULTS = ("queue_full", "queue_timeout", "bureau_timeout")  # the core's own 503/504


def analyse_row(
    scenario: Scenario,
    with_gate: bool,
    crowd: dict[str, Any],
    core: dict[str, Any],
    audit: Sequence[dict[str, Any]] | None,
    label: str | None = None,
) -> dict[str, Any]:
    """One row of the table. Inversions: Kendall tau distance between the order the system
    saw customers arrive and the order it let them in to be served, a customer never let
    in counting as after everyone who was (`kendall_distance`).

    Arrival: with the gate, the seq (its join order); without it, the customer's first
    request at the core. Let in: with the gate, its admission (the audit log's `admit`
    entries), for a customer who then got a final answer (booked, or sold out at the
    claim); without it, the core starting a session for one of the customer's requests
    (booked, or sold out by the core's stock check). `sale_inversions` uses the order of
    bookings instead (with the gate: admission order of those booked): a customer let in
    who then found it sold out while a later one booked counts there. `label` names a row
    with a front other than the gate (nginx limit_req): arrival is then the customer's first
    click, as the front saw it (a request it refused never reached the core).
    """
    outcomes: list[dict[str, Any]] = crowd["outcomes"]
    served: list[dict[str, Any]] = core["served"]
    t0 = float(crowd["started_at"])
    first_arrival: dict[str, float] = {}
    let_in: dict[str, float] = {}
    booked_start: dict[str, float] = {}
    for s in served:
        c = s["customer"]
        first_arrival[c] = min(first_arrival.get(c, math.inf), s["arrived"])
        if s["started"] is not None and s["status"] in (200, 409):
            let_in[c] = min(let_in.get(c, math.inf), s["started"])
        if s["status"] == 200 and s["started"] is not None:
            booked_start[c] = s["started"]
    arrival: list[float] = []
    service: list[float] = []
    sale: list[float] = []
    ranked: list[tuple[float, dict[str, Any]]] = []  # (arrival, outcome), for earliest N
    if with_gate:
        admitted = admission_times(audit or [])
        position = {seq: n for n, (_t, seq) in enumerate(sorted(admitted.values()))}
        for o in outcomes:
            if o["seq"] is None:
                continue
            arrival.append(float(o["seq"]))
            ranked.append((float(o["seq"]), o))
            # Admitted, then answered: booked, sold out at the claim, or told sold out (a
            # join whose seq the cursor had already passed when it sold out).
            answered = o["result"] in ANSWERED and o["seq"] in position
            service.append(float(position[o["seq"]]) if answered else math.inf)
            booked = o["result"] == "booked" and o["seq"] in position
            sale.append(float(position[o["seq"]]) if booked else math.inf)
    else:
        for o in outcomes:
            c = o["customer"]
            arrival.append(o["sent"] if label else first_arrival.get(c, o["sent"]))
            ranked.append((arrival[-1], o))
            service.append(let_in.get(c, math.inf))
            sale.append(booked_start.get(c, math.inf))
    # The core's latency: requests past the proxy's pass check (a refused one never got in).
    latencies = [s["finished"] - s["arrived"] for s in served if not s.get("proxy")]
    waits = [o["done"] - o["sent"] for o in outcomes if o["done"] is not None]
    results: dict[str, int] = {}
    max_wait_by_result: dict[str, float] = {}
    for o in outcomes:
        key = o["result"] if not o["result"].startswith("error") else "error"
        results[key] = results.get(key, 0) + 1
        if o["done"] is not None:
            wait = round(o["done"] - o["sent"], 2)
            max_wait_by_result[key] = max(max_wait_by_result.get(key, 0.0), wait)
    reasons: dict[str, int] = {}
    for s in served:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    seconds = per_second(served, t0)
    sold = int(core["sold"])
    p99 = _percentile(latencies, 99)
    admitted_seqs = admission_times(audit) if audit is not None else {}
    admitted_told_soldout = sum(
        1 for o in outcomes if o["told_soldout"] and o["seq"] in admitted_seqs
    )
    gate_errors = int(crowd.get("gate_5xx", 0)) + sum(
        1 for s in served if s["reason"].startswith("auth_failed")
    )
    earliest_n, earliest_served = earliest_served_of(scenario, ranked)
    return {
        "row": label or ("with gate" if with_gate else "without gate"),
        "earliest_n": earliest_n,
        "earliest_served": earliest_served,
        "customers": len(outcomes),
        "core_errors": sum(1 for s in served if s["reason"] in CORE_FAULTS),
        "core_p99_ms": None if p99 is None else round(p99 * 1000, 1),
        "oversell_krw": max(0, sold - scenario.total),
        "sold_krw": sold,
        "bookings": int(core["bookings"]),
        "inversions": kendall_distance(arrival, service),
        "sale_inversions": kendall_distance(arrival, sale),
        "let_in_then_sold_out": sum(1 for o in outcomes if o["result"] == "sold_out")
        + admitted_told_soldout,
        "admitted_told_soldout": admitted_told_soldout,
        "max_wait_s": round(max(waits), 2) if waits else None,
        "told_soldout": sum(1 for o in outcomes if o["told_soldout"]),
        "door_waits": sum(int(o.get("door_waits", 0)) for o in outcomes),
        "rate_changes": rate_changes(audit) if audit is not None else 0,
        "gate_errors": gate_errors,
        "unconfirmed": int(core.get("confirm_failures", 0)) + int(core.get("confirming", 0)),
        "gate_errors_by": dict(sorted(crowd.get("gate_5xx_by", {}).items())),
        "pass_refusals": sum(int(o.get("pass_refusals", 0)) for o in outcomes),
        "claim_waits": sum(int(o.get("claim_waits", 0)) for o in outcomes),
        "results": dict(sorted(results.items())),
        "max_wait_by_result_s": dict(sorted(max_wait_by_result.items())),
        "core_answers": dict(sorted(reasons.items())),
        "core_requests": len(served),
        "core_peak_arrivals_per_s": max((r["arrivals"] for r in seconds), default=0),
        "core_max_sessions": core["max_busy"],
        "core_max_queue": core["max_queue"],
        # The crowd's own bound: arrivals it started (clicks) over this long, and how many
        # over a second after their arrival time (a busy machine, or `live` under way).
        "arrivals_span_s": crowd.get("arrivals_span_s"),
        "late_starts": crowd.get("late", 0),
        "crowd_workers": crowd.get("workers", 1),
        "crowd_live": crowd.get("live"),
        # CPU seconds of the crowd's processes and of the core's, for the whole row
        "crowd_cpu_s": crowd.get("cpu_s"),
        "crowd_gate_requests": crowd.get("gate_requests"),
        "core_cpu_s": core.get("cpu_s"),
        "bureau_changes": [[round(t - t0, 2), ms] for t, ms in core["bureau_changes"]],
        "per_second": seconds,
        "wait_by_arrival": _wait_by_arrival(outcomes, with_gate),
    }


def add_slowdown(
    scenario: Scenario,
    row: dict[str, Any],
    crowd: dict[str, Any],
    core: dict[str, Any],
    audit: Sequence[dict[str, Any]] | None,
) -> dict[str, Any]:
    """A slowdown's figures on the row (gate/demo/slowdown.py): the core's p99 against its
    target, the reaction time; with the gate, the controller's rate changes and the
    customers admitted per second, from the audit log."""
    t0 = float(crowd["started_at"])
    if audit is not None:
        row["rate_log"] = slowdown.rate_log(audit, t0)
        row["admitted_per_second"] = slowdown.admitted_per_second(audit, t0)
    slow_at = slowdown.slowdown_at(row["bureau_changes"])
    if scenario.latency_target_ms is not None and slow_at is not None:
        row["slowdown"] = slowdown.latency_figures(
            core["served"],
            t0,
            row["per_second"],
            slow_at,
            scenario.latency_target_ms,
            scenario.reaction_s,
        )
    return row


def earliest_served_of(
    scenario: Scenario, ranked: Sequence[tuple[float, dict[str, Any]]]
) -> tuple[int, int]:
    """(N, booked among them): N is how many of the earliest arrivals the stock serves when
    served in arrival order (first come; partial fill takes what is left once it covers
    the minimum amount); the second figure is how many of those N booked."""
    ordered = [o for _a, o in sorted(ranked, key=lambda pair: pair[0])]
    if scenario.policy == "ballot":  # everyone may subscribe in the window
        return len(ordered), sum(1 for o in ordered if o["result"] == "booked")
    left, n = scenario.total, 0
    for o in ordered:
        if left < max(scenario.amount_min, 1):
            break
        left -= min(left, int(o["amount"]))
        n += 1
    return n, sum(1 for o in ordered[:n] if o["result"] == "booked")


def _wait_by_arrival(outcomes: Sequence[dict[str, Any]], with_gate: bool) -> list[list[float]]:
    """(arrival rank, wait s, 1 if booked) for at most 400 customers, for the plot."""
    ranked = sorted(
        (o for o in outcomes if o["done"] is not None),
        key=lambda o: o["seq"] if with_gate and o["seq"] is not None else o["sent"],
    )
    stride = max(1, len(ranked) // 400)
    return [
        [n, round(o["done"] - o["sent"], 3), 1 if o["result"] == "booked" else 0]
        for n, o in enumerate(ranked)
        if n % stride == 0
    ]


# --- the two runs ------------------------------------------------------------------------


def _crowd_spec(
    scenario: Scenario, customers: int, mode: str, core_url: str, **kw: Any
) -> CrowdSpec:
    return CrowdSpec(
        mode=mode,
        core_url=core_url,
        gate_url=kw.get("gate_url", ""),
        campaign=CAMPAIGN,
        customer_header=kw.get("customer_header", "X-Customer-Id"),
        customers=customers,
        spread_s=scenario.spread_s,
        amount_min=scenario.amount_min,
        amount_max=scenario.amount_max,
        step=scenario.step,
        retries=scenario.retries,
        # Straight at the core every customer has a connection (more than the core holds);
        # through the gate, 256 as `burst` uses, so the crowd does not starve the gate's loop
        # on a 2-core machine.
        connections=max(1024, scenario.max_active * 2) if mode == "direct" else 256,
        deadline_s=60 + 4 * customers / scenario.rate,
        seed=customers,
        # Customers under way at once (the rest start as these get their answers). Through
        # the gate each one waiting polls every 0.5 s or more: 20,000 at once asked ~40,000
        # polls/s of one process and starved the admitted (ipo-rush at 100,000: ~80
        # customers/s); 1,024 (4 per connection) keep the pool busy with useful requests.
        live=20_000 if mode == "direct" else 1024,
        ballot=scenario.policy == "ballot",
        # A crowd of tens of thousands or more is two processes (this machine's cores), each
        # with every other customer; a small one starts quicker as one.
        workers=CROWD_WORKERS if customers >= 10_000 else 1,
    )


def _core_params(scenario: Scenario, **kw: Any) -> CoreParams:
    return dataclasses.replace(
        scenario.core,
        # A ballot's core records every subscription (the ballot allots at close).
        total=scenario.total if scenario.policy != "ballot" else 10**15,
        min_amount=scenario.amount_min,
        step=scenario.step,
        **kw,
    )


def _bureau_events(scenario: Scenario, core_url: str) -> list[tuple[float, Callable[[], Any]]]:
    if scenario.bureau_change is None:
        return []
    at_s, factor = scenario.bureau_change
    slow = scenario.core.bureau_ms * factor
    return [(at_s, lambda: _bureau_control(core_url, slow))]


async def _verify_audit(
    admin: aiohttp.ClientSession, admin_url: str, gate_url: str, wait_s: float = 30.0
) -> dict[str, Any]:
    """The campaign's audit export, checked as `gate audit verify` does (strictly: every
    entry under a signed checkpoint), with the keys the gate publishes. Entries logged
    after the sealer's last round follow an export's checkpoints unsealed, so the export
    is taken again (the sealer runs every second while the log grows) until one is sealed
    to its end, for at most `wait_s`; then verify names what is not covered. Seal gaps the
    gate recorded (the failover scenario's Redis down for a second holds the last entries
    unsealed past the seal bound) are accepted and counted, as `--allow-seal-gaps` does;
    an unrecorded late seal or a stolen lease still fails."""
    from gate.audit.report import VerificationFailed
    from gate.audit.verify import verify_lines

    keys = await _get_json(admin, f"{gate_url}/.well-known/fairgate/keys")
    deadline = time.monotonic() + wait_s
    while True:
        async with admin.get(f"{admin_url}/admin/campaigns/{CAMPAIGN}/audit/export") as r:
            body = await r.read()
            status = r.status
        if status != 200:
            return {"verified": False, "problem": f"export answered {status}"}
        try:
            report = await asyncio.to_thread(
                verify_lines,
                body.splitlines(),
                keys,
                keys_from="published",
                allow_seal_gaps=True,
            )
        except VerificationFailed as exc:
            if exc.failure.kind == "unsealed" and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                continue
            return {"verified": False, "problem": f"VerificationFailed: {exc}"}
        except Exception as exc:  # the verifier names the first problem it found
            return {"verified": False, "problem": f"{type(exc).__name__}: {exc}"}
        break
    return {
        "verified": True,
        "entries": report.entries,
        "sealed": report.sealed,  # every entry: verify is strict
        "admitted": report.admitted,
        "claims": report.claims,
        "confirms": report.confirms,
        # rate changes replayed against the admissions after them (the bucket at each rate)
        "admin_updates": report.kinds.get("admin-update", 0),
        "seal_gaps": len(report.seal_gaps),  # recorded by the gate, accepted (above)
    }


def _redis_events(scenario: Scenario, redis: RedisServer) -> list[tuple[float, Callable[[], Any]]]:
    """kill -9 the gate's Redis, then start it again on its port from its AOF."""
    if scenario.redis_kill is None:
        return []
    at_s, down_s = scenario.redis_kill

    async def kill() -> None:
        redis.kill()

    async def restart() -> None:
        await asyncio.to_thread(redis.start)

    return [(at_s, kill), (at_s + down_s, restart)]


async def run_without(
    scenario: Scenario, customers: int, work: Path, on_progress: Callable[[int], None]
) -> dict[str, Any]:
    async with sim_core(_core_params(scenario), work) as core_url:
        spec = _crowd_spec(scenario, customers, "direct", core_url)
        crowd = await run_crowd(spec, work, on_progress, _bureau_events(scenario, core_url))
        async with aiohttp.ClientSession() as session:
            core = await _get_json(session, f"{core_url}/stats")
    if scenario.policy == "ballot":
        core["sold"] = ballot_allotted(scenario, core)
    row = analyse_row(scenario, False, crowd, core, None)
    return add_slowdown(scenario, row, crowd, core, None)


def _burst(scenario: Scenario) -> int:
    return max(1, round(scenario.rate / 10))


NGINX_ROW = "nginx limit_req"


async def run_nginx(
    scenario: Scenario,
    customers: int,
    work: Path,
    on_progress: Callable[[int], None],
    binary: str,
) -> dict[str, Any]:
    """The same arrivals at the core behind nginx `limit_req` (the gate's rate and burst)."""
    from gate.demo.baseline_nginx import nginx_limit_req

    async with sim_core(_core_params(scenario), work) as core_url:
        async with nginx_limit_req(
            binary, core_url, scenario.rate, _burst(scenario), work
        ) as front_url:
            spec = _crowd_spec(scenario, customers, "direct", front_url)
            crowd = await run_crowd(spec, work, on_progress, _bureau_events(scenario, core_url))
        async with aiohttp.ClientSession() as session:
            core = await _get_json(session, f"{core_url}/stats")
    if scenario.policy == "ballot":
        core["sold"] = ballot_allotted(scenario, core)
    row = analyse_row(scenario, False, crowd, core, None, label=NGINX_ROW)
    add_slowdown(scenario, row, crowd, core, None)
    row["limit_req"] = {"rate_per_s": max(1, round(scenario.rate)), "burst": _burst(scenario)}
    return row


# Customers a second that a crowd through the gate surely exceeds on 2 cores (ipo-rush
# --full did 174-330); a ballot's window lasts as long as its customers need at this pace.
SLOWEST_CROWD_PER_S = 100.0


def _window_s(scenario: Scenario, customers: int) -> float:
    """The campaign's window: an hour, or a ballot's subscription window (closed at once
    when the customers are done), long enough for `customers` sent through the gate at
    SLOWEST_CROWD_PER_S (was 600 s, then an hour: ipo-rush at 1,000,000 took 62 min, its
    window ended under the last customers and the demo's close was refused)."""
    if scenario.policy != "ballot":
        return 3600.0
    return max(3600.0, 10 * scenario.spread_s, customers / SLOWEST_CROWD_PER_S)


def ballot_allotted(scenario: Scenario, core: dict[str, Any]) -> int:
    """Without the gate: the ballot over the subscriptions the core recorded (one per
    customer, its first), with a fresh seed; the sum allotted."""
    from gate.ballot import Subscription, allocate

    subs: dict[str, Subscription] = {}
    for n, s in enumerate(core["served"]):
        if s["status"] == 200 and s["customer"] not in subs:
            digest = hashlib.sha256(s["customer"].encode()).digest()[:16]
            subs[s["customer"]] = Subscription(n + 1, digest, int(s["booked"]))
    result = allocate(scenario.total, scenario.step, list(subs.values()), secrets.token_bytes(32))
    return sum(result.values())


def _adaptive(scenario: Scenario, core_url: str) -> dict[str, Any]:
    """`admission.adaptive`: between rate_min and the scenario's rate, on the core's own
    health endpoint, polled every half second; over `health_target_ms`, a 5xx or no answer
    within a second is unhealthy. Unhealthy: the rate x 0.6, then a second of cool-down (the
    customers admitted at the old rate are still arriving); healthy: +10/s each half second,
    so a rate above the core's capacity builds a short queue before the probe sees it."""
    return {
        "rate_min": scenario.rate_min,
        "rate_max": scenario.rate,
        "mode": "auto",
        "interval_s": 0.5,
        "decrease": 0.6,
        "increase": 10.0,
        "cooldown_intervals": 2,
        "targets": {"latency_ms": scenario.health_target_ms, "error_ratio": 0.01},
        "sources": [{"kind": "http", "url": f"{core_url}/health", "timeout_ms": 1000}],
    }


def _campaign_spec(scenario: Scenario, core_url: str, customers: int) -> dict[str, Any]:
    """The campaign for `customers`; `core_url`: the simulated core, whose health an
    adaptive rate follows."""
    now = datetime.now(UTC)
    spec: dict[str, Any] = {
        "id": CAMPAIGN,
        "opens_at": (now - timedelta(seconds=1)).isoformat(),
        "closes_at": (now + timedelta(seconds=_window_s(scenario, customers))).isoformat(),
        "quota": {
            "unit": "KRW",
            "total": scenario.total,
            "min": scenario.amount_min,
            "max": scenario.amount_max,
            "step": scenario.step,
            "partial_fill": True,
        },
        "policy": scenario.policy,
        "admission": {
            "rate_per_s": scenario.rate,
            "burst": _burst(scenario),
            "max_active": scenario.max_active,
            "pass_ttl_s": 60,
            "reservation_ttl_s": 60,
            "overbook": 1.0,
        },
        "prequeue": {"window_s": 0, "shuffle": False},
    }
    if scenario.rate_min is not None:
        spec["admission"]["adaptive"] = _adaptive(scenario, core_url)
    return spec


BALLOT_STORE_S = 300.0  # the longest the demo waits for the ballot's stored allocation


async def _close_ballot(admin: aiohttp.ClientSession, admin_url: str, gate: Any) -> int:
    """Close the subscription window now; the allocation stored; the sum allotted."""
    from gate.room.keys import CampaignKeys

    await _admin_call(admin, f"{admin_url}/admin/campaigns/{CAMPAIGN}/close", {})
    # The admitter stores the allocation too; each call here that finds a chunk stored
    # first reads every subscription and allocates again (a few seconds at 1,000,000).
    deadline = time.monotonic() + BALLOT_STORE_S
    while not await gate.room.finalize_ballot(CAMPAIGN):
        if time.monotonic() > deadline:
            raise GateError("the ballot's allocation was not stored in time", code="demo")
        await asyncio.sleep(0.2)
    values = await gate.room.redis.hvals(CampaignKeys(CAMPAIGN).allocations)
    return sum(int(v) for v in values)


async def run_with(
    scenario: Scenario,
    customers: int,
    work: Path,
    redis: RedisServer,
    on_progress: Callable[[int], None],
) -> dict[str, Any]:
    from gate.audit.format import decode_entry
    from gate.config import default_config
    from gate.http.app import ADMIN_ADDRESS, CORE_ADDRESS, create_app, serving
    from gate.http.common import GATE_KEY
    from gate.service import store_for
    from gate.signing import generate_digest_document, generate_keys_document, write_keys

    keys_path = work / "keys.json"
    write_keys(keys_path, generate_keys_document())
    digest_path = work / "digest-keys.json"  # apart from the signing keys (issue 13)
    write_keys(digest_path, generate_digest_document())
    admin_token, core_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    config = default_config(
        redis_url=redis.url,
        data_dir=str(work),
        signing_keys=str(keys_path),
        digest_keys=str(digest_path),
        admin_tokens=f"demo:{admin_token}",
        core_tokens=f"core:{core_token}",
        admin_host="127.0.0.1",
        admin_port=0,
        core_host="127.0.0.1",
        core_port=0,
        cookie_secure=False,
        log_level="WARNING",
    )
    async with contextlib.AsyncExitStack() as stack:
        app = create_app(config)
        gate_url = await stack.enter_async_context(serving(app, config))
        gate = app[GATE_KEY]
        await gate.wait_ready()
        admin_host, admin_port = app[ADMIN_ADDRESS]
        core_host, core_port = app[CORE_ADDRESS]
        admin = await stack.enter_async_context(
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_token}"})
        )
        params = _core_params(
            scenario,
            auth_url=f"{gate_url}/gate/auth",
            campaign=CAMPAIGN,
            customer_header=config.customer_header,
            confirm_url=f"http://{core_host}:{core_port}",
            confirm_token=core_token,
        )
        core_url = await stack.enter_async_context(sim_core(params, work))
        await _admin_call(
            admin,
            f"http://{admin_host}:{admin_port}/admin/campaigns",
            _campaign_spec(scenario, core_url, customers),
        )
        spec = _crowd_spec(
            scenario,
            customers,
            "gate",
            core_url,
            gate_url=gate_url,
            customer_header=config.customer_header,
        )
        events = _bureau_events(scenario, core_url) + _redis_events(scenario, redis)
        crowd = await run_crowd(spec, work, on_progress, events)
        deadline = time.monotonic() + 70  # the core confirms each booking after answering
        while time.monotonic() < deadline:
            summary = await _get_json(admin, f"{core_url}/stats?summary=1")
            if not summary.get("confirming"):
                break
            await asyncio.sleep(0.1)
        core = await _get_json(admin, f"{core_url}/stats")
        if scenario.policy == "ballot":
            admin_url = f"http://{admin_host}:{admin_port}"
            core["sold"] = await _close_ballot(admin, admin_url, gate)
        # The whole log: the segment files the sealer moved the oldest entries to, then
        # Redis, which holds only the newest once a long run is sealed and trimmed (ipo-rush
        # at 100,000: the first half of the admissions was missing, counted as never let in).
        audit = [decode_entry(raw) async for _i, raw in store_for(gate, CAMPAIGN).entries()]
        shown = await _get_json(
            admin, f"http://{admin_host}:{admin_port}/admin/campaigns/{CAMPAIGN}"
        )
        verified = await _verify_audit(admin, f"http://{admin_host}:{admin_port}", gate_url)
    row = analyse_row(scenario, True, crowd, core, audit)
    row["gate_cpu_s"] = crowd["parent_cpu_s"]  # the gate serves from this process
    add_slowdown(scenario, row, crowd, core, audit)
    row["audit"] = verified
    # What a failover lost (the gate holds the campaign and says so); None: nothing.
    row["failover_hold"] = shown.get("failover_hold")
    row["redis_killed"] = scenario.redis_kill is not None
    return row


# --- output ------------------------------------------------------------------------------


def summary_text(report: dict[str, Any]) -> str:
    rows = table_rows(table_order(report))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        f'fairgate demo, scenario "{report["scenario"]}": {report["customers"]} customers; '
        f"{report['what']}",
        f"core: {report['core']['capacity']} sessions, queue {report['core']['queue_max']} "
        f"(timeout {report['core']['queue_timeout_s']:g} s), service ~"
        f"{report['core']['service_ms']:g} ms + bureau {report['core']['bureau_ms']:g} ms; "
        f"gate: {_rate_text(report)}, max_active {report['max_active']}",
        "",
    ]
    for n, r in enumerate(rows):
        lines.append(
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    lines.append("")
    for row in table_order(report):
        if "missing" in row:
            lines.append(f"  {row['row']}: not run ({row['missing']})")
            continue
        lines.append(
            f"  {row['row']}: customers {row['results']} (max wait "
            f"{row['max_wait_by_result_s']}); core answers {row['core_answers']}; "
            f"core peak {row['core_peak_arrivals_per_s']} arrivals/s, "
            f"{row['core_max_sessions']} sessions, queue {row['core_max_queue']}"
        )
        if row.get("late_starts"):
            lines.append(
                f"    the crowd started its customers over {row['arrivals_span_s']:g} s (not "
                f"the scenario's {report.get('spread_s', 0):g} s): {row['late_starts']} over "
                f"a second after their arrival time ({row.get('crowd_workers', 1)} crowd "
                f"processes, at most {row.get('crowd_live')} customers under way)"
            )
        if row.get("crowd_cpu_s") is not None:
            lines.append(f"    {cpu_text(row)}")
        if row.get("slowdown"):
            lines.append(f"    {slowdown.describe(row)}")
    gated = report["with_gate"]
    if gated["sale_inversions"]:
        lines.append(
            f"  with gate: {gated['sale_inversions']} pairs booked out of order: customers "
            "let in were told sold out at their claim while some let in after them booked"
        )
    if gated.get("claim_waits"):
        lines.append(
            f"  with gate: {gated['claim_waits']} claims asked again in a moment (customers "
            "admitted before them had not claimed yet and might take what was left)"
        )
    if gated["gate_errors"]:
        lines.append(
            f"  with gate: the gate answered 5xx {gated['gate_errors']} times "
            f"{gated['gate_errors_by']} and refused {gated['pass_refusals']} fresh passes "
            "(fail-closed while its event loop lagged; the customers retried)"
        )
    if gated.get("door_waits"):
        lines.append(
            f"  with gate: {gated['door_waits']} times a customer came to the core before "
            "their pass was valid (the door paces arrivals at the rate in force) and came "
            "back when told"
        )
    audit = gated["audit"]
    if audit["verified"]:
        gaps = (
            f"; {audit['seal_gaps']} seal gaps the gate recorded (entries sealed after the "
            "seal bound while its event loop ran late), accepted as --allow-seal-gaps does"
            if audit.get("seal_gaps")
            else ""
        )
        lines.append(
            f"  with gate: audit export verified: {audit['entries']} entries, "
            f"{audit['admitted']} admitted, {audit['claims']} claims, {audit['confirms']} "
            f"confirmations, {audit['admin_updates']} rate changes (admissions replayed at "
            f"the logged rates){gaps}"
        )
    else:
        lines.append(f"  with gate: audit export FAILED to verify: {audit['problem']}")
    lines.append(
        "  incident without the gate: "
        + ("yes" if report["incident_without_gate"] else "NOT reproduced")
    )
    failed = [name for name, ok in report["checks"].items() if not ok]
    lines += ["", f"result {'OK' if report['ok'] else 'FAILED'}"]
    lines += [f"  failed: {name}" for name in failed]
    return "\n".join(lines)


def cpu_text(row: dict[str, Any]) -> str:
    """What the row's processes cost in CPU: the crowd's (the load generator's own share of
    the machine), the core's and, with the gate, the gate's (while its customers ran)."""
    customers = max(1, int(row["customers"]))
    parts = [
        f"crowd {row['crowd_cpu_s']:g} s ({row['crowd_cpu_s'] / customers * 1e6:.0f} µs a customer)"
    ]
    if row.get("core_cpu_s") is not None:
        parts.append(f"core {row['core_cpu_s']:g} s")
    if row.get("gate_cpu_s") is not None:
        parts.append(
            f"gate {row['gate_cpu_s']:g} s ({row['gate_cpu_s'] / customers * 1e6:.0f} µs a "
            "customer)"
        )
    if row.get("crowd_gate_requests"):
        parts.append(
            f"{row['crowd_gate_requests'] / customers:.1f} gate requests a customer (and the "
            "core's pass check each)"
        )
    return "CPU: " + ", ".join(parts)


def _rate_text(report: dict[str, Any]) -> str:
    adaptive = report.get("adaptive")
    if not adaptive:
        return f"{report['rate']:g}/s"
    return (
        f"{adaptive['rate_min']:g}-{adaptive['rate_max']:g}/s following the core's GET /health "
        f"(unhealthy over {adaptive['targets']['latency_ms']:g} ms)"
    )


def _progress() -> Any:
    """A rich progress bar on a terminal; None (plain lines) otherwise."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def _progress_callback(progress: Any, label: str, count: int) -> Callable[[int], None]:
    """Starts a bar for this run (or prints one line when there is no terminal)."""
    if progress is None:
        print(f"{label}, {count} customers...", file=sys.stderr, flush=True)
        return lambda _done: None
    progress.start()
    task = progress.add_task(label, total=count)
    return lambda done: progress.update(task, completed=done)


def compare(
    scenario: Scenario,
    count: int,
    work: Path,
    progress: Any = None,
    baseline: bool = True,
) -> dict[str, Any]:
    """Run the scenario without the gate, behind nginx limit_req (`baseline`; when nginx is
    installed), then with the gate; the report (no output written)."""
    from gate.demo.baseline_nginx import nginx_binary

    started = time.time()
    rows: dict[str, dict[str, Any]] = {}
    nginx = nginx_binary() if baseline else None
    labels = ["without gate", *([NGINX_ROW] if nginx else []), "with gate"]
    for label in labels:
        report_progress = _progress_callback(progress, f"{scenario.name}: {label}", count)
        try:
            if label == "without gate":
                rows[label] = asyncio.run(run_without(scenario, count, work, report_progress))
                continue
            if label == NGINX_ROW:
                assert nginx is not None
                rows[label] = asyncio.run(run_nginx(scenario, count, work, report_progress, nginx))
                continue
            (work / "redis").mkdir(exist_ok=True)
            redis = RedisServer(work / "redis")
            try:
                redis.start()
            except RuntimeError as exc:
                raise GateError(f"embedded Redis did not start: {exc}", code="redis") from None
            try:
                rows[label] = asyncio.run(run_with(scenario, count, work, redis, report_progress))
            finally:
                redis.stop()
        finally:
            if progress is not None:
                progress.stop()
    without, gated = rows["without gate"], rows["with gate"]
    report: dict[str, Any] = {
        "scenario": scenario.name,
        "what": scenario.what,
        "policy": scenario.policy,
        "customers": count,
        "total_krw": scenario.total,
        "rate": scenario.rate,
        "spread_s": scenario.spread_s,
        "max_active": scenario.max_active,
        "core": dataclasses.asdict(_core_params(scenario)),
        "bureau_change": scenario.bureau_change,
        "adaptive": _adaptive(scenario, "(the core)") if scenario.rate_min is not None else None,
        "without_gate": without,
        "with_gate": gated,
        "nginx_limit_req": rows.get(NGINX_ROW)
        or ({"row": NGINX_ROW, "missing": "nginx is not installed"} if baseline else None),
        "incident_without_gate": incident(without),
        "duration_s": round(time.time() - started, 1),
    }
    report["checks"] = {
        **row_checks(gated),
        "the audit export verifies (gate audit verify)": gated["audit"]["verified"] is True,
    }
    report["ok"] = all(report["checks"].values())
    return report


def incident(row: dict[str, Any]) -> bool:
    """The row shows what went wrong in the seed incident: core errors, oversell, unfair order,
    or (slow-bureau) the core's p99 over its target after the reaction time."""
    return bool(
        row["core_errors"] > 0
        or row["inversions"] > 0
        or row["oversell_krw"] > 0
        or not slowdown.held(row)
    )


def row_checks(row: dict[str, Any]) -> dict[str, bool]:
    """What the gate promises for a row; the same checks run on the row without the gate."""
    return {
        "0 core errors": row["core_errors"] == 0,
        "0 oversell": row["oversell_krw"] == 0,
        "0 order inversions": row["inversions"] == 0,
        # Booked out of order: a customer let in before another was told sold out (or got
        # nothing) while the later one booked: what a customer would dispute.
        "0 order inversions (booked)": row["sale_inversions"] == 0,
        "every booking confirmed at the gate": row["unconfirmed"] == 0,
        "nothing lost (no failover hold)": row.get("failover_hold") is None,
        "every customer got an answer (booked or sold out)": set(row["results"])
        <= {"booked", "sold_out", "told_soldout"},
        **slowdown.checks(row),
    }


def check_slowdown_sizes(scenario: Scenario, count: int) -> None:
    """A scenario judged after a slowdown needs a stream that lasts past the slowdown and
    the reaction time, and an adaptive rate's upper bound (`--rate`) above its lower one."""
    if scenario.rate_min is not None and scenario.rate < scenario.rate_min:
        raise GateError(
            f"rate: {scenario.rate:g} is the adaptive rate's upper bound in {scenario.name}; "
            f"it must be at least rate_min ({scenario.rate_min:g})",
            code="bad_rate",
        )
    if scenario.latency_target_ms is None or scenario.bureau_change is None:
        return
    lasts = scenario.bureau_change[0] + scenario.reaction_s
    if scenario.spread_s < lasts:
        per_s = count / scenario.spread_s
        raise GateError(
            f"customers: {count} arrive within {scenario.spread_s:g} s; {scenario.name} needs "
            f"its stream to last past the slowdown and the reaction time ({lasts:g} s): at "
            f"least {math.ceil(lasts * per_s)} customers",
            code="bad_customers",
        )


def run_scenario(
    name: str,
    customers: int | None,
    rate: float | None,
    full: bool,
    out: Path,
    baseline: bool = True,
) -> int:
    scenario = validate(name)
    count = customers if customers is not None else (
        scenario.full_customers if full else scenario.customers
    )  # fmt: skip
    if isinstance(count, bool) or not 1 <= count <= 1_000_000:
        raise GateError(f"customers: {count} must be between 1 and 1000000", code="bad_customers")
    scenario = sized(scenario, count, full)
    if rate is not None:
        if not 0 < rate <= 1_000_000:  # also refuses NaN
            raise GateError(f"rate: {rate} must be above 0 and at most 1e+06", code="bad_rate")
        scenario = dataclasses.replace(scenario, rate=rate)
    check_slowdown_sizes(scenario, count)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GateError(f"out: cannot create {out}: {exc.strerror}", code="bad_out") from None
    work = Path(tempfile.mkdtemp(prefix="scenario-", dir=out))
    try:
        report = compare(scenario, count, work, _progress(), baseline)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    html = write_html(report, out / f"{name}.html")
    print(summary_text(report))
    print()
    print(f"wrote {out / f'{name}.json'}, {html}")
    return 0 if report["ok"] else 1
