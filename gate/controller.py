"""The rate controller: a campaign's admission rate follows the core's health (AIMD).

For each campaign with an `admission.adaptive` block, one gate process at a time (the
holder of a Redis lease in the campaign's slot, renewed every interval) judges the last
interval's health signals (gate/health.py) and moves the rate:

- a source over its target (latency percentile or error ratio): rate x `decrease`
  (0.7), then no further decrease for `cooldown_intervals` windows, since the windows
  right after a decrease still carry the customers admitted at the old rate;
- every source that spoke is within target: rate + `increase` (default a twentieth of
  the range);
- no signal: the rate holds (the controller never raises a rate it cannot see).

Always within [rate_min, rate_max]; only in mode `auto`; only when the rate moves by
more than MIN_STEP (a change that reaches a bound is always made). Each change is
campaign_update.lua with actor `controller`, conditional on the mode and on the rate it
read, and its audit entry carries the signal that caused it (`why`).
docs/adaptive-admission.md says why AIMD.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from gate.cache import CampaignCache
from gate.campaign import Adaptive
from gate.errors import GateError, Unavailable
from gate.health import SETTLE_S, Probe, Signal, make_probe, read_callback_window
from gate.redis_client import guarded
from gate.room import Room
from gate.room.keys import CampaignKeys

log = logging.getLogger("gate.controller")

ACTOR = "controller"
TICK_S = 0.05
# A change smaller than this (2% of the rate, at most 1/s) is not made: no flood of
# audit entries for noise.
MIN_STEP_RATIO = 0.02
MIN_STEP_ABS = 1.0
# The lease lives 3 intervals, at least this: a process that stalls a moment (a busy
# machine) keeps it; one that stopped is replaced within this time.
LEASE_MIN_MS = 2000


@dataclass(frozen=True)
class Decision:
    rate: float
    direction: str  # "up" or "down"
    cause: Signal


def judged(adaptive: Adaptive, signal: Signal) -> bool | None:
    """True when the signal is over a target, False when within, None when it says
    nothing about a target."""
    targets = adaptive.targets
    verdicts = []
    if targets.latency_ms is not None and signal.latency_ms is not None:
        verdicts.append(signal.latency_ms > targets.latency_ms)
    if targets.error_ratio is not None and signal.error_ratio is not None:
        verdicts.append(signal.error_ratio > targets.error_ratio)
    return any(verdicts) if verdicts else None


def decide(
    adaptive: Adaptive, rate: float, signals: list[Signal], *, cooling: bool
) -> Decision | None:
    """The AIMD step, or None to hold the rate."""
    verdicts = [(signal, judged(adaptive, signal)) for signal in signals]
    over = [signal for signal, verdict in verdicts if verdict]
    within = [signal for signal, verdict in verdicts if verdict is False]
    low, high = adaptive.rate_min, adaptive.rate_max
    if over:
        if cooling:
            return None
        new, direction, cause = max(low, rate * adaptive.decrease), "down", over[0]
    elif within:
        new, direction, cause = min(high, rate + adaptive.step_up()), "up", within[0]
    else:
        return None
    new = min(max(new, low), high)
    moved = abs(new - rate)
    if moved == 0 or (moved <= min(MIN_STEP_RATIO * rate, MIN_STEP_ABS) and new not in (low, high)):
        return None
    return Decision(round(new, 6), direction, cause)


def why_of(adaptive: Adaptive, decision: Decision) -> str:
    """The audit entry's `why`: the signal that caused the change and its targets."""
    cause = decision.cause
    why: dict[str, object] = {"source": cause.source, "samples": cause.samples}
    why["direction"] = decision.direction
    if cause.latency_ms is not None:
        why["latency_ms"] = round(cause.latency_ms, 3)
    if cause.error_ratio is not None:
        why["error_ratio"] = round(cause.error_ratio, 4)
    if adaptive.targets.latency_ms is not None:
        why["target_latency_ms"] = adaptive.targets.latency_ms
    if adaptive.targets.error_ratio is not None:
        why["target_error_ratio"] = adaptive.targets.error_ratio
    return json.dumps(why, sort_keys=True)


@dataclass
class _Control:
    """One campaign's controller in this process."""

    adaptive: Adaptive
    next_at: float = 0.0
    held: bool = False
    window_start: float = 0.0
    callback_window: int | None = None
    cooling: int = 0
    probes: list[Probe] = field(default_factory=list)

    def close(self) -> None:
        for probe in self.probes:
            probe.close()
        self.probes = []


