"""/metrics is true across workers (issue 14): a real `gate serve --workers 4`, a known
number of joins, polls, claims and /gate/auth checks, then consecutive scrapes on fresh
connections (SO_REUSEPORT spreads them over the workers): every scrape shows the totals of
what was done, whichever worker answers it. Then one worker is killed (SIGKILL): its
counts stay in the totals (neither lost nor doubled). And the effective-rate gauge is 0
while a campaign is paused, the configured rate unchanged."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gate.config import Config
from gate.http.admin import create_admin_app
from gate.http.public import create_public_app
from gate.service import Gate, running_gate
from tests.helpers import ADMIN_TOKEN, GateProcess, as_customer, spec, wait_for

CAMPAIGN = "mw"
JOINS = 24
POLLS = 40  # status polls after every customer has their pass
CLAIMS = 10
AUTHS = 12
SCRAPES = 12
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


def samples(text: str) -> dict[str, float]:
    """'name{labels}' -> value, for every sample of a Prometheus text exposition."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return found


def labelled(found: dict[str, float], name: str, **labels: str) -> float | None:
    """The value of `name` whose labels include `labels` (the sum where several match)."""
    total: float | None = None
    for key, value in found.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total = (total or 0.0) + value
    return total


async def scrape(url: str) -> dict[str, float]:
    """One scrape on a connection of its own (so that the kernel picks the worker)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url + "/metrics") as r,
    ):
        assert r.status == 200
        return samples(await r.text())


def _workers(parent: int) -> list[int]:
    """The gate workers of `gate serve` (`parent`), from /proc: its spawned children other
    than multiprocessing's resource tracker."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture
async def served(redis_url: str, keys_file: Path, tmp_path: Path) -> AsyncIterator[GateProcess]:
    async with GateProcess(redis_url, tmp_path / "gate", keys_file, workers=4) as process:
        yield process


