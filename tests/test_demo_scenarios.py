"""`gate demo --scenario`: the same arrivals without the gate and with it, real processes.

A small core (8 sessions, a queue of 16) keeps these quick: the crowd, the simulated core,
an embedded Redis and a gate all run for real. Each test compares the two rows: the same
checks that the gate's row passes must fail on the row without the gate, so a test in
which the gate were not in front (or did nothing) fails.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gate.demo.baseline_nginx import nginx_binary
from gate.demo.html_report import at_the_core, write_html
from gate.demo.run import run_demo
from gate.demo.scenarios import (
    SCENARIOS,
    compare,
    incident,
    kendall_distance,
    row_checks,
    sized,
    summary_text,
)
from gate.demo.sim_core import CoreParams
from gate.errors import GateError

SMALL_CORE = CoreParams(capacity=8, queue_max=16, queue_timeout_s=3.0, service_ms=30, bureau_ms=20)


def _assert_gate_row_clean_and_other_not(report: dict[str, object]) -> None:
    without, gated = report["without_gate"], report["with_gate"]
    assert isinstance(without, dict) and isinstance(gated, dict)
    assert incident(without), without
    assert not all(row_checks(without).values()), row_checks(without)
    assert row_checks(gated) == dict.fromkeys(row_checks(gated), True), gated
    assert report["ok"] is True, report["checks"]
    assert gated["audit"]["verified"] is True, gated["audit"]
    if report["policy"] == "ballot":  # subscriptions: no reservation to confirm
        assert gated["audit"]["confirms"] == 0 and gated["audit"]["admitted"] == gated["bookings"]
    else:
        assert gated["audit"]["confirms"] == gated["bookings"]
    assert gated["core_errors"] == 0 and gated["oversell_krw"] == 0 and gated["inversions"] == 0
    # Only slow-bureau's rate is adaptive: there the controller changed it (audit log).
    assert (gated["rate_changes"] > 0) == (report["adaptive"] is not None), gated["rate_changes"]
    # max_active is what the core holds (sessions + queue): its queue may fill, never overflow
    assert gated["core_max_queue"] <= SMALL_CORE.queue_max


# 400 customers within 0.5 s (800/s) at a core that serves ~160/s and holds 24; the
# stock serves about 60 of them, so it sells out while the core is swamped.
BURST = dataclasses.replace(
    SCENARIOS["special-deposit"], spread_s=0.5, total=330_000_000, rate=100.0, core=SMALL_CORE
)


@pytest.fixture(scope="module")
def burst_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The burst's three rows (without the gate, nginx limit_req when installed, with the
    gate), run once for the two tests that read them: the rows are independent runs."""
    return compare(BURST, 400, tmp_path_factory.mktemp("burst"))


@pytest.mark.slow
def test_special_deposit_without_the_gate_fails_and_with_it_holds(
    burst_report: dict[str, Any],
) -> None:
    scenario, report = BURST, burst_report
    _assert_gate_row_clean_and_other_not(report)
    without, gated = report["without_gate"], report["with_gate"]
    assert without["core_errors"] > 0
    # Sold out: what is left is below the minimum amount (partial fill takes the rest).
    assert scenario.total - scenario.amount_min < gated["sold_krw"] <= scenario.total
    # Customers still waiting when it sold out were told so by the gate, not by the core.
    assert gated["told_soldout"] > 0 and without["told_soldout"] == 0
    assert gated["results"]["booked"] == gated["bookings"]


@pytest.mark.slow
@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")
def test_nginx_limit_req_baseline_serves_out_of_order_the_gate_does_not(
    burst_report: dict[str, Any],
) -> None:
    # The same burst as above; the third row is nginx limit_req in front of the core at the
    # gate's rate and burst (nodelay, 503 beyond): customers it refused press again later,
    # so later arrivals book before earlier ones, and early arrivals get nothing.
    report = burst_report
    nginx, gated = report["nginx_limit_req"], report["with_gate"]
    assert nginx["row"] == "nginx limit_req" and "missing" not in nginx
    assert nginx["limit_req"] == {"rate_per_s": 100, "burst": 10}
    assert nginx["inversions"] > 0 or nginx["earliest_served"] < nginx["earliest_n"], nginx
    assert nginx["sale_inversions"] > 0, nginx
    assert gated["inversions"] == 0
    # N: the stock serves the first N arrivals in arrival order (~60 of 400 here; the
    # amounts in each row's arrival order, so N differs a little between rows).
    assert 30 < gated["earliest_n"] < 120 and 30 < nginx["earliest_n"] < 120
    share = {r["row"]: r["earliest_served"] / r["earliest_n"] for r in (nginx, gated)}
    assert share["nginx limit_req"] < share["with gate"], share
    text = summary_text(report)
    assert "nginx limit_req" in text and "earliest N served" in text


