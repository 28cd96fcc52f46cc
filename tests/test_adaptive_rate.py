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
from gate.campaign import parse_spec
from gate.redis_server import free_port
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.signing import SigningKeys
from gate.tokens import customer_digest
from tests.helpers import (
    ADMIN_TOKEN,
    CORE_TOKEN,
    GateProcess,
    assert_clean_error,
    create_committed,
    export_to_file,
    gate_cli,
    pack_like_redis,
    seal_everything,
    sealed_to_its_end,
    spec,
    unpack,
    wait_for,
    wait_redis_time,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
INTERVAL_S = 0.2
# Steps big enough that a walk from one bound to the other takes a few intervals (x0.5
# down: 100 -> 10 in 4; +40 up: 10 -> 100 in 3, the last one clipped at rate_max); the
# defaults (x0.7, +(rate_max - rate_min) / 20) are checked step by step in the pin test.
BIG_STEPS = {"decrease": 0.5, "increase": 40}


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
        if state.status >= 300:
            return web.json_response({"status": "error", "error": "down"}, status=state.status)
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
        adaptive_spec(
            "slowcore",
            [{"kind": "http", "url": url + "/healthz", "timeout_ms": 500}],
            **BIG_STEPS,
        ),
    )
    state.delay_s = 0.3  # over the 100 ms target
    # x0.5 per decrease, one every 3 intervals (cool-down 2): 100 -> 50 within ~1 s
    await wait_rate(redis_url, "slowcore", lambda r: r <= 50, "a first decrease", 10)
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
    # 100 -> 50 -> 25 -> 12.5 -> 10 by x0.5, 10 -> 50 -> 90 -> 100 by +40
    assert len(downs) >= 4 and len(ups) >= 3
    for entry in entries:
        assert entry["f"] == [b"rate"]
        old, new = float(entry["o"][0]), float(entry["n"][0])
        assert 10 <= new <= 100 and old != new
        why = entry["why"]
        assert why[b"source"] == b"http" and why[b"target_latency_ms"] == 100
        if why[b"direction"] == b"down":
            assert why[b"latency_ms"] > 100 or why[b"error_ratio"] > 0.1
            assert new == pytest.approx(max(10, old * 0.5))
        else:
            assert new == pytest.approx(min(100, old + 40))
            assert why[b"latency_ms"] <= 100 and why[b"error_ratio"] == 0
    await assert_verifies(served, "slowcore")


async def _at_least(state: Health, hits: int) -> bool:
    return state.hits >= hits


async def assert_verifies(served: GateProcess, campaign: str) -> None:
    exported: list[str] = []

    async def sealed() -> bool:
        exported[:] = [await export_text(served.admin_url, campaign)]
        return sealed_to_its_end(exported[0])

    # the export found sealed is the one verified: a later one may end in entries logged
    # meanwhile, unsealed, which verify does not call verified
    await wait_for(sealed, 15, "the log sealed", interval_s=0.1)
    path = served.data_dir / f"{campaign}.jsonl"
    path.write_text(exported[0])
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


