"""Prometheus metrics, one registry per process (no module-level state).

They read the campaign cache and the admission loop they are given, never the gate that
owns them, so the gate can build its metrics without a cycle between the two modules.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gate.admission import Admitter
from gate.cache import CampaignCache
from gate.redis_checks import RedisSanity
from gate.room.durability import Durability


class _CampaignCollector(Collector):
    def __init__(
        self,
        cache: CampaignCache,
        admitter: Admitter,
        sanity: RedisSanity,
        durability: Durability | None = None,
    ):
        self.cache = cache
        self.admitter = admitter
        self.sanity = sanity
        self.durability = durability or Durability()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        joined = GaugeMetricFamily(
            "fairgate_campaign_joined", "tickets issued", labels=["campaign"]
        )
        cursor = GaugeMetricFamily(
            "fairgate_campaign_cursor", "highest seq admitted", labels=["campaign"]
        )
        waiting = GaugeMetricFamily(
            "fairgate_campaign_waiting", "customers waiting", labels=["campaign"]
        )
        rate = GaugeMetricFamily(
            "fairgate_campaign_admission_rate",
            "measured admissions per second",
            labels=["campaign"],
        )
        open_ = GaugeMetricFamily(
            "fairgate_campaign_open", "1 while admitting", labels=["campaign"]
        )
        for name, live in list(self.cache.campaigns.items()):
            joined.add_metric([name], live.state.seq)
            cursor.add_metric([name], live.state.cursor)
            waiting.add_metric([name], max(0, live.state.seq - live.state.cursor))
            rate.add_metric([name], live.admission_rate())
            open_.add_metric([name], 1.0 if live.state.state == "open" else 0.0)
        fresh = GaugeMetricFamily("fairgate_redis_fresh", "1 while the cache is fresh")
        fresh.add_metric([], 1.0 if self.cache.fresh() else 0.0)
        skew = GaugeMetricFamily(
            "fairgate_clock_skew_seconds",
            "this process's wall clock minus Redis TIME (decisions use Redis time)",
        )
        if self.cache.clock_measured:
            skew.add_metric([], self.cache.skew_s)
        # Per process: with several gates, these show that each one takes part in admission.
        admit_calls = CounterMetricFamily(
            "fairgate_admit_calls", "admit script calls made by this process"
        )
        admit_calls.add_metric([], self.admitter.calls)
        admitted = CounterMetricFamily(
            "fairgate_admitted", "customers admitted by this process's admit calls"
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
        yield from (joined, cursor, waiting, rate, open_, fresh, skew, admit_calls, admitted)
        yield from (unsafe, refused)
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
        yield from (degraded, held)


class Metrics:
    def __init__(
        self,
        cache: CampaignCache,
        admitter: Admitter,
        sanity: RedisSanity,
        durability: Durability | None = None,
    ):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fairgate_http_requests",
            "HTTP requests",
            ["listener", "route", "status"],
            registry=self.registry,
        )
        # Refused before or instead of a handler: malformed HTTP, a slow request head or
        # body, more concurrent requests than max_concurrent_requests.
        self.refused = Counter(
            "fairgate_http_refused",
            "HTTP requests refused by the listener",
            ["listener", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fairgate_http_seconds",
            "HTTP handling time",
            ["listener", "route"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.registry.register(_CampaignCollector(cache, admitter, sanity, durability))

    def render(self) -> bytes:
        return generate_latest(self.registry)
