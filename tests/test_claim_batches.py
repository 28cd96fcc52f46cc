"""Claims batched per event-loop tick, as joins are (issue 15): N concurrent claims make
far fewer than N script calls, and each customer's outcome is exactly what it would have
been alone: the answers, the audit entries and what is held equal those of the same
claims made one by one with claim.lua, in the same order. On each Redis version
(claim_batch.lua must run on 6.2 and 7.x)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

from gate.campaign import parse_spec
from gate.config import Config
from gate.errors import GateError
from gate.http.public import create_public_app
from gate.redis_server import RedisServer
from gate.room import ClaimResult
from gate.room.keys import CampaignKeys
from gate.service import Gate
from gate.tokens import PASS, customer_digest
from tests.command_log import CommandLog
from tests.helpers import as_customer, open_amount_spec, quiet_gate, raw_audit, unpack

CUSTOMERS = 120
TOTAL, LOW, HIGH, STEP = 300_000_000, 1_000_000, 10_000_000, 10_000


async def _admitted(gate: Gate, campaign: str) -> dict[str, tuple[int, bytes, str]]:
    """Every customer joined, admitted and given a pass: customer -> (seq, digest, pass)."""
    raw = open_amount_spec(campaign, TOTAL, LOW, HIGH, STEP)
    await gate.room.create(parse_spec(raw), "ops")
    names = [f"c{i}" for i in range(CUSTOMERS)]
    digests = [customer_digest(gate.keys, campaign, n) for n in names]
    joined = await gate.room.join(campaign, digests)
    admitted = await gate.room.admit(campaign, max_per_call=CUSTOMERS)
    assert admitted is not None and admitted.cursor == CUSTOMERS
    out = {}
    for name, digest, (seq, _) in zip(names, digests, joined.tickets, strict=True):
        state, deadline, _ = await gate.room.pass_status(campaign, seq, digest)
        assert state == "admitted"
        token = gate.signer.issue(PASS, campaign, seq, digest, exp=deadline // 1_000_000)
        out[name] = (seq, digest, token)
    assert await gate.cache.get(campaign) is not None  # loaded by this process's cache
    await gate.cache.refresh_once()
    return out


def _claims() -> list[tuple[str, int, str]]:
    """(customer, amount, idempotency key): good amounts that sell the quota out, amounts
    below the minimum, off the step and over the limit, retries with the same key (a replay),
    the same key for another amount, and a second claim while one is held."""
    rng = random.Random(15)
    claims: list[tuple[str, int, str]] = []
    for i in range(CUSTOMERS):
        kind = rng.random()
        if kind < 0.05:
            amount = LOW - STEP
        elif kind < 0.1:
            amount = LOW + 1
        elif kind < 0.15:
            amount = HIGH + STEP
        else:
            amount = rng.randrange(LOW, HIGH + 1, STEP)
        claims.append((f"c{i}", amount, "k"))
    for i in rng.sample(range(CUSTOMERS), 30):
        amount = claims[i][1]
        claims.append((f"c{i}", amount, "k"))  # a retry: the same answer
        claims.append((f"c{i}", amount + STEP, "k"))  # the key reused for another amount
        claims.append((f"c{i}", LOW, "other"))  # another claim while one is held
    rng.shuffle(claims)
    return claims


def _answer(result: ClaimResult | GateError) -> tuple[Any, ...]:
    """What a customer is told, less the reservation id's random part and the time."""
    if isinstance(result, GateError):
        return ("error", result.code, result.status)
    if not result.ok:
        return ("refused", result.refusal.code, result.detail)
    number = result.reservation.split("-")[0]
    return ("reserved", number, result.amount, result.replayed)


def _http_answer(status: int, body: dict[str, Any]) -> tuple[Any, ...]:
    if status in (200, 201):
        number = body["reservation"].split("-")[0]
        return ("reserved", number, int(body["amount"]), status == 200)
    return ("http", body["error"]["code"], status)


def _entries(raw: list[bytes]) -> list[tuple[Any, ...]]:
    """The claim entries, less their time, reservation id's random part and expiry."""
    out = []
    for entry in map(unpack, raw):
        if entry[b"k"] == b"claim":
            rid = entry[b"r"].split(b"-")[0]
            out.append((entry[b"i"], entry[b"s"], rid, entry[b"m"], entry[b"q"], entry.get(b"o")))
    return out