async def test_manual_pin_stops_changes_and_an_operators_rate_is_honoured(
    served: GateProcess, redis_url: str, health: tuple[Health, str]
) -> None:
    state, url = health
    await create(
        served.admin_url, adaptive_spec("pin", [{"kind": "http", "url": url + "/healthz"}])
    )
    state.delay_s = 0.3
    await wait_rate(redis_url, "pin", lambda r: r <= 49, "two decreases", 10)
    view = await patch(served.admin_url, "pin", {"admission": {"adaptive": {"mode": "manual"}}})
    assert view["spec"]["admission"]["adaptive"]["mode"] == "manual"
    pinned = await rate_of(redis_url, "pin")
    assert view["spec"]["admission"]["rate_per_s"] == pinned  # the rate stays where it is
    assert (view["stats"]["rate_per_s"], view["stats"]["rate_mode"]) == (pinned, "manual")
    before = len(await controller_entries(served.admin_url, "pin"))
    # six slow windows: unpinned, the controller would have decreased within three (the
    # cool-down after its last decrease is two)
    hits = state.hits
    await wait_for(lambda: _at_least(state, hits + 6), 10, "six more probes, all slow")
    assert await rate_of(redis_url, "pin") == pinned
    # pinned at the operator's rate, still no change while the core stays slow
    await patch(served.admin_url, "pin", {"adaptive": {"mode": "manual"}, "rate_per_s": 80})
    hits = state.hits
    await wait_for(lambda: _at_least(state, hits + 6), 10, "six more probes")
    assert await rate_of(redis_url, "pin") == 80
    assert len(await controller_entries(served.admin_url, "pin")) == before
    # back to auto: the controller goes on from the operator's 80
    await patch(served.admin_url, "pin", {"adaptive": {"mode": "auto"}})
    await wait_rate(redis_url, "pin", lambda r: r < 80, "a decrease after auto", 10)
    entries = await controller_entries(served.admin_url, "pin")
    assert float(entries[before]["o"][0]) == 80 and float(entries[before]["n"][0]) == 56
    # an operator's rate while auto becomes the controller's current rate
    state.delay_s = 0.0
    hits = state.hits
    await wait_for(lambda: _at_least(state, hits + 3), 10, "three fast probes")
    await patch(served.admin_url, "pin", {"rate_per_s": 90})
    await wait_rate(redis_url, "pin", lambda r: r == 100, "recovery from the operator's 90", 10)
    after = (await controller_entries(served.admin_url, "pin"))[-3:]
    assert [float(e["o"][0]) for e in after] == [90.0, 94.5, 99.0]
    # the auditor sees each pin: admin-update of `mode` by the operator's token
    modes = []
    for line in (await export_text(served.admin_url, "pin")).splitlines():
        doc = json.loads(line)
        if doc.get("type") == "entry":
            entry = decode_entry(base64.b64decode(doc["raw"]))
            if entry["k"] == b"admin-update" and b"mode" in entry["f"]:
                at = entry["f"].index(b"mode")
                modes.append((entry["a"], entry["o"][at], entry["n"][at]))
    assert modes == [
        (b"ops", b"auto", b"manual"),
        (b"ops", b"manual", b"manual"),
        (b"ops", b"manual", b"auto"),
    ]
    await assert_verifies(served, "pin")


async def metric_values(url: str, name: str) -> dict[str, float]:
    """`name`'s samples on a gate's /metrics: label text -> value."""
    async with aiohttp.ClientSession() as http:
        text = await (await http.get(url + "/metrics")).text()
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line[len(name) :].rpartition(" ")
            out[labels] = float(value)
    return out


async def test_two_gate_processes_one_controller(
    redis_url: str, keys_file: Path, tmp_path: Path, health: tuple[Health, str]
) -> None:
    state, url = health
    first = GateProcess(redis_url, tmp_path / "a", keys_file)
    second = GateProcess(redis_url, tmp_path / "b", keys_file)
    async with first, second:
        await create(
            first.admin_url,
            adaptive_spec("duo", [{"kind": "http", "url": url + "/healthz"}], **BIG_STEPS),
        )
        state.delay_s = 0.3
        await wait_rate(redis_url, "duo", lambda r: r == 10, "the rate at rate_min", 20)
        leading = {
            p.url: (await metric_values(p.url, "fairgate_controller_leading")).get(
                '{campaign="duo"}', 0.0
            )
            for p in (first, second)
        }
        assert sorted(leading.values()) == [0.0, 1.0], leading
        for process in (first, second):
            rates = await metric_values(process.url, "fairgate_campaign_admission_rate_configured")
            assert rates['{campaign="duo"}'] == 10
        leader = first if leading[first.url] == 1.0 else second
        other = second if leader is first else first
        entries = await controller_entries(first.admin_url, "duo")
        made = await metric_values(leader.url, "fairgate_controller_changes_total")
        assert made == {'{campaign="duo",direction="down"}': float(len(entries))}
        assert await metric_values(other.url, "fairgate_controller_changes_total") == {}
        # the leader goes away: the other process takes the lease and drives the rate
        leader.stop()
        state.delay_s = 0.0
        await wait_rate(redis_url, "duo", lambda r: r == 100, "recovery by the other process", 20)
        took = await metric_values(other.url, "fairgate_controller_changes_total")
        assert took['{campaign="duo",direction="up"}'] >= 3  # 10 -> 100 by +40


