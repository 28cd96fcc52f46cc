"""The admission loop: every process calls `admit` for each live campaign every ~50 ms.

The script is atomic and reads its time from Redis, so the token bucket and the active
cap hold however many processes run this loop (I6).
"""

from __future__ import annotations

import asyncio
import logging

from gate.cache import CampaignCache
from gate.errors import GateError, Unavailable
from gate.room import Room

log = logging.getLogger("gate.admission")


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
            result = await self.room.admit(campaign, max_per_call=self.max_per_call)
            self.calls += 1
            if result is not None:
                self.admitted += result.admitted

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Unavailable:
                pass  # the cache reports the outage; admission resumes by itself
            except GateError as exc:
                log.error("event=admit_failed error=%s", exc.message)
            await asyncio.sleep(self.interval_s)
