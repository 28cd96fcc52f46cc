"""Admission that follows the core's health (issue 12): a real `gate serve`, a real Redis,
and a health endpoint (or a Prometheus) in the test whose answers the test changes.

The controller backs off within a few intervals when the core slows or errs, recovers
when it is healthy, stays within [rate_min, rate_max], never moves a pinned rate, runs
in one process of several, and every change is an audit entry (old, new, why) that
`gate audit verify` accepts.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from gate.audit.format import decode_entry
from gate.redis_server import free_port
from gate.room.keys import CampaignKeys
from tests.helpers import ADMIN_TOKEN, GateProcess, gate_cli, spec, wait_for

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
INTERVAL_S = 0.2


@dataclass
class Health:
    """What the fake core's health endpoint answers, and how often it was asked."""

    delay_s: float = 0.0
    status: int = 200
    hits: int = 0
    # Prometheus: the values of the latency (seconds) and error-ratio queries
    latency_s: float = 0.01
    error_ratio: float = 0.0


@pytest.fixture
async def health() -> AsyncIterator[tuple[Health, str]]:
    state = Health()

    async def healthz(request: web.Request) -> web.Response:
        state.hits += 1
        await asyncio.sleep(state.delay_s)
        return web.json_response({"ok": state.status < 300}, status=state.status)

    async def query(request: web.Request) -> web.Response:
        state.hits += 1
        q = request.query.get("query", "")
        value = state.latency_s if "latency" in q else state.error_ratio
        return web.json_response(
            {
                "status": "success",
                "data": {
                    "resultType": "vector",
                    "result": [{"metric": {"job": "core"}, "value": [1.7e9, str(value)]}],
                },
            }
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield state, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def served(redis_url: str, keys_file: Path, tmp_path: Path) -> AsyncIterator[GateProcess]:
    env = {"GATE_SEAL_INTERVAL_MS": "100"}
    async with GateProcess(redis_url, tmp_path / "gate", keys_file, extra_env=env) as process:
        yield process


def adaptive_spec(campaign: str, sources: list[dict[str, Any]], **adaptive: Any) -> dict[str, Any]:
    block = {
        "rate_min": 10,
        "rate_max": 100,
        "mode": "auto",
        "interval_s": INTERVAL_S,
        "targets": {"latency_ms": 100, "error_ratio": 0.1},
        "sources": sources,
        **adaptive,
    }
    return spec(campaign, rate_per_s=100, burst=10, adaptive=block)


async def create(admin_url: str, body: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as http:
        r = await http.post(admin_url + "/admin/campaigns", json=body, headers=ADMIN)
        assert r.status == 201, await r.text()


async def patch(admin_url: str, campaign: str, body: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        r = await http.patch(f"{admin_url}/admin/campaigns/{campaign}", json=body, headers=ADMIN)
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer


async def rate_of(redis_url: str, campaign: str) -> float:
    client = Redis.from_url(redis_url)
    try:
        return float(await client.hget(CampaignKeys(campaign).meta, "rate") or 0)
    finally:
        await client.aclose()


async def export_text(admin_url: str, campaign: str) -> str:
    async with aiohttp.ClientSession() as http:
        r = await http.get(f"{admin_url}/admin/campaigns/{campaign}/audit/export", headers=ADMIN)
        assert r.status == 200
        return await r.text()


async def controller_entries(admin_url: str, campaign: str) -> list[dict[str, Any]]:
    """The campaign's admin-update entries made by the controller, decoded."""
    out = []
    for line in (await export_text(admin_url, campaign)).splitlines():
        doc = json.loads(line)
        if doc.get("type") != "entry":
            continue
        entry = decode_entry(base64.b64decode(doc["raw"]))
        if entry["k"] == b"admin-update" and entry["a"] == b"controller":
            out.append(entry)
    return out


async def wait_rate(
    redis_url: str, campaign: str, ok: Any, what: str, timeout_s: float = 15
) -> None:
    async def reached() -> bool:
        return bool(ok(await rate_of(redis_url, campaign)))

    await wait_for(reached, timeout_s, what, interval_s=0.05)


async def test_http_source_backs_off_recovers_and_stays_in_bounds(
    served: GateProcess, redis_url: str, health: tuple[Health, str]
) -> None:
    state, url = health
    await create(
        served.admin_url,
        adaptive_spec("slowcore", [{"kind": "http", "url": url + "/healthz", "timeout_ms": 500}]),
    )
    state.delay_s = 0.3  # over the 100 ms target
    # x0.7 per decrease, one every 3 intervals (cool-down 2): 100 -> 70 within ~1 s
    await wait_rate(redis_url, "slowcore", lambda r: r <= 70, "a first decrease", 10)
    await wait_rate(redis_url, "slowcore", lambda r: r == 10, "the rate at rate_min", 20)
    state.delay_s, state.status = 0.0, 503  # fast, but failing: still unhealthy
    hits = state.hits
    await wait_for(lambda: _at_least(state, hits + 5), 10, "five more probes")
    assert await rate_of(redis_url, "slowcore") == 10
    state.status = 200
    await wait_rate(redis_url, "slowcore", lambda r: r == 100, "recovery to rate_max", 20)

    entries = await controller_entries(served.admin_url, "slowcore")
    downs = [e for e in entries if e["why"][b"direction"] == b"down"]
    ups = [e for e in entries if e["why"][b"direction"] == b"up"]
    assert len(downs) >= 6 and len(ups) >= 18  # 100 -> 10 by x0.7, 10 -> 100 by +4.5
    for entry in entries:
        assert entry["f"] == [b"rate"]
        old, new = float(entry["o"][0]), float(entry["n"][0])
        assert 10 <= new <= 100 and old != new
        why = entry["why"]
        assert why[b"source"] == b"http" and why[b"target_latency_ms"] == 100
        if why[b"direction"] == b"down":
            assert why[b"latency_ms"] > 100 or why[b"error_ratio"] > 0.1
            assert new == pytest.approx(max(10, old * 0.7))
        else:
            assert why[b"latency_ms"] <= 100 and why[b"error_ratio"] == 0
    await assert_verifies(served, "slowcore")


async def _at_least(state: Health, hits: int) -> bool:
    return state.hits >= hits


async def assert_verifies(served: GateProcess, campaign: str) -> None:
    async def sealed() -> bool:
        text = await export_text(served.admin_url, campaign)
        lines = [json.loads(line) for line in text.splitlines()]
        size = sum(1 for d in lines if d["type"] == "entry")
        return any(d["type"] == "checkpoint" and d["size"] == size for d in lines)

    await wait_for(sealed, 15, "the log sealed", interval_s=0.1)
    path = served.data_dir / f"{campaign}.jsonl"
    path.write_text(await export_text(served.admin_url, campaign))
    result = await gate_cli("audit", "verify", str(path))
    assert result.code == 0, result


BAD_BLOCKS: list[tuple[dict[str, Any], str]] = [
    ({"rate_min": 150, "rate_max": 200}, "admission.rate_per_s: must be within"),
    ({"rate_min": 200, "rate_max": 100}, "admission.adaptive.rate_max: must be at least"),
    ({"mode": "sometimes"}, "admission.adaptive.mode: must be auto or manual"),
    ({"interval_s": 0}, "admission.adaptive.interval_s: must be between"),
    ({"targets": {}}, "admission.adaptive.targets: give latency_ms"),
    ({"targets": {"error_ratio": 2}}, "admission.adaptive.targets.error_ratio"),
    ({"sources": []}, "admission.adaptive.sources: must be a list of 1 to"),
    ({"sources": [{"kind": "smoke"}]}, "admission.adaptive.sources[0].kind: must be one of"),
    ({"sources": [{"kind": "http"}]}, "admission.adaptive.sources[0].url: is required"),
    (
        {"sources": [{"kind": "http", "url": "ftp://core/health"}]},
        "admission.adaptive.sources[0].url: must be an absolute http(s) URL",
    ),
    (
        {"sources": [{"kind": "http", "url": "http://core/h", "timeout_ms": -1}]},
        "admission.adaptive.sources[0].timeout_ms",
    ),
    (
        {"sources": [{"kind": "prometheus", "url": "http://prom:9090"}]},
        "admission.adaptive.sources[0]: a prometheus source needs",
    ),
    (
        {"sources": [{"kind": "callbacks", "error_reasons": "core_error"}]},
        "admission.adaptive.sources[0].error_reasons: must be a list",
    ),
    (
        {"sources": [{"kind": "callbacks"}, {"kind": "callbacks"}]},
        "admission.adaptive.sources: at most one callbacks source",
    ),
    ({"surprise": 1}, "admission.adaptive.surprise: unknown field"),
]


async def test_bad_adaptive_config_is_400_naming_the_field(served: GateProcess) -> None:
    source = [{"kind": "http", "url": "http://127.0.0.1:9/healthz"}]
    async with aiohttp.ClientSession() as http:
        for change, message in BAD_BLOCKS:
            body = adaptive_spec("bad", source)
            body["admission"]["adaptive"].update(change)
            r = await http.post(served.admin_url + "/admin/campaigns", json=body, headers=ADMIN)
            assert r.status == 400, (change, await r.text())
            error = (await r.json())["error"]
            assert error["code"] == "bad_spec" and error["message"].startswith(message), (
                change,
                error,
            )
        await create(served.admin_url, adaptive_spec("good", source))
        for change, message in [
            ({"adaptive": {"mode": "off"}}, "admission.adaptive.mode"),
            ({"adaptive": {"rate_max": 5}}, "admission.adaptive.rate_max: must be at least"),
            ({"rate_per_s": 500}, "admission.rate_per_s: must be within"),
            ({"adaptive": "manual"}, "admission.adaptive: must be an object"),
        ]:
            r = await http.patch(
                served.admin_url + "/admin/campaigns/good", json=change, headers=ADMIN
            )
            assert r.status == 400, (change, await r.text())
            assert (await r.json())["error"]["message"].startswith(message), change