async def test_prometheus_source(
    served: GateProcess, redis_url: str, health: tuple[Health, str]
) -> None:
    state, url = health
    source = {
        "kind": "prometheus",
        "url": url,
        "latency_query": "histogram_quantile(0.9, rate(core_latency_seconds_bucket[30s]))",
        "error_query": "sum(rate(core_errors_total[30s])) / sum(rate(core_requests_total[30s]))",
    }
    await create(served.admin_url, adaptive_spec("prom", [source], **BIG_STEPS))
    state.latency_s = 0.5  # 500 ms against a 100 ms target
    await wait_rate(redis_url, "prom", lambda r: r <= 25, "two decreases", 10)
    state.latency_s, state.error_ratio = 0.01, 0.5  # fast, but half the requests fail
    await wait_rate(redis_url, "prom", lambda r: r == 10, "the rate at rate_min", 20)
    # Prometheus itself down: no signal, the rate holds (blind is not healthy)
    state.status, state.error_ratio = 500, 0.0
    hits = state.hits
    await wait_for(lambda: _at_least(state, hits + 10), 10, "five more rounds of queries")
    assert await rate_of(redis_url, "prom") == 10
    state.status = 200
    await wait_rate(redis_url, "prom", lambda r: r == 100, "recovery", 20)
    entries = await controller_entries(served.admin_url, "prom")
    first = entries[0]["why"]
    assert first[b"source"] == b"prometheus" and first[b"latency_ms"] == 500
    assert any(e["why"].get(b"error_ratio") == 0.5 for e in entries)
    await assert_verifies(served, "prom")


async def one_customer(
    http: aiohttp.ClientSession, served: GateProcess, campaign: str, name: str
) -> str:
    """Join, wait until admitted, claim one item: the reservation id."""
    who = {"X-Customer-Id": name}
    r = await http.post(f"{served.url}/q/{campaign}/join", headers=who)
    assert r.status in (200, 201), await r.text()
    ticket = (await r.json())["ticket"]
    status: dict[str, Any] = {}

    async def admitted() -> bool:
        r = await http.get(
            f"{served.url}/q/{campaign}/status", params={"ticket": ticket}, headers=who
        )
        status.update(await r.json())
        return status.get("state") == "admitted"

    await wait_for(admitted, 10, f"{name} admitted", interval_s=0.02)
    r = await http.post(
        f"{served.url}/q/{campaign}/claim",
        json={"amount": 1},
        headers={**who, "X-Gate-Pass": status["pass"]},
    )
    assert r.status == 201, await r.text()
    return str((await r.json())["reservation"])


async def answer(
    http: aiohttp.ClientSession, core_url: str, campaign: str, rid: str, verb: str, **body: Any
) -> None:
    r = await http.post(
        f"{core_url}/q/{campaign}/reservations/{rid}/{verb}",
        json=body,
        headers={"Authorization": f"Bearer {CORE_TOKEN}"},
    )
    assert r.status == 200, await r.text()


async def leader_of(processes: list[GateProcess], campaign: str) -> GateProcess:
    found: list[GateProcess] = []

    async def led() -> bool:
        for process in processes:
            values = await metric_values(process.url, "fairgate_controller_leading")
            if values.get(f'{{campaign="{campaign}"}}') == 1.0:
                found.append(process)
                return True
        return False

    await wait_for(led, 10, "a controller", interval_s=0.05)
    return found[0]


