"""What the audit write adds to a join's Redis time: join.lua with and without it.

`python -m bench.auditcost` (or the `audit cost` part of `python -m bench.run`).

The bar (issue 5): the audit write adds at most 30% to the Redis time of a join, measured
in one run against the same script without it. The variant is generated here, never
shipped: the rendered text of join.lua less its audit write, i.e. the line that appends
the batch's `join` entry and the `audit_n` counter in the HSET that stores the batch's
last seq (everything else, the batch's `created` list included, stays), loaded with
SCRIPT LOAD next to the real script; it is checked to write no entry. Both run on the
same private redis-server, each on its own campaign of the same spec, through
`redis-benchmark` with fixed-width random digests as in bench/luacost.py (a prefix per run
+ 12 random digits: 16 bytes, nearly always new, so nearly every digest creates a ticket;
the created count is shown), for batches of 1 and 100 digests per call. Many short rounds alternate
which variant goes first, so drift (the hash growing, the machine's other work) falls on
both; each round gives a ratio, and the median ratio is reported.

Three measures of Redis time per call, each with and without the audit write:
- cpu: `usec_per_call` of EVALSHA in INFO commandstats (reset before each run): the time
  inside the script. It is wall-clock time, so on a busy machine it also counts the time
  Redis waited for a core mid-script.
- proc: Redis's process CPU (used_cpu_user + used_cpu_sys of INFO cpu) over the run ÷ calls:
  the script plus what it costs around it (parsing, replies, feeding the AOF buffer with
  the script's effects, the event loop); only time actually spent on a core.
- wall: 1 / calls per second. With `appendfsync always` this is mostly the fsync, the same
  for both, so the default here is `appendfsync no` (the figure without the disk).
The bar is judged on cpu, or on proc where cpu exceeds proc (Redis lost its core
mid-script: the cpu figure is then mostly the machine's other work).

On a shared machine all three move with the neighbours' load. `--instructions` adds a
measure that does not: a second redis-server runs under valgrind's callgrind, and for
each round the instructions it executes (all of Redis: the script, parsing, replies, the
event loop, the AOF buffer) are counted for a run of calls of one variant, sent one at a
time by redis-py with digests that are all new. Instructions are not time (cache misses
and system calls are not in them), but their ratio barely moves with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.luacost import _redis_benchmark, benchmark_binary
from gate.campaign import parse_spec
from gate.redis_server import RedisServer, find_binary, free_port
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.room.scripts import Scripts, render

AUDIT_CALL = "{k = 'join', s = created}"  # the line that appends the batch's entry
AUDIT_COUNTER = ", 'audit_n', index"  # join.lua writes the entry index with its seq
LIMIT = 1.30  # the bar: at most 30% more Redis time per join
DEFAULT_REQUESTS = {1: 3000, 100: 100}


def join_without_audit() -> str:
    """join.lua as Redis runs it, less its audit write: the line that appends the `join`
    entry (and puts its index at the end of the reply), and the entry counter `audit_n`
    in the HSET that stores the batch's last seq."""
    lines = render("join").splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if AUDIT_CALL in line]
    if len(hits) != 1:
        raise RuntimeError(f"join.lua has {len(hits)} lines with {AUDIT_CALL!r}; update bench")
    del lines[hits[0]]
    source = "".join(lines)
    if source.count(AUDIT_COUNTER) != 1:
        raise RuntimeError(f"join.lua does not write {AUDIT_COUNTER!r} once; update bench")
    return source.replace(AUDIT_COUNTER, "")


def bench_spec(campaign: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": campaign,
        "opens_at": (now - timedelta(seconds=1)).isoformat(),
        "closes_at": (now + timedelta(hours=6)).isoformat(),
        "quota": {"unit": "item", "total": 10**12},
        "admission": {"rate_per_s": 1, "burst": 1, "max_active": 1000, "pass_ttl_s": 3600},
    }


