"""The shipped proxy configs run by their real binaries, nginx (deploy/nginx: auth_request
for the login and for the pass) and HAProxy 2.6 (deploy/haproxy: its Lua login and pass
checks, core.httpclient), in front of a real gate, the bank's login and its core system;
then the same configs passing the bank's login token through to a gate that checks it.
Every scenario (tests/proxy_support.py) runs through each proxy; nginx's own limits last."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gate.redis_server import RedisServer, free_port
from tests.proxy_support import (
    DEPLOY,
    HAPROXY,
    JWT_SCENARIOS,
    NGINX,
    PROXY_SECRET,
    SCENARIOS,
    Front,
    gate_down_shows_busy_then_admits,
    nginx_accepts,
    proxied_gate,
    redis_pause_shows_busy_then_admits,
    unique,
)

needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (.ci/run installs it)"
)
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (.ci/run installs it)"
)
NGINX_PARAM = pytest.param("nginx", marks=needs_nginx)
PROXIES = [NGINX_PARAM, pytest.param("haproxy", marks=needs_haproxy)]


StartFront = Callable[..., AbstractContextManager[Front]]


@pytest.fixture(scope="module")
def start_front(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, keys_file: Path
) -> StartFront:
    """`start_front(proxy, campaign, **options)`: proxied_gate() on the session's Redis, in
    a directory of its own. Each gate has a campaign of its own: they share that Redis."""

    def start(proxy: str, campaign: str, **options: Any) -> AbstractContextManager[Front]:
        root = tmp_path_factory.mktemp(campaign)
        return proxied_gate(proxy, redis_server.url, root, keys_file, campaign=campaign, **options)

    return start


@pytest.fixture(scope="module", params=PROXIES)
def front(request: pytest.FixtureRequest, start_front: StartFront) -> Iterator[Front]:
    with start_front(request.param, f"{request.param}-promo") as f:
        yield f


@pytest.fixture(scope="module", params=PROXIES)
def jwt_front(request: pytest.FixtureRequest, start_front: StartFront) -> Iterator[Front]:
    with start_front(request.param, f"{request.param}-jwt", jwt=True) as f:
        yield f


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_through_proxy(front: Front, scenario: Callable[[Front], Awaitable[None]]) -> None:
    await scenario(front)


@pytest.mark.parametrize("scenario", JWT_SCENARIOS, ids=lambda s: s.__name__)
async def test_jwt_through_proxy(
    jwt_front: Front, scenario: Callable[[Front], Awaitable[None]]
) -> None:
    await scenario(jwt_front)


@pytest.mark.parametrize("proxy", PROXIES)
async def test_redis_pause_through_proxy(proxy: str, tmp_path: Path, keys_file: Path) -> None:
    """A Redis of its own, paused and resumed under an admitted customer."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        with proxied_gate(
            proxy, redis.url, tmp_path / "front", keys_file, campaign="paused"
        ) as front:
            await redis_pause_shows_busy_then_admits(front, redis)
    finally:
        redis.stop()


@pytest.mark.parametrize(
    "proxy",
    [
        NGINX_PARAM,
        # HAProxy's Lua httpclient tries a dead gate for 3 s
        pytest.param("haproxy", marks=[needs_haproxy, pytest.mark.slow]),
    ],
)
async def test_gate_down_through_proxy(proxy: str, start_front: StartFront) -> None:
    """A gate of its own, stopped and started again under an admitted customer."""
    with start_front(proxy, f"{proxy}-gate-down") as front:
        await gate_down_shows_busy_then_admits(front)


# -- nginx only -----------------------------------------------------------------------


@needs_nginx
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
    check = nginx_accepts(tmp_path, local)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("front", [NGINX_PARAM], indirect=True)
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
