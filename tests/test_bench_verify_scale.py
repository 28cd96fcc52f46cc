"""bench/verify_scale.py at 2,000 entries (a real redis-server, the real Room, Lua scripts,
sealer and export, `gate audit verify` as a subprocess): the benchmark runs end to end
and says what `make bench` would, so its code cannot rot. The figures themselves are the
benchmark's to report (the machine is shared); here only their shape and that verify
said OK on a log sealed to its last entry."""

from __future__ import annotations

from pathlib import Path

from bench import verify_scale


async def test_verify_scale_bench_builds_a_sealed_export_and_verify_says_ok(
    tmp_path: Path,
) -> None:
    settings = verify_scale.plan(quick=True, entries=(2000,), repeat=1)
    results = await verify_scale.run(settings, tmp_path / "work")
    assert results["failures"] == []
    [row] = results["runs"]
    # exactly the entries asked for, every one covered by a checkpoint
    assert row["entries"] == 2000
    assert row["checkpoints_made"] >= 2
    assert row["sealed_to"] == 2000  # the last checkpoint's size
    assert row["verify_report"][0].startswith("campaign verify-scale: OK"), row
    kinds = row["kinds"]
    assert sum(kinds.values()) == 2000
    assert kinds["admin-create"] == kinds["admin-close"] == 1
    # the mix: every admitted customer's pass read once and claimed (claim share 1.0),
    # each reservation confirmed or released
    assert kinds["pass"] == kinds["claim"] == kinds["confirm"] + kinds["release"] > 500
    assert kinds["join"] >= kinds["pass"] // 10
    for key in ("verify_wall_s", "verify_cpu_s", "reference_wall_s", "ratio_wall"):
        assert row[key] > 0, key
    assert row["verify_peak_rss_mib"] > row["reference_peak_rss_mib"] > 1
    assert row["verify_peak_rss_bytes_per_entry"] > 0
    assert abs(row["verify_wall_s_per_100k"] - row["verify_wall_s"] * 50) < 0.01
    conditions = results["conditions"]
    assert conditions["cores"] >= 1 and conditions["redis_server"]
    assert row["loadavg_before"] and row["loadavg_after"]
    table = verify_scale.table(results)
    assert "verify ÷ reference (wall)" in table and "| 2,000 |" in table
    # the export is not left behind (1,000,000 entries are ~150 MiB)
    assert not list((tmp_path / "work").rglob("export.jsonl"))