async def test_concurrent_claims_share_calls_and_answer_as_if_alone(
    config: Config, any_redis: RedisServer, aiohttp_client: Any
) -> None:
    cfg = dataclasses.replace(config, redis_url=any_redis.url, stale_after_ms=60000)
    CommandLog(any_redis.url).client.flushall()
    async with quiet_gate(cfg) as gate:
        public = await aiohttp_client(create_public_app(gate))
        batched = await _admitted(gate, "batched")
        alone = await _admitted(gate, "alone")
        claims = _claims()

        async def claim(customer: str, amount: int, key: str) -> tuple[Any, ...]:
            _, _, token = batched[customer]
            r = await public.post(
                "/q/batched/claim",
                json={"amount": str(amount), "idempotency_key": key},
                headers=as_customer(customer, **{"X-Gate-Pass": token}),
            )
            return _http_answer(r.status, await r.json())

        with CommandLog(any_redis.url) as log:
            answers = await asyncio.gather(*(claim(*c) for c in claims))
            batch_calls = log.script_calls(gate.scripts["claim_batch"].sha)
            single_calls = log.script_calls(gate.scripts["claim"].sha)
        # before: one claim.lua call per claim (210)
        assert batch_calls + single_calls <= len(claims) // 10, (batch_calls, single_calls)
        assert batch_calls >= 1, answers[:5]

        # the same claims one by one, in the order the batches took them: claim.lua alone
        model = []
        for customer, amount, key in claims:
            seq, digest, _ = alone[customer]
            try:
                result: ClaimResult | GateError = await gate.room.claim(
                    "alone", seq, digest, amount, key
                )
            except GateError as exc:
                result = exc
            model.append(_answer(result))
        as_http = [
            a if a[0] == "reserved" else ("http", a[1], 409 if a[0] == "refused" else a[2])
            for a in model
        ]
        # a refusal's HTTP status is the reply table's (400, 403 or 409): compare codes
        assert [a[:2] for a in answers] == [a[:2] for a in as_http]
        assert [a for a in answers if a[0] == "reserved"] == [
            a for a in as_http if a[0] == "reserved"
        ]
        assert any(a[1] == "sold_out" for a in answers)
        assert any(a[1] == "idempotency_key_reused" for a in answers)
        assert any(a[0] == "reserved" and a[3] for a in answers)  # a replay

        # the same audit entries (but for the times and ids' random parts), the same held
        assert _entries(await raw_audit(any_redis.url, "batched")) == _entries(
            await raw_audit(any_redis.url, "alone")
        )
        held = [
            await gate.redis.hmget(CampaignKeys(c).meta, ["held", "confirmed", "claims"])
            for c in ("batched", "alone")
        ]
        assert held[0] == held[1]
        assert int(held[0][0]) <= TOTAL  # I1


async def test_a_batch_answers_each_claim_and_a_lone_claim_uses_claim_lua(
    config: Config, any_redis: RedisServer
) -> None:
    cfg = dataclasses.replace(config, redis_url=any_redis.url, stale_after_ms=60000)
    CommandLog(any_redis.url).client.flushall()
    async with quiet_gate(cfg) as gate:
        customers = await _admitted(gate, "b")
        seq, digest, _ = customers["c0"]
        other_seq, other_digest, _ = customers["c1"]
        results = await gate.room.claim_batch(
            "b",
            [
                (seq, digest, LOW, "k"),
                (seq, digest, LOW, "k"),  # replayed within the same batch
                (other_seq, digest, LOW, "k"),  # a seq that is not this digest's ticket
                (other_seq, other_digest, LOW + 1, "k"),  # off the step
            ],
        )
        first, replay, foreign, off_step = results
        assert isinstance(first, ClaimResult) and first.ok and not first.replayed
        assert isinstance(replay, ClaimResult) and replay.replayed
        assert replay.reservation == first.reservation
        assert isinstance(foreign, GateError) and foreign.code == "ticket_unknown"
        assert isinstance(off_step, ClaimResult) and off_step.refusal.code == "bad_step"
        with CommandLog(any_redis.url) as log:
            alone = await gate.claims.claim("b", other_seq, other_digest, LOW, "k")
            assert log.script_calls(gate.scripts["claim"].sha) == 1
        assert alone.ok
