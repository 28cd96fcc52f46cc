"""A real nginx in front of a real gate, the bank's login and its core system: the
shipped config (deploy/nginx), auth_request for the login and for the pass; then the
same locations passing the bank's login token through to a gate that checks it."""

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

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (.ci/run installs it)"
)
DEPLOY = Path(__file__).parent.parent / "deploy" / "nginx"
CAMPAIGN = "nginx-promo"
# The bank's session check (the stand-in login service), as deploy/nginx/nginx.conf has it.
LOGIN_CHECK = """
        location = /_bank_session {
            internal;
            proxy_pass http://bank_login/session;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
"""
# With identity = "jwt" the gate checks the bank's token: the login check is a no-op.
NO_LOGIN_CHECK = """
        location = /_bank_session { internal; return 204; }
"""


def nginx_conf(
    root: Path, port: int, campaign: str, upstreams: dict[str, int], login_check: str
) -> str:
    """deploy/nginx/nginx.conf with test ports, no TLS, and the login page a local path."""
    user = "user root;" if os.geteuid() == 0 else ""
    servers = "\n".join(
        f"    upstream {name} {{ server 127.0.0.1:{port}; keepalive 8; }}"
        for name, port in upstreams.items()
    )
    return f"""
{user}
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
{servers}
    include {DEPLOY}/fairgate-maps.conf;
    server {{
        listen 127.0.0.1:{port};
        set $fairgate_campaign "{campaign}";
        set $fairgate_proxy_secret "{PROXY_SECRET}";
{login_check}
        location @bank_login {{
            return 302 /login?return=$fairgate_return;
        }}
        include {DEPLOY}/fairgate-locations.conf;
    }}
}}
"""


@contextmanager
def nginx_front(
    redis_server: RedisServer, root: Path, keys_file: Path, *, jwt: bool
) -> Iterator[Front]:
    assert NGINX is not None
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
        conf = root / "nginx.conf"
        upstreams = {"fairgate": gate.port, "core_bank": core_port, "bank_login": login_port}
        login_check = NO_LOGIN_CHECK if jwt else LOGIN_CHECK
        conf.write_text(nginx_conf(root, port, campaign, upstreams, login_check))
        base = [NGINX, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        with running([*base, "-g", "daemon off;"], port, root / "nginx.out", "nginx"):
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
    with nginx_front(redis_server, tmp_path_factory.mktemp("nginx"), keys_file, jwt=False) as f:
        yield f


@pytest.fixture(scope="module")
def jwt_front(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, keys_file: Path
) -> Iterator[Front]:
    needs_gate_side("jwt_jwks")
    with nginx_front(redis_server, tmp_path_factory.mktemp("nginx"), keys_file, jwt=True) as f:
        yield f


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_through_nginx(front: Front, scenario: Callable[[Front], Awaitable[None]]) -> None:
    await scenario(front)


@pytest.mark.parametrize("scenario", JWT_SCENARIOS, ids=lambda s: s.__name__)
async def test_jwt_through_nginx(
    jwt_front: Front, scenario: Callable[[Front], Awaitable[None]]
) -> None:
    await scenario(jwt_front)
