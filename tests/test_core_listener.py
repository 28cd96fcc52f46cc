"""The core system's confirm/release callbacks live on their own listener (core_host,
core_port, bearer tokens of core_tokens), never on the public one that the proxies expose.

Before: `POST /q/{c}/reservations/{id}/confirm|release` were routes of the public
listener, one proxy rule away from the internet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import (
    ADMIN_TOKEN,
    CORE_TOKEN,
    GateProcess,
    amount_spec,
    as_customer,
    wait_for,
)

CAMPAIGN = "dep"


@pytest.fixture
async def served(redis_url: str, keys_file: Path, tmp_path: Path) -> AsyncIterator[GateProcess]:
    async with GateProcess(redis_url, tmp_path / "gate", keys_file) as process:
        yield process


async def reservation_of(http: aiohttp.ClientSession, served: GateProcess, customer: str) -> str:
    """`customer` joins, waits for the pass and claims 5,000,000 KRW: the reservation id."""
    me = as_customer(customer)
    async with http.post(f"{served.url}/q/{CAMPAIGN}/join", headers=me) as r:
        assert r.status == 201, await r.text()
        ticket = (await r.json())["ticket"]
    state: dict[str, Any] = {}

    async def admitted() -> bool:
        url = f"{served.url}/q/{CAMPAIGN}/status"
        async with http.get(url, params={"ticket": ticket}, headers=me) as r:
            state.update(await r.json())
        return state.get("state") == "admitted"

    await wait_for(admitted, 10, f"{customer} admitted", interval_s=0.05)
    async with http.post(
        f"{served.url}/q/{CAMPAIGN}/claim",
        json={"amount": "5000000"},
        headers={**me, "X-Gate-Pass": state["pass"]},
    ) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["reservation"])


async def test_confirm_and_release_only_on_the_core_listener(served: GateProcess) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    core = {"Authorization": f"Bearer {CORE_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{served.admin_url}/admin/campaigns", json=amount_spec(CAMPAIGN), headers=admin
        ) as r:
            assert r.status == 201, await r.text()
        alice = await reservation_of(http, served, "alice")
        bob = await reservation_of(http, served, "bob")

        # The public listener does not know these routes, whatever token comes with them.
        for rid in (alice, bob):
            for action in ("confirm", "release"):
                url = f"{served.url}/q/{CAMPAIGN}/reservations/{rid}/{action}"
                async with http.post(url, headers=core, json={}) as r:
                    assert r.status == 404, await r.text()
                    assert (await r.json())["error"]["code"] == "not_found"

        # The core listener asks for the core system's token ...
        url = f"{served.core_url}/q/{CAMPAIGN}/reservations/{alice}/confirm"
        for headers in (
            {},
            {"Authorization": f"Bearer {ADMIN_TOKEN}"},  # the operator's token is not it
            {"Authorization": f"Bearer {CORE_TOKEN}x"},
            {"Authorization": f"Basic {CORE_TOKEN}"},
        ):
            async with http.post(url, headers=headers) as r:
                assert r.status == 401, await r.text()
                assert (await r.json())["error"]["code"] == "bad_core_token"
        # ... and with it, confirms and releases.
        async with http.post(url, headers=core) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["state"] == "confirmed"
        async with http.post(
            f"{served.core_url}/q/{CAMPAIGN}/reservations/{bob}/release",
            headers=core,
            json={"reason": "the deposit failed"},
        ) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["state"] == "released"

        # The core listener serves nothing else: no joins, no pass checks, no admin.
        for method, path in (
            ("POST", f"/q/{CAMPAIGN}/join"),
            ("GET", "/gate/auth"),
            ("GET", f"/q/{CAMPAIGN}"),
            ("POST", f"/q/{CAMPAIGN}/claim"),
            ("GET", "/admin/campaigns"),
        ):
            async with http.request(method, served.core_url + path, headers=core) as r:
                assert r.status == 404, (path, await r.text())
        async with http.get(f"{served.core_url}/healthz") as r:
            assert r.status == 200

        async with http.get(
            f"{served.admin_url}/admin/campaigns/{CAMPAIGN}/stats", headers=admin
        ) as r:
            stats = await r.json()
        assert stats["confirmed"] == "5000000" and stats["held"] == "0", stats
