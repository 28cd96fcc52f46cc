"""Prometheus metrics: counted in each process, added up at scrape time (issue 14).

Three kinds of figures, and where each comes from (docs/metrics.md lists them all):

- **counted on the request path** (HTTP requests and their duration, claims by outcome,
  /gate/auth decisions, Redis script call durations): a `Tally` or a `Timing`, plain
  numbers in a dict of this process, no lock, no I/O, nothing exported until a scrape;
- **this process's state** (the collectors other modules register on `registry`: the
  sealer's, the controller's, the failover watch's, the witnesses'; the admission loop,
  Redis's refusals, durability, event-loop lag, `process_*`): read at scrape time;
- **the campaigns' state** (joined, admitted, waiting, active, quota, rates, sealing lag,
  checkpoint age): read from Redis at scrape time, the same whichever process answers.

With several workers (`gate serve --workers N`) a scrape reaches one of them. The first
two kinds are that process's own: `Exchange` adds up every worker's. `gate serve` gives
the workers a folder (`METRICS_DIR_ENV`, `data_dir/metrics`, emptied at start); each worker
listens on an abstract Unix socket named after it and its pid, and writes its figures to
`<pid>.json` there when asked and every `FLUSH_S`. The worker a scrape reaches asks every
other one for its figures at that moment (so the totals include every request answered
before the scrape), and reads the file of a worker that no longer answers (killed: its
counts stay in the totals, once; only what it counted in its last `FLUSH_S` is lost with
a SIGKILL). Counters and histograms are summed over every file, dead workers' included;
gauges over the live workers only, by `GAUGE_MODES` (max unless said otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gate.admission import Admitter
from gate.cache import CampaignCache
from gate.redis_checks import RedisSanity
from gate.room import Room
from gate.room.durability import Durability
from gate.room.keys import CampaignKeys

log = logging.getLogger("gate.metrics")

# Set by `gate serve` for its workers: the folder where they share their figures.
METRICS_DIR_ENV = "FAIRGATE_METRICS_DIR"
# A worker writes its figures to its file at least this often (what a SIGKILL can lose).
FLUSH_S = 1.0
# The longest folder path that still leaves room for "/<pid>.sock" in a socket address.
SOCKET_DIR_MAX = 90
# How long a scrape waits for another worker's figures before it takes its file instead.
ASK_TIMEOUT_S = 1.0
# How long a scrape waits for Redis (campaign figures); past it, the last ones read.
REDIS_READ_TIMEOUT_S = 0.5
# The event-loop lag probe: a sleep of this long, and the window its maximum is kept over.
LAG_PROBE_S = 0.25
LAG_WINDOW = 20

HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

# How a gauge of each worker's becomes one figure: "max" (the default), "min" or "sum".
GAUGE_MODES = {
    "fairgate_redis_fresh": "min",  # fresh only where every worker's cache is
    "process_resident_memory_bytes": "sum",
    "process_virtual_memory_bytes": "sum",
    "process_open_fds": "sum",
    "process_max_fds": "min",
    "process_start_time_seconds": "min",
}


class Tally:
    """A counter family counted in this process: one addition in a dict, nothing else."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]):
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self.values.items()):
            family.add_metric(list(labels), value)
        return family


class Timing:
    """A histogram family observed in this process: per label set, one count per bucket
    (not cumulative until exported) and the sum."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], bounds: Sequence[float]
    ):
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = tuple(bounds)
        self.rows: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        row = self.rows.get(labels)
        if row is None:
            row = self.rows[labels] = [0.0] * (len(self.bounds) + 2)
        row[bisect_left(self.bounds, seconds)] += 1  # the first bound >= seconds, else +Inf
        row[-1] += seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, row in list(self.rows.items()):
            buckets: list[tuple[str, float]] = []
            running = 0.0
            for bound, count in zip((*self.bounds, math.inf), row[:-1], strict=True):
                running += count
                buckets.append((_le(bound), running))
            family.add_metric(list(labels), buckets, sum_value=row[-1])
        return family


def _le(bound: float) -> str:
    """A bucket bound as the Prometheus text format writes it (+Inf, 0.005, 1.0)."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


class _Counted(Collector):
    def __init__(self, counted: Sequence[Tally | Timing]):
        self.counted = counted

    def collect(self) -> Iterator[Metric]:
        for item in self.counted:
            yield item.family()


