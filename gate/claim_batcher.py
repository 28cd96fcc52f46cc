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

from gate.batcher import TickBatches
from gate.errors import GateError
from gate.room import ClaimResult, Room


@dataclass(frozen=True)
class _Claim:
    seq: int
    digest: bytes
    amount: int
    key: str


_Pending = list[tuple[_Claim, "asyncio.Future[ClaimResult]"]]


class ClaimBatcher(TickBatches[_Claim, ClaimResult]):
    def __init__(self, room: Room, *, window_s: float, max_batch: int) -> None:
        super().__init__(window_s=window_s, max_batch=max_batch)
        self.room = room
        self.batches = 0
        self.claims = 0

    async def claim(
        self, campaign: str, seq: int, digest: bytes, amount: int, idempotency_key: str
    ) -> ClaimResult:
        """What `Room.claim` would answer (or raise) for this claim alone."""
        return await self._submit(campaign, _Claim(seq, digest, amount, idempotency_key))

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
        await self._drain()
