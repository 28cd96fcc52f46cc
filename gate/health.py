"""The core's health, as the rate controller reads it (gate/controller.py).

Three sources, each giving per window a latency (a percentile, ms) and an error ratio:

- `callbacks`: the core system's own answers. Each confirm/release reports how long the
  reservation was held (claim to callback, by Redis time, returned by the script) and a
  release whose reason is in the source's list is an error. Every gate process counts
  the callbacks it serves into a per-window hash in Redis (flushed every FLUSH_S, one
  pipeline for all campaigns), so the one process that drives the controller sees the
  callbacks of all of them; a window is read once it is over and the flushes are in.
- `http`: a health endpoint the controller's process polls once per interval; a non-2xx,
  a timeout or a connection error is an error, the round trip is the latency. A probe
  still running when the window is judged counts as at least that slow.
- `prometheus`: instant queries (/api/v1/query) for a latency in seconds and an error
  ratio; a Prometheus that does not answer gives no signal (the rate holds).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiohttp
from redis.asyncio import Redis

from gate.cache import CampaignCache
from gate.campaign import Adaptive, HealthSource
from gate.errors import GateError, Unavailable
from gate.redis_client import LATE_LOOP_LIMIT, LivedTimeout, LoopClock, guarded
from gate.room.keys import CampaignKeys

log = logging.getLogger("gate.health")

# Upper bounds (ms) of the callback latency histogram; the last bucket is open.
LATENCY_BUCKETS_MS = (
    5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0,
    3000.0, 5000.0, 10000.0, 30000.0, 60000.0,
)  # fmt: skip
FLUSH_S = 0.05
# A window is read this long after it ends: every process has flushed it by then.
SETTLE_S = 3 * FLUSH_S
WINDOW_TTL_MS = 120_000
MAX_IN_FLIGHT = 4


@dataclass(frozen=True)
class Signal:
    """One source's view of one window; None where it saw nothing."""

    source: str
    latency_ms: float | None
    error_ratio: float | None
    samples: int


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def histogram_percentile(counts: list[int], p: float) -> float | None:
    """The p-th percentile of a LATENCY_BUCKETS_MS histogram, interpolated inside its
    bucket (the open bucket answers its lower bound)."""
    total = sum(counts)
    if total == 0:
        return None
    wanted = max(p / 100 * total, 1e-9)
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= wanted:
            low = LATENCY_BUCKETS_MS[index - 1] if index else 0.0
            if index >= len(LATENCY_BUCKETS_MS):
                return low
            return low + (LATENCY_BUCKETS_MS[index] - low) * (wanted - seen) / count
        seen += count
    return LATENCY_BUCKETS_MS[-1]


def bucket_of(latency_ms: float) -> int:
    return bisect_left(LATENCY_BUCKETS_MS, latency_ms)


# -- callbacks ------------------------------------------------------------------------


@dataclass
class _Tally:
    n: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    buckets: dict[int, int] | None = None