class LoopLag:
    """How late this process's event loop runs: a sleep of `LAG_PROBE_S` that overshoots."""

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=LAG_WINDOW)

    def worst(self) -> float:
        return max(self.recent, default=0.0)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self.recent.append(max(0.0, loop.time() - started - LAG_PROBE_S))


class _ProcessCollector(Collector):
    """This process's own state: its cache, admission loop, Redis checks, durability."""

    def __init__(
        self,
        cache: CampaignCache,
        admitter: Admitter,
        sanity: RedisSanity,
        durability: Durability,
        lag: LoopLag,
    ):
        self.cache = cache
        self.admitter = admitter
        self.sanity = sanity
        self.durability = durability
        self.lag = lag

    def collect(self) -> Iterator[Metric]:
        fresh = GaugeMetricFamily(
            "fairgate_redis_fresh", "1 while every worker's campaign cache is fresh"
        )
        fresh.add_metric([], 1.0 if self.cache.fresh() else 0.0)
        skew = GaugeMetricFamily(
            "fairgate_clock_skew_seconds",
            "a process's wall clock minus Redis TIME (decisions use Redis time)",
        )
        if self.cache.clock_measured:
            skew.add_metric([], self.cache.skew_s)
        lag = GaugeMetricFamily(
            "fairgate_event_loop_lag_seconds",
            "the longest an event loop ran late over the last few seconds (worst worker)",
        )
        lag.add_metric([], self.lag.worst())
        admit_calls = CounterMetricFamily(
            "fairgate_admit_calls", "admit script calls made by this gate's admission loops"
        )
        admit_calls.add_metric([], self.admitter.calls)
        admitted = CounterMetricFamily(
            "fairgate_admit_customers", "customers admitted by this gate's admit calls"
        )
        admitted.add_metric([], self.admitter.admitted)
        unsafe = GaugeMetricFamily(
            "fairgate_redis_unsafe",
            "1 while Redis runs an evicting policy or weaker persistence than configured",
        )
        unsafe.add_metric([], 1.0 if self.sanity.problem is not None else 0.0)
        refused = CounterMetricFamily(
            "fairgate_redis_refused",
            "commands Redis refused (OOM, MISCONF, BUSY, ...), answered 503",
            labels=["reason"],
        )
        for reason, count in sorted(self.sanity.refusals.items()):
            refused.add_metric([reason], count)
        degraded = CounterMetricFamily(
            "fairgate_durability_degraded",
            "answers given with fewer replica acknowledgements than redis_wait_replicas "
            "(redis_replica_loss = continue): what = answer, or seal (a checkpoint made so)",
            labels=["what"],
        )
        held = CounterMetricFamily(
            "fairgate_durability_held",
            "writes answered 503 (what = answer), or sealing rounds put off (what = seal), "
            "because fewer replicas than redis_wait_replicas acknowledged (hold)",
            labels=["what"],
        )
        for what in ("answer", "seal"):
            degraded.add_metric([what], self.durability.degraded_by.get(what, 0))
            held.add_metric([what], self.durability.held_by.get(what, 0))
        yield from (fresh, skew, lag, admit_calls, admitted, unsafe, refused, degraded, held)