@pytest.mark.slow
async def test_totals_exact_on_every_scrape_with_4_workers(served: GateProcess) -> None:
    body = spec(CAMPAIGN, rate_per_s=100000, burst=10000)
    connector = aiohttp.TCPConnector(force_close=True)  # spread requests over the workers
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        async with http.post(
            served.admin_url + "/admin/campaigns",
            json=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r:
            assert r.status == 201, await r.text()

        tickets: list[str] = []
        for n in range(JOINS):
            async with http.post(
                f"{served.url}/q/{CAMPAIGN}/join", headers=as_customer(f"m{n}")
            ) as r:
                assert r.status == 201, await r.text()
                tickets.append((await r.json())["ticket"])

        polls = 0
        passes: list[str] = []

        async def poll(n: int) -> dict[str, Any]:
            nonlocal polls
            async with http.get(
                f"{served.url}/q/{CAMPAIGN}/status",
                params={"ticket": tickets[n]},
                headers=as_customer(f"m{n}"),
            ) as r:
                assert r.status == 200, await r.text()
                polls += 1
                answer: dict[str, Any] = await r.json()
                return answer

        for n in range(JOINS):
            answer: dict[str, Any] = {}

            async def admitted(n: int = n, answer: dict[str, Any] = answer) -> bool:
                answer.update(await poll(n))
                return answer.get("state") == "admitted"

            await wait_for(admitted, 10, f"m{n} admitted")
            passes.append(str(answer["pass"]))
        for i in range(POLLS):
            await poll(i % JOINS)
        for n in range(AUTHS):
            async with http.get(
                served.url + "/gate/auth",
                headers=as_customer(
                    f"m{n}", **{"X-Gate-Pass": passes[n], "X-Gate-Campaign": CAMPAIGN}
                ),
            ) as r:
                assert r.status == 200, await r.text()
        for n in range(CLAIMS):
            async with http.post(
                f"{served.url}/q/{CAMPAIGN}/claim",
                json={"amount": 1},
                headers=as_customer(f"m{n}", **{"X-Gate-Pass": passes[n]}),
            ) as r:
                assert r.status == 201, await r.text()

    def check(found: dict[str, float], scrape_no: int) -> None:
        route = "/q/{campaign}"
        where = f"scrape {scrape_no}"
        expected = {
            ("fairgate_http_requests_total", route + "/join", "201"): JOINS,
            ("fairgate_http_requests_total", route + "/status", "200"): polls,
            ("fairgate_http_requests_total", route + "/claim", "201"): CLAIMS,
            ("fairgate_http_requests_total", "/gate/auth", "200"): AUTHS,
        }
        for (name, path, status), value in expected.items():
            got = labelled(found, name, listener="public", route=path, status=status)
            assert got == value, (where, name, path, status, got, value)
        got = labelled(found, "fairgate_http_request_duration_seconds_count", route=route + "/join")
        assert got == JOINS, (where, got)
        assert labelled(found, "fairgate_claims_total", campaign=CAMPAIGN, outcome="granted") == (
            CLAIMS
        ), where
        assert labelled(found, "fairgate_auth_decisions_total", decision="allow") == AUTHS, where
        per_campaign = {
            "fairgate_campaign_joined_total": JOINS,
            "fairgate_campaign_admitted_total": JOINS,
            "fairgate_campaign_waiting": 0,
            "fairgate_campaign_active": JOINS,
            "fairgate_campaign_quota_total": 1000000,
            "fairgate_campaign_quota_held": CLAIMS,
            "fairgate_campaign_quota_confirmed": 0,
            "fairgate_campaign_quota_remaining": 1000000 - CLAIMS,
            "fairgate_campaign_admission_rate_configured": 100000,
            "fairgate_campaign_admission_rate_effective": 100000,
        }
        for name, value in per_campaign.items():
            assert labelled(found, name, campaign=CAMPAIGN) == value, (where, name)
        # Every process's counters are in one scrape: the admission loop of every worker.
        assert (labelled(found, "fairgate_admit_calls_total") or 0) > 0, where
        for name in (
            "fairgate_event_loop_lag_seconds",
            "fairgate_redis_call_duration_seconds_count",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
        ):
            assert labelled(found, name) is not None, (where, name)

    for n in range(SCRAPES):
        check(await scrape(served.url), n)

    # A worker killed: what it counted stays counted, once.
    assert served.process is not None
    workers = _workers(served.process.pid)
    assert len(workers) == 4, workers
    os.kill(workers[0], signal.SIGKILL)

    async def replaced() -> bool:
        now = _workers(served.process.pid) if served.process is not None else []
        return workers[0] not in now and len(now) == 4

    await wait_for(replaced, 20, "the killed worker replaced")

    async def four_answering() -> bool:
        return labelled(await scrape(served.url), "fairgate_workers") == 4

    # The new worker answers scrapes too: four live workers, the killed one's counts once.
    await wait_for(four_answering, 30, "four workers answering scrapes")
    for n in range(SCRAPES):
        check(await scrape(served.url), SCRAPES + n)


async def test_effective_rate_is_zero_while_paused(public: Any, admin: Any, gate: Gate) -> None:
    r = await admin.post("/admin/campaigns", json=spec("pz", rate_per_s=50))
    assert r.status == 201, await r.text()

    async def rates() -> tuple[float | None, float | None]:
        found = samples(await (await public.get("/metrics")).text())
        return (
            labelled(found, "fairgate_campaign_admission_rate_configured", campaign="pz"),
            labelled(found, "fairgate_campaign_admission_rate_effective", campaign="pz"),
        )

    async def effective(value: float) -> bool:
        return await rates() == (50.0, value)

    await wait_for(lambda: effective(50.0), 5, "effective rate 50 while open")
    assert (await admin.post("/admin/campaigns/pz/pause")).status == 200
    await wait_for(lambda: effective(0.0), 5, "effective rate 0 while paused")
    assert (await admin.post("/admin/campaigns/pz/resume")).status == 200
    await wait_for(lambda: effective(50.0), 5, "effective rate 50 once resumed")
    assert (await admin.post("/admin/campaigns/pz/close")).status == 200
    await wait_for(lambda: effective(0.0), 5, "effective rate 0 once closed")


async def test_metrics_off_counts_nothing_on_the_request_path(
    config: Config, aiohttp_client: Any
) -> None:
    """`metrics = false`: no request counted or timed; the campaign figures remain."""
    async with running_gate(dataclasses.replace(config, metrics=False)) as gate:
        await gate.wait_ready()
        admin = await aiohttp_client(
            create_admin_app(gate), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        public = await aiohttp_client(create_public_app(gate))
        assert (await admin.post("/admin/campaigns", json=spec("off"))).status == 201
        r = await public.post("/q/off/join", headers=as_customer("o1"))
        assert r.status == 201, await r.text()

        async def joined() -> bool:
            found = samples(await (await public.get("/metrics")).text())
            return labelled(found, "fairgate_campaign_joined_total", campaign="off") == 1

        await wait_for(joined, 5, "the campaign figures read from Redis")
        found = samples(await (await public.get("/metrics")).text())
        assert labelled(found, "fairgate_http_requests_total") is None
        assert labelled(found, "fairgate_http_request_duration_seconds_count") is None
        assert labelled(found, "fairgate_redis_call_duration_seconds_count") is None
