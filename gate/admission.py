"""The admission loop: every process calls `admit` for each live campaign every ~50 ms.

The script is atomic and reads its time from Redis, so the token bucket and the active
cap hold however many processes run this loop (I6).
"""

from __future__ import annotations

import asyncio
import logging
import math

from gate.cache import CampaignCache, LiveCampaign
from gate.errors import GateError, Unavailable
from gate.room import Room

log = logging.getLogger("gate.admission")

# The most customers one admit call may take, however high the rate: a call's Lua time
# grows with it (one ZADD member each), and Redis runs nothing else meanwhile.
CALL_CEILING = 50_000
# lib/common.lua ACCRUE_MAX_US: the longest span whose tokens one call may use.
ACCRUE_MAX_S = 3.0


class Admitter:
    def __init__(
        self, room: Room, cache: CampaignCache, *, interval_s: float, max_per_call: int = 2000
    ):
        self.room = room
        self.cache = cache
        self.interval_s = interval_s
        self.max_per_call = max_per_call
        self.calls = 0
        self.admitted = 0
        self.finalized: set[str] = set()

    async def tick(self) -> None:
        for campaign, live in list(self.cache.campaigns.items()):
            if self.cache.skip(campaign):
                continue  # its new Redis Cluster master is being reconciled
            # At opening, shuffle the pre-queue into seqs 1..P (admit waits for it). The
            # script checks the opening by Redis time; this check goes by Redis time too
            # (as the cache measures it), so a lagging local clock delays nothing.
            opening = (
                live.state.prequeue_state == "assigning"
                or self.cache.redis_now() * 1_000_000 >= live.state.opens_at_us
            )
            if (
                live.state.prequeue_pending
                and opening
                and await self.room.assign_prequeue(campaign)
            ):
                log.info("event=prequeue_assigned campaign=%s", campaign)
            if live.state.state == "closed":
                if (
                    live.spec.policy == "ballot"
                    and campaign not in self.finalized
                    and await self.room.finalize_ballot(campaign)
                ):
                    self.finalized.add(campaign)
                    log.info("event=ballot_allocated campaign=%s", campaign)
                # held reservations still expire after close
                await self.room.admit(campaign, max_per_call=0)
                continue
            result = await self.room.admit(campaign, max_per_call=self.call_limit(live))
            self.calls += 1
            if result is not None:
                self.admitted += result.admitted

    def call_limit(self, live: LiveCampaign) -> int:
        """Most customers this call may admit: never below what one call can accrue
        (burst + ACCRUE_MAX_S of the rate, lib/common.lua refill), else a call stretched by a busy
        event loop leaves tokens beyond the burst, which the next refill drops, and the
        campaign falls short of its rate (issue 12: 5,000/s gave 4,908/s with the process
        saturated by polls). Up to CALL_CEILING."""
        can_accrue = math.ceil(live.state.rate * ACCRUE_MAX_S + live.spec.admission.burst)
        return max(self.max_per_call, min(can_accrue, CALL_CEILING))

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Unavailable:
                pass  # the cache reports the outage; admission resumes by itself
            except GateError as exc:
                log.error("event=admit_failed error=%s", exc.message)
            await asyncio.sleep(self.interval_s)