def test_without_nginx_the_baseline_row_says_so_and_the_rest_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gate.demo.baseline_nginx

    monkeypatch.setattr(gate.demo.baseline_nginx, "nginx_binary", lambda: None)
    scenario = dataclasses.replace(
        SCENARIOS["special-deposit"], spread_s=0.2, total=100_000_000, rate=100.0,
        core=SMALL_CORE,
    )  # fmt: skip
    report = compare(scenario, 40, tmp_path)
    assert report["nginx_limit_req"] == {
        "row": "nginx limit_req",
        "missing": "nginx is not installed",
    }
    assert report["with_gate"]["inversions"] == 0 and report["without_gate"]["customers"] == 40
    text = summary_text(report)
    assert "nginx limit_req: not run (nginx is not installed)" in text
    table_row = [line for line in text.split("\n") if line.startswith("  nginx limit_req  ")]
    assert len(table_row) == 1 and "n/a" in table_row[0], text  # its row in the table


@pytest.mark.slow
def test_ipo_rush_ballot_without_the_gate_fails_and_with_it_holds(tmp_path: Path) -> None:
    # 300 subscriptions within 0.5 s at the small core (holds 24, ~160/s); the window is
    # closed once the customers are done and the ballot allots 300M KRW (demand ~1.6G).
    scenario = dataclasses.replace(
        SCENARIOS["ipo-rush"], spread_s=0.5, total=300_000_000, rate=150.0, core=SMALL_CORE
    )
    report = compare(scenario, 300, tmp_path, baseline=False)
    _assert_gate_row_clean_and_other_not(report)
    without, gated = report["without_gate"], report["with_gate"]
    assert report["nginx_limit_req"] is None
    assert without["core_errors"] > 0
    # Every customer subscribed through the gate, the core recorded each once, and the
    # ballot allotted all of it (demand > supply), never more; the audit export (which
    # recomputes the ballot from the subscriptions and the revealed seed) verifies.
    assert gated["results"] == {"booked": 300} and gated["bookings"] == 300
    assert gated["earliest_served"] == gated["earliest_n"] == 300
    assert gated["sold_krw"] == scenario.total and gated["oversell_krw"] == 0
    assert without["sold_krw"] <= scenario.total


