"""Graceful overload (gate/overload.py): a process whose event loop runs late while its own
requests pile up answers new joins and polls 503 at once, and keeps every place.

Before: a new join queued behind the backlog (here: until Redis answered again), so under a
crowd three times what a process can serve every answer came seconds late and thousands
were never answered (bench/overload.py: join p99 6.9 s, 12,008 unanswered in 5 s).
Real Redis, a real Gate; the backlog is made by pausing Redis's clients (joins wait), the
late loop by blocking it from a task of the test, as a flood of requests would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gate.config import Config, default_config
from gate.http.admin import create_admin_app
from gate.http.public import create_public_app
from gate.overload import HOLD_S, SHED_MIN_IN_FLIGHT, Shedder
from gate.service import running_gate
from tests.helpers import ADMIN_TOKEN, create_campaign, join

BUSY = "busier than it can answer"


def test_the_shedder_sheds_for_a_while_after_a_late_probe_only() -> None:
    shedder = Shedder(20)
    now = time.monotonic()
    shedder.observe(0.015, now)  # late, but under the limit
    assert not shedder.shedding()
    shedder.observe(0.025, now)
    assert shedder.shedding() and shedder.episodes == 1
    shedder.observe(0.030, now + 0.01)  # still late: the same episode, held longer
    assert shedder.episodes == 1 and shedder.until == pytest.approx(now + 0.01 + HOLD_S)
    off = Shedder(0)
    off.observe(5.0, now)
    assert not off.shedding()


@contextlib.asynccontextmanager
async def late_loop(block_s: float) -> AsyncIterator[None]:
    """The event loop kept late: blocked `block_s` at a time, as a process flooded with
    requests is (the load under test, not a wait for a condition)."""
    stop = asyncio.Event()

    async def block() -> None:
        while not stop.is_set():
            time.sleep(block_s)  # noqa: ASYNC251 -- the load under test: a busy loop
            await asyncio.sleep(0.002)

    task = asyncio.create_task(block())
    try:
        yield
    finally:
        stop.set()
        await task


@pytest.fixture
def shedding_config(config: Config) -> Config:
    # Redis calls may wait out the pause below instead of failing at 500 ms.
    return dataclasses.replace(config, shed_lag_ms=20, redis_timeout_ms=10_000)


async def test_a_late_loop_with_a_backlog_sheds_new_joins_and_polls_and_keeps_every_place(
    shedding_config: Config, redis_url: str, aiohttp_client: Any
) -> None:
    async with running_gate(shedding_config) as gate:
        await gate.wait_ready()
        public = await aiohttp_client(create_public_app(gate))
        admin = await aiohttp_client(
            create_admin_app(gate), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        await create_campaign(admin, "c1", rate_per_s=0.001)
        first = await join(public, "c1", "first")
        redis = Redis.from_url(redis_url)
        try:
            # Redis holds every client for 3 s: the joins below wait for it, in flight.
            await redis.execute_command("CLIENT", "PAUSE", "3000", "ALL")
            waiting = [
                asyncio.create_task(
                    public.post("/q/c1/join", headers={"X-Customer-Id": f"crowd-{i}"})
                )
                for i in range(SHED_MIN_IN_FLIGHT + 16)
            ]
            deadline = time.monotonic() + 2.0
            while gate.in_flight.get("public", 0) < SHED_MIN_IN_FLIGHT:
                assert time.monotonic() < deadline, gate.in_flight
                await asyncio.sleep(0.005)
            async with late_loop(0.03):
                deadline = time.monotonic() + 1.0  # well inside the pause
                while not gate.shedder.shedding():
                    assert time.monotonic() < deadline, "the late loop was not noticed"
                    await asyncio.sleep(0.005)
                began = time.monotonic()
                late = await public.post("/q/c1/join", headers={"X-Customer-Id": "late"})
                poll = await public.get(
                    "/q/c1/status",
                    params={"ticket": first["ticket"]},
                    headers={"X-Customer-Id": "first"},
                )
                auth = await public.get("/gate/auth", headers={"X-Customer-Id": "first"})
                answered_in = time.monotonic() - began
            # Shed at once (Redis is still paused: a join that went on would wait for it).
            assert late.status == 503 and late.headers["Retry-After"] == "1"
            assert BUSY in (await late.json())["error"]["message"]
            assert poll.status == 503 and BUSY in (await poll.json())["error"]["message"]
            # The proxies' pass check is never shed: refused for its own reason.
            assert auth.status == 401
            assert answered_in < 2.0  # not after the pause: a join that went on waits for it
            # Every join already under way keeps its place: a ticket each, none lost. Those
            # that arrived once the loop was late were shed before taking one.
            answers = [await task for task in waiting]
            placed = {i: (await r.json())["seq"] for i, r in enumerate(answers) if r.status == 201}
            shed = [i for i, r in enumerate(answers) if r.status == 503]
            assert len(placed) >= SHED_MIN_IN_FLIGHT and len(placed) + len(shed) == len(answers)
            for i in shed:
                assert BUSY in (await answers[i].json())["error"]["message"]
            seqs = set(placed.values())
            assert len(seqs) == len(placed)
            # The backlog gone, joins are served again (the late one keeps no penalty).
            deadline = time.monotonic() + 3.0
            while gate.shedder.shedding():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            again = await join(public, "c1", "late")
            assert again["seq"] not in seqs
            for i, seq in list(placed.items())[:5]:  # a placed customer's retry: the same seq
                assert (await join(public, "c1", f"crowd-{i}"))["seq"] == seq
            assert gate.shedder.episodes >= 1
        finally:
            await redis.aclose()


async def test_shed_lag_ms_is_validated(tmp_path: Path) -> None:
    from gate.errors import ConfigError

    with pytest.raises(ConfigError, match="shed_lag_ms"):
        default_config(redis_url="redis://127.0.0.1:1", shed_lag_ms=-1, data_dir=str(tmp_path))
