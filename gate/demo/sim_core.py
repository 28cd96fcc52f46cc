"""A simulated core bank in its own process, with a fixed capacity and a downstream bureau.

Like a real core it has a fixed number of concurrent sessions (`capacity`), a bounded
FIFO queue in front of them (`queue_max`), and a queue timeout: a request that finds the
queue full, or waits longer than `queue_timeout_s` for a session, is answered 503 with
`Retry-After: 1`. A session takes the core's own service time (log-normal around
`service_ms`) plus one call to the credit bureau, whose latency (`bureau_ms`, ±50%) an
operator can change mid-run (`POST /control {"bureau_ms": N}`); a bureau call slower than
`bureau_timeout_s` is a 504.

The deposit's stock is checked when the session starts and booked when it ends (after the
bureau answers), as a core that "picked first-comers by the expected amount" does: two
sessions open at once may both see the same remaining stock, so the core alone can promise
more than it has (oversell). Behind the gate each request carries a reservation the gate
made atomically, so the sum booked never exceeds the total.

With `auth_url` set, every request is checked first as nginx `auth_request` would (401/403
passed back, with `Retry-After` and `X-Gate-Retry-After-Ms` for a pass not valid yet, as a
proxy configured for it would; the request "arrives" at the core, for its latency and
arrival counts, once past that check, and a refused one never does); with `confirm_url`
set, each booking confirms the gate's reservation on the gate's core listener, which frees
the customer's active slot.

Its health, as a bank's own health check reports it (what the gate's adaptive admission
polls, `admission.adaptive.sources` kind `http`): `GET /health` is a probe that takes the
path a deposit takes, less the booking: it waits for a session in the same FIFO queue as
the customers' requests (same queue limit and timeout), calls the bureau once, frees the
session and answers. So its round trip is what a request would wait for a session now plus
the bureau's latency now: a few ms plus ~20 ms on a quiet core, the bureau's ~200 ms when
the bureau slows tenfold, and on top the queue's wait as soon as requests queue (the part
admission controls). No figure is computed or smoothed for the prober: the latency is the
answer's own delay, and a refused probe (queue full, queue timeout, bureau timeout) is a 503
with the reason, as a request would be refused. Probes are not customers: they are counted
apart (`probes` in `/stats`) and are not in the per-second figures. `GET /metrics` is the
same core in the Prometheus text format (requests by outcome, a latency histogram,
sessions, queue, probes), for a Prometheus source.

Run: `python -m gate.demo.sim_core PARAMS.json`; it prints `PORT` once listening and stops
when its stdin reaches EOF (its parent is gone) or on SIGTERM. `GET /stats` returns every
request it answered and the per-second figures (JSON).
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gate.demo.children import run_child
from gate.demo.lean_http import Pool

PASS_HEADER = "X-Gate-Pass"
CAMPAIGN_HEADER = "X-Gate-Campaign"
RETRY_MS_HEADER = "X-Gate-Retry-After-Ms"  # with 401 pass_not_yet: when the pass is valid
# The latency histogram's upper bounds (s) in `/metrics`.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _line(name: str, value: str) -> bytes:
    """One request header line."""
    return f"{name}: {value}\r\n".encode()


@dataclass(frozen=True)
class CoreParams:
    capacity: int = 32  # concurrent sessions
    queue_max: int = 256  # requests waiting for a session; one more is a 503 at once
    queue_timeout_s: float = 3.0  # waited this long for a session: 503
    service_ms: float = 30.0  # the core's own time per session (log-normal median)
    bureau_ms: float = 20.0  # the credit bureau's latency (uniform ±50%)
    bureau_timeout_s: float = 5.0  # a slower bureau answer: 504
    total: int = 10_000_000_000  # the deposit's stock (KRW)
    min_amount: int = 1_000_000
    step: int = 10_000
    auth_url: str | None = None  # the gate's /gate/auth (behind the gate)
    campaign: str = ""
    customer_header: str = "X-Customer-Id"
    confirm_url: str | None = None  # the gate's core listener base URL
    confirm_token: str = ""
    seed: int = 1


@dataclass
class Served:
    """One request the core answered."""

    customer: str
    arrived: float  # wall clock
    started: float | None  # a session began (None: refused before one)
    finished: float
    status: int
    booked: int  # amount booked (0 unless 200)
    reason: str  # booked, sold_out, queue_full, queue_timeout, bureau_timeout, no_pass, ...
    # Answered by the proxy's pass check (no_pass, not_yet, auth_failed_*): the request never
    # reached the core, so it is not in the core's latency or arrivals.
    proxy: bool = False


@dataclass
class Probe:
    """One health probe the core answered (`GET /health`)."""

    arrived: float  # wall clock
    latency_ms: float
    status: int
    reason: str  # ok, queue_full, queue_timeout, bureau_timeout


class Overloaded(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Sessions:
    """`capacity` sessions and a bounded FIFO queue with a timeout, as a core's thread pool."""

    def __init__(self, capacity: int, queue_max: int, timeout_s: float):
        self.capacity = capacity
        self.queue_max = queue_max
        self.timeout_s = timeout_s
        self.busy = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.max_busy = 0
        self.max_queue = 0

    async def acquire(self) -> None:
        if self.busy < self.capacity and not self.waiters:
            self.busy += 1
            self.max_busy = max(self.max_busy, self.busy)
            return
        if len(self.waiters) >= self.queue_max:
            raise Overloaded("queue_full")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        self.max_queue = max(self.max_queue, len(self.waiters))
        try:
            await asyncio.wait({future}, timeout=self.timeout_s)
        finally:
            if not future.done():
                future.cancel()
                self.waiters.remove(future)
        if future.cancelled():
            raise Overloaded("queue_timeout")
        # release() handed its session to us: busy is unchanged

    def release(self) -> None:
        while self.waiters:
            future = self.waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.busy -= 1


