"""The pass checked at the edge (issue 15): protected requests per second through nginx
that checks the pass itself (deploy/nginx/fairgate-edge.*, njs), as a ratio to the same
nginx proxying to the same upstream with no check at all, in the same run; and the calls
to the gate per protected request (its own count of /gate/auth answers), which must be 0.

`python -m bench.edge [--quick]`, or `python -m bench.run --edge` (an optional part).

One nginx (the front, 1 worker) serves four servers in front of one upstream nginx (1
worker: the core, `return 200`, and the bank's login stand-in, a 204 naming the
customer), each measured with wrk (closed loop, the same connections), in interleaved
rounds, the figure the median:
- **plain**: `proxy_pass` to the core, no check at all (the reference);
- **login**: the bank's login check (auth_request) and no pass check;
- **edge**: the login check and the pass checked in nginx (the shipped
  fairgate-locations.conf and fairgate-edge.conf): the figure of the issue;
- **gate**: the login check and the pass checked by the gate (auth_request to a real
  `gate serve`, 1 process): what the edge check replaces.
The customer has arrived (one request through the edge first, which asks the gate once
and sets the fg_arrived mark); wrk then sends the pass and the mark on every request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench.load import Target
from bench.servers import Admin, GateServer
from bench.wrk import run_wrk, wrk_binary
from gate.redis_server import RedisServer, free_port
from gate.signing import generate_keys_document, write_keys

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "nginx"
NJS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"
CAMPAIGN = "bench-edge"
CUSTOMER = "bench-edge-customer"
TARGET = 0.5  # the bar: edge >= 0.5 x plain
CONFIGS = ("plain", "login", "edge", "gate")


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )


def njs_installed() -> bool:
    return os.path.exists(NJS_MODULE)


def _common(root: Path, name: str) -> str:
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
pid {root}/{name}.pid;
error_log {root}/{name}-error.log warn;
events {{ worker_connections 4096; }}
"""