@pytest.mark.slow
def test_slow_bureau_the_rate_follows_the_core_and_its_p99_gets_back_under_target(
    tmp_path: Path,
) -> None:
    # 300 customers over 6 s (50/s) at the small core (~150/s); the bureau becomes 10x
    # slower 1.5 s in: the core then serves ~34/s. Alone it overflows (503s); behind the gate
    # the controller, polling the core's GET /health, lowers the rate (each change an audit
    # entry of the actor controller) and the core's p99 is under 800 ms from 4 s after the
    # slowdown on. (The scenario states 8 s for its 2,400-customer stream; this small stream
    # is served within ~8 s of the slowdown, which left no request to measure after 8 s.)
    assert SCENARIOS["slow-bureau"].latency_target_ms == 800.0
    assert SCENARIOS["slow-bureau"].reaction_s == 8.0
    scenario = dataclasses.replace(
        SCENARIOS["slow-bureau"], spread_s=6.0, rate=80.0, rate_min=5.0, core=SMALL_CORE,
        bureau_change=(1.5, 10.0), total=10_000_000 * 300, reaction_s=4.0,
    )  # fmt: skip
    report = compare(scenario, 300, tmp_path, baseline=False)
    without, gated = report["without_gate"], report["with_gate"]
    assert report["adaptive"]["sources"][0]["url"].endswith("/health")
    _assert_gate_row_clean_and_other_not(report)
    assert without["core_errors"] > 0 and without["rate_changes"] == 0
    for row in (without, gated):
        assert [ms for _t, ms in row["bureau_changes"]] == [20.0, 200.0]
        assert row["oversell_krw"] == 0  # it never sells out here
    assert gated["results"] == {"booked": 300}
    figures = gated["slowdown"]
    assert 1.0 <= figures["slowdown_at_s"] <= 3.0, figures
    assert figures["p99_after_reaction_ms"] <= 800.0 and figures["requests_after_reaction"] > 0
    assert figures["reaction_s"] is not None and figures["reaction_s"] <= 4.0, figures
    # The rate went down after the slowdown, each change logged with its signal.
    slow_at = figures["slowdown_at_s"]
    down = [c for c in gated["rate_log"] if c["t"] >= slow_at and c["new"] < c["old"]]
    assert down and all(c["why"]["direction"] == "down" for c in down), gated["rate_log"]
    assert all(5.0 <= c["new"] <= 80.0 for c in gated["rate_log"])
    # The export `gate audit verify` accepted holds each change (admissions replayed at them);
    # it is read a moment later, when the controller may have made one more.
    assert gated["rate_changes"] == len(gated["rate_log"]) <= gated["audit"]["admin_updates"]
    assert sum(n for _t, n in gated["admitted_per_second"]) == 300
    assert report["checks"]["core p99 under 800 ms from 4 s after the slowdown"] is True
    text = summary_text(report)
    assert "reaction time" in text and "rate changes" in text
    page = write_html(report, tmp_path / "slow-bureau.html").read_text()
    assert "Admitted per second vs the core&#x27;s capacity" in page
    assert "target p99 800 ms" in page
    assert "Queue length at the core" in page


def test_the_cores_queue_length_is_who_arrived_and_has_no_answer_yet() -> None:
    row = {
        "per_second": [
            {"t": 0, "arrivals": 10, "answered": 2},
            {"t": 1, "arrivals": 5, "answered": 9},
            {"t": 2, "arrivals": 0, "answered": 4},
        ]
    }
    assert at_the_core(row) == [(1.0, 8.0), (2.0, 4.0), (3.0, 0.0)]


@pytest.mark.slow
def test_failover_kill_9_of_the_gates_redis_mid_burst_loses_nothing(tmp_path: Path) -> None:
    # The gate's Redis is killed 0.3 s into the burst and restarted from its AOF 0.5 s later.
    scenario = dataclasses.replace(
        SCENARIOS["failover"], spread_s=0.5, total=330_000_000, rate=100.0, core=SMALL_CORE,
        redis_kill=(0.3, 0.5),
    )  # fmt: skip
    report = compare(scenario, 300, tmp_path, baseline=False)
    _assert_gate_row_clean_and_other_not(report)
    gated = report["with_gate"]
    assert gated["redis_killed"] and gated["failover_hold"] is None
    assert gated["unconfirmed"] == 0
    assert scenario.total - scenario.amount_min < gated["sold_krw"] <= scenario.total
    # The kill happened while customers were there: the gate failed closed, they retried.
    assert gated["gate_errors"] > 0, gated["gate_errors_by"]
    # Entries sealed late while Redis was down are seal gaps the gate recorded; the
    # summary says how many were accepted, not only that the log verified.
    gaps = gated["audit"]["seal_gaps"]
    assert (f"; {gaps} seal gaps the gate recorded" in summary_text(report)) == (gaps > 0)