class Bureau:
    """The credit bureau the core calls in every session; its latency can change mid-run."""

    def __init__(self, latency_ms: float, timeout_s: float, rng: random.Random):
        self.latency_ms = latency_ms
        self.timeout_s = timeout_s
        self.rng = rng
        self.changes: list[tuple[float, float]] = [(time.time(), latency_ms)]
        self.calls = 0

    async def lookup(self) -> None:
        self.calls += 1
        delay = self.latency_ms / 1000 * self.rng.uniform(0.5, 1.5)
        if delay > self.timeout_s:
            await asyncio.sleep(self.timeout_s)
            raise Overloaded("bureau_timeout")
        await asyncio.sleep(delay)

    def set_latency(self, latency_ms: float) -> None:
        self.latency_ms = latency_ms
        self.changes.append((time.time(), latency_ms))


class SimCore:
    def __init__(self, params: CoreParams, session: aiohttp.ClientSession | None):
        self.params = params
        self.session = session
        # The pass check (nginx auth_request's subrequest), on the demo's lean keep-alive
        # client: one per admitted customer's deposit, aiohttp's client cost ~5x the CPU.
        self.auth: tuple[Pool, str] | None = None
        self.rng = random.Random(params.seed)
        self.sessions = Sessions(params.capacity, params.queue_max, params.queue_timeout_s)
        self.bureau = Bureau(params.bureau_ms, params.bureau_timeout_s, self.rng)
        self.sold = 0
        self.bookings = 0
        self.confirm_failures = 0
        self.confirming: set[asyncio.Task[None]] = set()
        self.served: list[Served] = []
        self.probes: list[Probe] = []
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: above every bound
        self.latency_sum_s = 0.0
        self.by_reason: collections.Counter[str] = collections.Counter()

    def create_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/deposit", self.deposit)
        app.router.add_post("/control", self.control)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        return app

    def _grant(self, wanted: int) -> int:
        """What the core's stock check allows now: all, a smaller multiple of step, or 0."""
        left = self.params.total - self.sold
        grant = min(wanted, left - left % self.params.step)
        return grant if grant >= self.params.min_amount else 0

    async def _auth(self, request: web.Request) -> tuple[int, dict[str, str]]:
        """The gate's answer to the pass check, and the headers a proxy passes back with a
        refusal: a pass not valid yet (401 pass_not_yet) says when to come back."""
        assert self.params.auth_url is not None
        if self.auth is None:
            base, _, path = self.params.auth_url.removeprefix("http://").partition("/")
            self.auth = (Pool.for_url(base, 128), "/" + path)
        pool, path = self.auth
        headers = _line(CAMPAIGN_HEADER, self.params.campaign)
        for name in (PASS_HEADER, self.params.customer_header):
            value = request.headers.get(name)
            if value:
                headers += _line(name, value)
        try:
            response = await pool.request("GET", path, headers)
        except (OSError, TimeoutError):
            return 599, {}
        back = {
            name: response.headers[name.lower()]
            for name in ("Retry-After", RETRY_MS_HEADER)
            if name.lower() in response.headers
        }
        return response.status, back

    async def _confirm(self, reservation: str) -> bool:
        assert self.params.confirm_url is not None and self.session is not None
        url = (
            f"{self.params.confirm_url}/q/{self.params.campaign}/reservations/{reservation}/confirm"
        )
        headers = {"Authorization": f"Bearer {self.params.confirm_token}"}
        for _ in range(120):  # 60 s: the gate may be failing over
            try:
                async with self.session.post(url, headers=headers, json={}) as response:
                    await response.read()
                    if response.status < 500:
                        return response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.5)
        return False

    def _answer(
        self, customer: str, arrived: float, started: float | None, status: int, booked: int,
        reason: str, proxy: bool = False, headers: dict[str, str] | None = None,
    ) -> web.Response:  # fmt: skip
        finished = time.time()
        self.served.append(
            Served(customer, arrived, started, finished, status, booked, reason, proxy)
        )
        self.by_reason[reason] += 1
        if not proxy:
            latency = finished - arrived
            self.latency_sum_s += latency
            bucket = next((n for n, b in enumerate(LATENCY_BUCKETS) if latency <= b), -1)
            self.buckets[bucket] += 1
        body: dict[str, Any] = {"status": reason, "booked": str(booked)}
        if status == 503:
            headers = {"Retry-After": "1"}
        return web.json_response(body, status=status, headers=headers)

    async def deposit(self, request: web.Request) -> web.Response:
        arrived = time.time()
        try:
            body = await request.json()
            customer = str(body["customer"])
            wanted = int(body["amount"])
            reservation = body.get("reservation")
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "bad body"}, status=400)
        if self.params.auth_url is not None:
            status, back = await self._auth(request)
            if status in (401, 403):
                # Not valid yet (the gate's door paces arrivals): come back then, as the
                # waiting page would send the customer; else no valid pass.
                reason = "not_yet" if status == 401 and RETRY_MS_HEADER in back else "no_pass"
                return self._answer(customer, arrived, None, status, 0, reason, True, back)
            if not 200 <= status < 300:
                reason = f"auth_failed_{status}"
                return self._answer(customer, arrived, None, 502, 0, reason, True)
            # The pass check is the proxy's step (nginx auth_request), before the core: the
            # core's own latency starts when the request gets past it.
            arrived = time.time()
        try:
            await self.sessions.acquire()
        except Overloaded as exc:
            return self._answer(customer, arrived, None, 503, 0, exc.reason)
        started = time.time()
        try:
            grant = self._grant(wanted)  # the stock check reads the balance now...
            if grant == 0:
                return self._answer(customer, arrived, started, 409, 0, "sold_out")
            service_s = self.params.service_ms / 1000 * self.rng.lognormvariate(0, 0.4)
            await asyncio.sleep(service_s)
            try:
                await self.bureau.lookup()
            except Overloaded as exc:
                return self._answer(customer, arrived, started, 504, 0, exc.reason)
            self.sold += grant  # ...and the booking writes it after the bureau answered
            self.bookings += 1
        finally:
            self.sessions.release()
        # After the booking is committed (the session is free): tell the gate, which
        # frees the customer's active slot. A failure here is the gate's, not the core's.
        if reservation is not None and self.params.confirm_url is not None:
            task = asyncio.create_task(self._confirm_later(str(reservation)))
            self.confirming.add(task)
            task.add_done_callback(self.confirming.discard)
        return self._answer(customer, arrived, started, 200, grant, "booked")

    async def _confirm_later(self, reservation: str) -> None:
        if not await self._confirm(reservation):
            self.confirm_failures += 1

    async def health(self, request: web.Request) -> web.Response:
        """A probe down a deposit's path (a session from the same queue, one bureau call),
        answered when done: its round trip is the core's latency now (module docstring)."""
        arrived, started = time.time(), time.monotonic()
        status, reason = 200, "ok"
        try:
            await self.sessions.acquire()
        except Overloaded as exc:
            status, reason = 503, exc.reason
        else:
            try:
                await self.bureau.lookup()
            except Overloaded as exc:
                status, reason = 503, exc.reason
            finally:
                self.sessions.release()
        latency_ms = round((time.monotonic() - started) * 1000, 1)
        self.probes.append(Probe(arrived, latency_ms, status, reason))
        body = {
            "status": reason,
            "latency_ms": latency_ms,
            "sessions_busy": self.sessions.busy,
            "sessions": self.sessions.capacity,
            "queued": len(self.sessions.waiters),
        }
        headers = {"Retry-After": "1"} if status == 503 else None
        return web.json_response(body, status=status, headers=headers)

    async def metrics(self, request: web.Request) -> web.Response:
        """The core in the Prometheus text format (version 0.0.4)."""
        lines = [
            "# HELP sim_core_requests_total Deposit requests answered, by outcome.",
            "# TYPE sim_core_requests_total counter",
            *(
                f'sim_core_requests_total{{reason="{reason}"}} {count}'
                for reason, count in sorted(self.by_reason.items())
            ),
            "# HELP sim_core_request_seconds Deposit latency, arrival to answer.",
            "# TYPE sim_core_request_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip((*LATENCY_BUCKETS, math.inf), self.buckets, strict=True):
            cumulative += count
            le = "+Inf" if bound == math.inf else f"{bound:g}"
            lines.append(f'sim_core_request_seconds_bucket{{le="{le}"}} {cumulative}')
        lines += [
            f"sim_core_request_seconds_sum {self.latency_sum_s:.6f}",
            f"sim_core_request_seconds_count {cumulative}",
        ]
        gauges = (
            ("sessions_busy", "Sessions serving a request now.", self.sessions.busy),
            ("sessions", "Sessions the core has.", self.sessions.capacity),
            ("queue_length", "Requests waiting for a session.", len(self.sessions.waiters)),
            ("queue_max", "Requests the queue holds.", self.sessions.queue_max),
        )
        for name, text, value in gauges:
            lines += [f"# HELP sim_core_{name} {text}", f"# TYPE sim_core_{name} gauge"]
            lines.append(f"sim_core_{name} {value}")
        failed = sum(1 for p in self.probes if p.status != 200)
        lines += [
            "# HELP sim_core_probes_total Health probes answered (GET /health), by status.",
            "# TYPE sim_core_probes_total counter",
            f'sim_core_probes_total{{status="200"}} {len(self.probes) - failed}',
            f'sim_core_probes_total{{status="503"}} {failed}',
        ]
        return web.Response(
            body=("\n".join(lines) + "\n").encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def control(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            latency = float(body["bureau_ms"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "bureau_ms: a number is required"}, status=400)
        if not 0 <= latency <= 600_000:
            return web.json_response({"error": "bureau_ms: 0 to 600000"}, status=400)
        self.bureau.set_latency(latency)
        return web.json_response({"bureau_ms": latency})

    async def stats(self, request: web.Request) -> web.Response:
        summary: dict[str, Any] = {
            "answered": len(self.served),
            "cpu_s": round(time.process_time(), 2),  # the core process's own CPU so far
            "sold": self.sold,
            "bookings": self.bookings,
            "errors": sum(1 for s in self.served if s.status >= 500),
            "busy": self.sessions.busy,
            "queued": len(self.sessions.waiters),
            "confirming": len(self.confirming),
        }
        if request.query.get("summary"):
            return web.json_response(summary)
        summary.update(
            {
                "params": asdict(self.params),
                "max_busy": self.sessions.max_busy,
                "max_queue": self.sessions.max_queue,
                "bureau_calls": self.bureau.calls,
                "confirm_failures": self.confirm_failures,
                "bureau_changes": self.bureau.changes,
                "probes": [asdict(p) for p in self.probes],
                # vars(): scalars only, and asdict's deep copy of each took minutes for
                # the million requests of a --full run, the core's loop blocked meanwhile
                "served": [vars(s) for s in self.served],
            }
        )
        return web.json_response(summary)


def per_second(served: list[dict[str, Any]], t0: float) -> list[dict[str, Any]]:
    """Arrivals, answers, errors and the p99 latency of the answers, per 1-s window from t0,
    of the requests that reached the core (not those refused at the proxy's pass check)."""
    if not served:
        return []
    last = max(s["finished"] for s in served)
    seconds = max(1, math.ceil(last - t0))
    rows: list[dict[str, Any]] = [
        {"t": i, "arrivals": 0, "answered": 0, "errors": 0, "booked": 0, "latencies": []}
        for i in range(seconds)
    ]
    for s in served:
        if s.get("proxy"):
            continue  # refused at the proxy's pass check: never reached the core
        a = min(seconds - 1, max(0, int(s["arrived"] - t0)))
        rows[a]["arrivals"] += 1
        f = min(seconds - 1, max(0, int(s["finished"] - t0)))
        rows[f]["answered"] += 1
        rows[f]["latencies"].append(s["finished"] - s["arrived"])
        if s["status"] >= 500:
            rows[f]["errors"] += 1
        if s["status"] == 200:
            rows[f]["booked"] += 1
    for row in rows:
        lat = sorted(row.pop("latencies"))
        row["p99_ms"] = (
            round(lat[max(0, math.ceil(0.99 * len(lat)) - 1)] * 1000, 1) if lat else None
        )
    return rows


async def _serve(params: CoreParams) -> None:
    connector = aiohttp.TCPConnector(limit=128)
    async with aiohttp.ClientSession(connector=connector) as session:
        core = SimCore(params, session)
        runner = web.AppRunner(core.create_app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=8192)
        await site.start()
        print(int(runner.addresses[0][1]), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    run_child(lambda: _serve(CoreParams(**json.loads(Path(args[0]).read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
