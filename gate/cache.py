"""A per-process cache of every campaign's live state, refreshed every few milliseconds.

It is what lets a waiting customer's poll and a proxy's auth check cost no Redis round
trip. It also knows whether Redis is reachable: a refresh that fails marks the cache
stale at once, and a stale cache makes the gate fail closed. Two bars: what could grant
access (a pass check, a pass issued) needs `fresh()`, a refresh that succeeded just now;
a waiting customer's position needs only `answering()`, no refresh failed since the last
success, so that the gate's own event-loop lag makes a position slightly old, never a 503.

It also keeps Redis's clock, the one clock of the gate: every second a refresh reads Redis
`TIME` and keeps its offset from this process's monotonic clock, so `redis_now()` is
Redis time without a round trip, whatever this process's wall clock says. How far that
wall clock is from Redis is the skew: reported once per change (WARNING), and as a gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gate.campaign import CampaignSpec, load_stored_spec, valid_campaign_id
from gate.errors import GateError, Unavailable
from gate.redis_client import guarded
from gate.room import CampaignState, Room

log = logging.getLogger("gate.cache")
RATE_WINDOW_S = 10.0
SPEC_RELOAD_S = 1.0
# However late this process's refresher runs, a position older than this is not shown.
ANSWERING_LIMIT_S = 30.0
# A claim, a pass or /gate/auth waits at most this many times stale_after for the next
# refresh when the cache is only old (the event loop ran late; measured beside a CPU hog:
# refreshes 1.3-2.7 s apart).
FRESH_WAIT_STALE_TIMES = 5
# Campaign ids found not to exist are remembered this long (the specs' reload period), so
# that requests for them do not each read Redis; a campaign created meanwhile by another
# process is seen at the next reload, by this one at once (Room.on_change).
MISSING_TTL_S = SPEC_RELOAD_S
# At most this many are remembered: a flood of random ids empties the memory, never grows it.
MISSING_MAX = 10_000
# Redis's clock is read once a second: a clock drifts by microseconds in that time.
CLOCK_MEASURE_S = 1.0
# A measurement whose round trip took longer than this says little; the last good one stays.
CLOCK_MAX_ROUND_TRIP_S = 0.25
# A wall clock further than this from Redis's is reported; back within half of it, cleared.
SKEW_TOLERANCE_S = 1.0
# A skew that keeps changing is reported again at most this often.
SKEW_REPORT_EVERY_S = 60.0


@dataclass
class LiveCampaign:
    spec: CampaignSpec
    state: CampaignState
    revoked: frozenset[int] = frozenset()
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=2048))

    def record(self, now: float) -> None:
        self.samples.append((now, self.state.admitted))
        while self.samples and now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.popleft()

    def admission_rate(self) -> float:
        """Customers admitted per second, measured over the last few seconds."""
        if len(self.samples) >= 2:
            (t0, a0), (t1, a1) = self.samples[0], self.samples[-1]
            if t1 - t0 >= 1.0 and a1 > a0:
                return (a1 - a0) / (t1 - t0)
        return self.state.rate


class CampaignCache:
    def __init__(
        self,
        room: Room,
        *,
        refresh_interval_s: float,
        stale_after_s: float,
        clock: Callable[[], float] = time.time,
        redis_address: str = "",
    ):
        self.room = room
        self.redis_address = redis_address  # named in the log when it does not answer
        self.refresh_interval_s = refresh_interval_s
        self.stale_after_s = stale_after_s
        self.campaigns: dict[str, LiveCampaign] = {}
        self.last_ok = 0.0
        self.last_error = 0.0
        self._last_spec_reload = 0.0
        # This process's wall clock: only compared with Redis's, never trusted to decide.
        self.clock = clock
        self.clock_measured = False
        self.skew_s = 0.0  # this process's wall clock minus Redis's, at the last measure
        self._redis_minus_monotonic = 0.0
        self._last_clock_measure = 0.0
        self._skew_reported: float | None = None  # the skew last reported, while out of bounds
        self._skew_reported_at = 0.0
        # Campaigns not to read now (a Redis Cluster campaign whose new master is being
        # reconciled: its connections are refused, and the others must stay fresh).
        self.skip: Callable[[str], bool] = lambda campaign: False
        # Set (and replaced) each time a refresh ends, well or not: what wait_fresh waits on.
        self._refreshed = asyncio.Event()
        # Loads of a campaign not cached yet, in flight: the requests that miss it share one.
        self._loading: dict[str, asyncio.Future[LiveCampaign | None]] = {}
        # Ids found not to exist, with when (monotonic) to look again: a request for one
        # costs no Redis read meanwhile. Emptied when full (a flood of random ids).
        self._missing: dict[str, float] = {}
        self._created: set[str] = set()  # created here while a load of theirs was in flight
        self.missing_max = MISSING_MAX

    def redis_now(self) -> float:
        """Redis's time (unix seconds) as this process knows it: its monotonic clock plus
        the offset measured at the last refresh. Before the first measure, this process's
        wall clock (no pass is checked then: the cache is not fresh)."""
        if not self.clock_measured:
            return self.clock()
        return time.monotonic() + self._redis_minus_monotonic

    async def measure_clock(self) -> None:
        """Read Redis `TIME`; keep its offset from the monotonic clock and the skew of the
        wall clock, both taken at the middle of the round trip."""
        wall_before, started = self.clock(), time.monotonic()
        async with guarded():
            seconds, micros = await self.room.redis.time()
        wall_after, ended = self.clock(), time.monotonic()
        self._last_clock_measure = ended
        if ended - started > CLOCK_MAX_ROUND_TRIP_S and self.clock_measured:
            return
        redis_s = int(seconds) + int(micros) / 1_000_000
        self._redis_minus_monotonic = redis_s - (started + ended) / 2
        self.skew_s = (wall_before + wall_after) / 2 - redis_s
        self.clock_measured = True
        self._report_skew(ended)

    def _report_skew(self, now: float) -> None:
        skew = self.skew_s
        reported = self._skew_reported
        if abs(skew) > SKEW_TOLERANCE_S:
            changed = reported is None or abs(skew - reported) > SKEW_TOLERANCE_S
            if changed and (
                reported is None or now - self._skew_reported_at >= SKEW_REPORT_EVERY_S
            ):
                # Nothing this process decides uses its wall clock; the line tells the
                # operator to fix NTP before something outside fairgate trusts it.
                log.warning(
                    "event=clock_skew skew_s=%.1f tolerance_s=%.1f decisions=redis_time",
                    skew,
                    SKEW_TOLERANCE_S,
                )
                self._skew_reported = skew
                self._skew_reported_at = now
        elif reported is not None and abs(skew) <= SKEW_TOLERANCE_S / 2:
            log.info("event=clock_skew_cleared skew_s=%.3f", skew)
            self._skew_reported = None

    def fresh(self) -> bool:
        """True while the cache proves the current state: Redis answered just now."""
        now = time.monotonic()
        return self.last_error < self.last_ok and now - self.last_ok < self.stale_after_s

    def answering(self) -> bool:
        """True while waiting customers may be answered from the cache: Redis answered the
        last refresh that finished. An old success with no failure since only means the
        event loop was late; the cursor it shows is a little behind, which grants nothing."""
        now = time.monotonic()
        return self.last_error < self.last_ok and now - self.last_ok < ANSWERING_LIMIT_S

    def failed_last(self) -> bool:
        """The last refresh that ended failed. False while none has ended yet: a process
        that has just started (its workers listen before the first refresh is back) has
        not found Redis unreachable."""
        return self.last_error >= self.last_ok and self.last_error > 0

    async def wait_answering(self) -> bool:
        """`answering()`, waiting for the first refresh of a process that has just started
        (as `wait_fresh` would); False at once otherwise."""
        if self.answering():
            return True
        if self.last_ok or self.last_error:
            return False
        return await self.wait_fresh()

    async def wait_fresh(self, limit_s: float | None = None) -> bool:
        """True once the cache proves the current state. At once when it is `fresh()`; when
        it is only old (no refresh failed since the last success: this process's event loop
        ran late, starved of CPU, not Redis), after the next refresh succeeds, waiting at most
        `limit_s` (by default FRESH_WAIT_STALE_TIMES x stale_after), so that a late loop
        delays a pass instead of failing it closed; likewise for the first refresh of a
        process that has just started. False at once when the last refresh failed: Redis
        is unreachable and the gate fails closed fast (I7); a refresh that hangs fails
        within its Redis timeout."""
        limit = FRESH_WAIT_STALE_TIMES * self.stale_after_s if limit_s is None else limit_s
        deadline = time.monotonic() + limit
        while not self.fresh():
            remaining = deadline - time.monotonic()
            if self.failed_last() or remaining <= 0:
                return False
            # The timer and the refresh may be due on the same late turn of the loop:
            # whichever runs first, the state is looked at again.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refreshed.wait(), remaining)
        return True

    def _refresh_ended(self) -> None:
        self._refreshed.set()
        self._refreshed = asyncio.Event()

    def peek(self, campaign: str) -> LiveCampaign | None:
        return self.campaigns.get(campaign)

    async def get(self, campaign: str) -> LiveCampaign | None:
        """The cached campaign, loading it from Redis the first time it is asked for. The
        requests that miss it together share one load: a crowd's first joins would
        otherwise each read the campaign and drain the connection pool."""
        live = self.campaigns.get(campaign)
        if live is not None or not valid_campaign_id(campaign):
            return live
        until = self._missing.get(campaign)
        if until is not None:
            if time.monotonic() < until:
                return None
            del self._missing[campaign]
        loading = self._loading.get(campaign)
        if loading is None:
            loading = asyncio.ensure_future(self._load(campaign))
            self._loading[campaign] = loading
            loading.add_done_callback(lambda done: self._loaded(campaign, done))
        # A request that goes away (its client left) does not cancel the others' load.
        return await asyncio.shield(loading)

    def _loaded(self, campaign: str, done: asyncio.Future[LiveCampaign | None]) -> None:
        if self._loading.get(campaign) is done:
            del self._loading[campaign]
            self._created.discard(campaign)
        if not done.cancelled():
            done.exception()  # retrieved here: every waiter may have gone

    async def _load(self, campaign: str) -> LiveCampaign | None:
        asked_at = time.monotonic()
        meta = await self.room.meta(campaign)
        if meta is None:
            self._remember_missing(campaign, asked_at)
            return None
        snapshot = (await self.room.snapshot([campaign]))[campaign]
        if snapshot is None:
            self._remember_missing(campaign, asked_at)
            return None
        live = LiveCampaign(load_stored_spec(meta["spec"]), snapshot)
        if snapshot.rev:
            live.revoked = await self.room.revoked(campaign)
        self.campaigns[campaign] = live
        self._missing.pop(campaign, None)
        return live

    def _remember_missing(self, campaign: str, asked_at: float) -> None:
        if campaign in self._created:  # created here while Redis was being asked
            self._created.discard(campaign)
            return
        if len(self._missing) >= self.missing_max:
            self._missing.clear()
        self._missing[campaign] = asked_at + MISSING_TTL_S

    def forget_missing(self, campaign: str) -> None:
        """This process changed (or created) `campaign`: a miss remembered is dropped, and
        a load in flight that started before the creation does not remember one."""
        self._missing.pop(campaign, None)
        if campaign in self._loading:
            self._created.add(campaign)

    def missing_count(self) -> int:
        return len(self._missing)

    async def _reload_specs(self) -> None:
        for campaign in await self.room.list_ids():
            if self.skip(campaign):
                continue
            if campaign in self.campaigns:
                meta = await self.room.meta(campaign)
                if meta is not None:
                    self.campaigns[campaign].spec = load_stored_spec(meta["spec"])
            else:
                await self._load(campaign)

    async def refresh_once(self) -> None:
        now = time.monotonic()
        # While a Redis Cluster campaign's new master is reconciled, its connections are
        # refused (and a refused command makes redis-py's cluster client wait 0.25 s before
        # its retry): neither the registry (which may live on that master) nor TIME (sent
        # to any master) is read until then; the offset measured before holds meanwhile.
        holding = any(self.skip(campaign) for campaign in self.campaigns)
        if now - self._last_spec_reload >= SPEC_RELOAD_S and not holding:
            self._last_spec_reload = now
            await self._reload_specs()
        due = now - self._last_clock_measure >= CLOCK_MEASURE_S and not holding
        if due or not self.clock_measured:
            await self.measure_clock()
        names = [name for name in self.campaigns if not self.skip(name)]
        if names:
            snapshots = await self.room.snapshot(names)
            for campaign, snapshot in snapshots.items():
                live = self.campaigns.get(campaign)
                if live is None:
                    continue
                if snapshot is None:
                    del self.campaigns[campaign]
                    continue
                if snapshot.rev != live.state.rev:
                    live.revoked = await self.room.revoked(campaign)
                live.state = snapshot
                live.record(time.monotonic())
        self.last_ok = time.monotonic()
        self._refresh_ended()

    async def run(self) -> None:
        while True:
            try:
                await self.refresh_once()
            except Unavailable:
                if self.last_error <= self.last_ok:
                    log.warning(
                        "event=redis_unreachable redis=%s component=cache", self.redis_address
                    )
                self.last_error = time.monotonic()
            except GateError as exc:
                self.last_error = time.monotonic()
                log.error("event=refresh_failed error=%s", exc.message)
            self._refresh_ended()
            await asyncio.sleep(self.refresh_interval_s)
