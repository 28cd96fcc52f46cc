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
connections, each customer with its own ticket. A customer under way is an `Outcome`; once
answered it is stored as ~70 bytes of columns (`Records`), so memory grows with `live`
and a small array per customer, not a dict each.

The requests go out through a lean keep-alive HTTP/1.1 client (`gate.demo.lean_http`:
pre-built request bytes, the status line, a few headers and the JSON body only), and the
crowd is `workers` processes, each owning every `workers`-th customer, all started at one
time; the first process (`run`) draws the customers, starts the others, and merges their
outcomes in customer order. It writes a progress count (customers done) to PROGRESS every
0.2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import random
import resource
import shutil
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from gate.demo.children import child, run_child, write_result
from gate.demo.lean_http import AiohttpPool, Pool
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
    # Crowd processes, each with a slice of the customers (every `workers`-th one): one
    # process's requests cost it CPU however lean its client, a million needs more than one.
    workers: int = 1
    # The HTTP client: "lean" (gate.demo.lean_http.Pool), or "aiohttp", the reference it is
    # checked against (same customers, same steps; ~5x the crowd's CPU a request).
    client: str = "lean"


@dataclass(slots=True)
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


RESULT_CODES = ("pending", "booked", "sold_out", "told_soldout", "gave_up", "deadline", "error")
TOLD_AT = ("", "join", "poll")
NOT_YET = -1.0  # a time not reached (done, admitted) in the columns
# Connection-level failures: the connection is dropped and the request counts as unanswered.
TRANSPORT_ERRORS = (OSError, TimeoutError)


class Records:
    """The outcomes of one crowd process's customers at rest, as columns: ~70 bytes a
    customer (a million customers are ~70 MB, not a dict each). A customer under way is an
    `Outcome`; when it has its answer it is stored here and dropped."""

    FLOATS = ("sent", "done", "admitted")
    INTS = ("seq", "reserved", "booked")
    SMALL = ("core_status", "core_attempts", "door_waits", "pass_refusals", "claim_waits")
    CODES = ("result", "told_soldout", "told_at")

    def __init__(self, count: int) -> None:
        self.count = count
        self.columns: dict[str, array[Any]] = {
            **{name: array("d", [NOT_YET]) * count for name in self.FLOATS},
            **{name: array("q", [0]) * count for name in self.INTS},
            **{name: array("i", [0]) * count for name in self.SMALL},
            **{name: array("b", [0]) * count for name in self.CODES},
        }
        self.errors: dict[int, str] = {}  # slot -> "error: ..." (rare)

    def store(self, slot: int, o: Outcome) -> None:
        c = self.columns
        c["sent"][slot] = o.sent
        c["done"][slot] = NOT_YET if o.done is None else o.done
        c["admitted"][slot] = NOT_YET if o.admitted is None else o.admitted
        c["seq"][slot] = o.seq or 0
        c["reserved"][slot] = o.reserved
        c["booked"][slot] = o.booked
        c["core_status"][slot] = o.core_status or 0
        c["core_attempts"][slot] = o.core_attempts
        c["door_waits"][slot] = o.door_waits
        c["pass_refusals"][slot] = o.pass_refusals
        c["claim_waits"][slot] = o.claim_waits
        c["told_soldout"][slot] = o.told_soldout
        c["told_at"][slot] = TOLD_AT.index(o.told_at)
        if o.result in RESULT_CODES:
            c["result"][slot] = RESULT_CODES.index(o.result)
        else:
            c["result"][slot] = RESULT_CODES.index("error")
            self.errors[slot] = o.result

    def nbytes(self) -> int:
        return sum(len(a) * a.itemsize for a in self.columns.values())

    def save(self, prefix: Path) -> None:
        for name, column in self.columns.items():
            with open(f"{prefix}.{name}", "wb") as f:
                column.tofile(f)

    @classmethod
    def load(cls, prefix: Path, count: int) -> Records:
        records = cls(0)
        records.count = count
        for name, column in records.columns.items():
            with open(f"{prefix}.{name}", "rb") as f:
                column.fromfile(f, count)
        return records

    def outcome(self, slot: int, index: int, customer: str, amount: int) -> dict[str, Any]:
        """One customer's outcome as the report reads it (the fields of `Outcome`)."""
        c = self.columns
        done, admitted = c["done"][slot], c["admitted"][slot]
        code = RESULT_CODES[c["result"][slot]]
        return {
            "index": index,
            "customer": customer,
            "amount": amount,
            "sent": c["sent"][slot],
            "done": None if done == NOT_YET else done,
            "seq": c["seq"][slot] or None,
            "told_soldout": bool(c["told_soldout"][slot]),
            "told_at": TOLD_AT[c["told_at"][slot]],
            "admitted": None if admitted == NOT_YET else admitted,
            "reserved": c["reserved"][slot],
            "core_status": c["core_status"][slot] or None,
            "core_attempts": c["core_attempts"][slot],
            "door_waits": c["door_waits"][slot],
            "booked": c["booked"][slot],
            "pass_refusals": c["pass_refusals"][slot],
            "claim_waits": c["claim_waits"][slot],
            "result": self.errors.get(slot, "error") if code == "error" else code,
        }


