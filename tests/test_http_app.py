"""`create_app(config)`: the public app owns its gate, the admin listener and the core
system's listener.

Serving the app starts them all; its cleanup stops them all, leaving no task running and no
connection open on Redis. Counted from Redis's side (CLIENT LIST), so a connection left
behind shows whichever pool it came from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from gate.config import Config
from gate.http.app import ADMIN_ADDRESS, CORE_ADDRESS, create_app
from gate.http.common import GATE_KEY
from gate.redis_server import free_port
from tests.helpers import ADMIN_TOKEN, CORE_TOKEN, as_customer, spec, wait_for


@pytest.fixture
async def observer(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _clients(observer: Redis) -> int:
    """Connections open on Redis, the observer's own included."""
    return len(await observer.client_list())


def _app_config(config: Config) -> Config:
    return dataclasses.replace(
        config, admin_host="127.0.0.1", admin_port=0, core_host="127.0.0.1", core_port=0
    )


async def test_the_app_serves_both_listeners_and_closes_everything(
    config: Config, aiohttp_client: Any, observer: Redis
) -> None:
    before = await _clients(observer)
    app = create_app(_app_config(config))
    assert GATE_KEY not in app  # nothing runs until the app is served

    public = await aiohttp_client(app)
    gate = app[GATE_KEY]
    await gate.wait_ready()
    host, port = app[ADMIN_ADDRESS]
    assert port not in (0, public.port)
    admin_url = f"http://{host}:{port}"
    core_host, core_port = app[CORE_ADDRESS]
    assert core_port not in (0, public.port, port)
    core_url = f"http://{core_host}:{core_port}"

    async with aiohttp.ClientSession(
        base_url=admin_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as admin:
        r = await admin.post("/admin/campaigns", json=spec("app"))
        assert r.status == 201, await r.text()
        r = await admin.get("/admin/campaigns/app/stats")
        assert r.status == 200
        assert (await r.json())["id"] == "app"
    async with aiohttp.ClientSession(base_url=admin_url) as anonymous:
        r = await anonymous.post("/admin/campaigns", json=spec("other"))
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "bad_admin_token"
    # the admin routes are not on the public listener
    r = await public.post("/admin/campaigns", json=spec("other"))
    assert r.status == 404

    # join, then status until admitted: the cache and the admission loop are running
    r = await public.post("/q/app/join", headers={"X-Customer-Id": "alice"})
    assert r.status == 201, await r.text()
    ticket = (await r.json())["ticket"]
    status: dict[str, Any] = {}

    async def is_admitted() -> bool:
        r = await public.get(
            "/q/app/status", params={"ticket": ticket}, headers=as_customer("alice")
        )
        assert r.status == 200, await r.text()
        status.update(await r.json())
        return status["state"] == "admitted"

    await wait_for(is_admitted, 5, "alice admitted")
    through_proxy = {"X-Gate-Pass": status["pass"], "X-Gate-Campaign": "app"}
    r = await public.get("/gate/auth", headers=as_customer("alice", **through_proxy))
    assert r.status == 200

    # the core system's callbacks are on the core listener only
    async with aiohttp.ClientSession(
        base_url=core_url, headers={"Authorization": f"Bearer {CORE_TOKEN}"}
    ) as core:
        r = await core.post("/q/app/reservations/r1/confirm")
        assert r.status == 404, await r.text()  # served: the route knows no such reservation
        assert (await r.json())["error"]["code"] == "unknown_reservation"
        assert (await core.get("/healthz")).status == 200
    r = await public.post(
        "/q/app/reservations/r1/confirm", headers={"Authorization": f"Bearer {CORE_TOKEN}"}
    )
    assert r.status == 404
    assert (await r.json())["error"]["code"] == "not_found"

    tasks = list(gate._tasks)
    # scripts loader, Redis sanity, cache, admission, the adaptive rate's controller and
    # its callbacks counter, sealer, failover watch, the metrics' (event-loop lag, the
    # workers' figures)
    assert len(tasks) == 9
    assert sum(not task.done() for task in tasks) == 8  # all but the finished loader
    assert await _clients(observer) > before

    await public.close()  # the app's cleanup

    assert all(task.done() for task in tasks)
    assert gate._tasks == []

    async def all_closed() -> bool:
        return await _clients(observer) == before

    await wait_for(all_closed, 5, "the gate's Redis connections to close")
    for url in (admin_url, core_url):
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as session:
                await session.get(f"{url}/healthz")


@pytest.mark.parametrize("listener", ["admin", "core"])
async def test_a_side_port_in_use_stops_the_gate_it_started(
    config: Config, observer: Redis, listener: str
) -> None:
    before = await _clients(observer)
    tasks_before = asyncio.all_tasks()
    admin_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {"admin_port": admin_port, "core_port": 0}
        ports[f"{listener}_port"] = taken.getsockname()[1]
        busy = dataclasses.replace(config, admin_host="127.0.0.1", core_host="127.0.0.1", **ports)
        runner = web.AppRunner(create_app(busy))
        with pytest.raises(OSError):
            await runner.setup()  # the app's startup: the gate starts, a side port fails

    assert not asyncio.all_tasks() - tasks_before  # no gate task left running
    if listener == "core":  # the admin listener, started first, was closed again
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as session:
                await session.get(f"http://127.0.0.1:{admin_port}/healthz")

    async def all_closed() -> bool:
        return await _clients(observer) == before

    await wait_for(all_closed, 5, "the gate's Redis connections to close")


def test_answers_encode_what_orjson_refuses_as_before() -> None:
    # orjson refuses a lone surrogate (a path segment or header can carry one into an
    # error message) and ints past 64 bits; those answers fall back to the standard
    # library's escaped JSON instead of failing the request.
    import json

    from gate.http.common import encode_json

    for value in ({"m": "no campaign '\ud800'"}, {"n": 2**70}, {"a": "한글", "b": [1, None]}):
        assert json.loads(encode_json(value)) == value
    assert encode_json({"a": 1, "b": "x"}) == b'{"a":1,"b":"x"}'
