"""Graceful overload: while this process's event loop runs late, new waiting-room work is
answered 503 at once instead of queueing behind the backlog (issue 15).

A process pushed past what it can serve does not slow down evenly: every request waits
for all those read before it, so once arrivals outrun it, every answer is late, the
customers' browsers time out and retry, and the retries pile on. The event loop's lag is
the one measure of that backlog a process has: the kernel's socket buffers and the
requests already parsed all wait for the loop. A probe sleeps `PROBE_S`; when it wakes
more than `shed_lag_ms` late, the process sheds for `HOLD_S` after that probe, as long as
at least `SHED_MIN_IN_FLIGHT` of its own requests are under way: a loop that is late
because other processes hold the CPU, with little work of its own, sheds nothing (its
answers are late, not queued behind each other):

- what it sheds is the work that is safe to refuse and cheap to ask again: a join (503
  before any Redis call, so no place is half-taken: the customer's retry gets the same
  seq if an earlier try made one), a status poll and the waiting page (the ticket stays
  with the customer, so the place is kept);
- never the proxies' pass check, a claim or subscription, the core's confirm/release, the
  admin listener, health or metrics: those are what the admitted customers and the
  operators need most when it is busiest.

The answer is the same 503 `unavailable` + `Retry-After` as the in-flight bound's (the
busy page in a browser), counted as `fairgate_http_refused_total{reason="loop_lag"}`.
"""

from __future__ import annotations

import asyncio
import time

PROBE_S = 0.005
HOLD_S = 0.1
SHED_MIN_IN_FLIGHT = 64
# The public listener's routes shed while the loop is late (aiohttp's canonical forms).
SHED_ROUTES = frozenset({"/q/{campaign}/join", "/q/{campaign}/status", "/q/{campaign}"})


class Shedder:
    """Whether this process sheds now; `run` keeps it current."""

    def __init__(self, lag_limit_ms: int) -> None:
        self.limit_s = lag_limit_ms / 1000
        self.until = 0.0  # time.monotonic() up to which new waiting-room work is shed
        self.worst_s = 0.0  # the latest probe's lag
        self.episodes = 0  # times shedding began

    def shedding(self) -> bool:
        return self.until > 0 and time.monotonic() < self.until

    def observe(self, lag_s: float, now: float) -> None:
        """One probe's lag, read at `now` (time.monotonic())."""
        self.worst_s = lag_s
        if self.limit_s and lag_s > self.limit_s:
            if now >= self.until:
                self.episodes += 1
            self.until = now + HOLD_S

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(PROBE_S)
            now = time.monotonic()
            self.observe(max(0.0, now - started - PROBE_S), now)