class CallbackHealth:
    """Counts this process's confirm/release callbacks per campaign and window, and
    flushes them into Redis, where the controller (in whichever process) reads them."""

    def __init__(self, redis: Redis, cache: CampaignCache):
        self.redis = redis
        self.cache = cache
        self.pending: dict[tuple[str, int], _Tally] = {}

    @staticmethod
    def callbacks_source(adaptive: Adaptive | None) -> HealthSource | None:
        if adaptive is None:
            return None
        return next((s for s in adaptive.sources if s.kind == "callbacks"), None)

    def record(self, campaign: str, held_us: int | None, reason: str | None) -> None:
        """One callback the core made; `reason` is a release's (None for a confirm)."""
        live = self.cache.peek(campaign)
        if live is None or held_us is None:
            return
        adaptive = live.spec.admission.adaptive
        source = self.callbacks_source(adaptive)
        if source is None or adaptive is None:
            return
        window = int(self.cache.redis_now() // adaptive.interval_s)
        tally = self.pending.setdefault((campaign, window), _Tally(buckets={}))
        latency_ms = held_us / 1000
        tally.n += 1
        tally.errors += reason is not None and reason in source.error_reasons
        tally.latency_sum_ms += latency_ms
        assert tally.buckets is not None
        bucket = bucket_of(latency_ms)
        tally.buckets[bucket] = tally.buckets.get(bucket, 0) + 1

    async def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        try:
            async with guarded():
                pipe = self.redis.pipeline(transaction=False)
                for (campaign, window), tally in pending.items():
                    key = CampaignKeys(campaign).health_window(window)
                    pipe.hincrby(key, "n", tally.n)
                    pipe.hincrby(key, "errors", tally.errors)
                    pipe.hincrbyfloat(key, "latency_sum_ms", tally.latency_sum_ms)
                    for bucket, count in (tally.buckets or {}).items():
                        pipe.hincrby(key, f"b{bucket}", count)
                    pipe.pexpire(key, WINDOW_TTL_MS)
                await pipe.execute()
        except (Unavailable, GateError) as exc:
            # A lost window only means the controller sees fewer answers; it holds the
            # rate when it sees too few.
            log.warning("event=health_flush_failed windows=%d error=%s", len(pending), exc)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()


async def read_callback_window(
    redis: Redis, campaign: str, window: int, source: HealthSource, latency_percentile: float
) -> Signal:
    async with guarded():
        raw = await redis.hgetall(CampaignKeys(campaign).health_window(window))
    fields = {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }
    n = int(fields.get("n", "0"))
    if n < source.min_samples or n == 0:
        return Signal("callbacks", None, None, n)
    counts = [int(fields.get(f"b{i}", "0")) for i in range(len(LATENCY_BUCKETS_MS) + 1)]
    return Signal(
        "callbacks",
        histogram_percentile(counts, latency_percentile),
        int(fields.get("errors", "0")) / n,
        n,
    )


# -- probes (http, prometheus) ---------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    done_at: float
    latency_ms: float | None
    error_ratio: float | None


class Probe:
    """A source the controller's process asks itself, once per interval; results are
    judged by the window in which they came back."""

    def __init__(self, source: HealthSource, session: aiohttp.ClientSession):
        self.source = source
        self.session = session
        self.results: deque[_Result] = deque(maxlen=256)
        # started at (self.clock: the time this process's loop lived, a stall not counted)
        self.in_flight: dict[asyncio.Task[None], float] = {}
        self.clock = LoopClock()

    def start(self) -> None:
        if len(self.in_flight) >= MAX_IN_FLIGHT:
            return
        task = asyncio.create_task(self._run())
        self.in_flight[task] = self.clock.now()
        task.add_done_callback(lambda done: self.in_flight.pop(done, None))

    async def _run(self) -> None:
        try:
            latency_ms, error_ratio = await self.ask()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a probe that fails in an unforeseen way is no signal
            log.warning("event=health_probe_failed kind=%s error=%r", self.source.kind, exc)
            return
        self.results.append(_Result(time.monotonic(), latency_ms, error_ratio))

    async def ask(self) -> tuple[float | None, float | None]:
        raise NotImplementedError

    def window(
        self, since: float, now: float, latency_percentile: float, *, slow_after_ms: float
    ) -> Signal:
        """The answers that came back in (since, now]; for a health endpoint, a probe still
        out for longer than `slow_after_ms` (the latency target) counts as that slow: a
        hung core answers nothing. One out for less says nothing yet."""
        done = [r for r in self.results if since < r.done_at <= now]
        latencies = [r.latency_ms for r in done if r.latency_ms is not None]
        errors = [r.error_ratio for r in done if r.error_ratio is not None]
        if self.source.kind == "http":
            lived = self.clock.now()
            out_ms = [(lived - started) * 1000 for started in self.in_flight.values()]
            latencies += [elapsed for elapsed in out_ms if elapsed > slow_after_ms]
        if len(done) < self.source.min_samples:
            if not latencies:
                return Signal(self.source.kind, None, None, len(done))
            errors = []
        return Signal(
            self.source.kind,
            percentile(latencies, latency_percentile) if latencies else None,
            sum(errors) / len(errors) if errors else None,
            len(done),
        )

    def close(self) -> None:
        for task in list(self.in_flight):
            task.cancel()


class HttpProbe(Probe):
    """The round trip and its timeout count the time this process's event loop lived
    (gate.redis_client.LoopClock), not wall time: a gate starved of CPU would otherwise
    read its own stall as the core's latency and cut the rate for nothing."""

    async def ask(self) -> tuple[float | None, float | None]:
        assert self.source.url is not None
        timeout_s = self.source.timeout_ms / 1000
        started = self.clock.now()
        try:
            async with (
                LivedTimeout(self.clock, timeout_s),
                self.session.get(
                    self.source.url,
                    timeout=aiohttp.ClientTimeout(total=LATE_LOOP_LIMIT * timeout_s),
                ) as response,
            ):
                await response.read()
                ok = 200 <= response.status < 300
        except (TimeoutError, aiohttp.ClientError, OSError):
            ok = False
        return min(self.clock.now() - started, timeout_s) * 1000, 0.0 if ok else 1.0


def prometheus_value(document: Any) -> float | None:
    """The value of an instant query's answer (the worst series of a vector), or None
    for an error, an empty vector or a value that is not a finite number."""
    if not isinstance(document, dict) or document.get("status") != "success":
        return None
    data = document.get("data")
    if not isinstance(data, dict):
        return None
    kind, result = data.get("resultType"), data.get("result")
    pairs: list[Any] = []
    if kind == "scalar":
        pairs = [result]
    elif kind == "vector" and isinstance(result, list):
        pairs = [item.get("value") for item in result if isinstance(item, dict)]
    values = []
    for pair in pairs:
        if isinstance(pair, list) and len(pair) == 2:
            try:
                value = float(pair[1])
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                values.append(value)
    return max(values) if values else None


class PrometheusProbe(Probe):
    async def _query(self, query: str | None) -> float | None:
        if query is None:
            return None
        assert self.source.url is not None
        url = self.source.url.rstrip("/") + "/api/v1/query"
        timeout = aiohttp.ClientTimeout(total=self.source.timeout_ms / 1000)
        try:
            async with self.session.get(url, params={"query": query}, timeout=timeout) as r:
                if r.status != 200:
                    return None
                return prometheus_value(await r.json(content_type=None))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None

    async def ask(self) -> tuple[float | None, float | None]:
        latency_s, error_ratio = await asyncio.gather(
            self._query(self.source.latency_query), self._query(self.source.error_query)
        )
        return (None if latency_s is None else latency_s * 1000), error_ratio


def make_probe(source: HealthSource, session: aiohttp.ClientSession) -> Probe | None:
    if source.kind == "http":
        return HttpProbe(source, session)
    if source.kind == "prometheus":
        return PrometheusProbe(source, session)
    return None
