"""Batch the joins of concurrent requests into one Redis call per campaign.

Requests that arrive within `window_s` of each other (a millisecond by default) share
one `join` script call; while a call is in flight, new arrivals form the next batch.
The call also writes the receipt records of the batches signed before it (ReceiptBook's
`carry`): a batch's signature is recorded by the next call, so a batch costs one round
trip (issue 15).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from gate.room import JOIN_OK, JoinResult, Room

if TYPE_CHECKING:
    from gate.audit.receipts import ReceiptBook

log = logging.getLogger("gate")


class JoinOutcome(NamedTuple):  # one per join: a frozen dataclass cost ~1 us more
    status: int
    now_us: int
    seq: int
    created: bool
    receipt: dict[str, Any] | None = None  # the signed receipt of a new ticket's batch


Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class TickBatches(Generic[Item, Outcome]):
    """Requests for one campaign gathered for `window_s` (or until `max_batch` of them),
    then made together by `_run`, which settles each request's future; while a batch is in
    flight, new arrivals form the next one. JoinBatcher and gate/claim_batcher.py."""

    def __init__(self, *, window_s: float, max_batch: int) -> None:
        self.window_s = window_s
        self.max_batch = max_batch
        self._pending: dict[str, list[tuple[Item, asyncio.Future[Outcome]]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def _submit(self, campaign: str, item: Item) -> Outcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        batch = self._pending.setdefault(campaign, [])
        batch.append((item, future))
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

    async def _run(self, campaign: str, batch: list[tuple[Item, asyncio.Future[Outcome]]]) -> None:
        raise NotImplementedError

    async def _drain(self) -> None:
        """Every batch still gathering made, every call in flight ended."""
        for campaign in list(self._pending):
            self._flush(campaign)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class JoinBatcher(TickBatches[bytes, JoinOutcome]):
    def __init__(
        self,
        room: Room,
        *,
        window_s: float,
        max_batch: int,
        receipts: ReceiptBook | None = None,
    ):
        super().__init__(window_s=window_s, max_batch=max_batch)
        self.room = room
        self.receipts = receipts
        self.batches = 0
        self.joined = 0

    async def join(self, campaign: str, digest: bytes) -> JoinOutcome:
        return await self._submit(campaign, digest)

    async def _run(
        self, campaign: str, batch: list[tuple[bytes, asyncio.Future[JoinOutcome]]]
    ) -> None:
        records = self.receipts.carry(campaign) if self.receipts is not None else []
        try:
            result = await self.room.join(campaign, [digest for digest, _ in batch], records)
        except Exception as exc:  # every waiter gets the failure, none hangs
            if self.receipts is not None:
                self.receipts.record_later(campaign, records)  # for the next call
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        if self.receipts is not None:
            # written by the call, or the campaign is gone (UNKNOWN_CAMPAIGN): done either way
            self.receipts.recorded(campaign, records)
        self.batches += 1
        receipts: dict[int, dict[str, Any]] = {}
        if self.receipts is not None and result.status == JOIN_OK:
            receipts = await self._receipts(campaign, batch, result)
        for index, (_, future) in enumerate(batch):
            if future.done():
                continue
            if result.status != JOIN_OK:
                future.set_result(JoinOutcome(result.status, result.now_us, 0, False))
            else:
                seq, created_now = result.tickets[index]
                self.joined += created_now
                receipt = receipts.get(seq)
                future.set_result(
                    JoinOutcome(result.status, result.now_us, seq, created_now, receipt)
                )

    async def _receipts(
        self,
        campaign: str,
        batch: list[tuple[bytes, asyncio.Future[JoinOutcome]]],
        result: JoinResult,
    ) -> dict[int, dict[str, Any]]:
        """New tickets: one signature for the whole batch (its join entry), right after
        the script, its record left for the next call. Tickets that existed: the receipt
        they were given then."""
        assert self.receipts is not None
        created = [
            (seq, digest)
            for (digest, _), (seq, new) in zip(batch, result.tickets, strict=True)
            if new and seq > 0
        ]
        retried = [seq for seq, new in result.tickets if not new and seq > 0]
        out: dict[int, dict[str, Any]] = {}
        work: list[Awaitable[Any]] = []
        if created and result.entry:
            issued, item = self.receipts.sign_batch(campaign, result.entry, result.now_us, created)
            out.update((r["seq"], r) for r in issued)
            self.receipts.record_later(campaign, [item])
        if retried:
            work.append(self.receipts.receipts_for(campaign, retried))
        for done in await asyncio.gather(*work, return_exceptions=True):
            if isinstance(done, BaseException):  # a join never fails for want of a receipt
                log.warning("event=receipt_failed campaign=%s error=%s", campaign, done)
            elif isinstance(done, dict):
                out.update(done)
        return out

    async def close(self) -> None:
        await self._drain()
        if self.receipts is not None:
            await self.receipts.flush()
