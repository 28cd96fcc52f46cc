"""Redis sanity: the gate refuses an evicting or non-durable Redis, and Redis's refusals
(OOM at maxmemory under noeviction) are a generic 503, counted and logged once per interval.

Each test starts its own redis-server with a small `maxmemory` (2 MB), a real gate with
its background tasks, and the public and admin listeners in-process. Before this check:
with `allkeys-lru` the gate answered /readyz 200 and acknowledged joins that Redis then
evicted; at the noeviction limit every join answered 500 `script_error` with Redis's own
text, /readyz stayed 200, and each request logged an ERROR line.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from gate.config import Config
from gate.http.admin import create_admin_app
from gate.http.public import create_public_app
from gate.redis_checks import RedisSettings, problems, refusal_reason
from gate.redis_server import RedisServer
from gate.room.keys import CampaignKeys
from gate.service import Gate, running_gate
from tests.helpers import ADMIN_TOKEN, create_campaign, redis_binaries, wait_for

BINARIES = redis_binaries()
SMALL = ("--maxmemory", "2mb")
Clients = tuple[Gate, Any, Any]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []

    def start(*extra: str, binary: str | None = None) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", binary=binary, extra=extra)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def clients(
    config: Config, aiohttp_client: Any
) -> Callable[[str], AbstractAsyncContextManager[Clients]]:
    @asynccontextmanager
    async def open_(url: str) -> AsyncIterator[Clients]:
        async with running_gate(dataclasses.replace(config, redis_url=url)) as gate:
            await wait_for(lambda: _true(gate.sanity.checked), 10, "the sanity check")
            public = await aiohttp_client(create_public_app(gate))
            admin = await aiohttp_client(
                create_admin_app(gate), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            yield gate, public, admin

    return open_


async def _true(value: bool) -> bool:
    return value


def fill(server: RedisServer) -> None:
    """Write ballast until Redis refuses, then set maxmemory a little below what is used:
    the refusal no longer depends on how close to the limit the last write left it."""
    client = sync_redis.Redis(port=server.port)
    with pytest.raises(sync_redis.exceptions.OutOfMemoryError):
        for n in range(1000):
            client.set(f"ballast:{n}", b"x" * 64 * 1024)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used - 256 * 1024)
    client.close()


def test_settings_that_lose_acknowledged_writes() -> None:
    def of(policy: str, aof: str, fsync: str | None, replicas: int = 0) -> list[str]:
        return problems(RedisSettings(policy, aof, fsync), wait_replicas=replicas)

    assert of("noeviction", "yes", "always") == []
    assert of("noeviction", "yes", "everysec", replicas=1) == []
    assert of("noeviction", "yes", None) == []  # CONFIG disabled: fsync unknown, not guessed
    for policy in ("allkeys-lru", "volatile-lru", "allkeys-random", "volatile-ttl"):
        assert of(policy, "yes", "always")[0].startswith(f"maxmemory-policy={policy}")
    assert of("noeviction", "no", "always")[0].startswith("appendonly=no")
    assert of("noeviction", "yes", "everysec")[0].startswith("appendfsync=everysec")
    assert of("noeviction", "yes", "no")[0].startswith("appendfsync=no")
    assert refusal_reason("OOM command not allowed when used memory > 'maxmemory'.") == "oom"
    # redis-py strips the OOM prefix into its OutOfMemoryError
    assert refusal_reason("command not allowed when used memory > 'maxmemory'.") == "oom"
    assert refusal_reason("Error running script: @user_script:12: Script attempted...") is None


@pytest.mark.parametrize("rename_config", [False, True], ids=["config", "config-renamed"])
async def test_evicting_policy_is_refused_not_silently_lossy(
    servers: Callable[..., RedisServer],
    clients: Callable[[str], AbstractAsyncContextManager[Clients]],
    caplog: pytest.LogCaptureFixture,
    rename_config: bool,
) -> None:
    extra: tuple[str, ...] = (*SMALL, "--maxmemory-policy", "allkeys-lru")
    if rename_config:  # CONFIG disabled, as managed Redis services do: INFO still tells
        extra = (*extra, "--rename-command", "CONFIG", "")
    server = servers(*extra)
    caplog.set_level(logging.WARNING, logger="gate")
    async with clients(server.url) as (gate, public, admin):
        assert gate.sanity.problem is not None
        ready = await public.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["reason"] == "redis_unsafe"
        unsafe = [r.getMessage() for r in caplog.records if "event=redis_unsafe" in r.message]
        assert len(unsafe) == 1 and "maxmemory-policy=allkeys-lru" in unsafe[0]
        await create_campaign(admin, "lru")
        joined = await public.post("/q/lru/join", headers={"X-Customer-Id": "alice"})
        assert joined.status == 503 and joined.headers["Retry-After"]
        metrics = await (await public.get("/metrics")).text()
        assert "fairgate_redis_unsafe 1.0" in metrics


@pytest.mark.parametrize("label", [label for label, _ in BINARIES])
async def test_oom_is_a_generic_503_logged_once(
    servers: Callable[..., RedisServer],
    clients: Callable[[str], AbstractAsyncContextManager[Clients]],
    caplog: pytest.LogCaptureFixture,
    label: str,
) -> None:
    server = servers(*SMALL, "--maxmemory-policy", "noeviction", binary=dict(BINARIES)[label])
    caplog.set_level(logging.INFO, logger="gate")
    async with clients(server.url) as (_, public, admin):
        await create_campaign(admin, "oom")
        first = await public.post("/q/oom/join", headers={"X-Customer-Id": "before"})
        assert first.status == 201, await first.text()
        fill(server)
        caplog.clear()
        for n in range(20):
            r = await public.post("/q/oom/join", headers={"X-Customer-Id": f"c{n}"})
            text = await r.text()
            assert r.status == 503, text
            assert r.headers["Retry-After"].isdigit()
            body = await r.json()
            assert body["error"]["code"] == "unavailable"
            for leak in ("OOM", "maxmemory", "script", "used memory"):
                assert leak not in text
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        refused = [line for line in lines if "event=redis_refused" in line]
        assert refused == ["event=redis_refused reason=oom count=1"], lines
        assert not [line for line in lines if "script_error" in line or "Traceback" in line]
        ready = await public.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["reason"] == "redis_refused_oom"
        metrics = await (await public.get("/metrics")).text()
        assert 'fairgate_redis_refused_total{reason="oom"} 20.0' in metrics
        # An operator can still pause, resume and close at the limit, on Redis 7 (the
        # allow-oom flag) and on 6.2 (which has no script flags: the state change makes a
        # write Redis never refuses first, after which Redis lets a script finish), each
        # change audited in the same script. Joins are still refused meanwhile.
        audit_before = _audit_length(server, "oom")
        for action, state in (("pause", "paused"), ("resume", "open"), ("close", "closed")):
            changed = await admin.post(f"/admin/campaigns/oom/{action}")
            text = await changed.text()
            assert changed.status == 200, (_major(server), action, text)
            assert (await changed.json())["state"] == state
        assert _audit_length(server, "oom") == audit_before + 3
        still = await public.post("/q/oom/join", headers={"X-Customer-Id": "after"})
        assert still.status in (409, 503), await still.text()


def _audit_length(server: RedisServer, campaign: str) -> int:
    client = sync_redis.Redis(port=server.port)
    try:
        return int(client.llen(CampaignKeys(campaign).audit))
    finally:
        client.close()


def _major(server: RedisServer) -> int:
    return int(server.version().split(".")[0])


@pytest.mark.parametrize(
    ("extra", "named"),
    [(("--appendonly", "no"), "appendonly=no"), (("--appendfsync", "everysec"), "appendfsync")],
    ids=["aof-off", "everysec-no-replica"],
)
async def test_weak_persistence_is_refused_unless_the_operator_turns_the_check_off(
    servers: Callable[..., RedisServer],
    clients: Callable[[str], AbstractAsyncContextManager[Clients]],
    config: Config,
    extra: tuple[str, ...],
    named: str,
) -> None:
    server = servers(*extra)
    async with clients(server.url) as (gate, public, _):
        assert gate.sanity.problem is not None and gate.sanity.problem.startswith(named)
        assert (await public.get("/readyz")).status == 503
    relaxed = dataclasses.replace(config, redis_url=server.url, redis_check_persistence=False)
    async with running_gate(relaxed) as gate:
        await wait_for(lambda: _true(gate.sanity.checked), 10, "the sanity check")
        assert gate.sanity.problem is None
