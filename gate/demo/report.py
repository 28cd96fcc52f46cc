"""The demo's figures: computed from the audit log and what customers and the core saw.

Admission figures come from the audit log (Redis time of each `join` and `admit` entry),
not from when customers happened to poll, so the measured rate is the one the gate
enforced. Output: a plain-text summary, `report.json`, `report.md`, and `admission.png`
when matplotlib is installed.
"""

from __future__ import annotations

import csv
import importlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gate.demo.core_bank import CoreBank
from gate.demo.customers import CrowdResult, CustomerRecord


@dataclass(frozen=True)
class RunInfo:
    scenario: str
    customers: int
    campaign: str
    rate: float
    burst: int
    max_active: int
    pass_ttl_s: int
    poll_scale: float
    join_spread_s: float
    redis_version: str
    redis_binary: str
    started_at: float  # wall-clock time of the burst's first join
    duration_s: float


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def peak_window(events: Sequence[tuple[float, int]], window_s: float = 1.0) -> int:
    """The largest total weight of events inside any half-open window [t, t + window_s)."""
    ordered = sorted(events)
    best = total = 0
    tail = 0
    for head in range(len(ordered)):
        total += ordered[head][1]
        while ordered[tail][0] <= ordered[head][0] - window_s:
            total -= ordered[tail][1]
            tail += 1
        best = max(best, total)
    return best


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def analyse(
    info: RunInfo,
    crowd: CrowdResult,
    audit: Sequence[dict[str, Any]],
    audit_entries: int,
    core: CoreBank,
) -> dict[str, Any]:
    """Every figure of the run, as a JSON-ready dict (it is what report.json holds)."""
    records, traffic, probes = crowd.records, crowd.traffic, crowd.probes
    t0 = info.started_at
    join_events: list[tuple[float, int]] = []
    admit_events: list[tuple[float, int]] = []
    joined_at: dict[int, float] = {}
    admitted_at: dict[int, float] = {}
    valid_from: dict[int, float] = {}  # a paced pass's not_before (issue 12)
    for entry in audit:
        kind = _text(entry.get("k"))
        t = int(entry["t"]) / 1_000_000
        if kind == "join":
            flat = entry.get("s") or []
            seqs = [int(flat[i]) for i in range(0, len(flat), 2)]
            join_events.append((t, len(seqs)))
            for seq in seqs:
                joined_at[seq] = t
        elif kind == "admit":
            admit_events.append((t, int(entry["n"])))
            skipped = {int(s) for s in entry.get("x") or []}
            for seq in range(int(entry["f"]), int(entry["l"]) + 1):
                if seq not in skipped:
                    admitted_at[seq] = t
        elif kind == "pass" and entry.get("nb") is not None:
            valid_from[int(entry["s"])] = max(t, int(entry["nb"]) / 1_000_000)

    seqs = [r.seq for r in records if r.seq is not None]
    tickets = len(set(seqs))
    retriers = [r for r in records if r.retries_join and r.seq is not None]
    retries_same = sum(
        1
        for r in retriers
        if r.retry_seqs and all(s == r.seq for s in r.retry_seqs) and sum(r.retry_created) == 1
    )
    admitted_customers = [r for r in records if r.admitted_at is not None]
    customer_waits = [
        r.admitted_at - r.join_started
        for r in admitted_customers
        if r.admitted_at is not None and r.join_started is not None
    ]
    join_latencies = [
        r.joined_at - r.join_started
        for r in records
        if r.joined_at is not None and r.join_started is not None
    ]
    answered = [r.joined_at for r in records if r.joined_at is not None]
    joins_within = max(answered) - t0 if answered else None
    queue_times = [admitted_at[s] - joined_at[s] for s in admitted_at if s in joined_at]
    admitted_total = sum(n for _, n in admit_events)
    sustained: float | None = None
    if len(admit_events) >= 2:
        ordered = sorted(admit_events)
        span = ordered[-1][0] - ordered[0][0]
        if span > 0:
            # The first call may spend the bucket's burst; after it, the sustained rate.
            sustained = (admitted_total - ordered[0][1]) / span
    # A customer counts as let in when their pass is valid (its not_before, issue 12):
    # the rate + burst bound is on that schedule; by admit call alone, a late call that
    # catches up on what accrued can put more than rate + burst in one 1-s window.
    peak_by_call = peak_window(admit_events)
    peak_admitted = peak_window([(valid_from.get(seq, at), 1) for seq, at in admitted_at.items()])
    ordered_admits = sorted(admit_events)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(ordered_admits)]
    core_events = [(t, 1) for t in core.served_at]
    core_peak = peak_window(core_events)
    positions = [r.first_position for r in records if r.first_position is not None]

    last = max([t for t, _ in join_events + admit_events + core_events] + [t0 + info.duration_s])
    seconds = max(1, math.ceil(last - t0))
    joins_s = [0] * seconds
    admitted_s = [0] * seconds
    core_s = [0] * seconds
    for events, bins in ((join_events, joins_s), (admit_events, admitted_s), (core_events, core_s)):
        for t, n in events:
            bins[min(seconds - 1, max(0, int(t - t0)))] += n
    series = []
    waiting = 0
    for second in range(seconds):
        waiting += joins_s[second] - admitted_s[second]
        series.append(
            {
                "t": second,
                "joins": joins_s[second],
                "admitted": admitted_s[second],
                "waiting": waiting,
                "core_served": core_s[second],
            }
        )
    timeline: list[tuple[float, int]] = sorted(
        [(t - t0, n) for t, n in join_events] + [(t - t0, -n) for t, n in admit_events]
    )

    # The core may see admitted customers in clumps (each notices its admission at its next
    # poll), but never more of them than the gate had admitted by then.
    ahead = 0
    admits = sorted(admit_events)
    cum_admitted = index = 0
    for served, t in enumerate(sorted(core.served_at), start=1):
        while index < len(admits) and admits[index][0] <= t:
            cum_admitted += admits[index][1]
            index += 1
        ahead = max(ahead, served - cum_admitted)
    errors = [r.error for r in records if r.error]
    refused_probes = sum(1 for _, status, expected in probes if status == expected)
    limit = info.rate + info.burst
    checks = {
        "every customer got one ticket": tickets == info.customers
        and sorted(seqs) == list(range(1, info.customers + 1)),
        "retried joins got the same seq": retries_same == len(retriers),
        "every customer admitted": len(admitted_customers) == info.customers,
        "peak admitted/s within rate + burst": peak_admitted <= limit,
        "core served every admitted customer": len(core.served_at) == info.customers,
        "core never saw more customers than were admitted": ahead == 0,
        "core refused requests without a valid pass": refused_probes == len(probes),
        "no 5xx responses": traffic.responses_5xx == 0 and core.auth_failures == 0,
    }
    return {
        "scenario": info.scenario,
        "campaign": info.campaign,
        "customers": info.customers,
        "redis": {
            "version": info.redis_version,
            "binary": info.redis_binary,
            "appendfsync": "always",
        },
        "config": {
            "rate_per_s": info.rate,
            "burst": info.burst,
            "max_active": info.max_active,
            "pass_ttl_s": info.pass_ttl_s,
            "poll_scale": info.poll_scale,
            "join_spread_s": info.join_spread_s,
        },
        "tickets_issued": tickets,
        "join_retries": {"customers": len(retriers), "same_seq": retries_same},
        "admitted": admitted_total,
        "customers_admitted": len(admitted_customers),
        "admitted_per_s": {
            "sustained": _round(sustained, 1),
            "peak_1s_window": peak_admitted,
            "peak_1s_window_by_admit_call": peak_by_call,
            "limit_rate_plus_burst": limit,
        },
        "admit_calls": {
            "what": "admit script calls that admitted someone (one audit entry each)",
            "count": len(admit_events),
            "mean_gap_ms": _round(sum(gaps) / len(gaps) * 1000, 1) if gaps else None,
            "max_gap_ms": _round(max(gaps) * 1000, 1) if gaps else None,
            "full_burst": sum(1 for _, n in admit_events if n >= info.burst),
        },
        "max_position": max(positions) if positions else None,
        "joins": {
            "answered_within_s": _round(joins_within),
            "latency_p50_s": _round(percentile(join_latencies, 50)),
            "latency_p95_s": _round(percentile(join_latencies, 95)),
        },
        "time_to_admit_s": {
            "what": "customer: join request sent -> saw state admitted (includes poll lag)",
            "p50": _round(percentile(customer_waits, 50)),
            "p95": _round(percentile(customer_waits, 95)),
            "max": _round(max(customer_waits) if customer_waits else None),
        },
        "queue_time_s": {
            "what": "gate: join -> admit entries in the audit log (Redis time)",
            "p50": _round(percentile(queue_times, 50)),
            "p95": _round(percentile(queue_times, 95)),
            "max": _round(max(queue_times) if queue_times else None),
        },
        "core": {
            "served": len(core.served_at),
            "peak_per_s": core_peak,
            "max_concurrency": core.max_in_flight,
            "refused": {str(k): v for k, v in sorted(core.refused.items())},
            "auth_failures": core.auth_failures,
            "refused_admitted_customers": sum(r.core_refusals for r in records),
            "most_ahead_of_admissions": ahead,
            "probes": [
                {"what": what, "status": status, "expected": expected}
                for what, status, expected in probes
            ],
        },
        "http": {
            "responses_5xx": traffic.responses_5xx + core.auth_failures,
            "by_status": {str(k): v for k, v in sorted(traffic.by_status.items())},
            "transport_errors": traffic.transport_errors,
            "errors_5xx": dict(sorted(traffic.errors_5xx.items())),
            "polls": sum(r.polls for r in records),
        },
        "audit_entries": audit_entries,
        "customer_errors": {"count": len(errors), "first": errors[:5]},
        "duration_s": round(info.duration_s, 2),
        "checks": checks,
        "ok": all(checks.values()),
        "series": series,
        "timeline": [[round(t, 4), n] for t, n in timeline],
    }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}{unit}"
    return f"{value}{unit}"


