"""The Room's multi-step flows: work computed in Python and written a chunk per script
call, fenced in the script so that any number of gate processes may run it at once."""

from __future__ import annotations

from gate import seeds
from gate.ballot import allocate
from gate.errors import ScriptError
from gate.prequeue import prequeue_order
from gate.room.calls import ScriptCalls
from gate.room.reads import Reads
from gate.room.replies import Reply


class Flows(ScriptCalls, Reads):
    async def assign_prequeue(self, campaign: str, chunk_size: int = 1000) -> bool:
        """Shuffle an opened campaign's pre-queue into seqs 1..P; True once all are given.

        The order is SHA-256(seed || digest) ascending (gate.prequeue), computed here and
        written a chunk per script call; the script's fencing on the position lets any
        number of processes run this at once without a seq given twice. False while the
        campaign is not open yet (by Redis time).
        """
        shuffle, state, total, done = await self.prequeue_progress(campaign)
        if shuffle != b"1" or state == b"done":
            return True
        if state is None:
            step = await self.prequeue_assign(campaign, 0)
            if step.status not in (Reply.OK, Reply.FROZEN, Reply.REFUSED):
                return step.status is Reply.NO_PREQUEUE
            if step.state == "done":
                await self.durable(campaign)
                return True
            position, size = step.position, step.total
        else:
            position, size = int(done or b"0"), int(total or b"0")
        seed = await self.seed_for(campaign, seeds.PREQUEUE)
        members = await self.prequeue_members(campaign)
        if len(members) != size:
            # the last chunk (another process's) dropped the set meanwhile
            return await self.prequeue_done(campaign)
        order = prequeue_order(seed, members)
        while position < size:
            step = await self.prequeue_assign(
                campaign, position, order[position : position + chunk_size]
            )
            if step.status not in (Reply.OK, Reply.REFUSED):
                raise ScriptError(f"prequeue_assign answered {step.status.name} at {position}")
            position = step.position
            if step.state == "done":
                break
        await self.durable(campaign)
        return await self.prequeue_done(campaign)

    async def finalize_ballot(self, campaign: str, chunk_size: int = 1000) -> bool:
        """Compute and store a closed ballot's allocation; True once it is stored.

        Deterministic from the subscriptions and the committed seed, so any process may
        do it; the script's chunk fencing keeps a chunk from being written twice.
        """
        meta = await self.meta(campaign)
        if meta is None or meta.get("policy") != "ballot" or meta["state"] != "closed":
            return False
        if meta.get("alloc_next") == "done":
            return True
        subs = await self.subscriptions(campaign)
        seed = await self.seed_for(campaign, seeds.BALLOT)
        result = allocate(int(meta["q_total"]), int(meta["q_step"]), subs, seed)
        items = sorted(result.items())
        chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)] or [[]]
        start = int(meta.get("alloc_next") or 0)
        for index in range(start, len(chunks)):
            last = index == len(chunks) - 1
            status, detail = await self.ballot_store(campaign, index, last, chunks[index], seed)
            if status is not Reply.OK:
                # another process stored this chunk first; done once it stored the last
                done = status is Reply.REFUSED and detail == "done"
                if done:
                    await self.durable(campaign)
                return done
        await self.durable(campaign)
        return True
