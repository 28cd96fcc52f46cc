"""The figures of a slowdown (`gate demo --scenario slow-bureau`): the core's latency against
its target once the bureau slowed, how long it took to get back under it, and the admission
rate as the audit log records it.

The core's target is a p99 latency (arrival at the core, past the proxy's pass check, to
its answer), stated with a reaction time R. Two figures judge it:

- the p99 of every request that arrived at the core from R seconds after the slowdown on
  (`p99_after_reaction_ms`) must be under the target;
- the reaction time (`reaction_s`): from the slowdown until the p99 per 1-s window (by
  answer time) is back under the target after it first went over, and stays under for
  SETTLED_S windows in a row: the start of that run; 0 when no window went over; None
  when it never got back. It must be at most R. A lone window over the target later on
  (a host that stalled the core's process for a moment) does not move it: it is counted
  (`windows_over_after_reaction`, the largest such p99 in `max_window_p99_after_ms`) and
  its requests are in the p99 above.

Rate changes are the audit log's `admin-update` entries of the actor `controller` that
change `rate` (old and new value, and the `why` the controller logged): the log an auditor
holds is the record of why people waited longer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

CONTROLLER = "controller"
SETTLED_S = 3  # windows under target in a row: the core is back


def text(value: Any) -> Any:
    """An audit entry's value for JSON: bytes as text, lists and maps all the way down."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [text(v) for v in value]
    if isinstance(value, dict):
        return {str(text(k)): text(v) for k, v in value.items()}
    return value


def slowdown_at(bureau_changes: Sequence[Sequence[float]]) -> float | None:
    """When the bureau first became slower than it started (s after the first arrival)."""
    if not bureau_changes:
        return None
    first = bureau_changes[0][1]
    return next((float(t) for t, ms in bureau_changes[1:] if ms > first), None)


def _p99_ms(latencies: Sequence[float]) -> float | None:
    if not latencies:
        return None
    ordered = sorted(latencies)
    return round(ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] * 1000, 1)


def latency_figures(
    served: Sequence[dict[str, Any]],
    t0: float,
    seconds: Sequence[dict[str, Any]],
    slow_at: float,
    target_ms: float,
    reaction_s: float,
) -> dict[str, Any]:
    """The core's p99 before the slowdown and from `reaction_s` after it, and the measured
    reaction time (module docstring); `seconds` are `sim_core.per_second` rows."""
    at_core = [s for s in served if not s.get("proxy")]  # past the proxy's pass check
    before = [s["finished"] - s["arrived"] for s in at_core if s["arrived"] - t0 < slow_at]
    after = [
        s["finished"] - s["arrived"] for s in at_core if s["arrived"] - t0 >= slow_at + reaction_s
    ]
    windows = [r for r in seconds if r["answered"] and r["t"] + 1 > slow_at]
    over = [r["p99_ms"] is not None and r["p99_ms"] > target_ms for r in windows]
    measured = _reaction(windows, over, slow_at)
    later = [
        r["p99_ms"] or 0.0
        for r in windows
        if r["t"] >= slow_at + reaction_s and r["p99_ms"] is not None
    ]
    return {
        "latency_target_ms": target_ms,
        "reaction_stated_s": reaction_s,
        "slowdown_at_s": round(slow_at, 2),
        "p99_before_ms": _p99_ms(before),
        "p99_after_reaction_ms": _p99_ms(after),
        "requests_after_reaction": len(after),
        "reaction_s": measured,
        "windows_over_target": sum(over),
        "windows_over_after_reaction": sum(1 for p in later if p > target_ms),
        "max_window_p99_after_ms": max(later, default=None),
    }


def _reaction(
    windows: Sequence[dict[str, Any]], over: Sequence[bool], slow_at: float
) -> float | None:
    """From the slowdown to the start of the first SETTLED_S windows in a row under target
    after the first window over it; 0 when none was over; None when never back."""
    if not any(over):
        return 0.0
    first = over.index(True)
    run = 0
    for n in range(first + 1, len(windows)):
        run = 0 if over[n] else run + 1
        if run == SETTLED_S:
            return round(max(0.0, float(windows[n - SETTLED_S + 1]["t"]) - slow_at), 1)
    return None