def _gate_process(figures: dict[str, Any] | None) -> str:
    if not figures:
        return "n/a"
    stale = figures["stale_samples"]
    return (
        f"event loop lag max {figures['max_event_loop_lag_ms']:.0f} ms; cache age max "
        f"{figures['max_cache_age_ms']:.0f} ms; "
        + (
            f"stale (failing closed) in {stale} of {figures['samples']} samples"
            if stale
            else "never stale"
        )
    )


def summary_rows(fig: dict[str, Any]) -> list[tuple[str, str]]:
    cfg, adm, core, joins = fig["config"], fig["admitted_per_s"], fig["core"], fig["joins"]
    tta, qt, calls = fig["time_to_admit_s"], fig["queue_time_s"], fig["admit_calls"]
    probes = core["probes"]
    refused = sum(1 for p in probes if p["status"] == p["expected"])
    statuses = ", ".join(str(p["status"]) for p in probes)
    rate = cfg["rate_per_s"]
    ahead = core["most_ahead_of_admissions"]
    refused_admitted = core["refused_admitted_customers"]
    return [
        ("Redis", f"{fig['redis']['version']} ({fig['redis']['binary']}), AOF appendfsync always"),
        ("customers joined", f"{fig['tickets_issued']} tickets issued for {fig['customers']}"),
        (
            "joins answered",
            f"all within {_fmt(joins['answered_within_s'])} s of the first; latency "
            f"p50/p95 {_fmt(joins['latency_p50_s'])} / {_fmt(joins['latency_p95_s'])} s",
        ),
        (
            "join retries",
            f"{fig['join_retries']['same_seq']}/{fig['join_retries']['customers']} "
            "retrying customers got the same seq (one ticket each)",
        ),
        ("configured rate / burst", f"{rate:g}/s, burst {cfg['burst']}"),
        ("admitted", f"{fig['admitted']} (customers who saw a pass: {fig['customers_admitted']})"),
        ("admitted/s sustained", _fmt(adm["sustained"])),
        (
            "admitted/s peak 1 s window",
            f"{adm['peak_1s_window']} by pass valid-from (limit rate + burst = "
            f"{adm['limit_rate_plus_burst']:g}); {adm.get('peak_1s_window_by_admit_call')} "
            "by admit call",
        ),
        (
            "admit calls",
            f"{calls['count']} admitted someone, one every {_fmt(calls['mean_gap_ms'])} ms on "
            f"average (max {_fmt(calls['max_gap_ms'])}); {calls['full_burst']} took a full "
            "burst",
        ),
        ("max position seen", _fmt(fig["max_position"])),
        (
            "time to admit p50/p95/max",
            f"{_fmt(tta['p50'])} / {_fmt(tta['p95'])} / {_fmt(tta['max'])} s "
            "(customer: join sent -> saw pass)",
        ),
        (
            "queue time p50/p95/max",
            f"{_fmt(qt['p50'])} / {_fmt(qt['p95'])} / {_fmt(qt['max'])} s (gate: join -> admit)",
        ),
        (
            "core bank served",
            f"{core['served']}; peak {core['peak_per_s']}/s vs configured {rate:g}/s; "
            f"max concurrency {core['max_concurrency']}",
        ),
        (
            "core bank vs admissions",
            "never saw more customers than the gate had admitted"
            if ahead == 0
            else f"ran {ahead} customers AHEAD of admissions",
        ),
        (
            "core bank refused",
            f"{refused}/{len(probes)} requests without a valid pass ({statuses})"
            + (
                f"; and {refused_admitted} passes of admitted customers while the gate "
                "could not prove its state fresh (they asked again)"
                if refused_admitted
                else ""
            ),
        ),
        (
            "5xx responses seen",
            str(fig["http"]["responses_5xx"])
            + "".join(f"; {count} x {what}" for what, count in fig["http"]["errors_5xx"].items()),
        ),
        ("gate process", _gate_process(fig.get("gate_process"))),
        ("status polls", str(fig["http"]["polls"])),
        ("audit log entries", str(fig["audit_entries"])),
        ("duration", f"{fig['duration_s']:.1f} s"),
        ("result", "OK" if fig["ok"] else "FAILED"),
    ]


