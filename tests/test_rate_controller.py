"""The rate controller's parts on their own: the AIMD step (a property test), the
percentiles, Prometheus's answers, and the scripts it uses on every Redis version
(campaign_update.lua's conditions and `why`, controller_lease.lua)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis as sync_redis
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from gate.audit.format import decode_entry
from gate.audit.query import entry_view
from gate.campaign import Adaptive, HealthSource, Targets, parse_spec
from gate.controller import decide
from gate.health import (
    LATENCY_BUCKETS_MS,
    HttpProbe,
    Signal,
    bucket_of,
    histogram_percentile,
    percentile,
    prometheus_value,
)
from gate.redis_client import connect
from gate.redis_server import RedisServer
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.room.scripts import Scripts
from tests.helpers import spec

ADAPTIVE = Adaptive(
    rate_min=10,
    rate_max=100,
    mode="auto",
    interval_s=1,
    targets=Targets(latency_ms=300, error_ratio=0.05),
    sources=(HealthSource("http", url="http://core/health"),),
)

signals = st.builds(
    Signal,
    source=st.just("http"),
    latency_ms=st.none() | st.floats(0, 10_000),
    error_ratio=st.none() | st.floats(0, 1),
    samples=st.integers(0, 10),
)


@given(rate=st.floats(10, 100), seen=st.lists(signals, max_size=3), cooling=st.booleans())
def test_aimd_step_stays_in_bounds_and_follows_the_signal(
    rate: float, seen: list[Signal], cooling: bool
) -> None:
    decision = decide(ADAPTIVE, rate, seen, cooling=cooling)
    over = [
        s
        for s in seen
        if (s.latency_ms is not None and s.latency_ms > 300)
        or (s.error_ratio is not None and s.error_ratio > 0.05)
    ]
    spoke = [s for s in seen if s.latency_ms is not None or s.error_ratio is not None]
    if decision is None:
        return
    assert 10 <= decision.rate <= 100
    if over:
        assert decision.direction == "down" and not cooling
        assert decision.rate == pytest.approx(max(10, rate * 0.7), abs=1e-5)
    else:
        assert spoke and decision.direction == "up"
        assert decision.rate == pytest.approx(min(100, rate + 4.5), abs=1e-5)
    assert abs(decision.rate - rate) > min(0.02 * rate, 1.0) or decision.rate in (10, 100)


def test_aimd_holds_without_a_signal_and_at_the_bounds() -> None:
    nothing = Signal("http", None, None, 0)
    slow = Signal("http", 900.0, 0.0, 1)
    healthy = Signal("http", 20.0, 0.0, 1)
    assert decide(ADAPTIVE, 50, [nothing], cooling=False) is None
    assert decide(ADAPTIVE, 10, [slow], cooling=False) is None  # at rate_min already
    assert decide(ADAPTIVE, 100, [healthy], cooling=False) is None  # at rate_max already
    assert decide(ADAPTIVE, 50, [slow], cooling=True) is None  # the cool-down
    # one source over its target outweighs another within: down
    down = decide(ADAPTIVE, 50, [healthy, slow], cooling=False)
    assert down is not None and (down.direction, down.rate, down.cause) == ("down", 35, slow)
    up = decide(ADAPTIVE, 99.5, [healthy], cooling=False)
    assert up is not None and up.rate == 100  # a small step that reaches the bound is made


def test_percentiles() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 90) == 5.0
    assert percentile([7.0], 50) == 7.0
    counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    for latency in [1.0] * 9 + [800.0]:
        counts[bucket_of(latency)] += 1
    # the 5th of 10 answers, 5 of the 9 in the 0..5 ms bucket, interpolated
    assert histogram_percentile(counts, 50) == pytest.approx(5 * 5 / 9)
    assert 750 < (histogram_percentile(counts, 95) or 0) <= 1000
    assert histogram_percentile([0] * len(counts), 90) is None
    counts = [0] * len(counts)
    counts[-1] = 3  # over the last bound: its lower bound
    assert histogram_percentile(counts, 90) == LATENCY_BUCKETS_MS[-1]


def _vector(*values: str) -> dict[str, Any]:
    result = [{"metric": {"i": str(i)}, "value": [1.7e9, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_prometheus_answers() -> None:
    assert prometheus_value(_vector("0.25", "0.5")) == 0.5  # the worst series
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1.7e9, "0.1"]}}
    assert prometheus_value(scalar) == 0.1
    assert prometheus_value(_vector()) is None
    assert prometheus_value(_vector("NaN")) is None
    assert prometheus_value(_vector("+Inf")) is None
    assert prometheus_value({"status": "error", "error": "bad query"}) is None
    assert prometheus_value("not json") is None
    assert not math.isnan(prometheus_value(_vector("NaN", "0.3")) or math.nan)


@pytest.fixture
async def room(any_redis: RedisServer) -> AsyncIterator[Room]:
    flusher = sync_redis.Redis(port=any_redis.port)
    flusher.flushall()
    flusher.close()
    redis = connect(any_redis.url, timeout_s=5)
    scripts = Scripts()
    await scripts.load_all(redis)
    yield Room(redis, scripts)
    await redis.aclose()


async def test_controller_scripts_on_every_redis(room: Room) -> None:
    adaptive = {
        "rate_min": 10,
        "rate_max": 100,
        "targets": {"latency_ms": 300},
        "sources": [{"kind": "http", "url": "http://core/health"}],
    }
    parsed = parse_spec(spec("c", rate_per_s=100, adaptive=adaptive))
    await room.create(parsed, "ops")
    k = CampaignKeys("c")
    assert await room.redis.hget(k.meta, "mode") == b"auto"
    why = json.dumps({"source": "http", "latency_ms": 812.5, "direction": "down"})
    assert await room.controller_update(
        "c", rate_in_force="100.0", rate="70.0", why=why, actor="controller"
    )
    # a rate no longer in force, or a pinned mode: refused, nothing written
    assert not await room.controller_update(
        "c", rate_in_force="100.0", rate="49.0", why=why, actor="controller"
    )
    await room.update("c", parsed, {"mode": "manual"}, "ops")
    assert not await room.controller_update(
        "c", rate_in_force="70.0", rate="49.0", why=why, actor="controller"
    )
    assert await room.redis.hget(k.meta, "rate") == b"70.0"
    # the stored spec stays as the operator wrote it (an empty spec argument)
    assert json.loads(await room.redis.hget(k.meta, "spec"))["admission"]["rate_per_s"] == 100
    entries = [decode_entry(raw) for raw in await room.redis.lrange(k.audit, 0, -1)]
    updates = [e for e in entries if e["k"] == b"admin-update"]
    assert len(updates) == 2
    change, pin = updates
    assert (change["a"], change["f"], change["o"], change["n"]) == (
        b"controller",
        [b"rate"],
        [b"100.0"],
        [b"70.0"],
    )
    assert change["why"] == {b"source": b"http", b"latency_ms": 812.5, b"direction": b"down"}
    assert (pin["f"], pin["o"], pin["n"]) == ([b"mode"], [b"auto"], [b"manual"])
    assert "why" not in pin
    # the lease: one holder at a time, renewed by it, given back
    assert await room.controller_lease("c", "token-one-1234", 1000, "acquire")
    assert not await room.controller_lease("c", "token-two-1234", 1000, "acquire")
    assert await room.controller_lease("c", "token-one-1234", 1000, "acquire")
    assert 0 < await room.redis.pttl(k.controller) <= 1000
    assert not await room.controller_lease("c", "token-one-1234", 1000, "release")
    assert await room.controller_lease("c", "token-two-1234", 1000, "acquire")


def test_an_audit_query_shows_why_as_text() -> None:
    entry = {"k": b"admin-update", "a": b"controller", "f": [b"rate"], "o": [b"100.0"]}
    entry |= {"n": [b"70.0"], "why": {b"source": b"http", b"latency_ms": 812.5}, "t": 1}
    view = entry_view(7, entry)
    assert view["why"] == {"source": "http", "latency_ms": 812.5}
    assert (view["f"], view["o"], view["n"]) == (["rate"], ["100.0"], ["70.0"])


async def _probe_once(handler: Any) -> float:
    """One HttpProbe round trip (ms) to a real aiohttp server on loopback whose /health is
    `handler`."""
    app = web.Application()
    app.router.add_get("/health", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            source = HealthSource("http", url=f"http://127.0.0.1:{port}/health", timeout_ms=2000)
            latency_ms, error_ratio = await HttpProbe(source, session).ask()
            assert error_ratio == 0.0
            assert latency_ms is not None
            return latency_ms
    finally:
        await runner.cleanup()


async def test_a_stall_of_the_gates_own_loop_is_not_the_cores_latency() -> None:
    """The probe's round trip counts the time the gate's event loop lived: a gate starved
    of CPU for 0.6 s (here its loop is blocked while the probe waits) does not read as a
    core 0.6 s slow and cut the rate; a core that is slow still reads as slow."""

    async def stalled(request: web.Request) -> web.Response:
        time.sleep(0.6)  # noqa: ASYNC251  # the whole loop stops, as in a starved gate process
        return web.Response(text="ok")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.4)  # the core takes its time; the loop runs on
        return web.Response(text="ok")

    assert await _probe_once(stalled) < 300
    assert await _probe_once(slow) >= 400