class CampaignFigures(Collector):
    """Every campaign's state as Redis has it, read at scrape time (`refresh`): the same
    figures whichever worker answers."""

    def __init__(self, cache: CampaignCache, room: Room | None):
        self.cache = cache
        self.room = room
        self.stats: dict[str, dict[str, Any]] = {}
        self.checkpoints: dict[str, dict[str, Any]] = {}

    async def refresh(self) -> None:
        if self.room is None:
            return
        with contextlib.suppress(TimeoutError):  # Redis slow: the last figures read stay
            async with asyncio.timeout(REDIS_READ_TIMEOUT_S):
                for campaign in list(self.cache.campaigns):
                    # One campaign's failure (Redis away, a campaign gone) leaves its last
                    # figures, not the others'.
                    with contextlib.suppress(Exception):
                        self.stats[campaign] = await self.room.stats(campaign)
                        key = CampaignKeys(campaign).checkpoints
                        raw = await self.room.redis.lindex(key, -1)
                        if raw:
                            self.checkpoints[campaign] = json.loads(raw)
        for gone in set(self.stats) - set(self.cache.campaigns):
            self.stats.pop(gone, None)
            self.checkpoints.pop(gone, None)

    def effective_rate(self, campaign: str) -> float:
        """The rate admission runs at now: the configured one while the campaign is open,
        between its opening and closing times, its pre-queue dealt out and quota left; 0
        while paused, closed, not open yet, or sold out."""
        live = self.cache.campaigns.get(campaign)
        if live is None:
            return 0.0
        state = live.state
        now_us = self.cache.redis_now() * 1_000_000
        running = (
            state.state == "open"
            and state.opens_at_us <= now_us < state.closes_at_us
            and not state.prequeue_pending
            and not state.soldout
        )
        return state.rate if running else 0.0

    def collect(self) -> Iterator[Metric]:
        labels = ["campaign"]

        def family(kind: Any, name: str, doc: str, more: Sequence[str] = ()) -> Any:
            return kind(name, doc, labels=[*labels, *more])

        joined = family(CounterMetricFamily, "fairgate_campaign_joined", "tickets issued")
        admitted = family(
            CounterMetricFamily,
            "fairgate_campaign_admitted",
            "customers admitted (rate() of it is the measured admission rate)",
        )
        expired = family(
            CounterMetricFamily, "fairgate_campaign_expired", "passes that expired unused"
        )
        waiting = family(GaugeMetricFamily, "fairgate_campaign_waiting", "customers waiting")
        cursor = family(
            GaugeMetricFamily, "fairgate_campaign_cursor", "highest seq admitted or passed over"
        )
        active = family(
            GaugeMetricFamily, "fairgate_campaign_active", "admitted customers holding a pass"
        )
        quota = {
            part: family(
                GaugeMetricFamily,
                f"fairgate_campaign_quota_{part}",
                f"quota {part}, in the campaign's unit (items, or the currency's smallest unit)",
            )
            for part in ("total", "held", "confirmed", "remaining")
        }
        configured = family(
            GaugeMetricFamily,
            "fairgate_campaign_admission_rate_configured",
            "admission rate set (by an operator, or the adaptive controller), per second",
        )
        effective = family(
            GaugeMetricFamily,
            "fairgate_campaign_admission_rate_effective",
            "admission rate in force now, per second: 0 while paused, closed, not yet open "
            "or sold out",
        )
        open_ = family(GaugeMetricFamily, "fairgate_campaign_open", "1 while admitting")
        info = family(
            GaugeMetricFamily,
            "fairgate_campaign_info",
            "1 per campaign, its state, policy and quota unit as labels",
            ("state", "policy", "unit"),
        )
        entries = family(
            CounterMetricFamily, "fairgate_audit_entries", "entries appended to the audit log"
        )
        sealed = family(
            GaugeMetricFamily,
            "fairgate_audit_sealed_entries",
            "entries covered by the latest signed checkpoint",
        )
        seal_lag = family(
            GaugeMetricFamily,
            "fairgate_seal_lag_seconds",
            "how long entries have waited unsealed: the latest checkpoint's age while entries "
            "lie beyond it, else 0",
        )
        checkpoint_age = family(
            GaugeMetricFamily,
            "fairgate_checkpoint_age_seconds",
            "age of the latest signed checkpoint (Redis time)",
        )
        now = self.cache.redis_now()
        for name, live in sorted(self.cache.campaigns.items()):
            row = [name]
            configured.add_metric(row, live.state.rate)
            effective.add_metric(row, self.effective_rate(name))
            open_.add_metric(row, 1.0 if live.state.state == "open" else 0.0)
            stats = self.stats.get(name)
            if stats is None:
                continue
            joined.add_metric(row, stats["joined"])
            admitted.add_metric(row, stats["admitted"])
            expired.add_metric(row, stats["expired"])
            waiting.add_metric(row, max(0, stats["waiting"]))
            cursor.add_metric(row, stats["cursor"])
            active.add_metric(row, stats["active"])
            for part, gauge in quota.items():
                gauge.add_metric(row, float(stats[part]))
            info.add_metric([name, stats["state"], stats["policy"], stats["unit"]], 1.0)
            entries.add_metric(row, stats["audit_entries"])
            checkpoint = self.checkpoints.get(name)
            if checkpoint is not None:
                size, age = int(checkpoint["size"]), max(0.0, now - checkpoint["time_ms"] / 1000)
                sealed.add_metric(row, size)
                checkpoint_age.add_metric(row, age)
                seal_lag.add_metric(row, age if stats["audit_entries"] > size else 0.0)
        yield from (joined, admitted, expired, waiting, cursor, active, *quota.values())
        yield from (configured, effective, open_, info, entries, sealed, seal_lag, checkpoint_age)