class RateController:
    def __init__(self, room: Room, cache: CampaignCache, redis: Redis):
        self.room = room
        self.cache = cache
        self.redis = redis
        self.token = secrets.token_hex(12)
        self.controls: dict[str, _Control] = {}
        self.session: aiohttp.ClientSession | None = None
        # for the metrics
        self.changes: dict[tuple[str, str], int] = {}
        self.signals: dict[str, list[Signal]] = {}

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        return self.session

    def leading(self, campaign: str) -> bool:
        control = self.controls.get(campaign)
        return control is not None and control.held

    async def tick(self) -> None:
        now = time.monotonic()
        wanted: set[str] = set()
        for campaign, live in list(self.cache.campaigns.items()):
            adaptive = live.spec.admission.adaptive
            if adaptive is None or live.state.state == "closed" or self.cache.skip(campaign):
                continue
            wanted.add(campaign)
            control = self.controls.get(campaign)
            if control is None or control.adaptive.sources != adaptive.sources:
                if control is not None:
                    control.close()
                control = self.controls[campaign] = _Control(adaptive, held=False)
            control.adaptive = adaptive
            if now < control.next_at:
                continue
            # A window is never shorter than the interval, even after this loop ran late:
            # a probe out for a moment proves nothing, in either direction.
            control.next_at = now + adaptive.interval_s
            try:
                await self._step(campaign, control, live.state.state, now)
            except Unavailable:
                control.held = False
            except GateError as exc:
                log.error("event=controller_failed campaign=%s error=%s", campaign, exc.message)
        for campaign in set(self.controls) - wanted:
            await self._drop(campaign)

    async def _drop(self, campaign: str) -> None:
        control = self.controls.pop(campaign)
        control.close()
        self.signals.pop(campaign, None)
        if control.held:
            with contextlib.suppress(Unavailable, GateError):
                await self.room.controller_lease(campaign, self.token, LEASE_MIN_MS, "release")

    async def _step(self, campaign: str, control: _Control, state: str, now: float) -> None:
        adaptive = control.adaptive
        ttl_ms = max(int(adaptive.interval_s * 3000), LEASE_MIN_MS)
        held = await self.room.controller_lease(campaign, self.token, ttl_ms, "acquire")
        if not held:
            if control.held:
                log.info("event=controller_lease_lost campaign=%s", campaign)
            control.held = False
            control.close()
            return
        if not control.held:
            # Newly in charge: gather one interval before judging anything.
            log.info("event=controller_lease_taken campaign=%s", campaign)
            control.held, control.window_start, control.callback_window = True, now, None
            control.probes = [
                p for s in adaptive.sources if (p := make_probe(s, self._session())) is not None
            ]
            self._start_probes(control)
            return
        target = adaptive.targets.latency_ms
        signals = [
            probe.window(
                control.window_start,
                now,
                adaptive.latency_percentile,
                slow_after_ms=target if target is not None else float("inf"),
            )
            for probe in control.probes
        ]
        signals += await self._callback_signals(campaign, control)
        control.window_start = now
        self._start_probes(control)
        self.signals[campaign] = signals
        if adaptive.mode != "auto" or state != "open":
            return  # pinned by an operator, or nothing is admitted to judge
        cooling = control.cooling > 0
        control.cooling = max(control.cooling - 1, 0)
        async with guarded():
            in_force = await self.redis.hget(CampaignKeys(campaign).meta, "rate")
        if in_force is None:
            return
        in_force_text = in_force.decode() if isinstance(in_force, bytes) else str(in_force)
        decision = decide(adaptive, float(in_force_text), signals, cooling=cooling)
        if decision is None:
            return
        changed = await self.room.controller_update(
            campaign,
            rate_in_force=in_force_text,
            rate=repr(float(decision.rate)),
            why=why_of(adaptive, decision),
            actor=ACTOR,
        )
        if not changed:
            return  # an operator changed the rate or the mode meanwhile: theirs stands
        if decision.direction == "down":
            control.cooling = adaptive.cooldown_intervals
        key = (campaign, decision.direction)
        self.changes[key] = self.changes.get(key, 0) + 1
        log.info(
            "event=rate_changed campaign=%s old=%s new=%s why=%s",
            campaign,
            in_force_text,
            decision.rate,
            why_of(adaptive, decision),
        )

    def _start_probes(self, control: _Control) -> None:
        for probe in control.probes:
            probe.start()

    async def _callback_signals(self, campaign: str, control: _Control) -> list[Signal]:
        """The last callback window that is over and flushed by every process, once."""
        adaptive = control.adaptive
        source = next((s for s in adaptive.sources if s.kind == "callbacks"), None)
        if source is None:
            return []
        window = int((self.cache.redis_now() - SETTLE_S) // adaptive.interval_s) - 1
        if control.callback_window is not None and window <= control.callback_window:
            return []
        control.callback_window = window
        return [
            await read_callback_window(
                self.redis, campaign, window, source, adaptive.latency_percentile
            )
        ]

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.tick()
                except Unavailable:
                    pass
                except GateError as exc:
                    log.error("event=controller_failed error=%s", exc.message)
                await asyncio.sleep(TICK_S)
        finally:
            # Stopping: the session first (a second cancellation may cut what follows),
            # then the leases, so a successor need not wait for them to lapse.
            for control in self.controls.values():
                control.close()
            if self.session is not None:
                await self.session.close()
            for campaign in list(self.controls):
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await self._drop(campaign)


class ControllerCollector(Collector):
    """The adaptive rate: the rate in force, this process's changes, the last signals."""

    def __init__(self, controller: RateController):
        self.controller = controller

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        controller = self.controller
        # The rate in force is fairgate_campaign_admission_rate_configured (gate/metrics.py).
        changes = CounterMetricFamily(
            "fairgate_controller_changes",
            "rate changes made by this process's controller",
            labels=["campaign", "direction"],
        )
        for (campaign, direction), count in sorted(controller.changes.items()):
            changes.add_metric([campaign, direction], count)
        leading = GaugeMetricFamily(
            "fairgate_controller_leading",
            "1 where this process holds the campaign's controller lease",
            labels=["campaign"],
        )
        latency = GaugeMetricFamily(
            "fairgate_controller_signal_latency_seconds",
            "the core's latency in the last window the controller judged",
            labels=["campaign", "source"],
        )
        errors = GaugeMetricFamily(
            "fairgate_controller_signal_error_ratio",
            "the core's error ratio in the last window the controller judged",
            labels=["campaign", "source"],
        )
        for campaign, control in list(controller.controls.items()):
            leading.add_metric([campaign], 1.0 if control.held else 0.0)
        for campaign, signals in list(controller.signals.items()):
            for signal in signals:
                if signal.latency_ms is not None:
                    latency.add_metric([campaign, signal.source], signal.latency_ms / 1000)
                if signal.error_ratio is not None:
                    errors.add_metric([campaign, signal.source], signal.error_ratio)
        yield from (changes, leading, latency, errors)