async def _process_cpu_s(redis: Redis) -> float:
    cpu = await redis.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def measure_audit_cost(
    *,
    redis: Redis,
    port: int,
    binary: str,
    clients: int = 20,
    requests: dict[int, int] | None = None,
    rounds: int = 21,
    label: str = "",
) -> dict[str, Any]:
    """Per batch size: each variant's µs per call (cpu, proc, wall) and the ratios."""
    requests = requests or DEFAULT_REQUESTS
    label = label or uuid.uuid4().hex[:6]
    scripts = Scripts()
    await scripts.load_all(redis)
    room = Room(redis, scripts)
    shas = {
        "with": scripts["join"].sha,
        "without": str(await redis.script_load(join_without_audit())),
    }
    campaigns = {variant: f"audit-cost-{variant}-{label}" for variant in shas}
    for campaign in campaigns.values():
        await room.create(parse_spec(bench_spec(campaign)), "bench")
    join_keys = {
        variant: [
            CampaignKeys(campaign).meta,
            CampaignKeys(campaign).tickets,
            CampaignKeys(campaign).blocked,
            CampaignKeys(campaign).audit,
            CampaignKeys(campaign).prequeue,
            CampaignKeys(campaign).receipt_signatures,
            CampaignKeys(campaign).join_entries,
        ]
        for variant, campaign in campaigns.items()
    }

    async def state(variant: str) -> tuple[int, int]:
        k = CampaignKeys(campaigns[variant])
        return int(await redis.hget(k.meta, "seq") or 0), int(await redis.llen(k.audit))

    runs_started = 0

    async def run(variant: str, batch: int, calls: int) -> dict[str, Any]:
        nonlocal runs_started
        runs_started += 1
        # redis-benchmark seeds its generator with time ^ pid, which repeats from one run
        # to the next often enough to replay a whole run's digests: a prefix per run keeps
        # them new (4 + 12 digits of __rand_int__ = the 16 bytes join.lua demands).
        digest = f"r{runs_started:03d}__rand_int__"
        keys = join_keys[variant]
        # ARGV: no pre-queue seed, no receipt records carried, then the digests
        digests = [digest] * batch
        command = ["EVALSHA", shas[variant], str(len(keys)), *keys, "", "0", *digests]
        seq0, log0 = await state(variant)
        await redis.config_resetstat()
        cpu0 = await _process_cpu_s(redis)
        rps = await _redis_benchmark(binary, port, calls, clients, command)
        cpu1 = await _process_cpu_s(redis)
        stats = await redis.info("commandstats")
        seq1, log1 = await state(variant)
        entry = stats.get("cmdstat_evalsha")
        return {
            "cpu_us": float(entry["usec_per_call"]) if isinstance(entry, dict) else None,
            "calls_counted": int(entry["calls"]) if isinstance(entry, dict) else None,
            "proc_us": (cpu1 - cpu0) * 1e6 / calls,
            "wall_us": 1e6 / rps,
            "created": seq1 - seq0,
            "attempted": calls * batch,
            "audit_entries": log1 - log0,
        }

    results: dict[str, Any] = {
        "clients": clients,
        "rounds": rounds,
        "limit": LIMIT,
        "stripped": [AUDIT_CALL, AUDIT_COUNTER],
    }
    for batch, calls in sorted(requests.items()):
        runs: dict[str, list[dict[str, Any]]] = {"with": [], "without": []}
        for index in range(rounds):
            order = ("with", "without") if index % 2 == 0 else ("without", "with")
            for variant in order:
                print(f"audit cost: join x{batch}, {variant} audit, round {index + 1}", flush=True)
                runs[variant].append(await run(variant, batch, calls))
        if any(done["audit_entries"] for done in runs["without"]):
            raise RuntimeError("the variant without the audit write still wrote entries")
        row: dict[str, Any] = {"batch": batch, "calls": calls, "runs": runs}
        for measure in ("cpu_us", "proc_us", "wall_us"):
            pairs = [
                (w[measure], wo[measure])
                for w, wo in zip(runs["with"], runs["without"], strict=True)
                if w[measure] and wo[measure]
            ]
            row[measure] = {
                "with": statistics.median(w for w, _ in pairs) if pairs else None,
                "without": statistics.median(wo for _, wo in pairs) if pairs else None,
                "ratio": statistics.median(w / wo for w, wo in pairs) if pairs else None,
                "ratios": [w / wo for w, wo in pairs],
                # noise on a shared machine only ever adds time: the quietest run of each
                "min_ratio": min(w for w, _ in pairs) / min(wo for _, wo in pairs)
                if pairs
                else None,
            }
        # usec_per_call is the wall time inside the command: when it exceeds all the CPU the
        # process used, Redis was off its core mid-script (a busy machine), so judge on the
        # process CPU instead, which only counts time actually spent running.
        cpu, proc = row["cpu_us"], row["proc_us"]
        contended = any(
            cpu[variant] is None or proc[variant] is None or cpu[variant] > proc[variant]
            for variant in ("with", "without")
        )
        row["judged_on"] = "proc" if contended else "cpu"
        ratio = row[f"{row['judged_on']}_us"]["ratio"]
        row["ratio"] = ratio
        row["within_limit"] = bool(ratio and ratio <= LIMIT)
        results[f"join_{batch}"] = row
    return results


