"""The scenarios' customers, in their own process: straight at the core, or through the gate.

`direct`: each customer sends its deposit request to the simulated core at its arrival
time and, answered 503/504 or not at all, presses again after 0.5-1.5 s (at most
`retries` more times), as people do on a frozen page.

`gate`: each customer joins the gate's queue, polls as `poll_after_ms` says, and once
admitted claims its amount at the gate (a reservation) and then sends the deposit request
to the core with its pass and the reservation. A customer the gate tells `soldout` (at
join or on a poll) stops there: told before wasting a click.

Customers are started by a scheduler in 10 ms batches (no task exists before its
customer arrives), at most `live` under way at once (the next starts when one has its
answer), so a crowd of a million is simulated in batches over a bounded pool of
connections, each customer with its own ticket; memory grows with `live`, not the crowd.
The process writes a progress count (customers done) to PROGRESS every 0.2 s.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from gate.demo.children import run_child, write_result
from gate.demo.sim_core import PASS_HEADER, RETRY_MS_HEADER

GATE_ATTEMPTS = 30  # per gate request, for 5xx answers and transport errors
# A claim answered `earlier_claims` (customers admitted before have not claimed yet) is
# sent again after this long, at most CLAIM_TURNS times in all (a pass lasts 60 s).
EARLIER_CLAIMS_WAIT_S = 0.2
CLAIM_TURNS = 300


@dataclass(frozen=True)
class CrowdSpec:
    mode: str  # "direct" or "gate"
    core_url: str
    gate_url: str
    campaign: str
    customer_header: str
    customers: int
    spread_s: float  # arrivals uniform over this long
    amount_min: int
    amount_max: int
    step: int
    retries: int  # direct mode: presses again after an error, at most this often
    connections: int
    deadline_s: float
    seed: int
    # A ballot (ipo-rush): an admitted customer sends its subscription to the core with its
    # pass (the core holds the deposit), then subscribes at the gate; no reservation.
    ballot: bool = False
    # Customers under way at once: the next one starts when one has its answer, so a crowd
    # of a million is simulated in batches (memory and CPU grow with this, not with
    # `customers`); the arrivals it could not start on time are reported (`late`).
    live: int = 20_000


@dataclass
class Outcome:
    index: int
    customer: str
    amount: int
    sent: float  # first click (join, or the deposit request straight at the core)
    done: float | None = None  # final answer seen
    seq: int | None = None
    told_soldout: bool = False  # the gate said sold out before the customer clicked
    told_at: str = ""  # "join" or "poll"
    admitted: float | None = None
    reserved: int = 0
    core_status: int | None = None
    core_attempts: int = 0
    door_waits: int = 0  # 401 pass_not_yet at the core's door: came back when told
    booked: int = 0
    pass_refusals: int = 0  # the core's auth check refused this admitted customer's pass
    claim_waits: int = 0  # claims answered `earlier_claims` (asked again)
    result: str = "pending"  # booked, sold_out, told_soldout, gave_up, error, deadline


class GiveUp(Exception):
    pass


def _wait_ms(headers: Any) -> int | None:
    """The wait a 401 pass_not_yet carries (X-Gate-Retry-After-Ms), at most a minute."""
    try:
        return min(max(int(headers[RETRY_MS_HEADER]), 1), 60_000)
    except (KeyError, ValueError):
        return None


class Crowd:
    def __init__(self, session: aiohttp.ClientSession, spec: CrowdSpec):
        self.session = session
        self.spec = spec
        self.finished = 0
        self.gate_5xx = 0  # 5xx answers from the gate (each retried after Retry-After)
        self.gate_5xx_by: dict[str, int] = {}  # "route status code" -> count
        self.gate_not_yet = 0  # 401 pass_not_yet from the gate (claim): came back when told

    async def _gate(
        self, method: str, url: str, headers: dict[str, str], **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        for _ in range(GATE_ATTEMPTS):
            retry_after = 0.5
            try:
                async with self.session.request(method, url, headers=headers, **kwargs) as r:
                    try:
                        body = await r.json(content_type=None)
                    except ValueError:
                        body = {}
                    wait_ms = _wait_ms(r.headers) if r.status == 401 else None
                    if wait_ms is not None:
                        # A paced pass used a moment before its not_before by the gate's
                        # clock (a claim): come back when told, as the page does.
                        self.gate_not_yet += 1
                        await asyncio.sleep(wait_ms / 1000)
                        continue
                    if r.status < 500:
                        return r.status, body if isinstance(body, dict) else {}
                    self.gate_5xx += 1
                    error = body.get("error") if isinstance(body, dict) else None
                    code = error.get("code") if isinstance(error, dict) else None
                    route = url.rsplit("/", 1)[-1]
                    key = f"{route} {r.status} {code}"
                    self.gate_5xx_by[key] = self.gate_5xx_by.get(key, 0) + 1
                    retry_after = float(r.headers.get("Retry-After", "1"))
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(retry_after)
        raise GiveUp(f"{method} {url}: no answer")

    async def _core(self, o: Outcome, headers: dict[str, str], body: dict[str, Any]) -> int:
        """The deposit request at the core; a pass not valid yet (401 with the time it is
        valid, the gate's door pacing arrivals) is sent again then, as the waiting page
        would, without counting as a refusal."""
        while True:
            o.core_attempts += 1
            try:
                async with self.session.post(
                    f"{self.spec.core_url}/deposit", headers=headers, json=body
                ) as r:
                    data = await r.json(content_type=None)
                    o.core_status = r.status
                    if r.status == 200:
                        o.booked = int(data.get("booked", 0))
                    wait_ms = _wait_ms(r.headers) if r.status == 401 else None
                    if wait_ms is None:
                        return r.status
            except (aiohttp.ClientError, TimeoutError, ValueError):
                o.core_status = 599
                return 599
            o.door_waits += 1
            await asyncio.sleep(wait_ms / 1000)

    async def direct(self, o: Outcome) -> None:
        body = {"customer": o.customer, "amount": o.amount}
        for attempt in range(self.spec.retries + 1):
            status = await self._core(o, {}, body)
            if status == 200:
                o.result = "booked"
                return
            if status == 409:
                o.result = "sold_out"
                return
            if attempt < self.spec.retries:
                await asyncio.sleep(random.uniform(0.5, 1.5))
        o.result = "gave_up"

    async def through_gate(self, o: Outcome) -> None:
        spec = self.spec
        headers = {spec.customer_header: o.customer}
        base = f"{spec.gate_url}/q/{spec.campaign}"
        status, body = await self._gate("POST", f"{base}/join", headers)
        if status not in (200, 201):
            raise GiveUp(f"join {status}")
        o.seq = int(body["seq"])
        ticket = str(body["ticket"])
        state = body["state"]
        wait_ms = int(body.get("poll_after_ms") or 500)
        pass_token: str | None = None
        polls = 0
        while True:
            if state == "soldout":
                o.told_soldout = True
                o.told_at = "join" if polls == 0 else "poll"
                o.result = "told_soldout"
                return
            if state == "admitted" and body.get("pass"):
                pass_token = str(body["pass"])
                break
            if state not in ("waiting", "admitted", "prequeue"):
                raise GiveUp(f"state {state}")
            await asyncio.sleep(0 if state == "admitted" else wait_ms / 1000)
            status, body = await self._gate(
                "GET", f"{base}/status", headers, params={"ticket": ticket}
            )
            polls += 1
            if status != 200:
                raise GiveUp(f"status {status}")
            state = body["state"]
            wait_ms = int(body.get("poll_after_ms") or 500)
        o.admitted = time.time()
        claim_headers = {**headers, PASS_HEADER: pass_token}
        if spec.ballot:
            await self._subscribe(o, base, ticket, headers, claim_headers)
            return
        for _ in range(CLAIM_TURNS):
            status, body = await self._gate(
                "POST",
                f"{base}/claim",
                claim_headers,
                json={"amount": str(o.amount), "idempotency_key": f"k{o.index}"},
            )
            error = body.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            if not (status == 409 and code == "earlier_claims"):
                break
            # Customers admitted before this one have not claimed yet, and what is left
            # may be theirs: ask again in a moment, as the page does.
            o.claim_waits += 1
            await asyncio.sleep(EARLIER_CLAIMS_WAIT_S)
        if status == 409 and code == "sold_out":
            o.result = "sold_out"  # admitted, but nothing left for this customer
            return
        if status not in (200, 201):
            raise GiveUp(f"claim {status} {code}")
        o.reserved = int(body["amount"])
        deposit = {"customer": o.customer, "amount": o.reserved, "reservation": body["reservation"]}
        for _ in range(10):
            status = await self._core(o, claim_headers, deposit)
            if status == 200:
                o.result = "booked"
                return
            if status == 409:
                o.result = "sold_out"
                return
            if status in (401, 403):
                # The gate refused a pass it just issued (it fails closed while it cannot
                # prove its view of Redis fresh): ask for the pass again, as the page would.
                o.pass_refusals += 1
                await asyncio.sleep(0.5)
                status, body = await self._gate(
                    "GET", f"{base}/status", headers, params={"ticket": ticket}
                )
                if status == 200 and body.get("pass"):
                    claim_headers[PASS_HEADER] = str(body["pass"])
                continue
            await asyncio.sleep(0.5)
        o.result = "gave_up"

    async def _subscribe(
        self,
        o: Outcome,
        base: str,
        ticket: str,
        headers: dict[str, str],
        claim_headers: dict[str, str],
    ) -> None:
        """A ballot: the subscription at the core (with the pass), then at the gate."""
        deposit = {"customer": o.customer, "amount": o.amount}
        for _ in range(10):
            status = await self._core(o, claim_headers, deposit)
            if status == 200:
                break
            if status in (401, 403):
                o.pass_refusals += 1
                await asyncio.sleep(0.5)
                status, body = await self._gate(
                    "GET", f"{base}/status", headers, params={"ticket": ticket}
                )
                if status == 200 and body.get("pass"):
                    claim_headers[PASS_HEADER] = str(body["pass"])
                continue
            await asyncio.sleep(0.5)
        else:
            o.result = "gave_up"
            return
        status, body = await self._gate(
            "POST",
            f"{base}/claim",
            claim_headers,
            json={"amount": str(o.amount), "idempotency_key": f"k{o.index}"},
        )
        if status not in (200, 201):
            error = body.get("error")
            raise GiveUp(
                f"subscribe {status} {error.get('code') if isinstance(error, dict) else ''}"
            )
        o.reserved = int(body["subscribed"])
        o.result = "booked"  # subscribed: the ballot allots at close

    async def run(self, o: Outcome) -> None:
        try:
            if self.spec.mode == "direct":
                await self.direct(o)
            else:
                await self.through_gate(o)
        except GiveUp as exc:
            o.result = f"error: {exc}"
        finally:
            o.done = time.time()
            self.finished += 1


async def run(spec: CrowdSpec, progress: Path) -> dict[str, Any]:
    rng = random.Random(spec.seed)
    steps = (spec.amount_max - spec.amount_min) // spec.step
    outcomes = [
        Outcome(
            i,
            f"c{i:07d}-{rng.getrandbits(32):08x}",
            spec.amount_min + rng.randint(0, steps) * spec.step,
            0.0,
        )
        for i in range(spec.customers)
    ]
    offsets = sorted(rng.uniform(0, spec.spread_s) for _ in outcomes)
    offsets = [o - offsets[0] for o in offsets]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=spec.connections),
        cookie_jar=aiohttp.DummyCookieJar(),
        # No timeout on waiting for one of the pool's connections (a customer queued behind
        # the others waits, as a spinning page does): only on a request's own socket. A
        # total timeout cancelled every queued customer at once, again and again.
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30),
    ) as session:
        crowd = Crowd(session, spec)
        start = time.time() + 0.1
        tasks: set[asyncio.Task[None]] = set()

        async def report() -> None:
            while True:
                tmp = progress.with_suffix(".tmp")
                tmp.write_text(str(crowd.finished))
                tmp.replace(progress)
                await asyncio.sleep(0.2)

        reporter = asyncio.create_task(report())
        live = asyncio.Semaphore(max(1, spec.live))
        late = 0  # customers started over a second after their arrival time (crowd bound)

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            live.release()

        i = 0
        while i < len(outcomes):
            batch_until = time.time() - start + 0.01
            while i < len(outcomes) and offsets[i] <= batch_until:
                await live.acquire()
                o = outcomes[i]
                o.sent = time.time()
                late += o.sent - start - offsets[i] > 1.0
                task = asyncio.create_task(crowd.run(o))
                tasks.add(task)
                task.add_done_callback(finished)
                i += 1
            if i < len(outcomes):
                await asyncio.sleep(max(0.0, min(0.01, start + offsets[i] - time.time())))
        if tasks:
            _done, pending = await asyncio.wait(set(tasks), timeout=spec.deadline_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for o in outcomes:
            if o.result == "pending":
                o.result = "deadline"
        reporter.cancel()
    return {
        "started_at": start,
        "gate_5xx": crowd.gate_5xx,
        "gate_5xx_by": crowd.gate_5xx_by,
        "gate_not_yet": crowd.gate_not_yet,
        "late": late,
        "arrivals_span_s": round(max(o.sent for o in outcomes) - start, 3) if outcomes else 0.0,
        # vars(): an Outcome holds only scalars; dataclasses.asdict copies each field deeply
        # and took 135 s for a million on a busy 2-core machine (vars: under a second).
        "outcomes": [vars(o) for o in outcomes],
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m gate.demo.crowd SPEC.json RESULT.json PROGRESS` (started by `gate demo`)."""
    args = sys.argv[1:] if argv is None else argv
    result = run_child(
        lambda: run(CrowdSpec(**json.loads(Path(args[0]).read_text())), Path(args[2]))
    )
    write_result(args[1], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