def _temp_paths(root: Path, name: str) -> str:
    return "\n".join(
        f"    {kind}_temp_path {root}/{name}-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def upstream_conf(root: Path, port: int) -> str:
    """The core (`return 200`) and the bank's login stand-in (204 naming the customer)."""
    return f"""{_common(root, "upstream")}
http {{
    access_log off;
{_temp_paths(root, "upstream")}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location = /session {{
            add_header X-Authenticated-Customer {CUSTOMER};
            return 204;
        }}
        location / {{
            default_type text/plain;
            return 200 "booked\\n";
        }}
    }}
}}
"""


def front_conf(root: Path, ports: dict[str, int], upstream: int, gate: int, edge_keys: Path) -> str:
    """The four servers, the edge and gate ones with the shipped fairgate files."""
    login = """
        location = /_bank_session {
            internal;
            proxy_pass http://bank/session;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
        location @bank_login { return 302 /login; }"""
    fairgate = f"""
        set $fairgate_campaign "{CAMPAIGN}";
        set $fairgate_proxy_secret "";{login}
        include {DEPLOY}/fairgate-locations.conf;"""
    (root / "edge-state").mkdir(exist_ok=True)
    return f"""load_module {NJS_MODULE};
{_common(root, "front")}
http {{
    access_log off;
{_temp_paths(root, "front")}
    upstream core_bank {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    upstream bank {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    upstream fairgate {{ server 127.0.0.1:{gate}; keepalive 64; }}
    include {DEPLOY}/fairgate-maps.conf;
    include {DEPLOY}/fairgate-edge-maps.conf;
    js_import fairgate_edge from {DEPLOY}/fairgate-edge.js;
    js_preload_object fairgate_edge_keys from {edge_keys};
    server {{
        listen 127.0.0.1:{ports["plain"]};
        keepalive_requests 1000000;
        location /core/ {{
            proxy_pass http://core_bank;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{ports["login"]};
        keepalive_requests 1000000;{login}
        location /core/ {{
            auth_request /_bank_session;
            auth_request_set $fairgate_customer $upstream_http_x_authenticated_customer;
            error_page 401 = @bank_login;
            proxy_pass http://core_bank;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Customer-Id $fairgate_customer;
        }}
    }}
    server {{
        listen 127.0.0.1:{ports["edge"]};
        keepalive_requests 1000000;{fairgate}
        set $fairgate_edge_dir {root}/edge-state;
        include {DEPLOY}/fairgate-edge.conf;
    }}
    server {{
        listen 127.0.0.1:{ports["gate"]};
        keepalive_requests 1000000;{fairgate}
    }}
}}
"""


class Nginx:
    def __init__(self, binary: str, root: Path, name: str, conf: str, port: int) -> None:
        self.path = root / f"{name}.conf"
        self.path.write_text(conf)
        self.base = [
            binary,
            "-p",
            str(root),
            "-c",
            str(self.path),
            "-e",
            str(root / f"{name}-error.log"),
        ]
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        check = subprocess.run([*self.base, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t: {check.stderr}")
        self.process = subprocess.Popen(
            [*self.base, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    async def wait(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                if time.monotonic() > deadline or (
                    self.process and self.process.poll() is not None
                ):
                    raise RuntimeError(f"nginx {self.path.name} did not start") from None
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def campaign_spec() -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": CAMPAIGN,
        "opens_at": (now - timedelta(seconds=1)).isoformat(),
        "closes_at": (now + timedelta(hours=1)).isoformat(),
        "quota": {"unit": "item", "total": 1000},
        "admission": {"rate_per_s": 100, "burst": 10, "max_active": 1000, "pass_ttl_s": 3600},
    }


async def admitted_pass(session: aiohttp.ClientSession, gate: GateServer) -> str:
    """Join as the customer (the gate trusts its loopback peer's header) and poll until
    admitted: the pass."""
    who = {"X-Customer-Id": CUSTOMER}
    async with session.post(f"{gate.url}/q/{CAMPAIGN}/join", headers=who) as r:
        ticket = (await r.json())["ticket"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        async with session.get(
            f"{gate.url}/q/{CAMPAIGN}/status", params={"ticket": ticket}, headers=who
        ) as r:
            body = await r.json()
        if body.get("state") == "admitted":
            return str(body["pass"])
        await asyncio.sleep(0.05)
    raise RuntimeError("the bench customer was not admitted")


async def auth_calls(session: aiohttp.ClientSession, gate: GateServer) -> int:
    """The gate's own count of /gate/auth answers (fairgate_auth_decisions_total)."""
    async with session.get(f"{gate.url}/metrics") as r:
        text = await r.text()
    found = re.findall(r"^fairgate_auth_decisions_total\{[^}]*\} (\S+)$", text, re.M)
    return sum(int(float(value)) for value in found)


async def run(
    quick: bool, work: Path, *, connections: int = 32, threads: int = 1
) -> dict[str, Any]:
    """The figures: requests/s per config (median of the rounds), the ratios to plain,
    and the gate's /gate/auth calls per request through the edge."""
    nginx, wrk = nginx_binary(), wrk_binary()
    if nginx is None or wrk is None or not njs_installed():
        return {"skipped": "needs nginx, its njs module (libnginx-mod-http-js) and wrk"}
    duration, rounds = (2, 1) if quick else (5, 3)
    os.makedirs(work, exist_ok=True)
    loadavg_start = list(os.getloadavg())
    redis = RedisServer(work / "redis")
    redis.start()
    keys_file = work / "keys.json"
    write_keys(keys_file, generate_keys_document())
    gate = GateServer(redis.url, work, keys_file, 1)
    servers: list[Nginx] = []
    try:
        await gate.start()
        edge_keys = work / "edge-keys.json"
        made = await asyncio.to_thread(
            subprocess.run,
            [
                str(Path(sys.executable).parent / "gate"),
                "keys",
                "edge",
                "--signing-keys",
                str(keys_file),
                "--digest-keys",
                str(keys_file.with_name("digest-keys.json")),
                "--out",
                str(edge_keys),
            ],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            raise RuntimeError(f"gate keys edge: {made.stderr}")
        upstream_port = free_port()
        ports = {name: free_port() for name in CONFIGS}
        servers = [
            Nginx(nginx, work, "upstream", upstream_conf(work, upstream_port), upstream_port),
            Nginx(
                nginx,
                work,
                "front",
                front_conf(work, ports, upstream_port, gate.port, edge_keys),
                ports["plain"],
            ),
        ]
        for server in servers:
            server.start()
        for server in servers:
            await server.wait()
        async with aiohttp.ClientSession() as session:
            await Admin(session, gate).create(campaign_spec())
            pass_token = await admitted_pass(session, gate)
            cookies = {"bank_session": "bench", "fg_pass": pass_token}
            # The arrival: once through the edge, which asks the gate and sets the mark.
            async with session.get(
                f"http://127.0.0.1:{ports['edge']}/core/first",
                cookies=cookies,
                allow_redirects=False,
            ) as r:
                if r.status != 200:
                    raise RuntimeError(f"the first protected request: {r.status} {await r.text()}")
                mark = r.cookies["fg_arrived"].value
            cookie = f"bank_session=bench; fg_pass={pass_token}; fg_arrived={mark}"
            rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
            errors: dict[str, int] = {name: 0 for name in CONFIGS}
            edge_requests = 0
            calls_before = await auth_calls(session, gate)
            edge_calls = 0
            for round_index in range(rounds):
                order = (
                    CONFIGS[round_index % len(CONFIGS) :] + CONFIGS[: round_index % len(CONFIGS)]
                )
                for name in order:
                    target = Target(
                        f"http://127.0.0.1:{ports[name]}/core/deposit",
                        headers=(("Cookie", cookie),),
                    )
                    before = await auth_calls(session, gate)
                    result = await run_wrk(
                        wrk,
                        target,
                        duration_s=duration,
                        connections=connections,
                        threads=threads,
                        script_dir=work / "wrk",
                    )
                    after = await auth_calls(session, gate)
                    rates[name].append(result.ok / result.duration_s)
                    errors[name] += result.errors
                    if name == "edge":
                        edge_requests += result.requests
                        edge_calls += after - before
            del calls_before
        median = {name: statistics.median(values) for name, values in rates.items()}
        ratio = {name: round(median[name] / median["plain"], 3) for name in CONFIGS}
        return {
            "requests_per_s": {name: round(value) for name, value in median.items()},
            "rounds": {name: [round(v) for v in values] for name, values in rates.items()},
            "ratio_to_plain": ratio,
            "edge_over_login": round(median["edge"] / median["login"], 3),
            "target": TARGET,
            "ok": ratio["edge"] >= TARGET and edge_calls == 0 and errors["edge"] == 0,
            "edge_requests": edge_requests,
            "gate_auth_calls_during_edge": edge_calls,
            "gate_calls_per_request": edge_calls / edge_requests if edge_requests else None,
            "errors": errors,
            "conditions": {
                "cores": len(os.sched_getaffinity(0)),
                "loadavg_start": [round(x, 2) for x in loadavg_start],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "wrk": f"-t{threads} -c{connections} -d{duration}s x {rounds} rounds",
                "nginx": "front 1 worker, upstream 1 worker; gate 1 process",
            },
        }
    finally:
        for server in servers:
            server.stop()
        gate.stop()
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.edge", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fairgate-edge-") as tmp:
        result = asyncio.run(run(args.quick, Path(tmp), connections=args.connections))
    print(json.dumps(result, indent=2))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())


def markdown(result: dict[str, Any]) -> str:
    """The section of bench/out/results.md."""
    title = "## The pass checked at the edge: nginx + njs ÷ nginx with no check (same run)"
    if "skipped" in result:
        return f"{title}\n\nskipped: {result['skipped']}"
    rates, ratio, cond = result["requests_per_s"], result["ratio_to_plain"], result["conditions"]
    rows = [
        "| server | requests/s | ÷ plain |",
        "| --- | --- | --- |",
        *(f"| {name} | {rates[name]} | {ratio[name]} |" for name in CONFIGS),
    ]
    return "\n".join(
        [
            title,
            "",
            "plain: proxy_pass, no check; login: the bank's login check only; edge: login + "
            "the pass checked in nginx (fairgate-edge.conf); gate: login + auth_request to "
            "/gate/auth (bench/edge.py).",
            "",
            *rows,
            "",
            f"edge ÷ plain {ratio['edge']} (target ≥ {result['target']}); edge ÷ login "
            f"{result['edge_over_login']}; /gate/auth calls per request through the edge: "
            f"{result['gate_calls_per_request']} ({result['gate_auth_calls_during_edge']} over "
            f"{result['edge_requests']}); errors {result['errors']}.",
            f"Conditions: {cond['cores']} cores, load average {cond['loadavg_start']} at the "
            f"start, {cond['loadavg_end']} at the end; wrk {cond['wrk']}; {cond['nginx']}.",
        ]
    )