class Callgrind:
    """A redis-server under valgrind's callgrind, with its counters zeroed and read on demand."""

    def __init__(self, work: Path, valgrind: str, control: str, redis_binary: str):
        self.work, self.control = work, control
        self.port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        argv = [valgrind, "--tool=callgrind", f"--callgrind-out-file={work}/cg.out"]
        argv += [redis_binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "yes", "--appendfsync", "no", "--dir", str(work)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.process.poll() is None

    def zero(self) -> None:
        argv = [self.control, "--zero", str(self.process.pid)]
        subprocess.run(argv, check=True, capture_output=True)

    def read(self) -> int:
        """Instructions since the last zero (the dump file is read and removed)."""
        before = set(self.work.glob("cg.out.*"))
        argv = [self.control, "--dump", str(self.process.pid)]
        subprocess.run(argv, check=True, capture_output=True)
        (dump,) = set(self.work.glob("cg.out.*")) - before
        text = dump.read_text()
        os.unlink(dump)
        for line in text.splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {dump}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def measure_instructions(
    *,
    work: Path,
    requests: dict[int, int],
    rounds: int = 5,
    redis_binary: str | None = None,
) -> dict[str, Any]:
    """Instructions Redis executes per join call, with and without the audit write."""
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if valgrind is None or control is None:
        return {"skipped": "valgrind (callgrind) is not installed"}
    grind = await asyncio.to_thread(
        Callgrind, work, valgrind, control, redis_binary or find_binary()
    )
    redis = Redis(host="127.0.0.1", port=grind.port)
    serial = 0
    try:
        for _ in range(600):  # Redis under valgrind takes a few seconds to start
            try:
                await redis.ping()
                break
            except Exception:
                if not grind.alive():
                    raise RuntimeError("redis-server under valgrind exited") from None
                await asyncio.sleep(0.1)
        scripts = Scripts()
        await scripts.load_all(redis)
        room = Room(redis, scripts)
        shas = {
            "with": scripts["join"].sha,
            "without": str(await redis.script_load(join_without_audit())),
        }
        keys: dict[str, list[str]] = {}
        for variant in shas:
            k = CampaignKeys(f"audit-ir-{variant}")
            await room.create(parse_spec(bench_spec(k.campaign)), "bench")
            keys[variant] = [k.meta, k.tickets, k.blocked, k.audit, k.prequeue]

        async def segment(variant: str, batch: int, calls: int) -> float:
            nonlocal serial
            commands = []
            for _ in range(calls):
                commands.append([f"dig-{serial + i:012d}" for i in range(batch)])
                serial += batch
            await asyncio.to_thread(grind.zero)
            for digests in commands:
                await redis.evalsha(shas[variant], len(keys[variant]), *keys[variant], *digests)
            return await asyncio.to_thread(grind.read) / calls

        results: dict[str, Any] = {"rounds": rounds}
        for batch, calls in sorted(requests.items()):
            for variant in shas:  # warm-up: the first calls pay for allocations once
                await segment(variant, batch, max(10, calls // 4))
            runs: dict[str, list[float]] = {"with": [], "without": []}
            for index in range(rounds):
                order = ("with", "without") if index % 2 == 0 else ("without", "with")
                for variant in order:
                    print(f"audit cost: instructions, join x{batch}, {variant}", flush=True)
                    runs[variant].append(await segment(variant, batch, calls))
            ratios = [w / wo for w, wo in zip(runs["with"], runs["without"], strict=True)]
            results[f"join_{batch}"] = {
                "batch": batch,
                "calls": calls,
                "with": statistics.median(runs["with"]),
                "without": statistics.median(runs["without"]),
                "ratio": statistics.median(ratios),
                "ratios": ratios,
            }
        return results
    finally:
        await redis.aclose()
        await asyncio.to_thread(grind.stop)


def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| join batch | measure | µs/call with audit | µs/call without | with ÷ without "
        "| quietest ÷ quietest | per-round ratios | created / attempted |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, row in results.items():
        if not key.startswith("join_"):
            continue
        runs = row["runs"]["with"] + row["runs"]["without"]
        created = f"{sum(r['created'] for r in runs)}/{sum(r['attempted'] for r in runs)}"
        for measure, name in (("cpu_us", "cpu"), ("proc_us", "proc"), ("wall_us", "wall")):
            m = row[measure]
            ratios = ", ".join(f"{r:.2f}" for r in m["ratios"])
            lines.append(
                f"| ×{row['batch']} | {name} | {_f(m['with'])} | {_f(m['without'])} "
                f"| **{_f(m['ratio'])}** | {_f(m['min_ratio'])} | {ratios} | {created} |"
            )
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    verdict = ", ".join(
        f"×{row['batch']}: {_f(row['ratio'])} on {row['judged_on']}, "
        f"{'within' if row['within_limit'] else 'OVER'} the bar"
        for key, row in results.items()
        if key.startswith("join_")
    )
    parts = [
        "## Audit write cost (join.lua with ÷ without its audit line)",
        "",
        f"redis-server {results.get('redis_version', '?')}, appendfsync "
        f"{results.get('appendfsync', '?')}, redis-benchmark -c {results['clients']}, "
        f"{results['rounds']} rounds (order alternating), medians of the per-round ratios. "
        f"Bar: with ÷ without ≤ {results['limit']:.2f}, on cpu, or on proc where cpu "
        f"exceeds proc (Redis lost its core mid-script: a busy machine) ({verdict}).",
        "",
        *render_table(results),
        "",
    ]
    instructions = results.get("instructions")
    if instructions and "skipped" not in instructions:
        parts += [
            f"Instructions Redis executed per call, under callgrind ({instructions['rounds']} "
            "rounds, medians):",
            "",
            "| join batch | instructions with audit | without | with ÷ without "
            "| per-round ratios |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, row in instructions.items():
            if key.startswith("join_"):
                ratios = ", ".join(f"{r:.3f}" for r in row["ratios"])
                parts.append(
                    f"| ×{row['batch']} | {row['with']:,.0f} | {row['without']:,.0f} "
                    f"| **{row['ratio']:.3f}** | {ratios} |"
                )
        parts.append("")
    elif instructions:
        parts += [f"Instructions: skipped ({instructions['skipped']}).", ""]
    return "\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.auditcost",
        description="join.lua's Redis time with and without its audit write, same run",
    )
    parser.add_argument("--calls-1", type=int, default=DEFAULT_REQUESTS[1])
    parser.add_argument("--calls-100", type=int, default=DEFAULT_REQUESTS[100])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--appendfsync", choices=("always", "everysec", "no"), default="no")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count Redis's instructions per call under valgrind (about a minute)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 99 or args.calls_1 < 100 or args.calls_100 < 10:
        parser.error("--rounds 1..99, --calls-1 >= 100, --calls-100 >= 10")
    return args


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fairgate-auditcost-") as tmp:
        server = RedisServer(Path(tmp) / "redis", appendfsync=args.appendfsync)
        server.start()
        redis = Redis(host="127.0.0.1", port=server.port)
        try:
            binary = benchmark_binary(server.binary)
            if binary is None:
                raise SystemExit("no redis-benchmark next to redis-server or on PATH")
            results = await measure_audit_cost(
                redis=redis,
                port=server.port,
                binary=binary,
                clients=args.clients,
                requests={1: args.calls_1, 100: args.calls_100},
                rounds=args.rounds,
            )
            results["redis_version"] = server.version()
            results["appendfsync"] = args.appendfsync
            if args.instructions:
                results["instructions"] = await measure_instructions(
                    work=Path(tmp) / "callgrind",
                    requests={1: 1000, 100: 30},
                    redis_binary=server.binary,
                )
            return results
        finally:
            await redis.aclose()
            server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(main_async(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "auditcost.json").write_text(json.dumps(results, indent=2) + "\n")
    text = render_markdown(results)
    (args.out / "auditcost.md").write_text(text)
    print(text)
    ok = all(row["within_limit"] for key, row in results.items() if key.startswith("join_"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
