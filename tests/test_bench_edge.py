"""bench/edge.py in its quick mode (real nginx with njs, a real `gate serve`, wrk): the
benchmark runs end to end and says what `make bench --edge` would, so its code cannot
rot. The figures are only sanity-checked here (the machine is shared); what holds by
construction is checked exactly: no call to /gate/auth per protected request, no error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import edge
from bench.wrk import wrk_binary

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        edge.nginx_binary() is None or wrk_binary() is None or not os.path.exists(edge.NJS_MODULE),
        reason="needs nginx with njs (libnginx-mod-http-js) and wrk",
    ),
]


async def test_quick_edge_bench_runs_and_reports(tmp_path: Path) -> None:
    result = await edge.run(True, tmp_path / "work", connections=8)
    assert set(result["requests_per_s"]) == set(edge.CONFIGS)
    assert all(rate > 0 for rate in result["requests_per_s"].values()), result
    assert result["errors"] == {name: 0 for name in edge.CONFIGS}, result
    assert result["edge_requests"] > 0
    assert result["gate_auth_calls_during_edge"] == 0, result
    assert result["ratio_to_plain"]["plain"] == 1.0
    text = edge.markdown(result)
    assert "edge ÷ plain" in text and "load average" in text
