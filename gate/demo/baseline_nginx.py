"""The baseline a bank would try instead of a gate: nginx `limit_req` in front of the core.

A real nginx (`nginx` on PATH or /usr/sbin/nginx), started as a child process with a
generated config on a free loopback port (`daemon off;`, its files in the run's work
directory), proxies every request to the simulated core and limits them to the same rate
and burst the gate admits at: one shared zone (every customer counts against the same
limit, as a core-protecting limit does), `burst=N nodelay`, the rest answered 503 at once
(`limit_req_status 503`). The customers press again after a 503 as they do at the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

from gate.demo.children import stop
from gate.errors import GateError


def nginx_binary() -> str | None:
    """The nginx executable, or None when it is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def limit_req_conf(root: Path, port: int, core_port: int, rate: float, burst: int) -> str:
    """nginx.conf: `limit_req` (rate r/s, burst, nodelay) on one shared key, then the core."""
    user = "user root;" if os.geteuid() == 0 else ""
    per_s = max(1, round(rate))
    return f"""
{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log error;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    limit_req_zone $server_port zone=core:1m rate={per_s}r/s;
    limit_req_status 503;
    limit_req_log_level info;
    upstream core_bank {{ server 127.0.0.1:{core_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            limit_req zone=core burst={max(1, burst)} nodelay;
            proxy_pass http://core_bank;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


@contextlib.asynccontextmanager
async def nginx_limit_req(
    binary: str, core_url: str, rate: float, burst: int, work: Path
) -> AsyncIterator[str]:
    """nginx with `limit_req` in front of `core_url`; yields its base URL."""
    # absolute: nginx reads a relative -c, -e or path in its config against its prefix
    root = (work / f"nginx-{_free_port()}").resolve()
    root.mkdir(parents=True)
    core_port = int(core_url.rsplit(":", 1)[1])
    for _attempt in range(3):  # a free port taken in between: try another
        port = _free_port()
        conf = root / "nginx.conf"
        conf.write_text(limit_req_conf(root, port, core_port, rate, burst))
        process = await asyncio.create_subprocess_exec(
            binary,
            "-p",
            str(root),
            "-c",
            str(conf),
            "-e",
            str(root / "error.log"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            listening = False
            while time.monotonic() < deadline and process.returncode is None:
                try:
                    _r, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    listening = True
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            if listening:
                yield f"http://127.0.0.1:{port}"
                return
        finally:
            await stop(process)
    error_log = root / "error.log"
    log = error_log.read_text(errors="replace")[-400:] if error_log.is_file() else ""
    raise GateError(f"nginx did not start: {log.strip()}", code="demo")
