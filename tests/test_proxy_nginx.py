"""A real nginx in front of a real gate, the bank's login and its core system: the
shipped config (deploy/nginx), auth_request for the login and for the pass."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from gate.redis_server import RedisServer, free_port
from tests.helpers import GateProcess
from tests.proxy_support import (
    PROXY_SECRET,
    SCENARIOS,
    BackgroundServers,
    Front,
    StandInCore,
    StandInLogin,
    create_campaign,
    gate_env,
    running,
    wait_gate_ready,
)

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (.ci/run installs it)"
)
DEPLOY = Path(__file__).parent.parent / "deploy" / "nginx"
CAMPAIGN = "nginx-promo"


def nginx_conf(root: Path, port: int, gate_port: int, core_port: int, login_port: int) -> str:
    """deploy/nginx/nginx.conf with test ports, no TLS, and the login page a local path."""
    user = "user root;" if os.geteuid() == 0 else ""
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
    upstream fairgate   {{ server 127.0.0.1:{gate_port}; keepalive 8; }}
    upstream core_bank  {{ server 127.0.0.1:{core_port}; keepalive 8; }}
    upstream bank_login {{ server 127.0.0.1:{login_port}; keepalive 8; }}
    include {DEPLOY}/fairgate-maps.conf;
    server {{
        listen 127.0.0.1:{port};
        set $fairgate_campaign "{CAMPAIGN}";
        set $fairgate_proxy_secret "{PROXY_SECRET}";
        location = /_bank_session {{
            internal;
            proxy_pass http://bank_login/session;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
        location @bank_login {{
            return 302 /login?return=$fairgate_return;
        }}
        include {DEPLOY}/fairgate-locations.conf;
    }}
}}
"""


@pytest.fixture(scope="module")
def front(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, keys_file: Path
) -> Iterator[Front]:
    assert NGINX is not None
    root = tmp_path_factory.mktemp("nginx")
    servers = BackgroundServers()
    login, core = StandInLogin(), StandInCore()
    gate = GateProcess(redis_server.url, root / "gate", keys_file, extra_env=gate_env(free_port()))
    try:
        login_port, core_port = servers.serve(login.app()), servers.serve(core.app())
        gate.start()
        wait_gate_ready(gate)
        create_campaign(gate, CAMPAIGN)
        port = free_port()
        conf = root / "nginx.conf"
        conf.write_text(nginx_conf(root, port, gate.port, core_port, login_port))
        base = [NGINX, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        with running([*base, "-g", "daemon off;"], port, root / "nginx.out", "nginx"):
            yield Front(f"http://127.0.0.1:{port}", gate, login, core, CAMPAIGN)
    finally:
        gate.stop()
        servers.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_through_nginx(front: Front, scenario: Callable[[Front], Awaitable[None]]) -> None:
    await scenario(front)