class GiveUp(Exception):
    pass


def _wait_ms(headers: dict[str, str]) -> int | None:
    """The wait a 401 pass_not_yet carries (X-Gate-Retry-After-Ms), at most a minute."""
    try:
        return min(max(int(headers[RETRY_MS_HEADER.lower()]), 1), 60_000)
    except (KeyError, ValueError):
        return None


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _header(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode()


JSON_TYPE = b"Content-Type: application/json\r\n"


class Crowd:
    def __init__(self, spec: CrowdSpec, connections: int):
        self.spec = spec
        pool: Callable[[str, int], Pool | AiohttpPool] = (
            AiohttpPool if spec.client == "aiohttp" else Pool.for_url
        )
        self.core = pool(spec.core_url, connections)
        self.gate = pool(spec.gate_url, connections) if spec.gate_url else self.core
        self.base = f"/q/{spec.campaign}"
        self.finished = 0
        self.gate_5xx = 0  # 5xx answers from the gate (each retried after Retry-After)
        self.gate_5xx_by: dict[str, int] = {}  # "route status code" -> count
        self.gate_not_yet = 0  # 401 pass_not_yet from the gate (claim): came back when told

    async def close(self) -> None:
        await self.core.close()
        if self.gate is not self.core:
            await self.gate.close()

    async def _gate(
        self, method: str, target: str, headers: bytes, body: bytes | None = None
    ) -> tuple[int, dict[str, Any]]:
        if body is not None:
            headers += JSON_TYPE
        for _ in range(GATE_ATTEMPTS):
            retry_after = 0.5
            try:
                r = await self.gate.request(method, target, headers, body)
                data = _json(r.body)
                wait_ms = _wait_ms(r.headers) if r.status == 401 else None
                if wait_ms is not None:
                    # A paced pass used a moment before its not_before by the gate's
                    # clock (a claim): come back when told, as the page does.
                    self.gate_not_yet += 1
                    await asyncio.sleep(wait_ms / 1000)
                    continue
                if r.status < 500:
                    return r.status, data
                self.gate_5xx += 1
                error = data.get("error")
                code = error.get("code") if isinstance(error, dict) else None
                route = target.split("?", 1)[0].rsplit("/", 1)[-1]
                key = f"{route} {r.status} {code}"
                self.gate_5xx_by[key] = self.gate_5xx_by.get(key, 0) + 1
                retry_after = float(r.headers.get("retry-after", "1"))
            except TRANSPORT_ERRORS:
                pass
            await asyncio.sleep(retry_after)
        raise GiveUp(f"{method} {target.split('?', 1)[0]}: no answer")

    async def _core(self, o: Outcome, headers: bytes, body: dict[str, Any]) -> int:
        """The deposit request at the core; a pass not valid yet (401 with the time it is
        valid, the gate's door pacing arrivals) is sent again then, as the waiting page
        would, without counting as a refusal."""
        data = orjson.dumps(body)
        headers += JSON_TYPE
        while True:
            o.core_attempts += 1
            try:
                r = await self.core.request("POST", "/deposit", headers, data)
            except TRANSPORT_ERRORS:
                o.core_status = 599
                return 599
            o.core_status = r.status
            if r.status == 200:
                o.booked = int(_json(r.body).get("booked", 0))
            wait_ms = _wait_ms(r.headers) if r.status == 401 else None
            if wait_ms is None:
                return r.status
            o.door_waits += 1
            await asyncio.sleep(wait_ms / 1000)

    async def direct(self, o: Outcome) -> None:
        body = {"customer": o.customer, "amount": o.amount}
        for attempt in range(self.spec.retries + 1):
            status = await self._core(o, b"", body)
            if status == 200:
                o.result = "booked"
                return
            if status == 409:
                o.result = "sold_out"
                return
            if attempt < self.spec.retries:
                await asyncio.sleep(random.uniform(0.5, 1.5))
        o.result = "gave_up"

    async def _status(self, ticket: str, headers: bytes) -> tuple[int, dict[str, Any]]:
        return await self._gate("GET", f"{self.base}/status?ticket={quote(ticket)}", headers)

    async def through_gate(self, o: Outcome) -> None:
        spec = self.spec
        headers = _header(spec.customer_header, o.customer)
        status, body = await self._gate("POST", f"{self.base}/join", headers)
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
            status, body = await self._status(ticket, headers)
            polls += 1
            if status != 200:
                raise GiveUp(f"status {status}")
            state = body["state"]
            wait_ms = int(body.get("poll_after_ms") or 500)
        o.admitted = time.time()
        claim_headers = headers + _header(PASS_HEADER, pass_token)
        claim = orjson.dumps({"amount": str(o.amount), "idempotency_key": f"k{o.index}"})
        if spec.ballot:
            await self._subscribe(o, ticket, headers, claim_headers, claim)
            return
        code = None
        for _ in range(CLAIM_TURNS):
            status, body = await self._gate("POST", f"{self.base}/claim", claim_headers, claim)
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
                claim_headers = await self._fresh_pass(o, ticket, headers, claim_headers)
                continue
            await asyncio.sleep(0.5)
        o.result = "gave_up"

    async def _fresh_pass(
        self, o: Outcome, ticket: str, headers: bytes, claim_headers: bytes
    ) -> bytes:
        o.pass_refusals += 1
        await asyncio.sleep(0.5)
        status, body = await self._status(ticket, headers)
        if status == 200 and body.get("pass"):
            return headers + _header(PASS_HEADER, str(body["pass"]))
        return claim_headers

    async def _subscribe(
        self, o: Outcome, ticket: str, headers: bytes, claim_headers: bytes, claim: bytes
    ) -> None:
        """A ballot: the subscription at the core (with the pass), then at the gate."""
        deposit = {"customer": o.customer, "amount": o.amount}
        for _ in range(10):
            status = await self._core(o, claim_headers, deposit)
            if status == 200:
                break
            if status in (401, 403):
                claim_headers = await self._fresh_pass(o, ticket, headers, claim_headers)
                continue
            await asyncio.sleep(0.5)
        else:
            o.result = "gave_up"
            return
        status, body = await self._gate("POST", f"{self.base}/claim", claim_headers, claim)
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


# --- the customers: who, how much, when ----------------------------------------------------


@dataclass
class Arrivals:
    """Every customer of the crowd, by index: an id tag, an amount and an arrival offset
    (s after the first), drawn from the spec's seed; arrays, not objects."""

    tags: array[int]
    amounts: array[int]
    offsets: array[float]

    @classmethod
    def draw(cls, spec: CrowdSpec) -> Arrivals:
        rng = random.Random(spec.seed)
        steps = (spec.amount_max - spec.amount_min) // spec.step
        tags, amounts = array("L"), array("q")
        for _ in range(spec.customers):
            tags.append(rng.getrandbits(32))
            amounts.append(spec.amount_min + rng.randint(0, steps) * spec.step)
        offsets = sorted(rng.uniform(0, spec.spread_s) for _ in range(spec.customers))
        first = offsets[0] if offsets else 0.0
        return cls(tags, amounts, array("d", (o - first for o in offsets)))

    @staticmethod
    def customer(index: int, tag: int) -> str:
        return f"c{index:07d}-{tag:08x}"

    def save(self, prefix: Path) -> None:
        for name in ("tags", "amounts", "offsets"):
            with open(f"{prefix}.{name}", "wb") as f:
                getattr(self, name).tofile(f)

    @classmethod
    def load(cls, prefix: Path, count: int) -> Arrivals:
        arrivals = cls(array("L"), array("q"), array("d"))
        for name in ("tags", "amounts", "offsets"):
            with open(f"{prefix}.{name}", "rb") as f:
                getattr(arrivals, name).fromfile(f, count)
        return arrivals


# --- one crowd process: a slice of the customers ------------------------------------------


def _write_text(path: Path, text: str) -> None:
    """Whole or not at all: a reader never sees a half-written number."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_count(path: Path, count: int) -> None:
    _write_text(path, str(count))


async def _wait_for_start(start_file: Path) -> float:
    """The start time the crowd's first process writes once every process is ready."""
    while True:
        start = _read_number(start_file)
        if start is not None:
            return start
        await asyncio.sleep(0.005)


def _read_number(path: Path) -> float | None:
    """The number a file holds, or None while it is not there."""
    try:
        return float(path.read_text() or 0)
    except (OSError, ValueError):
        return None


async def run_slice(
    spec: CrowdSpec, arrivals: Arrivals, worker: int, workers: int, start_file: Path, progress: Path
) -> tuple[Records, dict[str, Any]]:
    """Customers worker, worker + workers, ... of the crowd, each at its arrival time."""
    indices = range(worker, spec.customers, workers)
    records = Records(len(indices))
    connections = max(1, math.ceil(spec.connections / workers))
    crowd = Crowd(spec, connections)
    live = asyncio.Semaphore(max(1, math.ceil(spec.live / workers)))
    tasks: set[asyncio.Task[None]] = set()
    _write_count(progress, 0)  # ready
    start = await _wait_for_start(start_file)

    async def report() -> None:
        while True:
            _write_count(progress, crowd.finished)
            await asyncio.sleep(0.2)

    reporter = asyncio.create_task(report())
    late = 0  # customers started over a second after their arrival time (crowd bound)
    last_sent = start

    async def one(slot: int, o: Outcome) -> None:
        try:
            await crowd.run(o)
        finally:
            records.store(slot, o)  # the Outcome is dropped: at rest a customer is columns

    def finished(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        live.release()

    offsets, tags, amounts = arrivals.offsets, arrivals.tags, arrivals.amounts
    slot = 0
    while slot < len(indices):
        batch_until = time.time() - start + 0.01
        while slot < len(indices) and offsets[indices[slot]] <= batch_until:
            await live.acquire()
            index = indices[slot]
            o = Outcome(index, Arrivals.customer(index, tags[index]), amounts[index], 0.0)
            o.sent = last_sent = time.time()
            late += o.sent - start - offsets[index] > 1.0
            task = asyncio.create_task(one(slot, o))
            tasks.add(task)
            task.add_done_callback(finished)
            slot += 1
        if slot < len(indices):
            wait = start + offsets[indices[slot]] - time.time()
            await asyncio.sleep(max(0.0, min(0.01, wait)))
    if tasks:
        _done, pending = await asyncio.wait(set(tasks), timeout=spec.deadline_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    # A customer cancelled at the deadline was stored as it stood, its result "pending".
    result = records.columns["result"]
    for n in range(len(result)):
        if result[n] == 0:
            result[n] = RESULT_CODES.index("deadline")
    reporter.cancel()
    _write_count(progress, crowd.finished)
    await crowd.close()
    return records, {
        "late": late,
        "last_sent": last_sent,
        "gate_5xx": crowd.gate_5xx,
        "gate_5xx_by": crowd.gate_5xx_by,
        "gate_not_yet": crowd.gate_not_yet,
        "errors": {str(k): v for k, v in records.errors.items()},
        "customers": len(indices),
        "bytes_per_customer": records.nbytes() / max(1, len(indices)),
        "cpu_s": time.process_time(),  # this process's own CPU (user + system), all of it
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        # requests sent (each retry counted): the gate's and the core's
        "gate_requests": crowd.gate.requests if crowd.gate is not crowd.core else 0,
        "core_requests": crowd.core.requests,
    }


def _worker_main(args: list[str]) -> int:
    """`--worker K N SPEC.json WORKDIR`: customers K, K+N, ... (started by the crowd)."""
    worker, workers = int(args[0]), int(args[1])
    spec = CrowdSpec(**json.loads(Path(args[2]).read_text()))
    work = Path(args[3])
    arrivals = Arrivals.load(work / "arrivals", spec.customers)
    records, summary = run_child(
        lambda: run_slice(
            spec, arrivals, worker, workers, work / "start", work / f"progress-{worker}"
        )
    )
    records.save(work / f"records-{worker}")
    write_result(str(work / f"result-{worker}.json"), summary)
    return 0


# --- the crowd: its processes, their outcomes merged ----------------------------------------


async def run(spec: CrowdSpec, progress: Path) -> dict[str, Any]:
    """The whole crowd: `spec.workers` processes, each with a slice of the customers (every
    `workers`-th, so each slice arrives over the whole spread), all started at one time;
    their outcomes merged in customer order. `progress` counts customers done."""
    workers = max(1, min(spec.workers, spec.customers))
    work = Path(tempfile.mkdtemp(prefix="crowd-", dir=progress.parent))
    try:
        arrivals = Arrivals.draw(spec)
        arrivals.save(work / "arrivals")
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(dataclasses.asdict(spec)))
        paths = (str(spec_path), str(work))
        async with contextlib.AsyncExitStack() as stack:
            processes = [
                await stack.enter_async_context(
                    child("-m", "gate.demo.crowd", "--worker", str(k), str(workers), *paths)
                )
                for k in range(workers)
            ]
            waits = [asyncio.create_task(p.wait()) for p in processes]
            counts = [work / f"progress-{k}" for k in range(workers)]
            while not all(c.exists() for c in counts):  # every process ready
                if any(w.done() for w in waits):
                    break
                await asyncio.sleep(0.01)
            start = time.time() + 0.1
            _write_text(work / "start", repr(start))
            _write_count(progress, 0)
            while not all(w.done() for w in waits):
                await asyncio.wait(waits, timeout=0.2)
                _write_count(progress, sum(int(_read_number(c) or 0) for c in counts))
            codes = [w.result() for w in waits]
        if any(codes):
            raise RuntimeError(f"a crowd process failed (exit codes {codes})")
        return merge(spec, arrivals, work, workers, start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def merge(
    spec: CrowdSpec, arrivals: Arrivals, work: Path, workers: int, start: float
) -> dict[str, Any]:
    """The processes' outcomes, one per customer in customer order, and their counts."""
    summaries = [json.loads((work / f"result-{k}.json").read_text()) for k in range(workers)]
    records = []
    for k, summary in enumerate(summaries):
        loaded = Records.load(work / f"records-{k}", int(summary["customers"]))
        loaded.errors = {int(slot): text for slot, text in summary["errors"].items()}
        records.append(loaded)
    outcomes = []
    for index in range(spec.customers):
        k, slot = index % workers, index // workers
        outcomes.append(
            records[k].outcome(
                slot,
                index,
                Arrivals.customer(index, arrivals.tags[index]),
                arrivals.amounts[index],
            )
        )
    gate_5xx_by: dict[str, int] = {}
    for summary in summaries:
        for key, count in summary["gate_5xx_by"].items():
            gate_5xx_by[key] = gate_5xx_by.get(key, 0) + int(count)
    return {
        "started_at": start,
        "workers": workers,
        "gate_5xx": sum(int(s["gate_5xx"]) for s in summaries),
        "gate_5xx_by": gate_5xx_by,
        "gate_not_yet": sum(int(s["gate_not_yet"]) for s in summaries),
        "late": sum(int(s["late"]) for s in summaries),
        "arrivals_span_s": round(max(float(s["last_sent"]) for s in summaries) - start, 3)
        if outcomes
        else 0.0,
        "bytes_per_customer": max(float(s["bytes_per_customer"]) for s in summaries),
        "live": spec.live,
        "worker_max_rss_kb": max(int(s["max_rss_kb"]) for s in summaries),
        "gate_requests": sum(int(s["gate_requests"]) for s in summaries),
        "core_requests_sent": sum(int(s["core_requests"]) for s in summaries),
        # the crowd's processes' CPU: what its customers cost the machine it shares
        "cpu_s": round(sum(float(s["cpu_s"]) for s in summaries) + time.process_time(), 2),
        "outcomes": outcomes,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m gate.demo.crowd SPEC.json RESULT.json PROGRESS` (started by `gate demo`)."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--worker":
        return _worker_main(args[1:])
    spec = CrowdSpec(**json.loads(Path(args[0]).read_text()))
    result = run_child(lambda: run(spec, Path(args[2])))
    tmp = Path(args[1] + ".tmp")
    tmp.write_bytes(orjson.dumps(result))
    tmp.replace(args[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
