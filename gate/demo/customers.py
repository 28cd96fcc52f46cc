"""Simulated customers: join, poll as told by `poll_after_ms`, then use the pass once.

The crowd runs in its own process (`python -m gate.demo.customers PARAMS`), as a load
generator should: on a small machine, customers sharing the gate's event loop would
steal the CPU the gate needs and measure themselves rather than the gate. Each customer
is one asyncio task with its own customer id (the header a trusted proxy would set).
They share one HTTP session with a bounded connection pool and no cookie jar, so no
customer ever sends another's pass cookie.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gate.demo.children import run_child, write_result
from gate.demo.core_bank import PASS_HEADER

MAX_ATTEMPTS = 20  # per request, for 5xx answers and transport errors
CORE_ATTEMPTS = 5  # an admitted customer refused by the core asks for a fresh pass this often


class CustomerGaveUp(Exception):
    """A request kept failing; the customer stops (the demo reports it)."""


@dataclass
class CustomerRecord:
    index: int
    customer_id: str
    retries_join: bool = False
    join_started: float | None = None  # wall-clock seconds
    joined_at: float | None = None
    seq: int | None = None
    first_position: int | None = None
    first_state: str | None = None
    retry_seqs: list[int] = field(default_factory=list)
    retry_created: list[bool] = field(default_factory=list)
    polls: int = 0
    admitted_at: float | None = None
    core_status: int | None = None
    core_at: float | None = None
    core_refusals: int = 0  # the core refused this admitted customer's pass (then retried)
    error: str | None = None


@dataclass
class Traffic:
    """What the customers saw on the wire, every request counted."""

    by_status: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    errors_5xx: Counter[str] = field(default_factory=Counter)  # "route status code" -> count

    @property
    def responses_5xx(self) -> int:
        return sum(count for status, count in self.by_status.items() if status >= 500)


@dataclass(frozen=True)
class CrowdParams:
    gate_url: str
    core_url: str
    campaign: str
    customer_header: str
    customers: int
    poll_scale: float
    join_spread_s: float
    retry_every: int
    connections: int
    deadline_s: float
    seed: int


@dataclass
class CrowdResult:
    started_at: float
    records: list[CustomerRecord]
    traffic: Traffic
    probes: list[tuple[str, int, int]]  # (what, status, expected)


class Customers:
    def __init__(self, session: aiohttp.ClientSession, params: CrowdParams):
        self.session = session
        self.params = params
        self.gate_url = params.gate_url
        self.core_url = params.core_url
        self.campaign = params.campaign
        self.customer_header = params.customer_header
        self.poll_scale = params.poll_scale
        self.traffic = Traffic()
        self.sample_pass: str | None = None

    async def _request(
        self, method: str, url: str, headers: dict[str, str], params: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One request; a 5xx is counted, then retried after its Retry-After (scaled)."""
        for _ in range(MAX_ATTEMPTS):
            try:
                async with self.session.request(
                    method, url, headers=headers, params=params
                ) as response:
                    self.traffic.by_status[response.status] += 1
                    try:
                        body = await response.json(content_type=None)
                    except ValueError:
                        body = {}
                    if not isinstance(body, dict):
                        body = {}
                    if response.status < 500:
                        return response.status, body
                    error = body.get("error")
                    code = error.get("code") if isinstance(error, dict) else None
                    route = url.rsplit("/", 1)[-1]
                    self.traffic.errors_5xx[f"{route} {response.status} {code}"] += 1
                    retry_after = float(response.headers.get("Retry-After", "1"))
            except (aiohttp.ClientError, TimeoutError):
                self.traffic.transport_errors += 1
                retry_after = 0.5
            await asyncio.sleep(retry_after * self.poll_scale)
        raise CustomerGaveUp(f"{method} {url}: no answer after {MAX_ATTEMPTS} attempts")

    async def _join(self, record: CustomerRecord) -> dict[str, Any]:
        status, body = await self._request(
            "POST",
            f"{self.gate_url}/q/{self.campaign}/join",
            {self.customer_header: record.customer_id},
        )
        if status not in (200, 201):
            raise CustomerGaveUp(f"join answered {status}: {body.get('error')}")
        return body

    async def _wait_for_pass(self, record: CustomerRecord, ticket: str, wait_ms: int) -> str:
        headers = {self.customer_header: record.customer_id}
        while True:
            await asyncio.sleep(wait_ms / 1000 * self.poll_scale)
            status, body = await self._request(
                "GET",
                f"{self.gate_url}/q/{self.campaign}/status",
                headers,
                params={"ticket": ticket},
            )
            record.polls += 1
            if status != 200:
                raise CustomerGaveUp(f"status answered {status}: {body.get('error')}")
            if body["state"] == "admitted":
                return str(body["pass"])
            if body["state"] != "waiting":
                raise CustomerGaveUp(f"status says {body['state']}")
            wait_ms = int(body.get("poll_after_ms") or 500)

    async def run(self, record: CustomerRecord, start_at: float) -> None:
        try:
            await self._run(record, start_at)
        except CustomerGaveUp as exc:
            record.error = str(exc)

    async def _run(self, record: CustomerRecord, start_at: float) -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        record.join_started = time.time()
        if record.retries_join:
            # A double click: two joins in flight at once, then a retry once answered.
            first, second = await asyncio.gather(self._join(record), self._join(record))
            third = await self._join(record)
            body = first
            record.retry_seqs = [int(b["seq"]) for b in (second, third)]
            record.retry_created = [bool(b["created"]) for b in (first, second, third)]
        else:
            body = await self._join(record)
        record.joined_at = time.time()
        record.seq = int(body["seq"])
        record.first_position = int(body["position"])
        record.first_state = str(body["state"])
        ticket = str(body["ticket"])
        wait_ms = 0 if body["state"] == "admitted" else int(body.get("poll_after_ms") or 500)
        pass_token = await self._wait_for_pass(record, ticket, wait_ms)
        record.admitted_at = time.time()
        if self.sample_pass is None:
            self.sample_pass = pass_token
        for _ in range(CORE_ATTEMPTS):
            status, _body = await self._request(
                "POST",
                f"{self.core_url}/deposit",
                {PASS_HEADER: pass_token, self.customer_header: record.customer_id},
            )
            record.core_status = status
            record.core_at = time.time()
            if status not in (401, 403):
                break
            # The gate refused a pass it just issued (it fails closed when its view of
            # Redis is not fresh): ask for the pass again, as the waiting-room page would.
            record.core_refusals += 1
            pass_token = await self._wait_for_pass(record, ticket, 500)
        if record.core_status != 200:
            record.error = f"the core bank answered {record.core_status}"

    async def probes(self) -> list[tuple[str, int, int]]:
        """Requests to the core bank that must be refused: no pass, forged, someone else's."""
        header = self.customer_header
        url = f"{self.core_url}/deposit"
        tried = [
            ("no pass", {header: "queue-jumper"}, 401),
            ("forged pass", {header: "queue-jumper", PASS_HEADER: "v1.forged.pass"}, 401),
        ]
        if self.sample_pass is not None:
            tried.append(
                (
                    "someone else's pass",
                    {header: "someone-else", PASS_HEADER: self.sample_pass},
                    403,
                )
            )
        out = []
        for what, headers, expected in tried:
            status, _ = await self._request("POST", url, headers)
            out.append((what, status, expected))
        return out


