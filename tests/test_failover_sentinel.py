"""Issue 11's acceptance test for replicated durability: a Sentinel failover after
replication lag, in the middle of a burst, loses nothing that was acknowledged.

Real processes on loopback (tests/redis_topology.py): a primary, two replicas with
`appendfsync everysec`, three Sentinels, and a lossy link (a TCP proxy) between the
primary and replica 1. A real `gate serve` process talks to Redis through the Sentinels
(`redis+sentinel://...`).

Customers arrive at a steady rate and each one joins, waits to be admitted and fetches a
pass, joins again (a retried join), claims an amount (amount quota, demand well above the
total) and is confirmed by the core system; every 503 (and every dropped connection) is
retried after a short pause, as the waiting page does. Mid-burst the link starts lagging
(0.7 s), then the primary is killed with SIGKILL, and the bytes still on the link vanish
with it. The burst goes on through the failover; once the Sentinels name the new primary,
the killed server is restarted as a replica of it (as its supervisor would), so that a
mode that waits for 2 replicas can write again.

Every acknowledged answer (2xx) is recorded: the seq each customer was given (on every
join and retried join), their reservation id and amount, their confirmation. Afterwards,
on the new primary:
- 0 acknowledged joins lost: each acknowledged customer's ticket is there, same seq;
- 0 seqs acknowledged to two customers; 0 reservation ids acknowledged to two customers;
- 0 acknowledged reservations or confirmations lost;
- confirmed total <= the quota total (no oversell), in the acknowledgements and in Redis;
- every 503 carried Retry-After, and no other 5xx;
- `gate audit export` then `gate audit verify` (the CLI, offline, with the published
  keys) is clean.

The modes (MODES): WAIT 1 with both replicas promotable (Sentinel usually promotes the
freshest, but it goes by offsets its last INFO showed, so either may be promoted: nothing
lost, or the loss held and reported); WAIT 2 with only the lagging replica promotable
(`replica-priority 0` on the other): nothing lost;
and the hostile case, WAIT 1 (or WAIT 2 with `redis_replica_loss = "continue"`) with only
the lagging replica promotable: the replica that acknowledged is not the one promoted, so
what the new primary lacks cannot be had back from Redis. There the gate must hold the
campaign, and its report (the admin view's `failover_hold`) must name every lost
acknowledgement (its seq, its reservation number); still nothing is issued twice and
nothing is oversold.

The last test takes away the only replica left after a failover: with
`redis_replica_loss = "hold"` joins answer 503 + Retry-After until it is back; with
"continue" they are answered, counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import redis as sync_redis

from gate.errors import Unavailable
from gate.redis_client import guarded
from gate.room.keys import CampaignKeys
from gate.signing import load_or_create_keys
from gate.tokens import customer_digest
from tests.helpers import (
    ADMIN_TOKEN,
    CORE_TOKEN,
    GateProcess,
    export_sealed_cli,
    gate_cli,
    open_amount_spec,
    spec,
    wait_for,
)
from tests.redis_topology import ReplicaSet

CAMPAIGN = "failover-deposit"
CUSTOMERS = 240
ARRIVALS_PER_S = 30.0  # the burst lasts ~8 s: the kill lands in its middle
TOTAL = 300_000_000
LOW, HIGH, STEP = 1_000_000, 3_000_000, 10_000  # demand ~480,000,000: it sells out
LAG_AFTER_S = 2.0  # the link starts lagging this long into the burst
KILL_AFTER_S = 3.0  # and the primary is killed this long into it
LAG_S = 0.7
CUSTOMER_DEADLINE_S = 30.0


@dataclass
class Ledger:
    """Every acknowledged answer of the burst, and what went wrong on the way."""

    seqs: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    passes: dict[str, int] = field(default_factory=dict)  # customer -> seq of the pass
    reservations: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    amounts: dict[str, int] = field(default_factory=dict)  # reservation -> amount
    confirmed: dict[str, tuple[str, int]] = field(default_factory=dict)  # customer -> (rid, amount)
    sold_out: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    unexpected: list[str] = field(default_factory=list)
    retries: int = 0
    unfinished: set[str] = field(default_factory=set)
    # Customers still waiting when nobody else is left: what is left of the quota cannot
    # serve them (admission is capped by it), so they stop polling and go home.
    waiting: set[str] = field(default_factory=set)
    left_waiting: set[str] = field(default_factory=set)
    stop_waiting: asyncio.Event = field(default_factory=asyncio.Event)
    # The campaign held after a failover that lost something (the admin view's
    # failover_hold): customers stop retrying a moment later and go home.
    hold: dict[str, Any] | None = None
    stop_retrying: asyncio.Event = field(default_factory=asyncio.Event)
    gave_up: set[str] = field(default_factory=set)
    # customer -> (reservation, status, body) of a confirm refused (404/409)
    refused_confirms: dict[str, tuple[str, int, Any]] = field(default_factory=dict)


@dataclass
class Figures:
    acknowledged_joins: int = 0
    lost_joins: int = 0
    seqs_twice: int = 0
    acknowledged_reservations: int = 0
    reservation_ids_twice: int = 0
    lost_reservations: int = 0
    acknowledged_confirms: int = 0
    lost_confirms: int = 0
    confirmed_total: int = 0
    confirmed_in_redis: int = 0
    held_in_redis: int = 0
    oversold: int = 0
    verify_ok: bool = False
    verify_output: str = ""
    failover_s: float = 0.0
    retries: int = 0
    unexpected: list[str] = field(default_factory=list)
    unfinished: int = 0
    left_waiting: int = 0
    gave_up: int = 0
    # Confirms refused (404/409) for a reservation the failover report names as lost.
    refused_reported: int = 0
    hold: dict[str, Any] | None = None
    # Lost acknowledgements that the hold's report does not name (seq or reservation
    # number outside its ranges): what the operator would never be told.
    lost_unreported: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    def clean(self) -> bool:
        """Nothing acknowledged lost, nothing issued twice, no oversell, the log verifies,
        no campaign held."""
        return (
            self.lost_joins == 0
            and self.lost_reservations == 0
            and self.lost_confirms == 0
            and self.hold is None
            and self.gave_up == 0
            and self.refused_reported == 0
            and self.safe()
        )

    def safe(self) -> bool:
        """What must hold even where a loss is reported and the campaign held."""
        return (
            self.seqs_twice == 0
            and self.reservation_ids_twice == 0
            and self.oversold == 0
            and not self.lost_unreported
            and self.verify_ok
            and not self.unexpected
            and self.unfinished == 0
        )


def campaign_spec() -> dict[str, Any]:
    return open_amount_spec(CAMPAIGN, TOTAL, LOW, HIGH, STEP)


class GaveUp(Exception):
    """The campaign is held after a reported loss: the customer stops retrying."""


class Customer:
    """One customer's way through the gate, retrying what answers 503 as the page does."""

    def __init__(
        self,
        name: str,
        http: aiohttp.ClientSession,
        gate: GateProcess,
        ledger: Ledger,
        rng: random.Random,
    ):
        self.name = name
        self.http = http
        self.gate = gate
        self.ledger = ledger
        self.amount = rng.randrange(LOW, HIGH + 1, STEP)
        self.deadline = time.monotonic() + CUSTOMER_DEADLINE_S

    async def call(self, method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """The answer, after retrying 503s and dropped connections until the deadline."""
        while True:
            try:
                async with self.http.request(method, url, **kwargs) as r:
                    status, retry_after = r.status, r.headers.get("Retry-After")
                    body = await r.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError):
                status, body, retry_after = 0, {}, None
            self.ledger.statuses[status] += 1
            if status == 503 and not retry_after:
                self.ledger.unexpected.append(f"{self.name} {url}: 503 without Retry-After")
            if status not in (0, 503):
                if status >= 500:
                    self.ledger.unexpected.append(f"{self.name} {url}: {status} {body}")
                return status, body
            if time.monotonic() > self.deadline:
                return status, body
            if self.ledger.stop_retrying.is_set():
                raise GaveUp
            self.ledger.retries += 1
            await asyncio.sleep(random.uniform(0.1, 0.3))

    async def run(self) -> None:
        self.ledger.unfinished.add(self.name)
        try:
            await self.steps()
        except GaveUp:
            self.ledger.gave_up.add(self.name)
            self.ledger.unfinished.discard(self.name)

    async def steps(self) -> None:
        who = {"X-Customer-Id": self.name}
        base = f"{self.gate.url}/q/{CAMPAIGN}"
        status, body = await self.call("POST", f"{base}/join", headers=who)
        if status not in (200, 201):
            self.ledger.unexpected.append(f"{self.name} join: {status} {body}")
            return
        self.ledger.seqs[self.name].add(int(body["seq"]))
        ticket = body["ticket"]
        # Wait to be admitted; the status that says so carries the pass.
        pass_token = ""
        while not pass_token:
            status, body = await self.call(
                "GET", f"{base}/status", params={"ticket": ticket}, headers=who
            )
            if status != 200:
                self.ledger.unexpected.append(f"{self.name} status: {status} {body}")
                return
            if body.get("state") == "admitted" and body.get("pass"):
                pass_token = body["pass"]
                self.ledger.passes[self.name] = int(body.get("seq", 0) or 0)
            elif body.get("state") == "soldout":
                self.ledger.sold_out.add(self.name)
                self.ledger.unfinished.discard(self.name)
                return
            elif self.ledger.stop_waiting.is_set():
                self.ledger.left_waiting.add(self.name)
                self.ledger.unfinished.discard(self.name)
                return
            elif time.monotonic() > self.deadline:
                self.ledger.unexpected.append(f"{self.name} never admitted: {body}")
                return
            else:
                self.ledger.waiting.add(self.name)
                await asyncio.sleep(0.2)
        self.ledger.waiting.discard(self.name)
        # A retried join after the pass: the ticket acknowledged again (the same seq).
        status, body = await self.call("POST", f"{base}/join", headers=who)
        if status in (200, 201):
            self.ledger.seqs[self.name].add(int(body["seq"]))
        status, body = await self.call(
            "POST",
            f"{base}/claim",
            json={"amount": str(self.amount), "idempotency_key": f"k-{self.name}"},
            headers={**who, "X-Gate-Pass": pass_token},
        )
        if status == 409 and body.get("error", {}).get("code") == "sold_out":
            self.ledger.sold_out.add(self.name)
            self.ledger.unfinished.discard(self.name)
            return
        if status not in (200, 201):
            self.ledger.unexpected.append(f"{self.name} claim: {status} {body}")
            return
        reservation = body["reservation"]
        self.ledger.reservations[reservation].add(self.name)
        self.ledger.amounts[reservation] = int(body["amount"])
        status, body = await self.call(
            "POST",
            f"{self.gate.core_url}/q/{CAMPAIGN}/reservations/{reservation}/confirm",
            headers={"Authorization": f"Bearer {CORE_TOKEN}"},
        )
        if status in (404, 409):
            # Honest only for a reservation that a failover lost and the report names
            # (tally decides); the customer goes home either way.
            self.ledger.refused_confirms[self.name] = (reservation, status, body)
            self.ledger.unfinished.discard(self.name)
            return
        if status != 200 or body.get("state") != "confirmed":
            self.ledger.unexpected.append(f"{self.name} confirm {reservation}: {status} {body}")
            return
        self.ledger.confirmed[self.name] = (reservation, int(body["amount"]))
        self.ledger.unfinished.discard(self.name)


