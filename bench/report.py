"""Write a run's figures: the whole record as JSON, the ratios as a short Markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import admit_rate, edge, overload, redis_memory, verify_scale
from bench.auditcost import render_markdown as auditcost_markdown


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and abs(value) >= 1000):
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ratio(row: dict[str, Any], key: str, digits: int = 2) -> str:
    """The median ratio in bold, and its range over the repeats when there were several."""
    text = f"**{_num(row.get(key), digits)}**"
    spread = row.get(f"{key}_range")
    if spread and spread[0] != spread[1]:
        text += f" ({_num(spread[0], digits)}–{_num(spread[1], digits)})"
    return text


def _conditions(cond: dict[str, Any]) -> list[str]:
    return [
        f"- {cond['started_at']}, {cond['cores']} cores ({cond['machine']}, {cond['system']}), "
        f"Python {cond['python']}, aiohttp {cond['aiohttp']}, uvloop {cond['uvloop']}",
        f"- Redis {cond['redis_server']} (appendfsync {cond['redis_appendfsync']}, data on "
        f"{cond['redis_data_fs']}), gate and hello-world with {cond['workers']} workers",
        f"- closed loop: {cond['closed_loop_tool']}, {cond['connections']} connections, "
        f"{cond['wrk_threads']} threads; open loop: {cond['generator_procs']} generator "
        f"processes, rate {cond['open_loop_rate']}; {cond['duration_s']} s per measurement "
        f"after {cond['warmup_s']} s warm-up, {cond['repeat']} repeat(s), order alternating",
        f"- load average {_loadavg(cond['loadavg_start'])} at start, "
        f"{_loadavg(cond.get('loadavg_end'))} at end; {cond.get('elapsed_s', '?')} s in all"
        f"{' (--quick)' if cond.get('quick') else ''}",
    ]


def _loadavg(values: Any) -> str:
    if not values:
        return "?"
    return "/".join(f"{v:.2f}" for v in values)


def _http_table(passes: dict[str, Any]) -> list[str]:
    lines = [
        "| workers | path | gate req/s | hello req/s | gate/hello | open-loop rate "
        "| p50 gate / hello ms | p50 gate/hello | p99 gate / hello ms | p99 gate/hello "
        "| errors gate/hello | gen lag p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in passes.values():
        workers = result["workers"]
        for path in ("poll", "auth", "join"):
            row = result.get(path)
            if row is None:
                continue
            errors = f"{row['errors']['gate']}/{row['errors']['hello']}"
            p50 = p99 = lag = "–"
            p50_ratio = p99_ratio = "–"
            if "open_runs" in row:
                p50 = f"{_num(row['gate_p50_ms'])} / {_num(row['hello_p50_ms'])}"
                p99 = f"{_num(row['gate_p99_ms'])} / {_num(row['hello_p99_ms'])}"
                p50_ratio, p99_ratio = _ratio(row, "p50_ratio"), _ratio(row, "p99_ratio")
                errors += f", open {row['open_errors']['gate']}/{row['open_errors']['hello']}"
                lag = _num(row.get("generator_lag_p99_ms_max"))
            lines.append(
                f"| {workers} | {path} | {_num(row['gate_rps'])} | {_num(row['hello_rps'])} "
                f"| {_ratio(row, 'throughput_ratio', 3)} | {_num(row.get('open_rate'))} "
                f"| {p50} | {p50_ratio} | {p99} | {p99_ratio} | {errors} | {lag} |"
            )
    return lines


def _metrics_cost_table(passes: dict[str, Any]) -> list[str]:
    """The poll with metrics recorded ÷ the same gate with `metrics = false`."""
    lines = [
        "| workers | poll, metrics on req/s | metrics off req/s | throughput on/off "
        "| CPU per request off/on |",
        "| --- | --- | --- | --- | --- |",
    ]
    for result in passes.values():
        row = result.get("poll_metrics")
        if row is None:
            continue
        lines.append(
            f"| {result['workers']} | {_num(row['gate_rps'])} | {_num(row['hello_rps'])} "
            f"| {_ratio(row, 'throughput_ratio', 3)} | {_ratio(row, 'cpu_ratio', 3)} |"
        )
    return lines


def _batch_table(passes: dict[str, Any]) -> list[str]:
    lines = [
        "| workers | load | joins answered 2xx | tickets created | join audit entries "
        "| **mean batch** |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for result in passes.values():
        join = result.get("join", {})
        for key, label in (("batching_closed", "closed loop"), ("batching_open", "open loop")):
            b = join.get(key)
            if b is None:
                continue
            if key == "batching_open":
                label += f" {_num(join.get('open_rate'))}/s"
            lines.append(
                f"| {result['workers']} | {label} | {_num(b['joins_answered_2xx'])} "
                f"| {_num(b['tickets_created'])} | {_num(b['join_audit_entries'])} "
                f"| **{_num(b['mean_batch'])}** |"
            )
    return lines


def _scale_table(scale: dict[str, Any]) -> list[str]:
    if not scale:
        return []
    many = scale["workers"]
    lines = [
        f"| path | gate/hello, 1 worker | gate/hello, {many} workers | gate speed-up "
        f"| hello speed-up | **gate speed-up / hello speed-up** |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for path in ("poll", "join"):
        row = scale[path]
        lines.append(
            f"| {path} | {_num(row['gate_vs_hello_workers_1'], 3)} "
            f"| {_num(row['gate_vs_hello_workers_n'], 3)} | {_num(row['gate_speedup'])} "
            f"| {_num(row['hello_speedup'])} | **{_num(row['speedup_vs_hello_speedup'])}** |"
        )
    return lines


def _lua_table(lua: dict[str, Any]) -> list[str]:
    if "skipped" in lua:
        return [f"skipped: {lua['skipped']}"]
    lines = [
        "| appendfsync | basis | HSET µs/call | join ×1: HSETs per customer "
        "| join ×100: HSETs per customer | admit idle: HSETs per call "
        "| admit busy: HSETs per call (admitted/call) | created / attempted |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, row in lua.items():
        if not key.startswith("appendfsync_"):
            continue
        j1, j100, idle, busy = row["join_1"], row["join_100"], row["admit_idle"], row["admit_busy"]
        created = (
            f"{_num(j1['created'])}/{_num(j1['attempted'])}, "
            f"{_num(j100['created'])}/{_num(j100['attempted'])}"
        )
        for basis, field, hset_field in (
            ("wall", "hsets", "us_per_call"),
            ("CPU", "cpu_hsets", "cpu_us_per_call"),
        ):
            lines.append(
                f"| {key.split('_', 1)[1]} | {basis} | {_num(row['hset'][hset_field])} "
                f"| **{_num(j1[field])}** | **{_num(j100[field])}** | **{_num(idle[field])}** "
                f"| **{_num(busy[field])}** ({_num(busy['mean_admitted_per_call'])}) "
                f"| {created} |"
            )
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    cond = results["conditions"]
    parts = [
        "# fairgate benchmark",
        "",
        "Each ratio divides the gate's figure by a reference measured in this run on this "
        "machine (bench/README.md says how to read them); with --repeat, the median ratio "
        "and its range.",
        "",
        *_conditions(cond),
        "",
        "## HTTP paths: gate ÷ aiohttp hello-world",
        "",
        "Throughput: closed loop, higher is better (1.0 = as fast as hello-world). "
        "Latency: open loop at the same arrival rate for both, from the scheduled send time; "
        "lower is better (1.0 = as fast as hello-world).",
        "",
        *_http_table(results["passes"]),
        "",
        "## Metrics cost: the poll with metrics on ÷ off (`metrics = false`), same run",
        "",
        *_metrics_cost_table(results["passes"]),
        "",
        "## Join batching (tickets created ÷ join audit entries = customers per Redis call)",
        "",
        *_batch_table(results["passes"]),
        "",
    ]
    if results.get("failures"):
        parts += ["## Failed parts (not measured)", ""]
        parts += [f"- `{failure}`" for failure in results["failures"]]
        parts.append("")
    if results.get("scale_out"):
        parts += ["## Scale-out (closed-loop throughput)", "", *_scale_table(results["scale_out"])]
        parts.append("")
    if "lua" in results:
        parts += [
            "## Lua cost on Redis (redis-benchmark; 1 HSET of a new field = 1)",
            "",
            "wall: 1 / calls per second, fsync and client included; "
            "CPU: Redis's own µs per call (INFO commandstats).",
            "",
            *_lua_table(results["lua"]),
            "",
        ]
    if "audit_cost" in results:
        if "skipped" in results["audit_cost"]:
            parts += ["## Audit write cost", "", f"skipped: {results['audit_cost']['skipped']}"]
        else:
            parts.append(auditcost_markdown(results["audit_cost"]))
    if results.get("admit_rate", {}).get("rate") is not None:
        parts += [
            "",
            "## Admission rate (admitted/s ÷ configured) and the core's arrivals "
            "(busiest 1 s of /gate/auth successes ÷ (rate + burst), ≤ 1.0 by design)",
            "",
            admit_rate.table(results["admit_rate"]),
            "",
        ]
    if results.get("verify_scale", {}).get("runs"):
        parts += [
            "",
            "## `gate audit verify` at scale (verify ÷ a json.loads + SHA-256 pass over the "
            "same file; seconds per 100,000 entries; peak RSS)",
            "",
            verify_scale.table(results["verify_scale"]),
            "",
        ]
    if "edge" in results:
        parts += ["", edge.markdown(results["edge"]), ""]
    if "redis_memory" in results:
        parts += ["", redis_memory.table(results["redis_memory"]), ""]
    if "overload" in results:
        parts += ["", overload.table(results["overload"]), ""]
    return "\n".join(parts)


def write_reports(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    md_path = out / "results.md"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    md_path.write_text(render_markdown(results))
    return json_path, md_path
