"""A real HAProxy 2.6 in front of a real gate, the bank's login and its core system: the
shipped config (deploy/haproxy), its Lua login and pass checks (core.httpclient); then
the same config passing the bank's login token through to a gate that checks it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gate.redis_server import RedisServer, free_port
from tests.helpers import GateProcess
from tests.proxy_support import (
    JWT_SCENARIOS,
    PROXY_SECRET,
    SCENARIOS,
    BackgroundServers,
    Front,
    StandInCore,
    StandInIssuer,
    StandInLogin,
    create_campaign,
    gate_env,
    jwt_gate_env,
    needs_gate_side,
    running,
    wait_gate_ready,
)

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
)
pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (.ci/run installs it)"
)
DEPLOY = Path(__file__).parent.parent / "deploy" / "haproxy"
CAMPAIGN = "haproxy-promo"
TLS_BIND = "bind :443 ssl crt /etc/haproxy/tls/promo.pem alpn h2,http/1.1"


def haproxy_conf(port: int) -> str:
    """deploy/haproxy/haproxy.cfg as shipped, but for its TLS bind: a plain loopback port."""
    shipped = (DEPLOY / "haproxy.cfg").read_text()
    assert shipped.count(TLS_BIND) == 1
    return shipped.replace(TLS_BIND, f"bind 127.0.0.1:{port}")


@contextmanager
def haproxy_front(
    redis_server: RedisServer, root: Path, keys_file: Path, *, jwt: bool
) -> Iterator[Front]:
    assert HAPROXY is not None
    servers = BackgroundServers()
    login, core, issuer = StandInLogin(), StandInCore(), StandInIssuer()
    core_listener = free_port()
    campaign = f"{CAMPAIGN}-jwt" if jwt else CAMPAIGN  # both gates share one Redis
    gate: GateProcess | None = None
    try:
        login_port, core_port = servers.serve(login.app()), servers.serve(core.app())
        if jwt:
            jwks = f"http://127.0.0.1:{servers.serve(issuer.app())}/jwks.json"
            env = jwt_gate_env(core_listener, jwks)
        else:
            env = gate_env(core_listener)
        gate = GateProcess(redis_server.url, root / "gate", keys_file, extra_env=env)
        gate.start()
        wait_gate_ready(gate)
        create_campaign(gate, campaign)
        port = free_port()
        conf = root / "haproxy.cfg"
        conf.write_text(haproxy_conf(port))
        proxy_env = {
            **os.environ,
            "FAIRGATE_IDENTITY": "jwt" if jwt else "header",
            "FAIRGATE_LUA": str(DEPLOY / "fairgate.lua"),
            "FAIRGATE_GATE": f"127.0.0.1:{gate.port}",
            "FAIRGATE_CORE": f"127.0.0.1:{core_port}",
            "FAIRGATE_LOGIN": f"127.0.0.1:{login_port}",
            "FAIRGATE_CAMPAIGN": campaign,
            "FAIRGATE_LOGIN_PAGE": "/login",
            "FAIRGATE_PROXY_SECRET": PROXY_SECRET,
        }
        check = subprocess.run(
            [HAPROXY, "-c", "-f", str(conf)], capture_output=True, text=True, env=proxy_env
        )
        assert check.returncode == 0, check.stdout + check.stderr
        argv = [HAPROXY, "-f", str(conf), "-db"]
        with running(argv, port, root / "haproxy.out", "haproxy", env=proxy_env):
            url = f"http://127.0.0.1:{port}"
            yield Front(url, gate, login, core, campaign, issuer if jwt else None)
    finally:
        if gate is not None:
            gate.stop()
        servers.close()


@pytest.fixture(scope="module")
def front(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, keys_file: Path
) -> Iterator[Front]:
    with haproxy_front(redis_server, tmp_path_factory.mktemp("haproxy"), keys_file, jwt=False) as f:
        yield f


@pytest.fixture(scope="module")
def jwt_front(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, keys_file: Path
) -> Iterator[Front]:
    needs_gate_side("jwt_jwks")
    with haproxy_front(redis_server, tmp_path_factory.mktemp("haproxy"), keys_file, jwt=True) as f:
        yield f


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_through_haproxy(front: Front, scenario: Callable[[Front], Awaitable[None]]) -> None:
    await scenario(front)


@pytest.mark.parametrize("scenario", JWT_SCENARIOS, ids=lambda s: s.__name__)
async def test_jwt_through_haproxy(
    jwt_front: Front, scenario: Callable[[Front], Awaitable[None]]
) -> None:
    await scenario(jwt_front)
