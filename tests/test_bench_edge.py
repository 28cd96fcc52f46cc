"""bench/edge.py in its quick mode (real nginx with njs, real HAProxy, a real `gate serve`,
wrk): the benchmark runs end to end and says what `make bench --edge` would, so its code cannot
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
    rows = edge.CONFIGS + (edge.HAPROXY_CONFIGS if edge.haproxy_binary() else ())
    assert set(result["requests_per_s"]) == set(rows)
    assert all(rate > 0 for rate in result["requests_per_s"].values()), result
    assert all(cpu > 0 for cpu in result["front_cpu_us_per_request"].values()), result
    assert result["errors"] == {name: 0 for name in rows}, result
    edges = [name for name in ("edge", "haproxy-edge") if name in rows]
    assert all(result["requests"][name] > 0 for name in edges), result
    assert result["gate_auth_calls"] == {name: 0 for name in edges}, result
    assert result["ratio_to_plain"]["plain"] == 1.0
    text = edge.markdown(result)
    assert "edge ÷ plain" in text and "load average" in text
    if "haproxy-edge" in rows:
        assert result["ratio_to_plain"]["haproxy-plain"] == 1.0
        assert "haproxy-edge ÷ haproxy-plain" in text


def test_a_row_needs_its_reference(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        edge.main(["--quick", "--configs", "haproxy-edge"])
    assert exit_info.value.code == 2
    assert "without its no-check row" in capsys.readouterr().err