async def arrivals(
    started: float,
    http: aiohttp.ClientSession,
    gate: GateProcess,
    ledger: Ledger,
    tasks: dict[str, asyncio.Task[None]],
) -> None:
    """CUSTOMERS customers arrive at ARRIVALS_PER_S from `started` (their amounts drawn
    from a seeded random), each one's task put in `tasks`."""
    rng = random.Random(11)
    for n in range(CUSTOMERS):
        due = started + n / ARRIVALS_PER_S
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        customer = Customer(f"cust-{n:04d}", http, gate, ledger, rng)
        tasks[customer.name] = asyncio.create_task(customer.run())


async def until_served(tasks: dict[str, asyncio.Task[None]], ledger: Ledger) -> None:
    """Waits until every customer is done. Once only customers waiting are left, and none
    of them is admitted for 1.5 s (the quota that is left cannot serve them), they are
    told to stop waiting."""
    quiet_since = time.monotonic()
    while not all(task.done() for task in tasks.values()):
        if {name for name, task in tasks.items() if not task.done()} - ledger.waiting:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 1.5:
            ledger.stop_waiting.set()
        await asyncio.sleep(0.05)


async def burst(
    topology: ReplicaSet, gate: GateProcess, http: aiohttp.ClientSession
) -> tuple[Ledger, float]:
    """Customers arrive at ARRIVALS_PER_S; lag, kill and failover land in the middle.
    Returns the ledger and how long the failover took (kill to a new primary named)."""
    ledger = Ledger()
    tasks: dict[str, asyncio.Task[None]] = {}
    started = time.monotonic()

    async def faults() -> float:
        assert topology.link is not None
        await asyncio.sleep(max(0.0, started + LAG_AFTER_S - time.monotonic()))
        assert topology.proxy_in_path(), topology.sentinel_log()
        topology.link.set_delay(LAG_S)
        await asyncio.sleep(max(0.0, started + KILL_AFTER_S - time.monotonic()))
        assert topology.proxy_in_path(), topology.sentinel_log()
        killed = topology.kill_primary()
        kill_at = time.monotonic()
        await asyncio.to_thread(topology.wait_failover, 30)
        took = time.monotonic() - kill_at
        # The supervisor restarts the killed server: it comes back as a replica.
        await asyncio.to_thread(topology.restart_as_replica, killed)
        return took

    async def watch_hold() -> None:
        """The operator's view: a campaign held after a failover, and its report."""
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        while ledger.hold is None:
            with contextlib.suppress(aiohttp.ClientError, json.JSONDecodeError, TimeoutError):
                async with http.get(
                    f"{gate.admin_url}/admin/campaigns/{CAMPAIGN}", headers=admin
                ) as r:
                    if r.status == 200:
                        ledger.hold = (await r.json()).get("failover_hold")
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        ledger.stop_retrying.set()

    fault_task = asyncio.create_task(faults())
    hold_task = asyncio.create_task(watch_hold())
    await arrivals(started, http, gate, ledger, tasks)
    failover_s = await fault_task
    await until_served(tasks, ledger)
    hold_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await hold_task
    return ledger, failover_s