async def test_callbacks_source_counts_every_process_answers(
    served: GateProcess, redis_url: str, keys_file: Path, tmp_path: Path
) -> None:
    """The core's releases with an error reason push the rate down, quick confirms bring
    it back up, slow confirms (held longer than the target) push it down again; the core
    calls back a gate process that is not the one driving the controller."""
    source = {"kind": "callbacks", "error_reasons": ["core_error", "timeout"]}
    body = adaptive_spec(
        "cb", [source], targets={"latency_ms": 200, "error_ratio": 0.2}, **BIG_STEPS
    )
    body["admission"]["max_active"] = 1000
    async with GateProcess(redis_url, tmp_path / "second", keys_file) as second:
        await create(served.admin_url, body)
        leader = await leader_of([served, second], "cb")
        callee = second if leader is served else served
        count = 0

        async def customers(verb: str, hold_s: float = 0.0, **reply: Any) -> None:
            nonlocal count
            count += 1
            names = [f"{verb}-{count}-{i}" for i in range(4)]
            async with aiohttp.ClientSession() as http:
                rids = await asyncio.gather(*(one_customer(http, served, "cb", n) for n in names))
                await asyncio.sleep(hold_s)  # the core takes this long to book
                for rid in rids:
                    await answer(http, callee.core_url, "cb", rid, verb, **reply)

        async def until(ok: Any, verb: str, what: str, hold_s: float = 0.0, **reply: Any) -> None:
            async def reached() -> bool:
                await customers(verb, hold_s, **reply)
                return bool(ok(await rate_of(redis_url, "cb")))

            await wait_for(reached, 20, what, interval_s=0.0)

        await until(lambda r: r <= 50, "release", "a decrease on core errors", reason="core_error")
        # a release for the customer's own reason is not the core's error
        await until(lambda r: r == 100, "release", "recovery", reason="customer_cancelled")
        await until(lambda r: r <= 50, "confirm", "a decrease on slow confirms", hold_s=0.3)
        whys = [e["why"] for e in await controller_entries(served.admin_url, "cb")]
        assert all(w[b"source"] == b"callbacks" for w in whys)
        downs = [w for w in whys if w[b"direction"] == b"down"]
        assert downs[0][b"error_ratio"] > 0.2
        assert downs[-1][b"latency_ms"] > 200 and downs[-1][b"error_ratio"] == 0
        made = await metric_values(leader.url, "fairgate_controller_changes_total")
        assert sum(made.values()) == len(whys)
        await assert_verifies(served, "cb")


async def controller_log(
    room: Room, keys: SigningKeys, campaign: str, forged_rate: str, out: Path
) -> Path:
    """A campaign whose controller lowered the rate 1000 -> 900/s, then 50 customers
    admitted at once after 0.1 s (900 x 0.1 tokens: allowed); with `forged_rate`, the
    controller's entry is rewritten in Redis to say it set that rate before the log is
    sealed (an operator who holds the keys forging the log). The signed export's path."""
    raw = adaptive_spec(campaign, [{"kind": "http", "url": "http://127.0.0.1:9/"}])
    raw["admission"].update(rate_per_s=1000, burst=1)
    raw["admission"]["adaptive"].update(rate_min=1, rate_max=1000)
    await create_committed(room, keys, parse_spec(raw), "ops")
    why = json.dumps({"source": "http", "latency_ms": 812.0, "target_latency_ms": 100})
    assert await room.controller_update(
        campaign, rate_in_force="1000.0", rate="900.0", why=why, actor="controller"
    )
    # the guard: a change from a rate no longer in force is refused, nothing written
    assert not await room.controller_update(
        campaign, rate_in_force="1000.0", rate="700.0", why=why, actor="controller"
    )
    k = CampaignKeys(campaign)
    await room.join(campaign, [customer_digest(keys, campaign, f"c{i}") for i in range(50)])
    seconds, micros = await room.redis.time()
    await wait_redis_time(room.redis, seconds * 1_000_000 + micros + 100_000)
    result = await room.admit(campaign, max_per_call=2000)
    assert result is not None and result.admitted == 50
    if forged_rate:
        entries = [decode_entry(e) for e in await room.redis.lrange(k.audit, 0, -1)]
        at = next(i for i, e in enumerate(entries) if e.get("why"))
        entry = unpack(await room.redis.lindex(k.audit, at))
        entry[b"n"] = [forged_rate.encode()]
        await room.redis.lset(k.audit, at, pack_like_redis(entry))
    await seal_everything(room.redis, room.scripts, keys, campaign)
    return await export_to_file(room.redis, campaign, keys, out / f"{campaign}.jsonl")


