"""`gate audit verify` at scale: time and memory on a real export of N entries.

`python -m bench.verify_scale [--entries N ...]` (also a section of `make bench`: 100,000
entries with `--quick`, else 1,000,000; `--no-verify-scale` skips it).

**Building the export** (timed apart, not the figure). One private redis-server (a free
port, `appendfsync no`: the disk is not what is measured here) and a campaign created
through the real `Room` (gate.room), first come, counted in KRW, that never sells out.
Customers come in rounds of `round_customers`; every entry is written by the real Lua
scripts through `Room`'s own calls (keys, arguments, reply parsing), whose round trips
are shared in pipelines (`PipelinedScripts`):

- joins in batches of `join_batch` digests (one `join` entry per batch, as the gate's
  batcher makes them under load);
- `admit` calls until the round is admitted (one `admit` entry per call);
- each admitted customer's pass is read once (one `pass` entry each);
- `claim_share` of them (all, by default) claim 1,000,000-10,000,000 KRW in steps of
  10,000 (one `claim` each); the rest keep their pass unused (passes last a day here, so
  none expires while the log is built, however long that takes);
- the core confirms 85% of the reservations and releases the rest (one entry each).

So about 3.1 entries per customer. After each round the real sealer (gate.audit.sealer)
seals everything new (`step(force=True)` until it has nothing to publish: a checkpoint
per round, at most 20,000 entries each), and moves entries beyond the newest 100,000 to
segment files as `gate serve` does. When the log is one entry short of N, single joins
having filled the last round's gap, the campaign is closed (`admin-close`), sealed to the
last entry, and written with `gate.audit.export.export_chunks` (what `gate audit export`
streams) to a file, with the public keys document beside it. Redis is stopped before
anything is measured.

**Measuring** (`gate audit verify FILE --keys KEYS`, the default mode, as a subprocess of
`sys.executable -m gate`): wall time, CPU time (user + system, wait4's rusage) and peak
RSS (VmHWM, polled from /proc) of that one child; exit code 0 and a first line saying OK,
else a failure. The reference, run the same way in turns with it (the order
alternating, `repeat` times each): a plain Python pass over the same file that
`json.loads` every line and SHA-256s it. Reported: verify ÷ reference (wall and CPU,
medians), verify seconds per 100,000 entries, peak RSS in MiB and bytes per entry, with
the run's conditions (cores, load average before and after, Python, Redis, the commit).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from gate.audit.export import export_chunks
from gate.audit.sealer import Sealer
from gate.audit.store import AuditStore
from gate.campaign import parse_spec
from gate.redis_client import connect
from gate.redis_server import RedisServer
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.room.scripts import Scripts
from gate.signing import SigningKeys, generate_keys_document, parse_keys

CAMPAIGN = "verify-scale"
ACTOR = "ops"
CORE = "core"
MIN, MAX, STEP = 1_000_000, 10_000_000, 10_000
KEEP_IN_REDIS = 100_000  # gate serve's default audit_keep_in_redis
REFERENCE = """\
import hashlib, json, sys
n = 0
with open(sys.argv[1], "rb") as fh:
    for line in fh:
        json.loads(line)
        hashlib.sha256(line).digest()
        n += 1
