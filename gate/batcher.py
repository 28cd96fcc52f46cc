"""Batch the joins of concurrent requests into one Redis call per campaign.

Requests that arrive within `window_s` of each other (a millisecond by default) share
one `join` script call; while a call is in flight, new arrivals form the next batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gate.room import JOIN_OK, Room


@dataclass(frozen=True)
class JoinOutcome:
    status: int
    now_us: int
    seq: int
    created: bool


class JoinBatcher:
    def __init__(self, room: Room, *, window_s: float, max_batch: int):
        self.room = room
        self.window_s = window_s
        self.max_batch = max_batch
        self._pending: dict[str, list[tuple[bytes, asyncio.Future[JoinOutcome]]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.joined = 0

    async def join(self, campaign: str, digest: bytes) -> JoinOutcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JoinOutcome] = loop.create_future()
        batch = self._pending.setdefault(campaign, [])
        batch.append((digest, future))
        if len(batch) >= self.max_batch:
            self._flush(campaign)
        elif campaign not in self._timers:
            self._timers[campaign] = loop.call_later(self.window_s, self._flush, campaign)
        return await future

    def _flush(self, campaign: str) -> None:
        timer = self._timers.pop(campaign, None)
        if timer is not None:
            timer.cancel()
        batch = self._pending.pop(campaign, None)
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(campaign, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(
        self, campaign: str, batch: list[tuple[bytes, asyncio.Future[JoinOutcome]]]
    ) -> None:
        try:
            result = await self.room.join(campaign, [digest for digest, _ in batch])
        except Exception as exc:  # every waiter gets the failure, none hangs
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self.batches += 1
        for index, (_, future) in enumerate(batch):
            if future.done():
                continue
            if result.status != JOIN_OK:
                future.set_result(JoinOutcome(result.status, result.now_us, 0, False))
            else:
                seq, created = result.tickets[index]
                self.joined += created
                future.set_result(JoinOutcome(result.status, result.now_us, seq, created))

    async def close(self) -> None:
        for campaign in list(self._pending):
            self._flush(campaign)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
