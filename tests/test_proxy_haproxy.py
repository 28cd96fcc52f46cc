"""A real HAProxy 2.6 in front of a real gate, the bank's login and its core system: the
shipped config (deploy/haproxy), its Lua login and pass checks (core.httpclient); then the
same config passing the bank's login token through to a gate that checks it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from gate.redis_server import RedisServer
from tests.proxy_support import (
    HAPROXY,
    JWT_SCENARIOS,
    SCENARIOS,
    Front,
    gate_down_shows_busy_then_admits,
    proxied_gate,
    redis_pause_shows_busy_then_admits,
)

pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (.ci/run installs it)"
)


@pytest.fixture(scope="module")
def front(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, keys_file: Path
) -> Iterator[Front]:
    root = tmp_path_factory.mktemp("haproxy")
    with proxied_gate("haproxy", redis_server.url, root, keys_file, campaign="haproxy-promo") as f:
        yield f


@pytest.fixture(scope="module")
def jwt_front(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, keys_file: Path
) -> Iterator[Front]:
    root = tmp_path_factory.mktemp("haproxy-jwt")
    # a campaign of its own: both gates share the session's Redis
    with proxied_gate(
        "haproxy", redis_server.url, root, keys_file, campaign="haproxy-jwt", jwt=True
    ) as f:
        yield f


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_through_haproxy(front: Front, scenario: Callable[[Front], Awaitable[None]]) -> None:
    await scenario(front)


@pytest.mark.parametrize("scenario", JWT_SCENARIOS, ids=lambda s: s.__name__)
async def test_jwt_through_haproxy(
    jwt_front: Front, scenario: Callable[[Front], Awaitable[None]]
) -> None:
    await scenario(jwt_front)


async def test_redis_pause_through_haproxy(tmp_path: Path, keys_file: Path) -> None:
    """A Redis of its own, paused and resumed under an admitted customer."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        with proxied_gate(
            "haproxy", redis.url, tmp_path / "front", keys_file, campaign="paused"
        ) as front:
            await redis_pause_shows_busy_then_admits(front, redis)
    finally:
        redis.stop()


@pytest.mark.slow  # HAProxy's Lua httpclient tries a dead gate for 3 s
async def test_gate_down_through_haproxy(
    redis_server: RedisServer, tmp_path: Path, keys_file: Path
) -> None:
    """A gate of its own, stopped and started again under an admitted customer."""
    with proxied_gate(
        "haproxy", redis_server.url, tmp_path, keys_file, campaign="haproxy-gate-down"
    ) as front:
        await gate_down_shows_busy_then_admits(front)
