"""A real nginx in front of a real gate: the shipped locations snippet, auth_request, passes."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gate.redis_server import free_port
from tests.helpers import ADMIN_TOKEN, GateProcess, spec, wait_for

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (.ci/run installs it)"
)
SNIPPET = Path(__file__).parent.parent / "deploy" / "nginx" / "fairgate-locations.conf"
CAMPAIGN = "nginx-promo"


def nginx_conf(root: Path, port: int, gate_port: int, core_port: int) -> str:
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
    upstream fairgate  {{ server 127.0.0.1:{gate_port}; keepalive 8; }}
    upstream core_bank {{ server 127.0.0.1:{core_port}; keepalive 8; }}
    # The test's stand-in for the bank's login layer.
    map $http_x_test_user $fairgate_customer {{ default $http_x_test_user; }}
    server {{
        listen 127.0.0.1:{port};
        set $fairgate_campaign "{CAMPAIGN}";
        include {SNIPPET};
    }}
}}
"""


@pytest.fixture
def gate_process(redis_url: str, tmp_path: Path, keys_file: Path) -> Iterator[GateProcess]:
    process = GateProcess(redis_url, tmp_path / "gate", keys_file)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def core_bank() -> AsyncIterator[tuple[int, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def deposit(request: web.Request) -> web.Response:
        seen.append(
            {
                "seq": request.headers.get("X-Gate-Seq", ""),
                "customer": request.headers.get("X-Customer-Id", ""),
            }
        )
        return web.json_response({"booked": True})

    app = web.Application()
    app.router.add_route("*", "/core/{tail:.*}", deposit)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port, seen
    await runner.cleanup()


@pytest.fixture
def nginx(
    tmp_path: Path, gate_process: GateProcess, core_bank: tuple[int, list[dict[str, str]]]
) -> Iterator[str]:
    assert NGINX is not None
    root = tmp_path / "nginx"
    root.mkdir()
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(nginx_conf(root, port, gate_process.port, core_bank[0]))
    check = subprocess.run(
        [NGINX, "-t", "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(
        [
            NGINX,
            "-p",
            str(root),
            "-c",
            str(conf),
            "-e",
            str(root / "error.log"),
            "-g",
            "daemon off;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_core_is_reachable_only_with_a_pass(
    nginx: str, gate_process: GateProcess, core_bank: tuple[int, list[dict[str, str]]]
) -> None:
    await gate_process.wait_ready()
    async with aiohttp.ClientSession() as admin:
        r = await admin.post(
            gate_process.admin_url + "/admin/campaigns",
            json=spec(CAMPAIGN, rate_per_s=50, burst=5),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert r.status == 201, await r.text()

    async def nginx_up() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(nginx + "/core/x", allow_redirects=False) as r,
            ):
                return r.status == 302
        except aiohttp.ClientError:
            return False

    await wait_for(nginx_up, 10, "nginx listening")

    jar = aiohttp.CookieJar(unsafe=True)
    user = {"X-Test-User": "customer-7"}
    async with aiohttp.ClientSession(cookie_jar=jar) as s:
        # Without a pass the core is out of reach: back to the waiting room.
        async with s.get(nginx + "/core/deposit", allow_redirects=False, headers=user) as r:
            assert r.status == 302
            assert r.headers["Location"].endswith(f"/q/{CAMPAIGN}")
        # A client-supplied X-Customer-Id is replaced by the authenticated identity.
        async with s.post(
            nginx + f"/q/{CAMPAIGN}/join", headers={**user, "X-Customer-Id": "someone-else"}
        ) as r:
            assert r.status == 201, await r.text()
            ticket = (await r.json())["ticket"]
        async with s.post(nginx + f"/q/{CAMPAIGN}/join", headers=user) as r:
            assert r.status == 200  # the same customer: the same ticket

        body: dict[str, Any] = {}

        async def admitted() -> bool:
            async with s.get(
                nginx + f"/q/{CAMPAIGN}/status", params={"ticket": ticket}, headers=user
            ) as r:
                assert r.status == 200, await r.text()
                body.update(await r.json())
                return bool(body["state"] == "admitted")

        await wait_for(admitted, 10, "admission through nginx")
        # The HttpOnly cookie set through nginx carries the pass to the core.
        async with s.post(nginx + "/core/deposit", headers=user) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["booked"] is True
        seen = core_bank[1]
        assert seen[-1] == {"seq": str(body["seq"]), "customer": "customer-7"}

        # The same pass presented for another customer is refused.
        async with s.post(nginx + "/core/deposit", headers={"X-Test-User": "customer-8"}) as r:
            assert r.status == 403

        # Revoked by an operator: refused within one second.
        async with aiohttp.ClientSession() as admin:
            r = await admin.post(
                gate_process.admin_url + f"/admin/campaigns/{CAMPAIGN}/revoke",
                json={"customer": "customer-7", "reason": "test"},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert r.status == 200, await r.text()

        async def refused() -> bool:
            async with s.post(nginx + "/core/deposit", headers=user) as r:
                return r.status == 403

        await wait_for(refused, 1.0, "revoked pass refused by nginx")
    assert len(core_bank[1]) == 1