async def test_audit_verify_checks_admits_against_the_controllers_logged_rate(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    clean_log = await controller_log(room, keys, "ok", "", tmp_path)
    clean = await gate_cli("audit", "verify", str(clean_log))
    assert clean.code == 0, clean
    forged = await controller_log(room, keys, "forged", "1.0", tmp_path)
    result = await gate_cli("audit", "verify", str(forged))
    assert result.code != 0, result
    assert "more than the rate allows" in result.out + result.err, result


async def test_campaign_set_mode_and_bounds(
    served: GateProcess, redis_url: str, health: tuple[Health, str]
) -> None:
    _, url = health
    body = adaptive_spec("flags", [{"kind": "http", "url": url + "/healthz"}], mode="manual")
    await create(served.admin_url, body)
    env = {"GATE_ADMIN_URL": served.admin_url, "GATE_ADMIN_TOKEN": ADMIN_TOKEN}
    bounded = await gate_cli(
        "campaign", "set", "flags", "--rate-min", "20", "--rate-max", "80", env=env
    )
    assert bounded.code == 0, bounded
    adaptive = bounded.json()["spec"]["admission"]["adaptive"]
    assert (adaptive["rate_min"], adaptive["rate_max"], adaptive["mode"]) == (20, 80, "manual")
    # the rate in force (100) is outside the new bounds: it moves to the nearer one
    assert bounded.json()["spec"]["admission"]["rate_per_s"] == 80
    assert await rate_of(redis_url, "flags") == 80
    auto = await gate_cli("campaign", "set", "flags", "--mode", "auto", env=env)
    assert auto.code == 0 and auto.json()["spec"]["admission"]["adaptive"]["mode"] == "auto"
    pinned = await gate_cli("campaign", "set", "flags", "--mode", "manual", "--rate", "30", env=env)
    assert pinned.code == 0, pinned
    assert await rate_of(redis_url, "flags") == 30
    crossed = await gate_cli(
        "campaign", "set", "flags", "--rate-min", "90", "--rate-max", "50", env=env
    )
    assert "rate_max: must be at least" in assert_clean_error(crossed, "bad_spec")


async def test_audit_verify_rejects_a_controller_change_while_pinned(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """A log that says the controller moved a rate the operator had pinned (manual) is
    not one the scripts write: the verifier names it."""
    raw = adaptive_spec("pinned", [{"kind": "http", "url": "http://127.0.0.1:9/"}], mode="manual")
    await create_committed(room, keys, parse_spec(raw), "ops")
    why = json.dumps({"source": "http", "latency_ms": 812.0})
    # the script refuses the controller's change while pinned ...
    assert not await room.controller_update(
        "pinned", rate_in_force="100.0", rate="70.0", why=why, actor="controller"
    )
    # ... so a forger writes it as an operator's update, then adds the why
    await room.update("pinned", parse_spec(raw), {"rate": "70.0"}, "controller")
    k = CampaignKeys("pinned")
    entry = unpack(await room.redis.lindex(k.audit, -1))
    entry[b"why"] = {b"source": b"http", b"latency_ms": 812}
    await room.redis.lset(k.audit, -1, pack_like_redis(entry))
    await seal_everything(room.redis, room.scripts, keys, "pinned")
    path = await export_to_file(room.redis, "pinned", keys, tmp_path / "pinned.jsonl")
    result = await gate_cli("audit", "verify", str(path))
    assert result.code != 0, result
    assert "while the mode is 'manual'" in result.out + result.err, result
