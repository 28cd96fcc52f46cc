"""Batch the claims of concurrent requests into one Redis call per campaign (issue 15),
as gate/batcher.py does for joins.

Claims that arrive within `window_s` of each other share one `claim_batch` script call,
which makes each exactly as claim.lua alone would, in the order they arrived (the same
answers, the same audit entries, the same oversell guarantees: the script runs claim.lua's
own text once per claim); while a call is in flight, new arrivals form the next batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gate.errors import GateError
from gate.room import ClaimResult, Room


@dataclass(frozen=True)
class _Claim:
    seq: int
    digest: bytes
    amount: int
    key: str


_Pending = list[tuple[_Claim, "asyncio.Future[ClaimResult]"]]


class ClaimBatcher:
    def __init__(self, room: Room, *, window_s: float, max_batch: int) -> None:
        self.room = room
        self.window_s = window_s
        self.max_batch = max_batch
        self._pending: dict[str, _Pending] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.claims = 0

    async def claim(
        self, campaign: str, seq: int, digest: bytes, amount: int, idempotency_key: str
    ) -> ClaimResult:
        """What `Room.claim` would answer (or raise) for this claim alone."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ClaimResult] = loop.create_future()
        batch = self._pending.setdefault(campaign, [])
        batch.append((_Claim(seq, digest, amount, idempotency_key), future))
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

    async def _run(self, campaign: str, batch: _Pending) -> None:
        claims = [(c.seq, c.digest, c.amount, c.key) for c, _ in batch]
        try:
            if len(batch) == 1:  # alone: claim.lua itself (the same answer, a smaller call)
                results: list[ClaimResult | GateError] = [
                    await self.room.claim(campaign, *claims[0])
                ]
            else:
                results = await self.room.claim_batch(campaign, claims)
        except Exception as exc:  # every waiter gets the failure, none hangs
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self.batches += 1
        self.claims += len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its request went away
                continue
            if isinstance(result, GateError):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        for campaign in list(self._pending):
            self._flush(campaign)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
