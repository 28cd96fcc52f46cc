"""`gate demo` end to end: a real Redis, gate, core bank and customers, then the report."""

from __future__ import annotations

import csv
import importlib
import json
import math
from pathlib import Path

import pytest

from gate.audit.replay import ACCRUE_MAX_US
from gate.demo.report import peak_window, percentile, write_plot
from gate.demo.run import run_demo
from gate.errors import GateError

CUSTOMERS = 300
RATE = 150.0  # the queue takes ~2 s to drain: joins (300 in ~1 s) outpace admission


@pytest.mark.slow
def test_burst_demo_report_is_coherent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = run_demo(scenario="burst", customers=CUSTOMERS, rate=RATE, out=out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "result" in printed and "OK" in printed

    report = json.loads((out / "report.json").read_text())
    burst = report["config"]["burst"]
    assert burst == round(RATE / 10)
    assert report["ok"] is True
    assert all(report["checks"].values()), report["checks"]
    assert report["tickets_issued"] == CUSTOMERS
    assert report["admitted"] == CUSTOMERS
    assert report["customers_admitted"] == CUSTOMERS
    assert report["http"]["responses_5xx"] == 0
    assert report["core"]["served"] == CUSTOMERS
    assert report["core"]["auth_failures"] == 0
    assert report["core"]["most_ahead_of_admissions"] == 0
    assert [p["status"] for p in report["core"]["probes"]] == [401, 401, 403]

    # I6: however the customers bunch up, the gate admits at most rate + burst per second.
    assert 0 < report["admitted_per_s"]["peak_1s_window"] <= RATE + burst
    assert report["admitted_per_s"]["sustained"] <= RATE + burst
    # The queue really formed, so the rate limit was exercised.
    assert report["max_position"] > burst

    retries = report["join_retries"]
    assert retries["customers"] == math.ceil((CUSTOMERS - 7) / 100)
    assert retries["same_seq"] == retries["customers"]

    series = report["series"]
    assert sum(row["joins"] for row in series) == CUSTOMERS
    assert sum(row["admitted"] for row in series) == CUSTOMERS
    assert sum(row["core_served"] for row in series) == CUSTOMERS
    assert series[-1]["waiting"] == 0
    # By admit call, a second may hold more than rate + burst: a call that ran late (a
    # loaded machine) catches up on what accrued, at most ACCRUE_MAX_US of it. The rate +
    # burst bound is on when passes are valid (peak_1s_window above) and at the door.
    catch_up_s = ACCRUE_MAX_US / 1e6
    assert all(row["admitted"] <= burst + RATE * (1 + catch_up_s) for row in series)
    assert report["audit_entries"] >= CUSTOMERS  # one `pass` entry per customer at least

    # The per-customer file agrees: seqs 1..N, one each, everyone served by the core.
    with (out / "customers.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == CUSTOMERS
    assert sorted(int(r["seq"]) for r in rows) == list(range(1, CUSTOMERS + 1))
    assert all(r["core_status"] == "200" and not r["error"] for r in rows)
    for row in rows:
        if row["retried_join"] == "1":
            assert row["retry_seqs"].split() == [row["seq"], row["seq"]]

    assert (out / "report.md").read_text().startswith("# fairgate demo: burst")
    # The embedded Redis's temporary data directory is gone with the server.
    assert not list(out.glob("redis-*"))


@pytest.mark.parametrize(
    ("scenario", "customers", "rate", "code"),
    [
        ("stampede", 10, 10.0, "bad_scenario"),
        ("burst", 0, 10.0, "bad_customers"),
        ("burst", 100_001, 10.0, "bad_customers"),
        ("burst", 10, 0.0, "bad_rate"),
        ("burst", 10, -5.0, "bad_rate"),
        ("burst", 10, float("nan"), "bad_rate"),
    ],
)
def test_bad_arguments_are_refused_before_anything_starts(
    tmp_path: Path, scenario: str, customers: int, rate: float, code: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(GateError) as caught:
        run_demo(scenario=scenario, customers=customers, rate=rate, out=out)
    assert caught.value.code == code
    assert not out.exists()


def test_peak_window_and_percentile() -> None:
    # Half-open windows: events exactly 1 s apart never share a window.
    assert peak_window([(0.0, 5), (1.0, 5), (2.0, 5)]) == 5
    assert peak_window([(0.0, 5), (0.5, 5), (0.99, 1), (1.2, 7)]) == 13
    assert peak_window([]) == 0
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 95) == 4.0
    assert percentile([], 50) is None


def test_plot_is_written_only_when_matplotlib_is_there(tmp_path: Path) -> None:
    figures = {
        "customers": 3,
        "config": {"rate_per_s": 2.0, "burst": 1},
        "timeline": [[0.1, 3], [0.2, -1], [0.7, -2]],
        "series": [{"t": 0, "joins": 3, "admitted": 3, "waiting": 0, "core_served": 3}],
    }
    path = tmp_path / "admission.png"
    written = write_plot(figures, path)
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        assert written is False
        assert not path.exists()
    else:
        assert written is True
        assert path.read_bytes().startswith(b"\x89PNG")