def redis_state(
    port: int,
) -> tuple[dict[bytes, int], dict[str, list[Any]], dict[str, str], dict[str, str]]:
    """Tickets (digest -> seq), reservations, meta and what became of the finishes a
    failover lost (reservation id -> outcome), as the new primary holds them."""
    keys = CampaignKeys(CAMPAIGN)
    client = sync_redis.Redis(port=port)
    try:
        tickets = {k: int(v) for k, v in client.hgetall(keys.tickets).items()}
        reservations = {
            rid.decode(): msgpack.unpackb(value, raw=True)
            for rid, value in client.hgetall(keys.reservations).items()
        }
        meta = {
            k.decode(): v.decode(errors="replace") for k, v in client.hgetall(keys.meta).items()
        }
        restored = {
            k.decode(): v.decode(errors="replace")
            for k, v in client.hgetall(keys.failover_restored).items()
        }
    finally:
        client.close()
    return tickets, reservations, meta, restored


async def audit_verify(
    gate: GateProcess, http: aiohttp.ClientSession, tmp: Path
) -> tuple[bool, str]:
    """Export through the CLI and verify offline with the published keys."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def sealed() -> bool:
        try:
            async with http.get(
                f"{gate.admin_url}/admin/campaigns/{CAMPAIGN}/stats", headers=admin
            ) as r:
                stats = await r.json()
            async with http.get(
                f"{gate.admin_url}/admin/campaigns/{CAMPAIGN}/checkpoints", headers=admin
            ) as r:
                cps = await r.json()
        except (aiohttp.ClientError, json.JSONDecodeError):
            return False
        return bool(cps.get("checkpoints")) and cps["checkpoints"][-1]["size"] >= stats.get(
            "audit_entries", 1 << 60
        )

    with contextlib.suppress(AssertionError):  # verify says what is wrong if it never is
        await wait_for(sealed, 15, "the log sealed to its end", interval_s=0.2)
    async with http.get(gate.url + "/.well-known/fairgate/keys") as r:
        keys_doc = await r.json()
    keys_path = tmp / "public-keys.json"
    keys_path.write_text(json.dumps(keys_doc))
    log_path = tmp / "export.jsonl"
    env = {"GATE_ADMIN_URL": gate.admin_url, "GATE_ADMIN_TOKEN": ADMIN_TOKEN}
    # sealed to its end in the file itself: entries logged after the wait above would
    # follow the checkpoints unsealed, and verify does not call those verified
    exported = await export_sealed_cli(CAMPAIGN, log_path, env)
    if exported.code != 0:
        return False, f"export failed: {exported}"
    # A failover stops sealing for seconds: the sealer records that gap in the log
    # (seal-gap, handover) and verify names it unless the auditor accepts recorded gaps.
    verified = await gate_cli(
        "audit", "verify", str(log_path), "--keys", str(keys_path), "--allow-seal-gaps"
    )
    accepted = verified.code == 0 and "seal bound: 1000 ms" in verified.out
    return accepted, (verified.out + verified.err).strip()[-1500:]


def reservation_number(rid: str) -> int:
    """n of a reservation id r<n> (whatever follows the number)."""
    found = re.match(r"r(\d+)", rid)
    assert found, rid
    return int(found.group(1))


def tally(ledger: Ledger, port: int, keys_file: Path) -> Figures:
    figures = Figures(retries=ledger.retries, unexpected=list(ledger.unexpected))
    figures.statuses = dict(sorted(ledger.statuses.items()))
    figures.unfinished = len(ledger.unfinished)
    figures.left_waiting = len(ledger.left_waiting)
    figures.gave_up = len(ledger.gave_up)
    figures.hold = ledger.hold
    tickets, reservations, meta, restored = redis_state(port)
    keys = load_or_create_keys(keys_file, create=False)

    def reported(kind: str, number: int) -> bool:
        """The hold's report names `number` among the lost `kind` (seqs, reservations)."""
        span = (ledger.hold or {}).get(kind)
        return isinstance(span, list) and len(span) == 2 and span[0] <= number <= span[1]

    by_seq: dict[int, set[str]] = defaultdict(set)
    for customer, seqs in ledger.seqs.items():
        figures.acknowledged_joins += 1
        for seq in seqs:
            by_seq[seq].add(customer)
        digest = customer_digest(keys, CAMPAIGN, customer)
        if len(seqs) > 1 or tickets.get(digest) not in seqs:
            figures.lost_joins += 1
            lost = seqs - {tickets.get(digest)}
            figures.lost_unreported += [
                f"{customer} seq {seq}" for seq in lost if not reported("seqs", seq)
            ]
    figures.seqs_twice = sum(len(who) > 1 for who in by_seq.values())
    figures.acknowledged_reservations = len(ledger.reservations)
    figures.reservation_ids_twice = sum(len(who) > 1 for who in ledger.reservations.values())
    for rid, amount in ledger.amounts.items():
        record = reservations.get(rid)
        customer = next(iter(ledger.reservations[rid]))
        if record is None or int(record[1]) != amount or min(ledger.seqs[customer]) != record[0]:
            figures.lost_reservations += 1
            if not reported("reservations", reservation_number(rid)):
                figures.lost_unreported.append(f"reservation {rid} of {customer}: {record}")
    figures.acknowledged_confirms = len(ledger.confirmed)
    for customer, (rid, amount) in ledger.confirmed.items():
        record = reservations.get(rid)
        if (
            record is None
            or record[2] != b"confirmed"
            or int(record[1]) != amount
            or min(ledger.seqs[customer]) != record[0]
        ):
            figures.lost_confirms += 1
            # named in the hold's range, or one by one among the finishes it lost
            if not (
                reported("reservations", reservation_number(rid))
                or restored.get(rid, "").startswith("lost")
            ):
                figures.lost_unreported.append(f"confirmation {rid} of {customer}: {record}")
    figures.confirmed_total = sum(amount for _, amount in ledger.confirmed.values())
    for customer, (rid, status, body) in ledger.refused_confirms.items():
        if reported("reservations", reservation_number(rid)):
            figures.refused_reported += 1
        else:
            figures.unexpected.append(f"{customer} confirm {rid}: {status} {body}")
    figures.confirmed_in_redis = int(meta.get("confirmed", "0") or 0)
    figures.held_in_redis = int(meta.get("held", "0") or 0)
    figures.oversold = max(
        0,
        figures.confirmed_total - TOTAL,
        figures.confirmed_in_redis + figures.held_in_redis - TOTAL,
    )
    return figures