def test_reaction_time_is_when_the_p99_is_back_under_target_and_holds() -> None:
    from gate.demo.slowdown import latency_figures

    def seconds(p99s: dict[int, float]) -> list[dict[str, object]]:
        return [{"t": t, "answered": 10, "p99_ms": p} for t, p in sorted(p99s.items())]

    quiet = {t: 300.0 for t in range(20)}
    # Over 800 ms in windows 4-6 after the slowdown at 3.2 s, back under from 7 on: 3.8 s.
    # A lone window over target at 15 (a stalled host) does not move it; it is counted.
    figures = latency_figures([], 0.0, seconds({**quiet, 4: 900, 5: 1200, 6: 850, 15: 820}),
                              3.2, 800.0, 8.0)  # fmt: skip
    assert figures["reaction_s"] == 3.8 and figures["windows_over_target"] == 4
    assert figures["windows_over_after_reaction"] == 1
    assert figures["max_window_p99_after_ms"] == 820
    # Never over: 0; over to the end (or back for fewer than 3 windows): never back, None.
    assert latency_figures([], 0.0, seconds(quiet), 3.2, 800.0, 8.0)["reaction_s"] == 0.0
    never = seconds({**quiet, **{t: 900.0 for t in range(5, 18)}})
    assert latency_figures([], 0.0, never, 3.2, 800.0, 8.0)["reaction_s"] is None
    # The p99 after the reaction time is over every request that arrived from then on.
    served = [
        {"arrived": t, "finished": t + (0.9 if t < 11 else 0.2), "proxy": False} for t in range(20)
    ] + [{"arrived": 12.0, "finished": 15.0, "proxy": True}]  # refused at the pass check
    figures = latency_figures(served, 0.0, seconds(quiet), 3.2, 800.0, 8.0)
    assert figures["p99_after_reaction_ms"] == 200.0 and figures["requests_after_reaction"] == 8


def test_kendall_distance_matches_counting_every_pair() -> None:
    rng = random.Random(7)
    for n in (0, 1, 2, 5, 40):
        arrival = rng.sample(range(1000), n)
        service = [rng.choice([math.inf, *range(20)]) for _ in range(n)]
        slow = sum(
            1
            for i, j in itertools.permutations(range(n), 2)
            if arrival[i] < arrival[j] and service[i] > service[j]
        )
        assert kendall_distance(arrival, service) == slow
    assert kendall_distance([1, 2, 3], [1, 2, 3]) == 0
    assert kendall_distance([1, 2, 3], [3, 2, 1]) == 3
    # Not served (inf) while a later arrival was: an inversion; two never served: none.
    assert kendall_distance([1, 2, 3], [math.inf, 1, math.inf]) == 1


def test_unknown_scenario_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(GateError) as caught:
        run_demo(scenario="nope", out=out)
    assert caught.value.code == "bad_scenario"
    assert "ipo-rush" in str(caught.value)
    assert not out.exists()


def test_cli_unknown_scenario_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gate", "demo", "--scenario", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert "unknown scenario" in done.stderr and "Traceback" not in done.stderr


def test_ipo_rush_full_is_a_million_customers_bounded_in_time() -> None:
    # `--full` (documented, not run here): 1,000,000 customers over 60 s, admitted at
    # 5,000/s, a ballot of 1e12 KRW; the default is small.
    full = sized(SCENARIOS["ipo-rush"], 1_000_000, True)
    assert (full.customers, full.full_customers) == (1500, 1_000_000)
    assert full.rate == 5000.0 and full.spread_s == 60.0 and full.total == 10**12
    assert full.policy == "ballot"
    small = sized(SCENARIOS["ipo-rush"], 1500, False)
    assert small.rate == 400.0 and small.spread_s == 1.0 and small.total == 2 * 10**9


@pytest.mark.parametrize(
    ("customers", "rate", "code"),
    [
        (0, None, "bad_customers"),
        (1_000_001, None, "bad_customers"),
        (10, float("nan"), "bad_rate"),
    ],
)
def test_bad_sizes_are_refused(
    tmp_path: Path, customers: int, rate: float | None, code: str
) -> None:
    with pytest.raises(GateError) as caught:
        run_demo(scenario="special-deposit", customers=customers, rate=rate, out=tmp_path / "o")
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("customers", "rate", "code", "says"),
    [
        (1000, None, "bad_customers", "at least 2200 customers"),
        (None, 10.0, "bad_rate", "at least rate_min (60)"),
    ],
)
def test_slow_bureau_refuses_sizes_it_cannot_judge(
    tmp_path: Path, customers: int | None, rate: float | None, code: str, says: str
) -> None:
    # Its stream must last past the slowdown (3 s) and the reaction time (8 s) at 200/s,
    # and --rate is the adaptive rate's upper bound: refused before anything runs.
    out = tmp_path / "o"
    with pytest.raises(GateError) as caught:
        run_demo(scenario="slow-bureau", customers=customers, rate=rate, out=out)
    assert caught.value.code == code and says in str(caught.value), str(caught.value)
    assert not out.exists()