def summary_text(fig: dict[str, Any]) -> str:
    cfg = fig["config"]
    lines = [
        f'fairgate demo, scenario "{fig["scenario"]}": {fig["customers"]} customers send their '
        f"join within ~{cfg['join_spread_s']:g} s; admission {cfg['rate_per_s']:g}/s",
        (
            f"(customers wait poll_after_ms x {cfg['poll_scale']:g} between polls, "
            "scaled down to keep the demo short)"
            if cfg["poll_scale"] < 1
            else "(customers wait between polls as long as poll_after_ms tells them)"
        ),
        "",
    ]
    rows = summary_rows(fig)
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name.ljust(width)}  {value}" for name, value in rows]
    failed = [name for name, ok in fig["checks"].items() if not ok]
    if failed:
        lines += ["", "failed checks:"] + [f"  - {name}" for name in failed]
        if fig["customer_errors"]["count"]:
            lines += [f"  customer error: {e}" for e in fig["customer_errors"]["first"]]
    return "\n".join(lines)


def summary_markdown(fig: dict[str, Any], plot: bool) -> str:
    lines = [
        f"# fairgate demo: {fig['scenario']}",
        "",
        f"{fig['customers']} simulated customers sent their join to campaign "
        f"`{fig['campaign']}` within about {fig['config']['join_spread_s']:g} s. "
        "The gate admitted them in seq order at "
        f"{fig['config']['rate_per_s']:g}/s (burst {fig['config']['burst']}); each admitted "
        "customer then called the simulated core bank once with its pass, and the core bank "
        "checked every request through the gate's `/gate/auth`, as nginx `auth_request` would.",
        "",
        "| figure | value |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {value} |" for name, value in summary_rows(fig)]
    lines += [
        "",
        "Reading it: admission figures come from the audit log (the Redis time of each "
        "`join` and `admit` entry), so they measure what the gate enforced, not when "
        "customers happened to poll. The core bank sees each admitted customer at that "
        "customer's next poll, so its own per-second count can bunch up above the rate "
        "for a moment; what the gate guarantees is that it never sees more customers than "
        "were admitted by then (the active cap bounds how many hold a pass at once). A "
        "5xx, or a pass refused right after it was issued, means the gate could not prove "
        "its view of Redis was fresh and failed closed; the gate-process row tells whether "
        "its event loop was starved of CPU at the time. The bucket holds at most `burst` "
        "tokens, so when the admit calls (every 50 ms when idle) come late on a busy "
        "machine, the tokens beyond a full burst are lost and the sustained rate falls "
        "below the configured one: safe for the core, slower for the queue.",
    ]
    lines += ["", "## Checks", ""]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in fig["checks"].items()]
    lines += [
        "",
        "## Per second",
        "",
        "Seconds from the first join; joins and admissions by Redis time (audit log).",
        "",
        "| t (s) | joins | admitted | waiting | core served |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {row['t']} | {row['joins']} | {row['admitted']} | {row['waiting']} "
        f"| {row['core_served']} |"
        for row in fig["series"]
    ]
    if plot:
        lines += ["", "![admission](admission.png)"]
    return "\n".join(lines) + "\n"