# -- one scrape's figures from every worker ----------------------------------------------

Snapshot = dict[str, Any]


def snapshot(registry: CollectorRegistry) -> Snapshot:
    """This process's figures, as JSON can carry them."""
    families = []
    for metric in registry.collect():
        samples = [
            [s.name, s.labels, s.value] for s in metric.samples if not s.name.endswith("_created")
        ]
        families.append([metric.name, metric.type, metric.documentation, samples])
    return {"pid": os.getpid(), "families": families}


def merge(live: Iterable[Snapshot], dead: Iterable[Snapshot]) -> list[Metric]:
    """Counters and histograms summed over every worker, gauges over the live ones."""
    out: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    workers = 0
    for alive, group in ((True, live), (False, dead)):
        for snap in group:
            workers += alive
            for name, kind, documentation, samples in snap["families"]:
                if kind not in ("counter", "histogram") and not alive:
                    continue
                if name not in out:
                    out[name] = Metric(name, documentation, kind)
                    values[name] = {}
                found = values[name]
                for sample, labels, value in samples:
                    key = (sample, tuple(sorted(labels.items())))
                    found.setdefault(key, []).append(value)
    for name, metric in out.items():
        mode = GAUGE_MODES.get(name, "max")
        for (sample, labels), seen in values[name].items():
            if metric.type in ("counter", "histogram") or mode == "sum":
                value = math.fsum(seen)
            elif mode == "min":
                value = min(seen)
            else:
                value = max(seen)
            metric.add_sample(sample, dict(labels), value)
    workers_gauge = Metric("fairgate_workers", "gate processes answering for this gate", "gauge")
    workers_gauge.add_sample("fairgate_workers", {}, float(workers))
    return [*out.values(), workers_gauge]


class _Merged(Collector):
    def __init__(self, metrics: Sequence[Metric]):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


class Exchange:
    """The workers of one `gate serve` share their figures through `folder`."""

    def __init__(self, folder: Path, registry: CollectorRegistry):
        self.folder = folder
        self.registry = registry
        self.pid = os.getpid()
        # A Unix socket's path has at most 107 bytes: a deep data_dir gets a short folder.
        self.sockets = folder
        if len(str(folder.resolve())) > SOCKET_DIR_MAX:
            tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
            self.sockets = Path(tempfile.gettempdir()) / f"fairgate-metrics-{tag}"
        self.server: asyncio.AbstractServer | None = None

    def address(self, pid: int) -> str:
        return str(self.sockets / f"{pid}.sock")

    def write(self, snap: Snapshot) -> None:
        path = self.folder / f"{snap['pid']}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(snap))
        os.replace(temporary, path)

    def flush(self) -> Snapshot:
        snap = snapshot(self.registry)
        with contextlib.suppress(OSError):  # a full disk: the figures still answer live
            self.write(snap)
        return snap

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readline()
            writer.write(json.dumps(self.flush()).encode() + b"\n")
            await writer.drain()
        writer.close()

    async def run(self) -> None:
        self.sockets.mkdir(mode=0o700, parents=True, exist_ok=True)
        address = self.address(self.pid)
        self.server = await asyncio.start_unix_server(self._answer, path=address)
        try:
            while True:
                self.flush()
                await asyncio.sleep(FLUSH_S)
        finally:
            self.server.close()
            with contextlib.suppress(OSError):
                os.unlink(address)

    async def _ask(self, pid: int) -> Snapshot | None:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(ASK_TIMEOUT_S):
                reader, writer = await asyncio.open_unix_connection(self.address(pid))
                writer.write(b"figures\n")
                answer: Snapshot = json.loads(await reader.readline())
                return answer
        except (OSError, TimeoutError, ValueError):
            return None
        finally:
            if writer is not None:
                writer.close()

    def _read(self, path: Path) -> Snapshot | None:
        try:
            found: Snapshot = json.loads(path.read_text())
            return found
        except (OSError, ValueError):
            return None

    async def gather(self) -> tuple[list[Snapshot], list[Snapshot]]:
        """(live workers' figures now, the last figures of workers that no longer answer)."""
        own = self.flush()
        others = [
            (int(path.stem), path) for path in self.folder.glob("*.json") if path.stem.isdigit()
        ]
        others = [(pid, path) for pid, path in others if pid != self.pid]
        answers = await asyncio.gather(*(self._ask(pid) for pid, _ in others))
        live, dead = [own], []
        for (pid, path), answer in zip(others, answers, strict=True):
            if answer is not None and answer.get("pid") == pid:
                live.append(answer)
            else:
                stored = self._read(path)
                if stored is not None:
                    dead.append(stored)
        return live, dead


