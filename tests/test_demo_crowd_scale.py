"""The demo's crowd at scale: customers simulated in batches over a bounded pool.

`gate demo --full` runs 100,000 (special-deposit) and 1,000,000 (ipo-rush) customers from
one process on a 2-core machine. A task per customer, all at once, queued on the pool's
connections cost memory and CPU for every customer waiting (and each timed out together);
the crowd now starts a customer only while fewer than `live` are under way. Real
processes: the simulated core in its own process, the crowd in its own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gate.demo.scenarios import (
    CAMPAIGN,
    CROWD_STALL_S,
    SCENARIOS,
    _core_params,
    _crowd_spec,
    _window_s,
    analyse_row,
    crowd_gave_out,
    run_crowd,
    run_with,
    sim_core,
    sized,
)
from gate.demo.sim_core import CoreParams

# A core that never refuses: every request gets a session at once, so what is in flight at
# the core is what the crowd sent at once.
ROOMY_CORE = CoreParams(capacity=200, queue_max=200, service_ms=100, bureau_ms=20)


def _most_at_once(served: list[dict[str, Any]]) -> int:
    """The most requests the core held at once (its arrivals and answers, in time order)."""
    events = sorted(
        [(s["arrived"], 1) for s in served] + [(s["finished"], -1) for s in served],
        key=lambda e: (e[0], e[1]),
    )
    most = now = 0
    for _t, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.slow
async def test_the_crowd_keeps_at_most_live_customers_under_way(tmp_path: Path) -> None:
    # 600 customers arriving within 0.1 s, at most 16 under way: the rest start as earlier
    # ones get their answer (late, and counted so), and every one of them gets an answer.
    # Everyone books (~120 ms a session), so 600 take ~4.5 s 16 at a time.
    scenario = dataclasses.replace(
        sized(SCENARIOS["special-deposit"], 600, False),
        spread_s=0.1,
        core=ROOMY_CORE,
        total=10**13,
    )
    async with sim_core(_core_params(scenario), tmp_path) as core_url:
        spec = dataclasses.replace(
            _crowd_spec(scenario, 600, "direct", core_url), live=16, deadline_s=60
        )
        crowd = await run_crowd(spec, tmp_path, lambda _done: None)
        async with aiohttp.ClientSession() as session, session.get(f"{core_url}/stats") as r:
            core = await r.json()
    results = {o["result"] for o in crowd["outcomes"]}
    assert results == {"booked"}, results
    assert len(crowd["outcomes"]) == 600
    assert 1 < _most_at_once(core["served"]) <= 16
    assert crowd["late"] > 0 and crowd["arrivals_span_s"] > 1.0
    # The row says so: the arrivals were not all offered within the scenario's spread.
    row = analyse_row(scenario, False, crowd, core, None)
    assert (row["late_starts"], row["arrivals_span_s"]) == (
        crowd["late"],
        crowd["arrivals_span_s"],
    )


def test_a_crowd_still_answering_customers_is_not_cut_off() -> None:
    # ipo-rush at 100,000 (--full): its bound from the gate's rate (200 s) cut off a crowd
    # that was answering ~480 customers a second straight at the core.
    limit = 200.0
    assert not crowd_gave_out(100.0, limit, last_answer=0.0)  # within its bound
    assert not crowd_gave_out(900.0, limit, last_answer=899.0)  # past it, still answering
    assert not crowd_gave_out(900.0, limit, last_answer=900.0 - CROWD_STALL_S + 1)
    assert crowd_gave_out(900.0, limit, last_answer=900.0 - CROWD_STALL_S)  # stuck


def test_through_the_gate_the_crowd_keeps_fewer_customers_waiting_at_once() -> None:
    # Each customer waiting at the gate polls every 0.5 s or more: 20,000 at once starved
    # the admitted of the pool (5,000 customers of ipo-rush --full in 56.6 s, 163 gate
    # 5xx; with 1,024 at once 24.0 s, none). Straight at the core they only press again.
    full = sized(SCENARIOS["ipo-rush"], 100_000, True)
    gated = _crowd_spec(full, 100_000, "gate", "http://core", gate_url="http://gate")
    direct = _crowd_spec(full, 100_000, "direct", "http://core")
    assert gated.live == 4 * gated.connections == 1024
    assert direct.live == 20_000
    # The ballot's window outlasts a --full crowd sent through the gate (closed when
    # done): at 1,000,000 the crowd took 62 min and an hour's window ended under it.
    assert _window_s(full, 100_000) >= 3600
    million = sized(SCENARIOS["ipo-rush"], 1_000_000, True)
    assert _window_s(million, 1_000_000) >= 1_000_000 / 100


@pytest.mark.slow
async def test_the_gate_row_reads_the_whole_audit_log_after_the_sealer_trimmed_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long run's log outgrows audit_keep_in_redis (100,000 entries): the sealer moves the
    # oldest to segment files. The row read Redis's list alone and counted the customers
    # admitted first as never let in (ipo-rush at 100,000: 2.5e9 inversions). Here the
    # gate keeps 200 entries in Redis and seals every 50 ms: about half of a small run's log
    # is moved (before the fix: 5,100 inversions).
    import redis as sync_redis

    import gate.config
    from gate.redis_server import RedisServer
    from gate.room.keys import CampaignKeys

    real = gate.config.default_config
    monkeypatch.setattr(
        gate.config,
        "default_config",
        lambda **kw: real(**kw, audit_keep_in_redis=200, seal_interval_ms=50),
    )
    scenario = dataclasses.replace(
        SCENARIOS["ipo-rush"], spread_s=0.5, total=300_000_000, rate=150.0, core=ROOMY_CORE
    )
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        row = await run_with(scenario, 200, tmp_path, redis, lambda _done: None)
        client = sync_redis.Redis.from_url(redis.url)
        trimmed = int(client.hget(CampaignKeys(CAMPAIGN).meta, "audit_trimmed") or 0)
        client.close()
    finally:
        redis.stop()
    assert trimmed > 0  # the oldest entries were no longer in Redis
    assert row["results"] == {"booked": 200} and row["audit"]["verified"] is True
    assert row["inversions"] == 0 and row["sale_inversions"] == 0
