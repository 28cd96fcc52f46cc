"""`gate demo`: an embedded Redis, a gate, a simulated core bank and a burst of customers.

Everything is real: a redis-server child process (AOF, appendfsync always), the gate's
public and admin listeners on loopback ports, a core bank that serves only requests the
gate's `/gate/auth` accepts, and customers speaking HTTP. Only the scale is small.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from gate.config import Config, default_config
from gate.demo.children import child, loop_factory
from gate.demo.core_bank import CoreBank
from gate.demo.customers import CrowdParams, CrowdResult, result_from_json
from gate.demo.report import (
    RunInfo,
    analyse,
    summary_text,
    write_customers_csv,
    write_outputs,
)
from gate.errors import GateError
from gate.http.app import ADMIN_ADDRESS, create_app, serving
from gate.http.common import GATE_KEY
from gate.redis_server import RedisServer
from gate.service import Gate
from gate.signing import generate_digest_document, generate_keys_document, write_keys

SCENARIOS = ("burst",)
CAMPAIGN = "demo-burst"
MAX_CUSTOMERS = 100_000
MAX_RATE = 1_000_000.0
JOIN_SPREAD_S = 1.0  # every customer sends its join within this long after the first
POLL_SCALE = 1.0  # customers wait poll_after_ms x this between polls
RETRY_EVERY = 100  # one customer in this many double-clicks and retries its join
CONNECTIONS = 256  # the customers' shared connection pool


def _validate(scenario: str, customers: int, rate: float) -> None:
    if scenario not in SCENARIOS:
        raise GateError(
            f"unknown scenario {scenario!r}; choose from: {', '.join(SCENARIOS)}",
            code="bad_scenario",
        )
    if isinstance(customers, bool) or not 1 <= customers <= MAX_CUSTOMERS:
        raise GateError(
            f"customers: {customers} must be between 1 and {MAX_CUSTOMERS}", code="bad_customers"
        )
    if not 0 < rate <= MAX_RATE:  # also refuses NaN
        raise GateError(
            f"rate: {rate} must be above 0 and at most {MAX_RATE:g} per second", code="bad_rate"
        )


def _campaign_spec(customers: int, rate: float) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": CAMPAIGN,
        "opens_at": (now - timedelta(seconds=1)).isoformat(),
        "closes_at": (now + timedelta(hours=1)).isoformat(),
        "quota": {"unit": "item", "total": customers},
        "policy": "first_come",
        "admission": {
            "rate_per_s": rate,
            "burst": max(1, round(rate / 10)),
            "max_active": max(1000, 2 * customers),
            "pass_ttl_s": 60,
        },
        "prequeue": {"window_s": 0, "shuffle": False},
    }


async def _admin_call(
    session: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    async with session.request(method, url, json=body) as response:
        data = await response.json(content_type=None)
        if response.status >= 300:
            raise GateError(f"admin API {method} {url}: {response.status} {data}", code="demo")
        return data if isinstance(data, dict) else {}


class GateMonitor:
    """Samples the gate's own view while the crowd runs: event-loop lag and cache freshness.

    When the gate answers 503 or refuses a pass, these say why: a stale cache (the gate
    cannot prove its state is current, so it fails closed) usually means its event loop
    was starved of CPU, not that Redis was down.
    """

    def __init__(self, gate: Gate, interval_s: float = 0.05):
        self.gate = gate
        self.interval_s = interval_s
        self.samples = 0
        self.stale_samples = 0
        self.max_lag_s = 0.0
        self.max_cache_age_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            now = loop.time()
            self.samples += 1
            self.max_lag_s = max(self.max_lag_s, now - expected)
            self.max_cache_age_s = max(self.max_cache_age_s, now - self.gate.cache.last_ok)
            if not self.gate.cache.fresh():
                self.stale_samples += 1

    def figures(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "stale_samples": self.stale_samples,
            "max_event_loop_lag_ms": round(self.max_lag_s * 1000, 1),
            "max_cache_age_ms": round(self.max_cache_age_s * 1000, 1),
        }


async def _run_crowd(params: CrowdParams, work: Path) -> CrowdResult:
    """The customers, in their own process; stopped (and waited for) if we are cancelled."""
    params_path, result_path = work / "crowd-params.json", work / "crowd-result.json"
    params_path.write_text(json.dumps(dataclasses.asdict(params)))
    async with child("-m", "gate.demo.customers", str(params_path), str(result_path)) as process:
        code = await asyncio.wait_for(process.wait(), timeout=params.deadline_s + 60)
    if code != 0 or not result_path.exists():
        raise GateError(f"the customers' process failed (exit code {code})", code="demo")
    return result_from_json(json.loads(result_path.read_text()))


async def _demo(
    scenario: str, customers: int, rate: float, out: Path, redis: RedisServer, version: str
) -> dict[str, Any]:
    keys_path = out / "keys.json"
    write_keys(keys_path, generate_keys_document())
    digest_path = out / "digest-keys.json"  # apart from the signing keys (issue 13)
    write_keys(digest_path, generate_digest_document())
    admin_token = secrets.token_urlsafe(24)
    config: Config = default_config(
        redis_url=redis.url,
        data_dir=str(out),
        signing_keys=str(keys_path),
        digest_keys=str(digest_path),
        admin_tokens=f"demo:{admin_token}",
        admin_host="127.0.0.1",
        admin_port=0,  # any free port; the app says which it took
        core_port=0,  # the core listener too (the demo's core bank books no claims)
        cookie_secure=False,
        log_level="WARNING",
    )
    spec = _campaign_spec(customers, rate)
    admission = spec["admission"]
    header = config.customer_header
    # SIGTERM stops the demo as Ctrl-C does: every `finally` below runs, so the ports
    # close, the customers' process is stopped, and the caller stops Redis.
    main_task = asyncio.current_task()
    if main_task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    async with contextlib.AsyncExitStack() as stack:
        app = create_app(config)  # starts the gate and the admin listener, and stops them
        gate_url = await stack.enter_async_context(serving(app, config))
        gate = app[GATE_KEY]
        await gate.wait_ready()
        admin_host, admin_port = app[ADMIN_ADDRESS]
        admin_url = f"http://{admin_host}:{admin_port}"
        admin = await stack.enter_async_context(
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_token}"})
        )
        core_session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        )
        bank = CoreBank(core_session, f"{gate_url}/gate/auth", CAMPAIGN, header)
        core_url = await stack.enter_async_context(serving(bank.create_app()))
        await _admin_call(admin, "POST", f"{admin_url}/admin/campaigns", spec)

        params = CrowdParams(
            gate_url=gate_url,
            core_url=core_url,
            campaign=CAMPAIGN,
            customer_header=header,
            customers=customers,
            poll_scale=POLL_SCALE,
            join_spread_s=JOIN_SPREAD_S,
            retry_every=RETRY_EVERY,
            connections=CONNECTIONS,
            # Generous: the queue drains in customers / rate seconds.
            deadline_s=60 + 3 * customers / rate,
            seed=customers,
        )
        monitor = GateMonitor(gate)
        monitoring = asyncio.create_task(monitor.run())
        try:
            crowd = await _run_crowd(params, Path(redis.data_dir))
        finally:
            monitoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitoring
        stats = await _admin_call(admin, "GET", f"{admin_url}/admin/campaigns/{CAMPAIGN}/stats")
        audit = await gate.room.audit_entries(CAMPAIGN)
        info = RunInfo(
            scenario=scenario,
            customers=customers,
            campaign=CAMPAIGN,
            rate=rate,
            burst=int(admission["burst"]),
            max_active=int(admission["max_active"]),
            pass_ttl_s=int(admission["pass_ttl_s"]),
            poll_scale=POLL_SCALE,
            join_spread_s=JOIN_SPREAD_S,
            redis_version=version,
            redis_binary=redis.binary,
            started_at=crowd.started_at,
            duration_s=time.time() - crowd.started_at,
        )
        write_customers_csv(crowd.records, crowd.started_at, out / "customers.csv")
        figures = analyse(info, crowd, audit, int(stats["audit_entries"]), bank)
        figures["gate_process"] = monitor.figures()
        return figures
    raise AssertionError("unreachable")  # pragma: no cover - the exit stack does not swallow


def run_demo(
    scenario: str,
    customers: int | None = None,
    rate: float | None = None,
    out: Path = Path("demo-out"),
    full: bool = False,
    baseline: bool = True,
) -> int:
    """Run the demo; print the summary; write the report under `out`. 0 when every check held.

    `burst` is the gate alone under a burst; the other scenarios (gate.demo.scenarios) run
    the same arrivals without the gate and with it, in front of a simulated core bank.
    """
    if scenario != "burst":
        from gate.demo.scenarios import run_scenario

        return run_scenario(scenario, customers, rate, full, Path(out), baseline)
    customers = 3000 if customers is None else customers
    rate = 500.0 if rate is None else rate
    _validate(scenario, customers, rate)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GateError(f"out: cannot create {out}: {exc.strerror}", code="bad_out") from None
    data_dir = Path(tempfile.mkdtemp(prefix="redis-", dir=out))
    redis = RedisServer(data_dir)
    try:
        version = redis.version()
        try:
            redis.start()
        except RuntimeError as exc:
            raise GateError(f"embedded Redis did not start: {exc}", code="redis") from None
        print(
            f"Redis {version} ({redis.binary}) on 127.0.0.1:{redis.port}; "
            f"{customers} customers coming...",
            file=sys.stderr,
            flush=True,
        )
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            figures = runner.run(_demo(scenario, customers, rate, out, redis, version))
    except asyncio.CancelledError:
        print("gate: demo stopped (SIGTERM); everything it started is stopped", file=sys.stderr)
        return 143
    finally:
        redis.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    written = write_outputs(figures, out)
    print(summary_text(figures))
    print()
    print("wrote " + ", ".join(str(p) for p in [*written, out / "customers.csv"]))
    return 0 if figures["ok"] else 1