async def run_crowd(params: CrowdParams) -> CrowdResult:
    rng = random.Random(params.seed)
    records = [
        CustomerRecord(i, f"cust-{i:06d}-{rng.getrandbits(32):08x}", i % params.retry_every == 7)
        for i in range(params.customers)
    ]
    offsets = sorted(rng.uniform(0, params.join_spread_s) for _ in records)
    offsets = [o - offsets[0] for o in offsets]  # the first customer starts the clock
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=params.connections),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as session:
        crowd = Customers(session, params)
        started = time.time() + 0.1
        tasks = [
            asyncio.create_task(crowd.run(record, started + offset))
            for record, offset in zip(records, offsets, strict=True)
        ]
        _done, pending = await asyncio.wait(tasks, timeout=params.deadline_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for record in records:
            if record.admitted_at is None and record.error is None:
                record.error = f"not admitted within the deadline ({params.deadline_s:.0f} s)"
        probes = await crowd.probes()
    return CrowdResult(started, records, crowd.traffic, probes)


def result_to_json(result: CrowdResult) -> dict[str, Any]:
    return {
        "started_at": result.started_at,
        "records": [dataclasses.asdict(r) for r in result.records],
        "traffic": {
            "by_status": {str(k): v for k, v in result.traffic.by_status.items()},
            "transport_errors": result.traffic.transport_errors,
            "errors_5xx": dict(result.traffic.errors_5xx),
        },
        "probes": [list(p) for p in result.probes],
    }


def result_from_json(data: dict[str, Any]) -> CrowdResult:
    traffic = Traffic(
        Counter({int(k): int(v) for k, v in data["traffic"]["by_status"].items()}),
        int(data["traffic"]["transport_errors"]),
        Counter({str(k): int(v) for k, v in data["traffic"]["errors_5xx"].items()}),
    )
    return CrowdResult(
        float(data["started_at"]),
        [CustomerRecord(**r) for r in data["records"]],
        traffic,
        [(str(w), int(s), int(e)) for w, s, e in data["probes"]],
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m gate.demo.customers PARAMS.json RESULT.json` (started by `gate demo`)."""
    args = sys.argv[1:] if argv is None else argv
    result = run_child(lambda: run_crowd(CrowdParams(**json.loads(Path(args[0]).read_text()))))
    write_result(args[1], result_to_json(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
