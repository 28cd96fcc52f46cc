"""bench/admit_rate.py in its quick mode (real Redis, a real `gate serve`, a real poll
load): the benchmark runs end to end and says what `make bench` would, so its code
cannot rot. The figures are only sanity-checked here (the machine is shared): the one
bound that holds by construction, the core's arrivals within rate + burst, exactly
(counted where they surely fell)."""

from __future__ import annotations

from pathlib import Path

from bench import admit_rate


async def test_quick_admit_rate_bench_runs_and_reports(tmp_path: Path) -> None:
    results = await admit_rate.run(admit_rate.plan(quick=True), tmp_path / "work")
    assert results["failures"] == []
    rows = results["rate"]
    assert [row["saturated"] for row in rows] == [False, True]
    for row in rows:
        assert row["audit_entries_missed"] == 0
        # a rough sanity check only: the figure itself is the benchmark's to report
        assert row["ratio"] is not None and 0.8 < row["ratio"] < 1.2, row
    assert rows[1]["poll_load"]["requests_per_s"] > 0
    [arrivals] = results["arrivals"]
    assert arrivals["auth_successes"] == arrivals["customers"]
    assert arrivals["late_customers"] > 0
    # by the answers' times, as a core behind the proxy sees them; surely: counting only
    # the successes sent and answered inside the window (this process's own delays out)
    assert arrivals["peak_surely_ratio"] <= 1.0, arrivals
    # the door's own record, by Redis time: every customer, within the bound
    assert arrivals["arrivals_recorded"] == arrivals["customers"]
    assert arrivals["peak_redis_time_ratio"] <= 1.0, arrivals
    assert arrivals["peak_ratio"] <= 1.2, arrivals
    table = admit_rate.table(results)
    assert "÷ configured" in table and "÷ (rate + burst)" in table