def rate_log(audit: Sequence[dict[str, Any]], t0: float) -> list[dict[str, Any]]:
    """The controller's rate changes: (s after the first arrival, old, new, why)."""
    out: list[dict[str, Any]] = []
    for entry in audit:
        if text(entry.get("k")) != "admin-update" or text(entry.get("a")) != CONTROLLER:
            continue
        names = text(entry.get("f") or [])
        names = names if isinstance(names, list) else [names]
        if "rate" not in names:
            continue
        at = names.index("rate")
        old, new = text(entry.get("o") or []), text(entry.get("n") or [])
        out.append(
            {
                "t": round(int(entry["t"]) / 1_000_000 - t0, 2),
                "old": float(old[at]) if at < len(old) and old[at] not in (None, False) else None,
                "new": float(new[at]),
                "why": text(entry.get("why")),
            }
        )
    return out


def admitted_per_second(audit: Sequence[dict[str, Any]], t0: float) -> list[list[float]]:
    """Customers admitted in each 1-s window from t0 (the audit log's `admit` entries)."""
    counts: dict[int, int] = {}
    for entry in audit:
        if text(entry.get("k")) != "admit":
            continue
        second = max(0, int(int(entry["t"]) / 1_000_000 - t0))
        counts[second] = counts.get(second, 0) + int(entry.get("n") or 0)
    last = max(counts, default=-1)
    return [[t, counts.get(t, 0)] for t in range(last + 1)]


def held(row: dict[str, Any]) -> bool:
    """The row kept the core under its target after the stated reaction time."""
    figures = row.get("slowdown")
    if not figures:
        return True
    p99, measured = figures["p99_after_reaction_ms"], figures["reaction_s"]
    return (
        p99 is not None
        and p99 <= figures["latency_target_ms"]
        and measured is not None
        and measured <= figures["reaction_stated_s"]
    )


def checks(row: dict[str, Any]) -> dict[str, bool]:
    """What slow-bureau's row with the gate must show; {} for a run without a slowdown."""
    figures = row.get("slowdown")
    if not figures:
        return {}
    target, stated = figures["latency_target_ms"], figures["reaction_stated_s"]
    slow_at = figures["slowdown_at_s"]
    changes = row.get("rate_log", [])
    decreases = [c for c in changes if c["t"] >= slow_at and c["new"] < (c["old"] or 0)]
    p99, measured = figures["p99_after_reaction_ms"], figures["reaction_s"]
    return {
        f"core p99 under {target:g} ms from {stated:g} s after the slowdown": p99 is not None
        and p99 <= target,
        f"reaction time at most {stated:g} s (p99 per second back under target)": measured
        is not None
        and measured <= stated,
        "the rate followed the core (the controller lowered it after the slowdown, "
        "each change in the audit log)": bool(decreases),
    }


def describe(row: dict[str, Any]) -> str:
    """One line for the summary: the slowdown's figures and the rate changes."""
    f = row["slowdown"]
    reaction = "not back under target" if f["reaction_s"] is None else f"{f['reaction_s']:g} s"
    line = (
        f"bureau slower at {f['slowdown_at_s']:g} s: core p99 {f['p99_before_ms']} ms before, "
        f"{f['p99_after_reaction_ms']} ms from {f['reaction_stated_s']:g} s after it (target "
        f"{f['latency_target_ms']:g} ms; {f['requests_after_reaction']} requests); reaction "
        f"time {reaction} (stated {f['reaction_stated_s']:g} s)"
    )
    if f.get("windows_over_after_reaction"):
        line += (
            f"; {f['windows_over_after_reaction']} later 1-s window(s) over target (max "
            f"{f['max_window_p99_after_ms']} ms)"
        )
    changes = row.get("rate_log")
    if changes is not None:
        rates = [c["new"] for c in changes]
        line += f"; rate changes {len(changes)}" + (
            f" ({changes[0]['old']:.0f} -> {rates[-1]:.0f}/s, lowest {min(rates):.0f}/s)"
            if changes and changes[0]["old"] is not None
            else ""
        )
    return line
