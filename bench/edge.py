"""The pass checked at the edge (issue 15): protected requests per second through nginx
that checks the pass itself (deploy/nginx/fairgate-edge.*, njs), as a ratio to the same
nginx proxying to the same upstream with no check at all, in the same run; the same for
HAProxy (deploy/haproxy, fairgate.lua's fairgate_edge); and the calls to the gate per
protected request (its own count of /gate/auth answers), which must be 0.

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
And one HAProxy (`nbthread 1`: the shipped haproxy.cfg, its Lua, FAIRGATE_PASS_CHECK=edge)
in front of the same upstream, three frontends:
- **haproxy-plain**: `default_backend core_bank`, no check at all (its reference);
- **haproxy-login**: the shipped login check (fairgate.lua's fairgate_login) only;
- **haproxy-edge**: the shipped frontend: login + the pass checked in Lua (fairgate_edge).
The customer has arrived (one request through each edge first, which asks the gate once
and sets the fg_arrived mark); wrk then sends the pass and the mark on every request.
Each row also gives the front's CPU per request (the nginx worker's, HAProxy's: from
/proc, over the wrk run), which the machine's noise moves less than the rate.
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
DEPLOY_HAPROXY = DEPLOY.parent / "haproxy"
HAPROXY_TLS_BIND = "bind :443 ssl crt /etc/haproxy/tls/promo.pem alpn h2,http/1.1"
NJS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"
CAMPAIGN = "bench-edge"
CUSTOMER = "bench-edge-customer"
TARGET = 0.5  # the bar: edge >= 0.5 x plain
CONFIGS = ("plain", "login", "edge", "gate")
HAPROXY_CONFIGS = ("haproxy-plain", "haproxy-login", "haproxy-edge")
REFERENCE = {"plain": "plain", "login": "plain", "edge": "plain", "gate": "plain"} | {
    name: "haproxy-plain" for name in HAPROXY_CONFIGS
}


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )


def shipped_gate_upstreams(port: int, cap: int | None = None) -> str:
    """The gate's upstream blocks of deploy/nginx/nginx.conf, pointed at `port`; `cap`:
    the requests in flight the edge lets through to the gate (max_conns) in place of the
    shipped figure."""
    shipped = (DEPLOY / "nginx.conf").read_text()
    blocks = re.findall(r"^[ \t]*upstream fairgate\w*\s*\{[^}]*\}", shipped, re.M)
    if not blocks:
        raise RuntimeError("deploy/nginx/nginx.conf has no upstream for the gate")
    text = "\n".join(blocks).replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    return text if cap is None else re.sub(r"max_conns=\d+", f"max_conns={cap}", text)


def njs_installed() -> bool:
    return os.path.exists(NJS_MODULE)


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


# The bank's session check for auth_request, as deploy/nginx/nginx.conf has it, to the
# login stand-in (upstream bank_login).
NGINX_LOGIN_CHECK = """
        location = /_bank_session {
            internal;
            proxy_pass http://bank_login/session;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
"""


def upstream_conf(root: Path, port: int, customer: str = CUSTOMER) -> str:
    """The core (`return 200`) and the bank's login stand-in (204 naming `customer`: an
    nginx value, `$http_x_customer_id` for whoever the request names)."""
    return f"""{_common(root, "upstream")}
