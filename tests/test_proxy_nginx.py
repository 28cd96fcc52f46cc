"""A real nginx in front of a real gate, the bank's login and its core system: the
shipped config (deploy/nginx), auth_request for the login and for the pass; then the
same locations passing the bank's login token through to a gate that checks it."""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from gate.redis_server import RedisServer, free_port
from tests.proxy_support import (
    DEPLOY,
    JWT_SCENARIOS,
    NGINX,
    PROXY_SECRET,
    SCENARIOS,
    Front,
    gate_down_shows_busy_then_admits,
    proxied_gate,
    redis_pause_shows_busy_then_admits,
    unique,
)

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (.ci/run installs it)"
)


@pytest.fixture(scope="module")
def front(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, keys_file: Path
) -> Iterator[Front]:
    root = tmp_path_factory.mktemp("nginx")
    with proxied_gate("nginx", redis_server.url, root, keys_file, campaign="nginx-promo") as f:
        yield f


@pytest.fixture(scope="module")
def jwt_front(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, keys_file: Path
) -> Iterator[Front]:
    root = tmp_path_factory.mktemp("nginx-jwt")
    # a campaign of its own: both gates share the session's Redis
    with proxied_gate(
        "nginx", redis_server.url, root, keys_file, campaign="nginx-jwt", jwt=True
    ) as f:
        yield f


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_through_nginx(front: Front, scenario: Callable[[Front], Awaitable[None]]) -> None:
    await scenario(front)


@pytest.mark.parametrize("scenario", JWT_SCENARIOS, ids=lambda s: s.__name__)
async def test_jwt_through_nginx(
    jwt_front: Front, scenario: Callable[[Front], Awaitable[None]]
) -> None:
    await scenario(jwt_front)


async def test_redis_pause_through_nginx(tmp_path: Path, keys_file: Path) -> None:
    """A Redis of its own, paused and resumed under an admitted customer."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        with proxied_gate(
            "nginx", redis.url, tmp_path / "front", keys_file, campaign="paused"
        ) as front:
            await redis_pause_shows_busy_then_admits(front, redis)
    finally:
        redis.stop()


async def test_gate_down_through_nginx(
    redis_server: RedisServer, tmp_path: Path, keys_file: Path
) -> None:
    """A gate of its own, stopped and started again under an admitted customer."""
    with proxied_gate(
        "nginx", redis_server.url, tmp_path, keys_file, campaign="nginx-gate-down"
    ) as front:
        await gate_down_shows_busy_then_admits(front)


def test_the_shipped_example_passes_nginx_t(tmp_path: Path) -> None:
    """deploy/nginx/nginx.conf as shipped, with only its paths made local and TLS off."""
    assert NGINX is not None
    shipped = (DEPLOY / "nginx" / "nginx.conf").read_text()
    secret = tmp_path / "proxy-secret.conf"
    secret.write_text(f'set $fairgate_proxy_secret "{PROXY_SECRET}";\n')
    local = (
        shipped.replace("/etc/fairgate/nginx/proxy-secret.conf", str(secret))
        .replace("/etc/fairgate/nginx/", f"{DEPLOY / 'nginx'}/")
        .replace("listen 443 ssl;", f"listen 127.0.0.1:{free_port()};")
    )
    local = "\n".join(line for line in local.splitlines() if "ssl_certificate" not in line)
    assert local.count(str(DEPLOY)) == 2  # the maps and the locations, as shipped
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\n{local}\n")
    check = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


async def test_a_url_nginx_cannot_escape_goes_without_return(front: Front) -> None:
    """Plain nginx escapes at most 8 of '%', '&', '+' in the URL asked for; with more, the
    waiting page gets no `return` (never a half-escaped one) and uses the target_url."""
    asked = "/core/deposit?" + "&".join(f"k{i}=v{i}" for i in range(10))
    async with (
        front.client(unique("long")) as client,
        client.get(front.url + asked, allow_redirects=False) as r,
    ):
        assert r.status == 302, (r.status, await r.text())
        location = urlsplit(r.headers["Location"])
        assert location.path == f"/q/{front.campaign}"
        assert parse_qs(location.query).get("return") is None, location
