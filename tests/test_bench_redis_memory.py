"""bench/redis_memory.py at 3,000 customers (a real redis-server, the gate's own JoinBatcher
with its receipts, join.lua): the benchmark runs end to end, so its code cannot rot. The
figures are the benchmark's to report; here only their shape: every customer holds a
ticket, joins were batched, and the costs are measured, not made up."""

from __future__ import annotations

from pathlib import Path

from bench import redis_memory


async def test_redis_memory_bench_fills_the_queue_and_measures_both_windows(
    tmp_path: Path,
) -> None:
    result = await redis_memory.measure(3000, 1000, 256, tmp_path / "work")
    assert result["tickets_in_redis"] == result["customers"] == 3000
    assert result["bytes_per_waiting_customer"] > 16  # at least the digest itself
    for window in (result["join_small_queue"], result["join_large_queue"]):
        assert window["joins"] == 1000
        assert 0 < window["script_calls"] < window["joins"]  # batched, not one call each
        assert window["redis_us_per_join"] > 0 and window["wall_us_per_join"] > 0
    assert result["join_large_queue"]["waiting_before"] == 2000
    assert result["join_small_queue"]["waiting_before"] == 0
    ratio = (
        result["join_large_queue"]["redis_us_per_join"]
        / (result["join_small_queue"]["redis_us_per_join"])
    )
    assert abs(result["redis_cost_ratio_large_over_small"] - ratio) < 0.01
    assert "| bytes per waiting customer" in redis_memory.table(result)
