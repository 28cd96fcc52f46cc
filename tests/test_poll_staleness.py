"""A late event loop is not a Redis outage.

When this process's cache refresher runs late (the event loop is busy), its last refresh
grows old although none failed: a waiting customer is still answered from the cursor it
holds (slightly behind, which grants nothing), while what grants access, a pass check or
a pass issued, still fails closed until a refresh succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from gate.config import Config
from gate.http.admin import create_admin_app
from gate.http.public import create_public_app
from gate.service import running_gate
from tests.helpers import ADMIN_TOKEN, create_campaign, join, quiet_gate, wait_for

CAMPAIGN = "lag"
PAUSE_MS = 400


def _who(customer: str) -> dict[str, str]:
    return {"X-Customer-Id": customer, "X-Gate-Campaign": CAMPAIGN}


async def test_a_late_event_loop_never_turns_a_waiting_poll_into_503(
    config: Config, aiohttp_client: Any
) -> None:
    # No background refresher: the test decides when the cache was last refreshed, which
    # is what a busy event loop does to it.
    async with quiet_gate(config, stale_after_ms=50) as gate:
        public = await aiohttp_client(create_public_app(gate))
        admin = await aiohttp_client(
            create_admin_app(gate), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        # one admit call of at most one customer lets exactly the first in (the bucket adds
        # rate x elapsed whole since issue 12, so a burst of 1 alone would not stop at one)
        await create_campaign(admin, CAMPAIGN, rate_per_s=1000, burst=1)
        first = await join(public, CAMPAIGN, "kim-0001")
        second = await join(public, CAMPAIGN, "kim-0002")

        async def first_admitted() -> bool:
            result = await gate.room.admit(CAMPAIGN, max_per_call=1)
            assert result is not None and result.cursor <= 1
            return result.cursor == 1

        await wait_for(first_admitted, 5, "the first customer admitted")
        await gate.cache.refresh_once()

        r = await public.get(
            f"/q/{CAMPAIGN}/status", params={"ticket": first["ticket"]}, headers=_who("kim-0001")
        )
        assert r.status == 200, await r.text()
        pass_token = (await r.json())["pass"]
        public.session.cookie_jar.clear()

        async def late() -> bool:
            return not gate.cache.fresh()

        await wait_for(late, 5, "the last refresh older than stale_after_ms")
        assert gate.cache.last_error < gate.cache.last_ok, "no refresh failed: Redis is not out"

        # the waiting customer keeps their place and sees it, from the cached cursor
        r = await public.get(
            f"/q/{CAMPAIGN}/status", params={"ticket": second["ticket"]}, headers=_who("kim-0002")
        )
        assert r.status == 200, await r.text()
        waiting = await r.json()
        assert (waiting["state"], waiting["position"]) == ("waiting", 1), waiting
        assert waiting["poll_after_ms"] > 0
        # a retried join is answered too (it goes to Redis, which answers)
        assert (await join(public, CAMPAIGN, "kim-0002"))["seq"] == second["seq"]

        # what grants access fails closed on the same stale state
        r = await public.get("/gate/auth", headers={**_who("kim-0001"), "X-Gate-Pass": pass_token})
        assert r.status == 401, await r.text()
        assert (await r.json())["error"]["code"] == "unavailable"
        r = await public.get(
            f"/q/{CAMPAIGN}/status", params={"ticket": first["ticket"]}, headers=_who("kim-0001")
        )
        assert r.status == 503, await r.text()
        assert "pass" not in await r.json()
        assert int(r.headers["Retry-After"]) >= 1

        # a refresh that succeeds makes the pass good again
        await gate.cache.refresh_once()
        r = await public.get("/gate/auth", headers={**_who("kim-0001"), "X-Gate-Pass": pass_token})
        assert r.status == 200, await r.text()


async def test_a_process_just_started_waits_for_its_first_refresh_not_503(
    config: Config, aiohttp_client: Any
) -> None:
    """A worker listens as soon as its app has started, before its cache's first refresh
    has come back (CI: a 2-worker `gate serve` answered the first join 503 `unavailable`).
    A cache that has never refreshed has not failed: a join, a waiting poll and a pass wait
    for that first refresh (Redis paused here so that it cannot come back at once)."""
    async with quiet_gate(config) as first:
        admin = await aiohttp_client(
            create_admin_app(first), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        await create_campaign(admin, CAMPAIGN, rate_per_s=1000)
    async with running_gate(config, background=False) as gate:

        async def loaded() -> bool:
            return gate.scripts_loaded

        await wait_for(loaded, 10, "scripts loaded")
        assert gate.cache.last_ok == gate.cache.last_error == 0, "no refresh has ended yet"
        public = await aiohttp_client(create_public_app(gate))
        await gate.redis.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "ALL")
        refresher = asyncio.create_task(gate.cache.run())
        try:
            started = time.monotonic()
            ticket = await join(public, CAMPAIGN, "kim-0003")
            assert ticket["seq"] == 1, ticket
            # it waited for the refresh, which could not end before Redis came back
            assert time.monotonic() - started >= PAUSE_MS / 1000 * 0.8
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher


async def test_a_crowd_on_a_cold_cache_loads_the_campaign_once(
    config: Config, aiohttp_client: Any
) -> None:
    """The first customers of a campaign this process has not cached yet all ask for it at
    once: one load from Redis serves them all. Before, each of 150 concurrent joins read
    the campaign itself (150 HGETALLs and snapshots), the pool's 64 connections ran out,
    and joins answered 503 `unavailable` on a loaded machine (test_receipts in a full run)."""
    async with quiet_gate(config) as first:
        admin = await aiohttp_client(
            create_admin_app(first), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        await create_campaign(admin, CAMPAIGN, rate_per_s=1000)
    async with quiet_gate(config) as gate:
        # as when another process created it after this one's last refresh
        gate.cache.campaigns.clear()
        public = await aiohttp_client(create_public_app(gate))
        await gate.redis.config_resetstat()
        tickets = await asyncio.gather(*(join(public, CAMPAIGN, f"c{n}") for n in range(150)))
        assert sorted(t["seq"] for t in tickets) == list(range(1, 151))
        stats = await gate.redis.info("commandstats")
        assert stats["cmdstat_hgetall"]["calls"] == 1, stats["cmdstat_hgetall"]