class Metrics:
    def __init__(
        self,
        cache: CampaignCache,
        admitter: Admitter,
        sanity: RedisSanity,
        durability: Durability | None = None,
        *,
        room: Room | None = None,
        enabled: bool = True,
        folder: Path | None = None,
    ):
        # False (config `metrics = false`): nothing counted on the request path.
        self.enabled = enabled
        # This process's figures: other modules register their collectors here too.
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Tally(
            "fairgate_http_requests", "HTTP requests answered", ["listener", "route", "status"]
        )
        # Refused before or instead of a handler: malformed HTTP, a slow request head or
        # body, more concurrent requests than max_concurrent_requests.
        self.refused = Tally(
            "fairgate_http_refused", "HTTP requests refused by the listener", ["listener", "reason"]
        )
        self.latency = Timing(
            "fairgate_http_request_duration_seconds",
            "HTTP handling time",
            ["listener", "route"],
            HTTP_BUCKETS,
        )
        self.claims = Tally(
            "fairgate_claims",
            "claims answered: granted, replayed (a retry), subscribed (ballot), or the "
            "refusal's error code",
            ["campaign", "outcome"],
        )
        self.auth = Tally(
            "fairgate_auth_decisions",
            "/gate/auth answers: allow, wait (a paced pass, early) or deny, with the reason",
            ["decision", "reason"],
        )
        self.redis_calls = Timing(
            "fairgate_redis_call_duration_seconds",
            "Redis script calls (one round trip each), by script",
            ["call"],
            REDIS_BUCKETS,
        )
        self.lag = LoopLag()
        counted: list[Tally | Timing] = [self.requests, self.refused, self.latency]
        counted += [self.claims, self.auth, self.redis_calls]
        self.registry.register(_Counted(counted))
        self.registry.register(
            _ProcessCollector(cache, admitter, sanity, durability or Durability(), self.lag)
        )
        self.registry.register(ProcessCollector(registry=None))
        self.campaigns = CampaignFigures(cache, room)
        if folder is None and os.environ.get(METRICS_DIR_ENV):
            folder = Path(os.environ[METRICS_DIR_ENV])
        self.exchange = Exchange(folder, self.registry) if folder is not None else None
        self._status = {status: str(status) for status in range(100, 600)}

    # -- the request path: one dict addition each ----------------------------------------

    def answered(self, listener: str, route: str, status: int, seconds: float | None) -> None:
        """A request answered; `seconds` None: refused before any handling (not timed)."""
        if self.enabled:
            self.requests.inc((listener, route, self._status.get(status) or str(status)))
            if seconds is not None:
                self.latency.observe((listener, route), seconds)

    def refusal(self, listener: str, reason: str) -> None:
        if self.enabled:
            self.refused.inc((listener, reason))

    def claim(self, campaign: str, outcome: str) -> None:
        if self.enabled:
            self.claims.inc((campaign, outcome))

    def decision(self, decision: str, reason: str) -> None:
        if self.enabled:
            self.auth.inc((decision, reason))

    def redis_call(self, call: str, seconds: float) -> None:
        if self.enabled:
            self.redis_calls.observe((call,), seconds)

    # -- background and scrape ----------------------------------------------------------

    async def run(self) -> None:
        tasks = [asyncio.create_task(self.lag.run())]
        if self.exchange is not None:
            tasks.append(asyncio.create_task(self.exchange.run()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def render(self) -> bytes:
        await self.campaigns.refresh()
        if self.exchange is not None:
            live, dead = await self.exchange.gather()
        else:
            live, dead = [snapshot(self.registry)], []
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(_Merged(merge(live, dead)))
        scrape.register(self.campaigns)
        return generate_latest(scrape)


def prepare_folder(folder: Path) -> Path:
    """`gate serve`'s metrics folder, emptied: figures of an earlier run are not this one's."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.suffix in (".json", ".tmp", ".sock"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return folder
