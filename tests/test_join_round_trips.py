"""A join batch costs one Redis round trip (issue 15): the batch's receipt record (its
Ed25519 signature and first seq) rides on the campaign's next join call instead of a
transaction of its own; the receipts stay what they were (signed per batch, verifiable,
rebuilt later from Redis alone), and a record no later call carries is written by itself.
On each Redis version (join.lua must run on 6.2 and 7.x)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from gate.audit.format import load_public_keys
from gate.audit.receipts import ReceiptBook, verify_receipt
from gate.batcher import JoinOutcome
from gate.campaign import parse_spec
from gate.config import Config
from gate.redis_server import RedisServer
from gate.room.keys import CampaignKeys
from gate.tokens import customer_digest
from tests.command_log import CommandLog
from tests.helpers import quiet_gate, spec, wait_for

BATCHES = 6
PER_BATCH = 20
# The log's own commands (reading it back) are not the gate's.
OWN = {b"SLOWLOG", b"CONFIG"}


async def test_a_join_batch_is_one_round_trip_and_its_receipts_hold(
    config: Config, any_redis: RedisServer
) -> None:
    cfg = dataclasses.replace(config, redis_url=any_redis.url, join_batch_window_ms=50)
    CommandLog(any_redis.url).client.flushall()
    async with quiet_gate(cfg) as gate:
        await gate.room.create(parse_spec(spec("rt")), "ops")
        # no record written by itself during the test: only the calls carry them
        gate.receipts.record_later_s = 3600
        public_keys = load_public_keys(gate.keys.public_keys())
        outcomes: list[JoinOutcome] = []
        with CommandLog(any_redis.url) as log:
            for b in range(BATCHES):
                digests = [customer_digest(gate.keys, "rt", f"b{b}-{n}") for n in range(PER_BATCH)]
                outcomes += await asyncio.gather(*(gate.batcher.join("rt", d) for d in digests))
            commands = [c for c in log.commands() if c[0].upper() not in OWN]
        join_sha = gate.scripts["join"].sha.encode()
        names = [c[0].upper() for c in commands]
        # before: EVALSHA then MULTI, HSETNX, ZADD, EXEC for each batch
        assert names == [b"EVALSHA"] * BATCHES, names
        assert all(c[1] == join_sha for c in commands)
        assert gate.batcher.batches == BATCHES
        for outcome in outcomes:
            assert outcome.created and outcome.receipt is not None
            assert verify_receipt(outcome.receipt, public_keys)
        entries = sorted({o.receipt["entry"] for o in outcomes if o.receipt})
        assert len(entries) == BATCHES
        k = CampaignKeys("rt")
        recorded = await gate.redis.hmget(k.receipt_signatures, [str(e) for e in entries])
        # each batch's record came with the next call: all but the last are in Redis
        assert [r is not None for r in recorded] == [True] * (BATCHES - 1) + [False]
        # this process answers the last one from memory meanwhile
        last = [o for o in outcomes if o.receipt and o.receipt["entry"] == entries[-1]]
        again = await gate.receipts.receipts_for("rt", [last[0].seq])
        assert again[last[0].seq] == last[0].receipt
        # a retried join's call carries it too, and gets the receipt given the first time
        retried = await gate.batcher.join("rt", customer_digest(gate.keys, "rt", "b0-0"))
        assert not retried.created and retried.receipt == outcomes[0].receipt
        # a batch no later call follows: its record is written by itself
        gate.receipts.record_later_s = 0.01
        late = await gate.batcher.join("rt", customer_digest(gate.keys, "rt", "late"))
        assert late.receipt is not None
        entries.append(late.receipt["entry"])
        outcomes.append(late)

        async def all_recorded() -> bool:
            values = await gate.redis.hmget(k.receipt_signatures, [str(e) for e in entries])
            return all(v is not None for v in values)

        await wait_for(all_recorded, 5, "the last batch's record written by itself")
        # rebuilt from Redis alone by another process: the receipts given at join
        other = ReceiptBook(gate.redis, gate.keys, None, scripts=gate.scripts)
        rebuilt = await other.receipts_for("rt", [o.seq for o in outcomes])
        assert {o.seq: o.receipt for o in outcomes} == rebuilt


async def test_records_carried_by_a_call_for_a_closed_campaign_are_written(
    config: Config, any_redis: RedisServer
) -> None:
    """The next call may find the campaign closed; the records it carries are written
    all the same (join.lua writes them before it looks at the campaign's state)."""
    cfg = dataclasses.replace(config, redis_url=any_redis.url)
    CommandLog(any_redis.url).client.flushall()
    async with quiet_gate(cfg) as gate:
        await gate.room.create(parse_spec(spec("cl")), "ops")
        gate.receipts.record_later_s = 3600
        first: Any = await gate.batcher.join("cl", customer_digest(gate.keys, "cl", "a"))
        entry = first.receipt["entry"]
        k = CampaignKeys("cl")
        assert await gate.redis.hget(k.receipt_signatures, str(entry)) is None
        await gate.room.set_state("cl", "close", "ops")
        refused = await gate.batcher.join("cl", customer_digest(gate.keys, "cl", "b"))
        assert refused.seq == 0 and not refused.created
        signature = await gate.redis.hget(k.receipt_signatures, str(entry))
        assert signature == f"{first.receipt['kid']}:{first.receipt['sig']}".encode()
        assert await gate.redis.zscore(k.join_entries, str(entry)) == first.seq