def write_plot(fig: dict[str, Any], path: Path) -> bool:
    """admission.png when matplotlib is installed; False (and no file) when it is not."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    times, waiting, level = [0.0], [0], 0
    for t, n in fig["timeline"]:
        level += n
        times.append(t)
        waiting.append(level)
    top.step(times, waiting, where="post", color="tab:blue")
    top.set_ylabel("customers waiting")
    top.set_title(f"fairgate demo: {fig['customers']} customers, burst scenario")
    series = fig["series"]
    seconds = [row["t"] + 0.5 for row in series]
    rate = fig["config"]["rate_per_s"]
    bottom.bar(seconds, [row["admitted"] for row in series], width=0.9, label="admitted/s")
    bottom.plot(
        seconds,
        [row["core_served"] for row in series],
        "o-",
        color="tab:green",
        label="core bank served/s",
    )
    bottom.axhline(rate, color="tab:red", linestyle="--", label=f"configured rate {rate:g}/s")
    bottom.axhline(
        rate + fig["config"]["burst"], color="tab:red", linestyle=":", label="rate + burst"
    )
    highest = max([rate + fig["config"]["burst"]] + [row["core_served"] for row in series])
    bottom.set_ylim(0, highest * 1.45)
    bottom.set_xlabel("seconds since the first join")
    bottom.set_ylabel("per second")
    bottom.legend(loc="upper left", ncol=2, fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_outputs(fig: dict[str, Any], out: Path) -> list[Path]:
    written = []
    plot = write_plot(fig, out / "admission.png")
    if plot:
        written.append(out / "admission.png")
    (out / "report.json").write_text(json.dumps(fig, indent=2) + "\n")
    (out / "report.md").write_text(summary_markdown(fig, plot))
    written[:0] = [out / "report.json", out / "report.md"]
    return written


def write_customers_csv(records: Sequence[CustomerRecord], t0: float, path: Path) -> None:
    """One row per customer; times in seconds since the first join (ids left out)."""

    def rel(t: float | None) -> str:
        return "" if t is None else f"{t - t0:.4f}"

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "customer",
                "join_sent_s",
                "joined_s",
                "seq",
                "first_position",
                "first_state",
                "polls",
                "admitted_seen_s",
                "core_status",
                "core_at_s",
                "retried_join",
                "retry_seqs",
                "error",
            ]
        )
        for r in records:
            writer.writerow(
                [
                    r.index,
                    rel(r.join_started),
                    rel(r.joined_at),
                    r.seq,
                    r.first_position,
                    r.first_state,
                    r.polls,
                    rel(r.admitted_at),
                    r.core_status,
                    rel(r.core_at),
                    int(r.retries_join),
                    " ".join(map(str, r.retry_seqs)),
                    r.error or "",
                ]
            )