def test_control_endpoint_refuses_bad_input(tmp_path: Path) -> None:
    import asyncio

    import aiohttp

    from gate.demo.scenarios import sim_core

    async def check() -> list[int]:
        statuses = []
        async with sim_core(SMALL_CORE, tmp_path) as url, aiohttp.ClientSession() as session:
            for body in ({"bureau_ms": "x"}, {}, {"bureau_ms": -1}, {"bureau_ms": 50}):
                async with session.post(f"{url}/control", json=body) as r:
                    statuses.append(r.status)
            async with session.post(f"{url}/deposit", data=b"not json") as r:
                statuses.append(r.status)
            async with session.get(f"{url}/stats") as r:
                stats = json.loads(await r.text())
        assert [ms for _t, ms in stats["bureau_changes"]] == [20.0, 50.0]
        return statuses

    assert asyncio.run(check()) == [400, 400, 400, 200, 400]


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")
async def test_the_nginx_baseline_starts_with_a_relative_out_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make demo` writes to the relative `demo-out`: nginx reads a relative -c, -e or
    config path against its prefix, so a relative work directory failed to start it."""
    from gate.demo.baseline_nginx import nginx_limit_req

    monkeypatch.chdir(tmp_path)
    binary = nginx_binary()
    assert binary is not None
    async with nginx_limit_req(binary, "http://127.0.0.1:9", 10, 5, Path("demo-out")) as url:
        assert url.startswith("http://127.0.0.1:")


async def test_the_cores_health_probe_takes_a_deposits_path(tmp_path: Path) -> None:
    """`GET /health` waits for a session in the customers' queue and calls the bureau: its
    round trip grows with the bureau's latency and with the queue; a full queue is a 503."""
    import asyncio

    import aiohttp

    from gate.demo.scenarios import sim_core
    from tests.helpers import wait_for

    one = dataclasses.replace(SMALL_CORE, capacity=1, queue_max=4, bureau_ms=100)
    async with sim_core(one, tmp_path) as url, aiohttp.ClientSession() as session:

        async def probe() -> tuple[int, dict[str, Any]]:
            async with session.get(f"{url}/health") as r:
                return r.status, json.loads(await r.text())

        status, quiet = await probe()
        assert status == 200 and quiet["status"] == "ok" and quiet["queued"] == 0
        assert 50 <= float(quiet["latency_ms"]) < 5000  # the bureau's 50-150 ms, and no wait

        async def deposit(n: int) -> None:
            body = {"customer": f"c{n}", "amount": 1_000_000}
            async with session.post(f"{url}/deposit", json=body) as r:
                await r.read()

        async def queued(n: int) -> bool:
            async with session.get(f"{url}/stats?summary=1") as r:
                return bool(json.loads(await r.text())["queued"] == n)

        # Four deposits ahead of it (one in the session, three queued): the probe waits for
        # each one's bureau call (>= 50 ms) before its own.
        ahead = [asyncio.create_task(deposit(n)) for n in range(4)]
        await wait_for(lambda: queued(3), 10, "three deposits queued")
        status, behind = await probe()
        assert status == 200 and float(behind["latency_ms"]) >= 4 * 50
        await asyncio.gather(*ahead)

        # Ten times slower bureau: the probe's latency is at least half of 1,000 ms.
        async with session.post(f"{url}/control", json={"bureau_ms": 1000}) as r:
            assert r.status == 200
        status, slow = await probe()
        assert status == 200 and float(slow["latency_ms"]) >= 500

        # The session and the queue full: refused at once, as a request would be.
        full = [asyncio.create_task(deposit(n)) for n in range(10, 15)]
        await wait_for(lambda: queued(4), 10, "the queue full")
        status, refused = await probe()
        assert status == 503 and refused["status"] == "queue_full"
        async with session.get(f"{url}/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            metrics = await r.text()
        for task in full:
            task.cancel()
        await asyncio.gather(*full, return_exceptions=True)
    assert 'sim_core_probes_total{status="503"} 1' in metrics
    assert 'sim_core_probes_total{status="200"} 3' in metrics
    assert "sim_core_queue_length 4" in metrics and "sim_core_sessions 1" in metrics
    assert 'sim_core_requests_total{reason="booked"} 4' in metrics
    assert 'sim_core_request_seconds_bucket{le="+Inf"} 4' in metrics