print(f"lines: {n}")
"""


@dataclass(frozen=True)
class Plan:
    entries: tuple[int, ...]
    join_batch: int = 10
    round_customers: int = 2000
    concurrency: int = 2000
    repeat: int = 3
    claim_share: float = 1.0
    confirm_share: float = 0.85
    quick: bool = False


def plan(
    quick: bool,
    entries: tuple[int, ...] | None = None,
    repeat: int | None = None,
    claim_share: float = 1.0,
) -> Plan:
    """--quick: 100,000 entries, verify and reference once each; else 1,000,000, three
    times each."""
    sizes = entries or ((100_000,) if quick else (1_000_000,))
    runs = repeat or (1 if quick else 3)
    return Plan(sizes, repeat=runs, claim_share=claim_share, quick=quick)


def mix(settings: Plan) -> str:
    return (
        f"joins of {settings.join_batch}, admit until admitted, a pass each, "
        f"{settings.claim_share:.0%} of them claim (the rest keep an unused pass), "
        f"{settings.confirm_share:.0%} of the claims confirmed, the rest released; rounds "
        f"of {settings.round_customers} customers, sealed after each"
    )


def campaign_spec() -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": CAMPAIGN,
        "opens_at": (now - timedelta(seconds=1)).isoformat(),
        "closes_at": (now + timedelta(days=1)).isoformat(),
        # never sold out: every claim is granted what it asks
        "quota": {
            "unit": "KRW",
            "total": str(10**15),
            "min": str(MIN),
            "max": str(MAX),
            "step": str(STEP),
            "partial_fill": True,
        },
        "admission": {
            "rate_per_s": 1_000_000,
            "burst": 1_000_000,
            "max_active": 10_000_000,
            # no pass expires while the log is built, however long that takes: the
            # customers holding one are the same in every run
            "pass_ttl_s": 86400,
            "reservation_ttl_s": 120,
        },
    }


class PipelinedScripts(Scripts):
    """Room's script calls sent in pipelines: the calls made while one pipeline is on its
    way go out together in the next (at most `max_batch` a pipeline), in the order they
    were made. Everything else is Room's own: the keys, the arguments, the reply parsing;
    only the round trips are shared, so that a Python process can write a million entries
    in minutes."""

    def __init__(self, max_batch: int = 1000) -> None:
        super().__init__()
        self.max_batch = max_batch
        self.pipelines = 0
        self._pending: list[tuple[Redis, str, list[Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def call(self, redis: Redis, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        command = [self[name].sha, len(keys), *keys, *args]
        self._pending.append((redis, name, command, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # let the calls made at the same moment join this one
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            redis = batch[0][0]
            if any(r is not redis for r, _, _, _ in batch):
                raise RuntimeError("PipelinedScripts serves one Redis client")
            pipe = redis.pipeline(transaction=False)
            for _, _, command, _ in batch:
                pipe.evalsha(*command)
            try:
                replies = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # the connection: every call of the batch fails
                for *_, future in batch:
                    future.set_exception(exc)
                continue
            self.pipelines += 1
            for (*_, future), reply in zip(batch, replies, strict=True):
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)


class Builder:
    """A real campaign of about `target` entries on `redis`, sealed and exported."""

    def __init__(self, redis: Redis, keys: SigningKeys, segments: Path, settings: Plan):
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.room = Room(redis, PipelinedScripts())
        self.sealer = Sealer(
            redis,
            self.room.scripts,
            keys,
            segments,
            interval_s=0.0,
            lease_ms=60_000,
            keep_in_redis=KEEP_IN_REDIS,
        )
        self.segments = segments
        self.rng = random.Random(13)
        self.digest_key = secrets.token_bytes(32)
        self.customers = 0
        self.counts: dict[str, int] = {}
        self.gate = asyncio.Semaphore(settings.concurrency)

    def _count(self, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n

    async def _bounded(self, calls: list[Any]) -> list[Any]:
        async def one(call: Any) -> Any:
            async with self.gate:
                return await call()

        return await asyncio.gather(*(one(call) for call in calls))

    def _digest(self, n: int) -> bytes:
        # what gate.tokens.customer_digest makes (an HMAC of the id, 16 bytes), under a
        # key of this run's own: the verifier never sees ids or the digest key
        message = f"{CAMPAIGN}\x00customer-{n}".encode()
        return hmac.new(self.digest_key, message, hashlib.sha256).digest()[:16]

    async def size(self) -> int:
        return int(await self.redis.hget(CampaignKeys(CAMPAIGN).meta, "audit_n") or 0)

    async def join(self, count: int, batch: int) -> list[tuple[int, bytes]]:
        """`count` new customers in batches of `batch`; their (seq, digest)."""
        digests = [self._digest(self.customers + i) for i in range(count)]
        self.customers += count
        batches = [digests[i : i + batch] for i in range(0, count, batch)]
        results = await self._bounded([lambda b=b: self.room.join(CAMPAIGN, b) for b in batches])
        joined: list[tuple[int, bytes]] = []
        for b, result in zip(batches, results, strict=True):
            if len(result.tickets) != len(b) or not all(c for _, c in result.tickets):
                raise RuntimeError(f"join refused or replayed: status {result.status}")
            joined += [(seq, d) for (seq, _), d in zip(result.tickets, b, strict=True)]
        self._count("join", len(batches))
        return joined

    async def admit(self, upto: int) -> None:
        deadline = time.monotonic() + 60
        while True:
            result = await self.room.admit(CAMPAIGN, max_per_call=5000)
            if result is None:
                raise RuntimeError("admit: unknown campaign")
            self._count("admit call")
            if result.cursor >= upto:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"admission stuck at {result.cursor} of {upto}")

    async def round(self, customers: int) -> None:
        s = self.settings
        joined = await self.join(customers, s.join_batch)
        await self.admit(max(seq for seq, _ in joined))
        states = await self._bounded(
            [lambda s=seq, d=d: self.room.pass_check(CAMPAIGN, s, d) for seq, d in joined]
        )
        if any(state != "admitted" for state, _ in states):
            raise RuntimeError(f"passes not admitted: {set(st for st, _ in states)}")
        self._count("pass", len(joined))
        claimers = [(seq, d) for seq, d in joined if self.rng.random() < s.claim_share]
        amounts = [self.rng.randrange(MIN, MAX + 1, STEP) for _ in claimers]
        claims = await self._bounded(
            [
                lambda s=seq, d=d, m=m: self.room.claim(CAMPAIGN, s, d, m, f"k{s}")
                for (seq, d), m in zip(claimers, amounts, strict=True)
            ]
        )
        if not all(c.ok for c in claims):
            raise RuntimeError(f"claims refused: {[c.code for c in claims if not c.ok][:5]}")
        self._count("claim", len(claims))
        held = [c.reservation for c in claims]
        confirm = [r for r in held if self.rng.random() < s.confirm_share]
        release = sorted(set(held) - set(confirm))
        outcomes = await self._bounded(
            [lambda r=r: self.room.confirm(CAMPAIGN, r, CORE) for r in confirm]
            + [lambda r=r: self.room.release(CAMPAIGN, r, CORE, "declined") for r in release]
        )
        if not all(o.ok for o in outcomes):
            raise RuntimeError("a confirm or release was refused")
        self._count("confirm", len(confirm))
        self._count("release", len(release))

    async def seal(self) -> int:
        """The real sealer until it has nothing left to publish; the checkpoints made."""
        made = 0
        while await self.sealer.step(CAMPAIGN, force=True):
            made += 1
        return made

    async def build(self, target: int) -> dict[str, Any]:
        started = time.monotonic()
        await self.room.scripts.load_all(self.redis)
        await self.room.create(parse_spec(campaign_spec()), ACTOR)
        # the commitment (entry 1) signed before anyone joins, as the admin API does
        checkpoints = await self.seal()
        per_customer = 1 / self.settings.join_batch + 1 + self.settings.claim_share * 2
        seal_s = 0.0
        last_report = started
        while True:
            left = target - 1 - await self.size()  # the last entry is the close
            if left <= 0:
                break
            customers = min(self.settings.round_customers, int(left / per_customer * 0.95))
            if customers >= 20:
                await self.round(customers)
            else:  # the gap to N - 1, exactly: single joins of one new customer each
                await self.join(left, 1)
            t = time.monotonic()
            checkpoints += await self.seal()
            seal_s += time.monotonic() - t
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                print(
                    f"  built {await self.size():,} of {target:,} entries "
                    f"({last_report - started:.0f} s)",
                    flush=True,
                )
        if await self.size() != target - 1:
            raise RuntimeError(f"log at {await self.size()}, wanted {target - 1} before close")
        await self.room.set_state(CAMPAIGN, "close", ACTOR)
        t = time.monotonic()
        checkpoints += await self.seal()
        seal_s += time.monotonic() - t
        await self.sealer.close()
        store = AuditStore(self.redis, CAMPAIGN, self.segments)
        _, size = await store.bounds()
        latest = await store.latest_checkpoint()
        if size != target or latest is None or latest["size"] != size:
            raise RuntimeError(f"not sealed to the end: {size} entries, last checkpoint {latest}")
        return {
            "entries": size,
            "sealed_to": int(latest["size"]),
            "customers": self.customers,
            "calls": dict(sorted(self.counts.items())),
            "checkpoints_made": checkpoints,
            "seal_s": round(seal_s, 1),
            "build_s": round(time.monotonic() - started, 1),
        }

    async def export(self, path: Path) -> dict[str, Any]:
        started = time.monotonic()
        store = AuditStore(self.redis, CAMPAIGN, self.segments)
        written = 0
        with path.open("wb") as fh:
            async for chunk in export_chunks(store, self.keys.public_keys()):
                fh.write(chunk)
                written += len(chunk)
        return {"export_bytes": written, "export_s": round(time.monotonic() - started, 1)}


def _hwm_bytes(pid: int) -> int:
    """The process's peak resident set so far (VmHWM of its own memory map), 0 if gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(args: list[str], every_s: float = 0.005) -> dict[str, Any]:
    """Run `args`: its wall time, CPU time (wait4) and peak RSS.

    The peak is VmHWM read from /proc every `every_s` while it runs (the last read comes
    at most that long before its exit). wait4's ru_maxrss is kept but not used: on Linux
    it also counts the memory map the child had before its exec, i.e. this (much larger)
    process's, so a small child reads as big as its parent."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        peak = 0
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _hwm_bytes(child.pid))
            time.sleep(every_s)
        wall = time.monotonic() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    return {
        "rc": child.returncode,
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_bytes": peak,
        "ru_maxrss_bytes": usage.ru_maxrss * 1024,  # Linux: KiB
        "stdout": stdout.decode(errors="replace")[-4000:],
        "stderr": stderr.decode(errors="replace")[-2000:],
    }


def _kinds(report: str) -> dict[str, int]:
    match = re.search(r"^kinds: (.*)$", report, re.M)
    if not match:
        return {}
    pairs = (item.split("=") for item in match.group(1).split(", ") if "=" in item)
    return {k: int(v) for k, v in pairs}


def measure_verify(export: Path, keys: Path, entries: int, repeat: int) -> dict[str, Any]:
    verify = [sys.executable, "-m", "gate", "audit", "verify", str(export), "--keys", str(keys)]
    reference = [sys.executable, "-c", REFERENCE, str(export)]
    runs: dict[str, list[dict[str, Any]]] = {"verify": [], "reference": []}
    for n in range(repeat):
        order = ("verify", "reference") if n % 2 == 0 else ("reference", "verify")
        for name in order:
            runs[name].append(measure(verify if name == "verify" else reference))
    failures = []
    for run in runs["verify"]:
        first = run["stdout"].splitlines()[:1]
        if run["rc"] != 0 or not first or ": OK" not in first[0]:
            failures.append(
                f"verify exited {run['rc']}: {(run['stdout'] + run['stderr']).strip()[-500:]}"
            )
    for run in runs["reference"]:
        if run["rc"] != 0:
            failures.append(f"reference exited {run['rc']}: {run['stderr'][-500:]}")

    def median(name: str, key: str) -> float:
        return round(float(statistics.median(r[key] for r in runs[name])), 3)

    v_wall, r_wall = median("verify", "wall_s"), median("reference", "wall_s")
    v_cpu, r_cpu = median("verify", "cpu_s"), median("reference", "cpu_s")
    v_rss = max(r["peak_rss_bytes"] for r in runs["verify"])
    r_rss = max(r["peak_rss_bytes"] for r in runs["reference"])
    report = runs["verify"][0]["stdout"]
    return {
        "verify_wall_s": v_wall,
        "verify_cpu_s": v_cpu,
        "reference_wall_s": r_wall,
        "reference_cpu_s": r_cpu,
        "ratio_wall": round(v_wall / r_wall, 2) if r_wall else None,
        "ratio_cpu": round(v_cpu / r_cpu, 2) if r_cpu else None,
        "verify_wall_s_per_100k": round(v_wall / entries * 100_000, 3),
        "verify_cpu_s_per_100k": round(v_cpu / entries * 100_000, 3),
        "verify_peak_rss_mib": round(v_rss / 2**20, 1),
        "verify_peak_rss_bytes_per_entry": round(v_rss / entries, 1),
        "reference_peak_rss_mib": round(r_rss / 2**20, 1),
        "verify_walls_s": [r["wall_s"] for r in runs["verify"]],
        "reference_walls_s": [r["wall_s"] for r in runs["reference"]],
        "verify_report": report.strip().splitlines(),
        "kinds": _kinds(report),
        "failures": failures,
    }


async def build_export(settings: Plan, entries: int, work: Path) -> dict[str, Any]:
    """A fresh redis-server, the campaign built, sealed and exported; Redis stopped."""
    shutil.rmtree(work / "redis", ignore_errors=True)  # no AOF of an earlier run
    redis_server = RedisServer(work / "redis", appendfsync="no")
    redis_server.start()
    redis = connect(redis_server.url, timeout_s=30, max_connections=8)
    keys = parse_keys(generate_keys_document(), "bench")
    try:
        builder = Builder(redis, keys, work / "audit", settings)
        row = await builder.build(entries)
        row.update(await builder.export(work / "export.jsonl"))
        info = await redis.info("memory")
        row["redis_used_memory_mib"] = round(int(info["used_memory"]) / 2**20, 1)
        cpu = await redis.info("cpu")
        row["redis_cpu_s"] = round(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), 1)
        row["builder_cpu_s"] = round(time.process_time(), 1)
    finally:
        await redis.aclose()
        redis_server.stop()
    (work / "keys.json").write_text(json.dumps(keys.public_keys()))
    return row


def _git(*args: str) -> str:
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def conditions(settings: Plan) -> dict[str, Any]:
    # a copy of the tree without .git (e.g. `git archive HEAD`) names its commit itself
    commit = os.environ.get("FAIRGATE_COMMIT") or _git("rev-parse", "--short", "HEAD")
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", "gate", "lua")
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "redis_server": RedisServer(Path(tempfile.gettempdir())).version(),
        "redis_appendfsync": "no (building only)",
        "commit": commit,
        "uncommitted_files_in_gate_lua": len(changed.splitlines()),
        "repeat": settings.repeat,
        "quick": settings.quick,
    }


async def run(settings: Plan, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"conditions": conditions(settings), "runs": [], "failures": []}
    for entries in settings.entries:
        folder = work / f"n{entries}"
        folder.mkdir(parents=True, exist_ok=True)
        print(f"building a sealed export of {entries:,} entries ...", flush=True)
        try:
            row: dict[str, Any] = {
                "entries_wanted": entries,
                "claim_share": settings.claim_share,
                "mix": mix(settings),
            }
            row.update(await build_export(settings, entries, folder))
            print(
                f"  built in {row['build_s']} s ({row['customers']:,} customers, "
                f"{row['checkpoints_made']} checkpoints), export "
                f"{row['export_bytes'] / 2**20:.0f} MiB in {row['export_s']} s",
                flush=True,
            )
            row["loadavg_before"] = list(os.getloadavg())
            row.update(
                await asyncio.to_thread(
                    measure_verify,
                    folder / "export.jsonl",
                    folder / "keys.json",
                    row["entries"],
                    settings.repeat,
                )
            )
            row["loadavg_after"] = list(os.getloadavg())
        except Exception as exc:  # keep what the other sizes measured
            results["failures"].append(f"{entries} entries: {exc!r}")
            print(f"FAILED {entries} entries: {exc!r}", flush=True)
            continue
        finally:
            for path in (folder / "export.jsonl",):
                path.unlink(missing_ok=True)
        results["failures"] += [f"{entries} entries: {f}" for f in row["failures"]]
        print(_line(row), flush=True)
        results["runs"].append(row)
    return results


def _line(row: dict[str, Any]) -> str:
    return (
        f"verify {row['entries']:,} entries: {row['verify_wall_s']} s wall "
        f"({row['verify_wall_s_per_100k']} s per 100k), {row['verify_cpu_s']} s CPU, "
        f"peak RSS {row['verify_peak_rss_mib']} MiB "
        f"({row['verify_peak_rss_bytes_per_entry']} bytes/entry); reference "
        f"{row['reference_wall_s']} s: verify ÷ reference {row['ratio_wall']} wall, "
        f"{row['ratio_cpu']} CPU"
    )


def table(results: dict[str, Any]) -> str:
    """The figures as markdown, for bench/out and bench/README.md."""
    c = results["conditions"]
    lines = [
        f"{c['started_at']}, {c['cores']} cores, Python {c['python']}, Redis "
        f"{c['redis_server']} (appendfsync {c['redis_appendfsync']}), commit {c['commit']}, "
        f"medians of {c['repeat']} runs each, verify and reference in turns",
        "",
        "| entries | claim share | customers | checkpoints | export MiB | build s "
        "| verify s (wall) | verify ÷ reference (wall) | verify ÷ reference (CPU) "
        "| verify s per 100k (wall) | verify CPU s per 100k | reference s | peak RSS MiB "
        "| bytes per entry | reference peak RSS MiB | load average before → after |",
        "|" + " --- |" * 16,
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['entries']:,} | {r['claim_share']:.0%} | {r['customers']:,} | "
            f"{r['checkpoints_made']} | "
            f"{r['export_bytes'] / 2**20:.0f} | {r['build_s']} | {r['verify_wall_s']} | "
            f"**{r['ratio_wall']}** | {r['ratio_cpu']} | **{r['verify_wall_s_per_100k']}** | "
            f"{r['verify_cpu_s_per_100k']} | "
            f"{r['reference_wall_s']} | **{r['verify_peak_rss_mib']}** | "
            f"{r['verify_peak_rss_bytes_per_entry']} | {r['reference_peak_rss_mib']} | "
            f"{r['loadavg_before'][0]:.1f} → {r['loadavg_after'][0]:.1f} |"
        )
    for r in results["runs"]:
        lines.append(
            f"\nkinds at {r['entries']:,}, claim share {r['claim_share']:.0%} ({r['mix']}): "
            + ", ".join(f"{k}={v:,}" for k, v in r["kinds"].items())
        )
    for failure in results.get("failures", []):
        lines.append(f"\nFAILED {failure}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.verify_scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100,000 entries (default 1e6)")
    parser.add_argument("--entries", type=int, nargs="+", help="sizes of the export to verify")
    parser.add_argument("--repeat", type=int, help="runs of each, in turns (3; 1 with --quick)")
    parser.add_argument(
        "--claim-share",
        type=float,
        default=1.0,
        help="share of the admitted customers who claim; the rest hold an unused pass (1.0)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="results folder")
    args = parser.parse_args(argv)
    if args.entries and not all(100 <= n <= 100_000_000 for n in args.entries):
        parser.error("--entries must be between 100 and 100,000,000")
    if args.repeat is not None and not 1 <= args.repeat <= 20:
        parser.error("--repeat must be between 1 and 20")
    if not 0 < args.claim_share <= 1:
        parser.error("--claim-share must be in (0, 1]")
    sizes = tuple(args.entries) if args.entries else None
    settings = plan(args.quick, sizes, args.repeat, args.claim_share)
    with tempfile.TemporaryDirectory(prefix="fairgate-verify-scale-") as tmp:
        results = asyncio.run(run(settings, Path(tmp)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "verify_scale.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "verify_scale.md").write_text(table(results) + "\n")
    print(table(results))
    return 1 if results["failures"] or not results["runs"] else 0


if __name__ == "__main__":
    sys.exit(main())