http {{
    access_log off;
{_temp_paths(root, "upstream")}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location = /session {{
            add_header X-Authenticated-Customer {customer};
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
    login = NGINX_LOGIN_CHECK + """        location @bank_login { return 302 /login; }"""
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
    upstream bank_login {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    upstream fairgate {{ server 127.0.0.1:{gate}; keepalive 64; }}
    upstream fairgate_admitted {{ server 127.0.0.1:{gate}; keepalive 64; }}
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


def haproxy_conf(ports: dict[str, int]) -> str:
    """deploy/haproxy/haproxy.cfg as shipped (its frontend: haproxy-edge), with one thread
    as nginx has one worker, a loopback port for its TLS bind, and two frontends beside it
    in front of the same core: no check (haproxy-plain), the login check only."""
    shipped = (DEPLOY_HAPROXY / "haproxy.cfg").read_text()
    if shipped.count(HAPROXY_TLS_BIND) != 1 or shipped.count("\nglobal\n") != 1:
        raise RuntimeError("deploy/haproxy/haproxy.cfg: no single TLS bind or global section")
    conf = shipped.replace(HAPROXY_TLS_BIND, f"bind 127.0.0.1:{ports['haproxy-edge']}")
    conf = conf.replace("\nglobal\n", "\nglobal\n    nbthread 1\n")
    return f"""{conf}
frontend bench_plain
    bind 127.0.0.1:{ports["haproxy-plain"]}
    default_backend core_bank

frontend bench_login
    bind 127.0.0.1:{ports["haproxy-login"]}
    http-request lua.fairgate_login "http://${{FAIRGATE_LOGIN}}/session"
    http-request redirect location /login code 302 if !{{ var(txn.fairgate_customer) -m found }}
    http-request set-header X-Customer-Id %[var(txn.fairgate_customer)]
    default_backend core_bank
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
        self.check = [*self.base, "-t"]
        self.argv = [*self.base, "-g", "daemon off;"]
        self.env: dict[str, str] | None = None
        self.log: Path | None = None
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        check = subprocess.run(self.check, capture_output=True, text=True, env=self.env)
        if check.returncode != 0:
            raise RuntimeError(f"{self.path.name} check: {check.stdout}{check.stderr}")
        out = open(self.log, "wb") if self.log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=out, env=self.env)
        finally:
            if self.log is not None:
                out.close()  # type: ignore[union-attr]

    def worker_pid(self) -> int:
        """The process that serves (nginx: the master's one worker)."""
        assert self.process is not None
        pid = self.process.pid
        deadline = time.monotonic() + 5
        while True:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return int(children[0])
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.path.name}: no worker")
            time.sleep(0.02)

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
                    raise RuntimeError(f"{self.path.name} did not start") from None
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class HAProxy(Nginx):
    """HAProxy in the foreground (-db): one process, which serves."""

    def __init__(self, binary: str, root: Path, conf: str, port: int, env: dict[str, str]):
        super().__init__(binary, root, "haproxy", conf, port)
        self.check = [binary, "-c", "-f", str(self.path)]
        self.argv = [binary, "-f", str(self.path), "-db"]
        self.env = env
        self.log = root / "haproxy.out"

    def worker_pid(self) -> int:
        assert self.process is not None
        return self.process.pid


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


async def arrive(session: aiohttp.ClientSession, url: str, cookies: dict[str, str]) -> str:
    """The customer's first protected request through an edge (it asks the gate once and
    sets the fg_arrived mark): the mark. Until the edge holds a revocation list it refuses
    (401 unavailable): asked again until the deadline."""
    deadline = time.monotonic() + 10
    while True:
        async with session.get(url, cookies=cookies, allow_redirects=False) as r:
            if r.status == 200:
                return r.cookies["fg_arrived"].value
            if time.monotonic() > deadline:
                raise RuntimeError(f"the first protected request: {r.status} {await r.text()}")
        await asyncio.sleep(0.05)


async def run(
    quick: bool,
    work: Path,
    *,
    connections: int = 32,
    threads: int = 1,
    configs: tuple[str, ...] | None = None,
    rounds: int | None = None,
) -> dict[str, Any]:
    """The figures: requests/s and the front's CPU per request per config (median of the
    rounds), the ratios to each proxy's no-check row, and the gate's /gate/auth calls per
    request through each edge. `configs`: a subset of CONFIGS + HAPROXY_CONFIGS (default
    all; the HAProxy rows only where haproxy is installed)."""
    nginx, wrk, haproxy = nginx_binary(), wrk_binary(), haproxy_binary()
    if nginx is None or wrk is None or not njs_installed():
        return {"skipped": "needs nginx, its njs module (libnginx-mod-http-js) and wrk"}
    names = configs or (CONFIGS + (HAPROXY_CONFIGS if haproxy is not None else ()))
    for name in names:
        if REFERENCE.get(name) not in names:
            raise ValueError(f"config {name!r}: unknown, or without its reference row")
    with_haproxy = any(name in HAPROXY_CONFIGS for name in names)
    if with_haproxy and haproxy is None:
        raise RuntimeError("the HAProxy rows need haproxy")
    duration, default_rounds = (2, 1) if quick else (5, 3)
    rounds = rounds or default_rounds
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
        ports = {name: free_port() for name in CONFIGS + HAPROXY_CONFIGS}
        front = Nginx(
            nginx,
            work,
            "front",
            front_conf(work, ports, upstream_port, gate.port, edge_keys),
            ports["plain"],
        )
        servers = [
            Nginx(nginx, work, "upstream", upstream_conf(work, upstream_port), upstream_port),
            front,
        ]
        process = {name: front for name in CONFIGS}
        if with_haproxy:
            assert haproxy is not None
            env = {
                **os.environ,
                "FAIRGATE_IDENTITY": "header",
                "FAIRGATE_LUA": str(DEPLOY_HAPROXY / "fairgate.lua"),
                "FAIRGATE_GATE": f"127.0.0.1:{gate.port}",
                "FAIRGATE_CORE": f"127.0.0.1:{upstream_port}",
                "FAIRGATE_LOGIN": f"127.0.0.1:{upstream_port}",
                "FAIRGATE_CAMPAIGN": CAMPAIGN,
                "FAIRGATE_LOGIN_PAGE": "/login",
                "FAIRGATE_BUSY_PAGE": str(DEPLOY_HAPROXY / "fairgate-busy.html"),
                # The bench's gate trusts its loopback peer and sets no secret: any value
                # does (HAProxy takes no empty header value in its config).
                "FAIRGATE_PROXY_SECRET": "bench-gate-sets-no-secret",
                "FAIRGATE_PASS_CHECK": "edge",
                "FAIRGATE_EDGE_KEYS": str(edge_keys),
            }
            balancer = HAProxy(haproxy, work, haproxy_conf(ports), ports["haproxy-edge"], env)
            servers.append(balancer)
            process |= {name: balancer for name in HAPROXY_CONFIGS}
        for server in servers:
            server.start()
        for server in servers:
            await server.wait()
        pids = {name: server.worker_pid() for name, server in process.items()}
        async with aiohttp.ClientSession() as session:
            await Admin(session, gate).create(campaign_spec())
            pass_token = await admitted_pass(session, gate)
            cookies = {"bank_session": "bench", "fg_pass": pass_token}
            marks = {
                name: await arrive(session, f"http://127.0.0.1:{ports[name]}/core/first", cookies)
                for name in ("edge", "haproxy-edge")
                if name in names
            }
            # Both edges make the same mark (a MAC of the pass under its key).
            mark = next(iter(marks.values()), "")
            cookie = f"bank_session=bench; fg_pass={pass_token}; fg_arrived={mark}"
            rates: dict[str, list[float]] = {name: [] for name in names}
            cpu: dict[str, list[float]] = {name: [] for name in names}
            errors: dict[str, int] = {name: 0 for name in names}
            requests: dict[str, int] = {name: 0 for name in names}
            calls: dict[str, int] = {name: 0 for name in names}
            for round_index in range(rounds):
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    target = Target(
                        f"http://127.0.0.1:{ports[name]}/core/deposit",
                        headers=(("Cookie", cookie),),
                    )
                    before = await auth_calls(session, gate)
                    cpu_before = cpu_seconds(pids[name])
                    result = await run_wrk(
                        wrk,
                        target,
                        duration_s=duration,
                        connections=connections,
                        threads=threads,
                        script_dir=work / "wrk",
                    )
                    cpu_after = cpu_seconds(pids[name])
                    after = await auth_calls(session, gate)
                    rates[name].append(result.ok / result.duration_s)
                    cpu[name].append((cpu_after - cpu_before) / max(result.requests, 1) * 1e6)
                    errors[name] += result.errors
                    requests[name] += result.requests
                    calls[name] += after - before
        median = {name: statistics.median(values) for name, values in rates.items()}
        ratio = {name: round(median[name] / median[REFERENCE[name]], 3) for name in names}
        edges = [name for name in ("edge", "haproxy-edge") if name in names]
        return {
            "requests_per_s": {name: round(value) for name, value in median.items()},
            "rounds": {name: [round(v) for v in values] for name, values in rates.items()},
            "ratio_to_plain": ratio,
            "reference": {name: REFERENCE[name] for name in names},
            "front_cpu_us_per_request": {
                name: round(statistics.median(values), 1) for name, values in cpu.items()
            },
            "edge_over_login": {
                name: round(median[name] / median[name.replace("edge", "login")], 3)
                for name in edges
                if name.replace("edge", "login") in names
            },
            "target": TARGET,
            "ok": all(
                ratio[name] >= TARGET and calls[name] == 0 and errors[name] == 0 for name in edges
            ),
            "requests": requests,
            "gate_auth_calls": {name: calls[name] for name in edges},
            "gate_calls_per_request": {
                name: calls[name] / requests[name] if requests[name] else None for name in edges
            },
            "errors": errors,
            "conditions": {
                "cores": len(os.sched_getaffinity(0)),
                "loadavg_start": [round(x, 2) for x in loadavg_start],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "wrk": f"-t{threads} -c{connections} -d{duration}s x {rounds} rounds",
                "nginx": "front 1 worker, upstream 1 worker; gate 1 process"
                + ("; HAProxy nbthread 1" if with_haproxy else ""),
                "versions": versions(nginx, haproxy if with_haproxy else None),
            },
        }
    finally:
        for server in servers:
            server.stop()
        gate.stop()
        redis.stop()


def versions(nginx: str, haproxy: str | None) -> str:
    """nginx's, njs's and HAProxy's versions, as the binaries and packages say."""
    said = []
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True)
    said.append((out.stderr or out.stdout).strip().replace("nginx version: ", ""))
    njs = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-http-js"],
        capture_output=True,
        text=True,
    )
    if njs.returncode == 0:
        said.append(f"njs {njs.stdout.strip()}")
    if haproxy is not None:
        out = subprocess.run([haproxy, "-v"], capture_output=True, text=True)
        said.append(" ".join(out.stdout.split()[:3]))
    return ", ".join(said)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.edge", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument(
        "--configs",
        help="a comma-separated subset of "
        + ",".join(CONFIGS + HAPROXY_CONFIGS)
        + " (each with its no-check row)",
    )
    parser.add_argument("--markdown", action="store_true", help="the report's section too")
    args = parser.parse_args(argv)
    configs = None
    if args.configs:
        configs = tuple(name.strip() for name in args.configs.split(",") if name.strip())
        unknown = [n for n in configs if n not in REFERENCE or REFERENCE[n] not in configs]
        if unknown:
            parser.error(f"--configs: unknown or without its no-check row: {unknown}")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds: at least 1")
    with tempfile.TemporaryDirectory(prefix="fairgate-edge-") as tmp:
        result = asyncio.run(
            run(
                args.quick,
                Path(tmp),
                connections=args.connections,
                configs=configs,
                rounds=args.rounds,
            )
        )
    print(json.dumps(result, indent=2))
    if args.markdown:
        print(markdown(result))
    return 0 if result.get("ok", True) else 1


def markdown(result: dict[str, Any]) -> str:
    """The section of bench/out/results.md."""
    title = "## The pass checked at the edge: the proxy's check ÷ the same proxy with no check"
    if "skipped" in result:
        return f"{title}\n\nskipped: {result['skipped']}"
    rates, ratio, cond = result["requests_per_s"], result["ratio_to_plain"], result["conditions"]
    cpu = result["front_cpu_us_per_request"]
    rows = [
        "| server | requests/s | ÷ its no-check row | front CPU per request (µs) |",
        "| --- | --- | --- | --- |",
        *(
            f"| {name} | {rates[name]} | {ratio[name]} | {cpu[name]} |"
            for name in CONFIGS + HAPROXY_CONFIGS
            if name in rates
        ),
    ]
    edges = [
        f"{name} ÷ {result['reference'][name]} {ratio[name]} (target ≥ {result['target']}); "
        f"÷ its login row {result['edge_over_login'].get(name)}; /gate/auth calls per request: "
        f"{result['gate_calls_per_request'][name]} ({result['gate_auth_calls'][name]} over "
        f"{result['requests'][name]})."
        for name in result["gate_auth_calls"]
    ]
    return "\n".join(
        [
            title,
            "",
            "nginx (1 worker): plain: proxy_pass, no check; login: the bank's login check "
            "only; edge: login + the pass checked in nginx (fairgate-edge.conf, njs); gate: "
            "login + auth_request to /gate/auth. HAProxy (nbthread 1): haproxy-plain: no "
            "check; haproxy-login: the login check (fairgate_login) only; haproxy-edge: the "
            "shipped frontend with FAIRGATE_PASS_CHECK=edge (bench/edge.py).",
            "",
            *rows,
            "",
            *edges,
            f"Errors {result['errors']}.",
            f"Conditions: {cond['cores']} cores, load average {cond['loadavg_start']} at the "
            f"start, {cond['loadavg_end']} at the end; wrk {cond['wrk']}; {cond['nginx']}; "
            f"{cond.get('versions', '')}.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