async def run_scenario(
    tmp_path: Path, keys_file: Path, env: dict[str, str], priorities: tuple[int, int]
) -> Figures:
    """The whole scenario with the gate's settings `env` and the replicas' priorities
    (replica 1, behind the lossy link; replica 2); its figures."""
    topology = ReplicaSet(tmp_path / "redis", replica_priorities=priorities)
    await asyncio.to_thread(topology.start)
    gate = GateProcess(
        topology.sentinel_url,
        tmp_path / "gate",
        keys_file,
        extra_env={"GATE_SEAL_INTERVAL_MS": "200", **env},
    )
    connector = aiohttp.TCPConnector(limit=200)
    http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10))
    try:
        await gate.__aenter__()
        async with http.post(
            f"{gate.admin_url}/admin/campaigns",
            json=campaign_spec(),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r:
            assert r.status == 201, await r.text()
        ledger, failover_s = await burst(topology, gate, http)
        figures = tally(ledger, topology.primary.port, keys_file)
        figures.failover_s = round(failover_s, 2)
        figures.verify_ok, figures.verify_output = await audit_verify(gate, http, tmp_path)
        print(f"\nfailover figures {env}: {figures}")
        return figures
    finally:
        await http.close()
        gate.stop()
        await asyncio.to_thread(topology.stop)


# (gate settings, replica priorities, whether a loss may be reported instead of avoided)
MODES = [
    # Both replicas promotable with WAIT 1: Sentinel picks by the replication offsets its
    # last INFO showed, which may predate the kill (INFO every 10 s while the primary is
    # up, every 1 s once it is down), so it may promote the replica that did not
    # acknowledge: most runs lose nothing, but CI once saw the lagging one promoted (43
    # joins held and reported). Either outcome must be safe.
    pytest.param({"GATE_REDIS_WAIT_REPLICAS": "1"}, (100, 100), True, id="wait-1-either-promoted"),
    # Only the lagging replica is promotable; WAIT 2 had it acknowledge everything.
    pytest.param({"GATE_REDIS_WAIT_REPLICAS": "2"}, (1, 0), False, id="wait-2-lagging-promoted"),
    # Only the lagging replica is promotable, and WAIT 1 was satisfied by the other one:
    # what it lacks cannot be had back, so the gate must hold the campaign and report
    # exactly what was lost, and issue nothing twice.
    pytest.param({"GATE_REDIS_WAIT_REPLICAS": "1"}, (1, 0), True, id="wait-1-lagging-promoted"),
    # WAIT 2, but answering anyway when only one replica acknowledged (the operator's
    # documented choice): the same as above.
    pytest.param(
        {"GATE_REDIS_WAIT_REPLICAS": "2", "GATE_REDIS_REPLICA_LOSS": "continue"},
        (1, 0),
        True,
        id="wait-2-continue-lagging-promoted",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("env", "priorities", "loss_reported"), MODES)
async def test_sentinel_failover_after_lag_loses_nothing_acknowledged(
    env: dict[str, str],
    priorities: tuple[int, int],
    loss_reported: bool,
    tmp_path: Path,
    keys_file: Path,
) -> None:
    figures = await run_scenario(tmp_path, keys_file, env, priorities)
    # the kill landed in the middle of the burst
    assert figures.acknowledged_joins > ARRIVALS_PER_S * KILL_AFTER_S / 2, figures
    if loss_reported:
        assert figures.safe(), figures
    else:
        assert figures.clean(), figures


async def answer(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any], str | None]:
    async with http.request(method, url, **kwargs) as r:
        return r.status, await r.json(content_type=None), r.headers.get("Retry-After")


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["hold", "continue"])
async def test_no_replica_left_after_a_failover(
    choice: str, tmp_path: Path, keys_file: Path
) -> None:
    """`redis_wait_replicas = 1`: after a failover only one replica is left, and then it
    stops too. With `redis_replica_loss = "hold"` joins answer 503 + Retry-After (nothing
    is acknowledged that no replica has) until the replica is back, and then the same
    customers' joins are acknowledged. With "continue" they are answered at once, each
    one counted in fairgate_durability_degraded_total and logged (event=
    durability_degraded). Either way each customer has one seq of their own, and every
    acknowledged ticket is on the primary."""
    topology = ReplicaSet(tmp_path / "redis", proxy=False)
    await asyncio.to_thread(topology.start)
    env = {"GATE_REDIS_WAIT_REPLICAS": "1", "GATE_REDIS_REPLICA_LOSS": choice}
    gate = GateProcess(topology.sentinel_url, tmp_path / "gate", keys_file, extra_env=env)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    acked: dict[str, int] = {}
    base = f"{gate.url}/q/{CAMPAIGN}"

    async def join(customer: str) -> tuple[int, dict[str, Any], str | None]:
        status, body, retry_after = await answer(
            http, "POST", f"{base}/join", headers={"X-Customer-Id": customer}
        )
        if status in (200, 201):
            assert acked.setdefault(customer, body["seq"]) == body["seq"], (customer, body)
        return status, body, retry_after

    try:
        await gate.__aenter__()
        status, body, _ = await answer(
            http,
            "POST",
            f"{gate.admin_url}/admin/campaigns",
            json=spec(CAMPAIGN),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert status == 201, body
        for n in range(10):
            assert (await join(f"before-{n}"))[0] == 201
        topology.kill_primary()
        await asyncio.to_thread(topology.wait_failover, 30)

        async def writes_again() -> bool:
            return (await join("after-failover"))[0] in (200, 201)

        await wait_for(writes_again, 30, "joins acknowledged after the failover", 0.2)
        (last,) = topology.replicas
        await asyncio.to_thread(last.stop)  # no replica left
        held = [await join(f"held-{n}") for n in range(10)]
        if choice == "continue":
            assert all(status == 201 for status, _, _ in held), held
            async with http.get(gate.url + "/metrics") as r:
                metrics = await r.text()
            degraded = sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("fairgate_durability_degraded_total")
            )
            assert degraded >= len(held), metrics
            assert "event=durability_degraded" in gate.log_path.read_text()
        else:
            assert all(status == 503 and retry_after for status, _, retry_after in held), held
            assert all(body["error"]["code"] for _, body, _ in held), held
            assert not any(c.startswith("held-") for c in acked), acked
            # Still held a moment later: nothing was acknowledged in between.
            again = await join("held-0")
            assert again[0] == 503, again

        await asyncio.to_thread(topology.restart_as_replica, last)

        async def everyone_acknowledged() -> bool:
            for n in range(10):
                if f"held-{n}" not in acked:
                    await join(f"held-{n}")
            return all(f"held-{n}" in acked for n in range(10))

        await wait_for(everyone_acknowledged, 30, "held joins acknowledged", 0.2)
        tickets, _, _, _ = redis_state(topology.primary.port)
        keys = load_or_create_keys(keys_file, create=False)
        assert len(set(acked.values())) == len(acked), acked
        for customer, seq in acked.items():
            assert tickets.get(customer_digest(keys, CAMPAIGN, customer)) == seq, customer
        statuses = sorted(status for status, _, _ in held)
        print(f"\nno replica left ({choice}): joins {statuses}, {len(acked)} acknowledged")
    finally:
        await http.close()
        gate.stop()
        await asyncio.to_thread(topology.stop)


async def test_a_write_on_a_transport_closed_by_a_failover_is_unavailable() -> None:
    """uvloop's refusal to write on a transport Redis closed a moment before (seen in the
    failover burst as a 500 on a join and a confirm, 1 run in 3) is a 503, as a dropped
    connection is; any other RuntimeError is still a bug."""
    with pytest.raises(Unavailable):
        async with guarded():
            raise RuntimeError(
                "unable to perform operation on <TCPTransport closed=True reading=False "
                "0x55f6efab3350>; the handler is closed"
            )
    with pytest.raises(RuntimeError):
        async with guarded():
            raise RuntimeError("something else")
