"""The bank around the gate, for the proxy tests: a stand-in login service (a session
cookie names the customer), a stand-in core system (records every header and cookie it
is sent), a proxy process (nginx, HAProxy) on a free port, and the scenarios every
shipped proxy config must pass, written once and run through each proxy.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from yarl import URL

from bench.edge import NGINX_LOGIN_CHECK, shipped_gate_upstreams
from gate.redis_server import free_port
from tests.helpers import ADMIN_TOKEN, CORE_TOKEN, GateProcess, spec, wait_for

LOGIN_COOKIE = "bank_session"
# The header the stand-in login answers with (the shipped configs read it from there).
LOGIN_HEADER = "X-Authenticated-Customer"
# Known to the gate and to the proxy, never to a client.
PROXY_SECRET = "proxy-secret-0123456789abcdef"
# Every header a client might send to claim an identity or a proxy's blessing.
FORGED_HEADERS = {
    "X-Customer-Id": "victim-123",
    "X-Authenticated-Customer": "victim-123",
    "X-Gate-Proxy-Secret": "guessed-secret-0123456789",
    "X-Gate-Customer": "00" * 16,
    "X-Gate-Seq": "1",
    "X-Gate-Campaign": "another-campaign",
}


def gate_env(core_port: int) -> dict[str, str]:
    """A gate that believes the customer header only with the proxy's secret: a direct
    client on the same host (a trusted address) cannot name a customer."""
    return {
        "GATE_IDENTITY": "header",
        "GATE_TRUSTED_PROXIES": "127.0.0.1/32,::1/128",
        "GATE_PROXY_SECRET": PROXY_SECRET,
        "GATE_CORE_PORT": str(core_port),
        "GATE_CORE_TOKENS": f"core:{CORE_TOKEN}",
    }


def jwt_gate_env(core_port: int, jwks_url: str) -> dict[str, str]:
    """A gate that knows the customer from the bank's login token alone (any proxy)."""
    return {
        "GATE_IDENTITY": "jwt",
        "GATE_JWT_ISSUER": ISSUER,
        "GATE_JWT_AUDIENCE": AUDIENCE,
        "GATE_JWT_JWKS": jwks_url,
        # a rotated key is looked up again after 0.1 s (10 s in production)
        "GATE_JWT_RELOAD_INTERVAL_MS": "100",
        "GATE_CORE_PORT": str(core_port),
        "GATE_CORE_TOKENS": f"core:{CORE_TOKEN}",
    }


# -- aiohttp apps served from a thread, so module-scoped fixtures can own them ----------


class BackgroundServers:
    """aiohttp apps on free loopback ports, served by an event loop in its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def serve(self, app: web.Application) -> int:
        port = free_port()

        async def start() -> None:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self.runners.append(runner)

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return port

    def close(self) -> None:
        async def stop() -> None:
            for runner in self.runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Seen:
    """One request as the core system received it."""

    method: str
    path: str
    headers: dict[str, str]
    cookies: dict[str, str]


@dataclass
class StandInLogin:
    """The bank's login: `login(customer)` opens a session; GET /session answers 200 with
    the customer in X-Authenticated-Customer for a live session cookie, else 401."""

    sessions: dict[str, str] = field(default_factory=dict)
    checks: int = 0
    down: bool = False  # answers 503 to every check

    def login(self, customer: str) -> str:
        session = secrets.token_urlsafe(16)
        self.sessions[session] = customer
        return session

    def app(self) -> web.Application:
        async def session(request: web.Request) -> web.Response:
            self.checks += 1
            if self.down:
                return web.Response(status=503)
            customer = self.sessions.get(request.cookies.get(LOGIN_COOKIE, ""))
            if customer is None:
                return web.Response(status=401)
            return web.Response(status=200, headers={LOGIN_HEADER: customer})

        app = web.Application()
        app.router.add_get("/session", session)
        return app


ISSUER = "https://login.bank.test"
AUDIENCE = "fairgate"


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def new(cls, algorithm: str) -> SigningKey:
        kid = secrets.token_hex(4)
        if algorithm == "RS256":
            return cls(kid, algorithm, rsa.generate_private_key(65537, 2048))
        return cls(kid, algorithm, ec.generate_private_key(ec.SECP256R1()))

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


@dataclass
class StandInIssuer:
    """The bank's login as a token issuer: signs JWTs and publishes its JWKS at
    /jwks.json; `rotate()` replaces the published key with a new one (another kid)."""

    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.new("RS256")])
    jwks_fetches: int = 0

    def token(
        self,
        subject: str,
        *,
        key: SigningKey | None = None,
        expires_in_s: int = 300,
        **claims: Any,
    ) -> str:
        key = key or self.keys[-1]
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + expires_in_s,
            **claims,
        }
        return jwt.encode(payload, key.private, key.algorithm, headers={"kid": key.kid})

    def rotate(self) -> SigningKey:
        self.keys = [SigningKey.new("ES256")]
        return self.keys[0]

    def app(self) -> web.Application:
        async def jwks(request: web.Request) -> web.Response:
            self.jwks_fetches += 1
            return web.json_response({"keys": [key.public_jwk() for key in self.keys]})

        app = web.Application()
        app.router.add_get("/jwks.json", jwks)
        return app


@dataclass
class StandInCore:
    """The core system: books anything under /core/ and records what it was sent."""

    seen: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        async def book(request: web.Request) -> web.Response:
            self.seen.append(
                Seen(
                    request.method,
                    request.path_qs,
                    {k.lower(): v for k, v in request.headers.items()},
                    dict(request.cookies),
                )
            )
            return web.json_response({"booked": True, "path": request.path_qs})

        app = web.Application()
        app.router.add_route("*", "/core/{tail:.*}", book)
        return app


# -- processes ------------------------------------------------------------------------


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} is not listening on {port}") from None
            time.sleep(0.02)


@contextmanager
def running(
    argv: list[str], port: int, log: Path, what: str, env: dict[str, str] | None = None
) -> Iterator[None]:
    """A proxy in the foreground, stopped (SIGTERM, then SIGKILL) on the way out."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        wait_listening(port, process, log, what)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_gate_ready(gate: GateProcess) -> None:
    deadline = time.monotonic() + 20
    while True:
        if gate.process is not None and gate.process.poll() is not None:
            raise AssertionError(f"gate exited: {gate.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(gate.url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("gate not ready")
        time.sleep(0.05)


def create_campaign(
    gate: GateProcess, campaign: str, campaign_spec: dict[str, Any] | None = None
) -> None:
    """`campaign_spec` (its id set to `campaign`), else `spec(campaign)`."""
    body = {**campaign_spec, "id": campaign} if campaign_spec is not None else spec(campaign)
    request = urllib.request.Request(
        gate.admin_url + "/admin/campaigns",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 201


# -- a front: a proxy with the gate, the login and the core behind it ---------------------


@dataclass
class Front:
    url: str
    gate: GateProcess
    login: StandInLogin
    core: StandInCore
    campaign: str
    issuer: StandInIssuer | None = None

    def client(self, customer: str | None = None) -> aiohttp.ClientSession:
        """A browser-like client: a cookie jar, logged in as `customer` when one is given."""
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
        if customer is not None:
            jar.update_cookies({LOGIN_COOKIE: self.login.login(customer)}, URL(self.url))
        return aiohttp.ClientSession(cookie_jar=jar)

    @property
    def origin(self) -> dict[str, str]:
        """What a browser adds to a POST from the proxy's own pages."""
        return {"Origin": self.url}

    async def join(self, client: aiohttp.ClientSession, **headers: str) -> dict[str, Any]:
        async with client.post(
            f"{self.url}/q/{self.campaign}/join",
            headers={**self.origin, "Accept": "application/json", **headers},
            allow_redirects=False,
        ) as r:
            assert r.status in (200, 201), (r.status, await r.text())
            body: dict[str, Any] = await r.json()
            return body

    async def admitted(self, client: aiohttp.ClientSession) -> dict[str, Any]:
        """Join and poll through the proxy until admitted: the status answer (with the
        pass, also set as the fg_pass cookie in the client's jar)."""
        ticket = (await self.join(client))["ticket"]
        body = await self.poll_until_admitted(client, ticket)
        body["ticket"] = ticket
        return body

    async def poll_until_admitted(
        self, client: aiohttp.ClientSession, ticket: str, **headers: str
    ) -> dict[str, Any]:
        """Poll `ticket`'s status through the proxy until admitted: the last answer."""
        body: dict[str, Any] = {}

        async def admitted() -> bool:
            async with client.get(
                f"{self.url}/q/{self.campaign}/status",
                params={"ticket": ticket},
                headers={"Accept": "application/json", **headers},
                allow_redirects=False,
            ) as r:
                assert r.status == 200, (r.status, await r.text())
                body.update(await r.json())
                return bool(body["state"] == "admitted")

        await wait_for(admitted, 10, "admission through the proxy")
        return body

    def core_seen(self, path: str) -> list[Seen]:
        return [s for s in self.core.seen if s.path == path]


def unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


# -- the shipped proxy configs, run for real -----------------------------------------

DEPLOY = Path(__file__).parent.parent / "deploy"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
)


def nginx_accepts(tmp_path: Path, local: str) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on `local` (an nginx.conf's text, its pid file put in `tmp_path`)."""
    assert NGINX is not None
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\n{local}\n")
    return subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
    )


# With identity = "jwt" the gate checks the bank's token: the login check is a no-op.
NGINX_NO_LOGIN_CHECK = """
        location = /_bank_session { internal; return 204; }
"""
NJS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"
HAPROXY_TLS_BIND = "bind :443 ssl crt /etc/haproxy/tls/promo.pem alpn h2,http/1.1"


def nginx_conf(
    root: Path,
    port: int,
    campaign: str,
    upstreams: dict[str, int],
    *,
    jwt: bool,
    edge_keys: Path | None = None,
    gate_cap: int | None = None,
) -> str:
    """deploy/nginx/nginx.conf with test ports, no TLS, the login page a local path, and
    the shipped maps, locations and gate upstreams as they are; with `edge_keys` (the key
    file of `gate keys edge`), nginx-edge.conf: the pass checked in nginx (njs); with
    `gate_cap`, that many requests in flight to the gate in place of the shipped cap."""
    user = "user root;" if os.geteuid() == 0 else ""
    edge_main = edge_http = edge_server = ""
    if edge_keys is not None:
        edge_main = f"load_module {NJS_MODULE};"
        edge_http = f"""
    js_import fairgate_edge from {DEPLOY}/nginx/fairgate-edge.js;
    js_preload_object fairgate_edge_keys from {edge_keys};
    include {DEPLOY}/nginx/fairgate-edge-maps.conf;"""
        (root / "edge").mkdir(exist_ok=True)
        edge_server = f"""
        set $fairgate_edge_dir {root}/edge;
        include {DEPLOY}/nginx/fairgate-edge.conf;"""
    servers = "\n".join(
        shipped_gate_upstreams(port, gate_cap)
        if name == "fairgate"
        else f"    upstream {name} {{ server 127.0.0.1:{port}; keepalive 8; }}"
        for name, port in upstreams.items()
    )
    login_check = NGINX_NO_LOGIN_CHECK if jwt else NGINX_LOGIN_CHECK
    return f"""
{edge_main}
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
    include {DEPLOY}/nginx/fairgate-maps.conf;{edge_http}
    server {{
        listen 127.0.0.1:{port};
        set $fairgate_campaign "{campaign}";
        set $fairgate_proxy_secret "{PROXY_SECRET}";
{login_check}
        location @bank_login {{
            return 302 /login?return=$fairgate_return;
        }}
        include {DEPLOY}/nginx/fairgate-locations.conf;{edge_server}
    }}
}}
"""


def haproxy_conf(port: int) -> str:
    """deploy/haproxy/haproxy.cfg as shipped, but for its TLS bind: a plain loopback port."""
    shipped = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert shipped.count(HAPROXY_TLS_BIND) == 1
    return shipped.replace(HAPROXY_TLS_BIND, f"bind 127.0.0.1:{port}")


def edge_key_file(keys_file: Path, root: Path) -> Path:
    """The proxy's key file, as an operator makes it: `gate keys edge`."""
    out = root / "edge-keys.json"
    gate = Path(sys.executable).parent / "gate"
    env = {**os.environ, "GATE_DATA_DIR": str(root / "no-data")}
    made = subprocess.run(
        [str(gate), "keys", "edge", "--signing-keys", str(keys_file), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    return out


@contextmanager
def proxied_gate(
    proxy: str,
    redis_url: str,
    root: Path,
    keys_file: Path,
    *,
    campaign: str,
    jwt: bool = False,
    campaign_spec: dict[str, Any] | None = None,
    edge: bool = False,
    gate_cap: int | None = None,
    gate_settings: dict[str, str] | None = None,
) -> Iterator[Front]:
    """A real `gate serve` with `campaign`, the stand-in login, core (and, with `jwt`,
    token issuer), and in front of them the shipped config of `proxy` ("nginx" or
    "haproxy") run by the real binary on a free port; with `edge`, its variant that
    checks passes itself (the key file written by `gate keys edge`). `gate_cap`: the
    requests in flight the proxy lets through to the gate, in place of the shipped
    figure; `gate_settings`: more of the gate's environment (GATE_...)."""
    binary = {"nginx": NGINX, "haproxy": HAPROXY}[proxy]
    assert binary is not None, f"{proxy} is not installed"
    root.mkdir(parents=True, exist_ok=True)
    edge_keys = edge_key_file(keys_file, root) if edge else None
    servers = BackgroundServers()
    login, core, issuer = StandInLogin(), StandInCore(), StandInIssuer()
    gate: GateProcess | None = None
    try:
        login_port, core_port = servers.serve(login.app()), servers.serve(core.app())
        if jwt:
            jwks = f"http://127.0.0.1:{servers.serve(issuer.app())}/jwks.json"
            env = jwt_gate_env(free_port(), jwks)
        else:
            env = gate_env(free_port())
        env.update(gate_settings or {})
        gate = GateProcess(redis_url, root / "gate", keys_file, extra_env=env)
        gate.start()
        wait_gate_ready(gate)
        create_campaign(gate, campaign, campaign_spec)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        front = Front(url, gate, login, core, campaign, issuer if jwt else None)
        if proxy == "nginx":
            conf = root / "nginx.conf"
            upstreams = {"fairgate": gate.port, "core_bank": core_port, "bank_login": login_port}
            conf.write_text(
                nginx_conf(
                    root, port, campaign, upstreams, jwt=jwt, edge_keys=edge_keys, gate_cap=gate_cap
                )
            )
            base = [binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
            check = subprocess.run([*base, "-t"], capture_output=True, text=True)
            assert check.returncode == 0, check.stderr
            with running([*base, "-g", "daemon off;"], port, root / "nginx.out", "nginx"):
                yield front
        else:
            conf = root / "haproxy.cfg"
            conf.write_text(haproxy_conf(port))
            proxy_env = {
                **os.environ,
                "FAIRGATE_IDENTITY": "jwt" if jwt else "header",
                "FAIRGATE_LUA": str(DEPLOY / "haproxy" / "fairgate.lua"),
                "FAIRGATE_GATE": f"127.0.0.1:{gate.port}",
                "FAIRGATE_CORE": f"127.0.0.1:{core_port}",
                "FAIRGATE_LOGIN": f"127.0.0.1:{login_port}",
                "FAIRGATE_CAMPAIGN": campaign,
                "FAIRGATE_LOGIN_PAGE": "/login",
                "FAIRGATE_BUSY_PAGE": str(DEPLOY / "haproxy" / "fairgate-busy.html"),
                "FAIRGATE_PROXY_SECRET": PROXY_SECRET,
                "FAIRGATE_PASS_CHECK": "edge" if edge else "gate",
                "FAIRGATE_EDGE_KEYS": str(edge_keys),
                **({"FAIRGATE_GATE_MAXCONN": str(gate_cap)} if gate_cap is not None else {}),
            }
            check = subprocess.run(
                [binary, "-c", "-f", str(conf)], capture_output=True, text=True, env=proxy_env
            )
            assert check.returncode == 0, check.stdout + check.stderr
            argv = [binary, "-f", str(conf), "-db"]
            with running(argv, port, root / "haproxy.out", "haproxy", env=proxy_env):
                yield front
    finally:
        if gate is not None:
            gate.stop()
        servers.close()


# -- the scenarios every shipped proxy config passes ----------------------------------


async def forged_identity_cannot_join(front: Front) -> None:
    """The issue: `curl -H 'X-Authenticated-Customer: victim-123' …/join` joined as the
    victim. Through the proxy, a logged-in customer's forged headers are replaced by the
    login's answer; with no session, nothing joins at all."""
    victim, mallory = unique("victim"), unique("mallory")
    forged = {**FORGED_HEADERS, "X-Customer-Id": victim, "X-Authenticated-Customer": victim}
    async with front.client(mallory) as client:
        joined = await front.join(client, **forged)
        assert joined["created"] is True
    async with front.client(victim) as client:
        # The victim's own first join makes a new ticket: nobody took their place.
        own = await front.join(client)
        assert own["created"] is True
        assert own["seq"] != joined["seq"]
    async with (
        front.client() as anonymous,
        anonymous.post(
            f"{front.url}/q/{front.campaign}/join",
            headers={**front.origin, **forged},
            allow_redirects=False,
        ) as r,
    ):
        # to the bank's login, or refused: never a ticket
        assert r.status in (302, 401, 403), (r.status, await r.text())
        if r.status == 302:
            assert "/login" in r.headers["Location"]


async def untrusted_peer_is_refused(front: Front) -> None:
    """The gate itself: the customer header from a peer that lacks the proxy's secret
    (here a client on the gate's own host, going around the proxy) is 401."""
    async with aiohttp.ClientSession() as direct:
        for secret in (None, "guessed-secret-0123456789"):
            headers = {"X-Customer-Id": unique("victim")}
            if secret is not None:
                headers["X-Gate-Proxy-Secret"] = secret
            async with direct.post(
                f"{front.gate.url}/q/{front.campaign}/join", headers=headers
            ) as r:
                assert r.status == 401, (r.status, await r.text())
                assert (await r.json())["error"]["code"] == "untrusted_identity"


async def pass_only_for_its_customer(front: Front) -> None:
    """The issue: an anonymous client used another customer's pass on the core (200).
    A pass opens the core only for the logged-in customer it was issued to."""
    owner, mallory = unique("owner"), unique("mallory")
    async with front.client(owner) as client:
        admitted = await front.admitted(client)
        pass_token = admitted["pass"]
        async with client.get(f"{front.url}/core/deposit", allow_redirects=False) as r:
            assert r.status == 200, (r.status, await r.text())
    path = f"/core/stolen-{secrets.token_hex(4)}"
    as_header = {"X-Gate-Pass": pass_token}
    as_cookie = {"Cookie": f"fg_pass={pass_token}"}
    async with aiohttp.ClientSession() as anonymous:
        for headers in (as_header, as_cookie, {**as_header, **FORGED_HEADERS}):
            async with anonymous.get(front.url + path, headers=headers, allow_redirects=False) as r:
                assert r.status in (302, 401, 403), (r.status, await r.text())
    async with front.client(mallory) as thief:
        for headers in (as_header, as_cookie):
            async with thief.get(front.url + path, headers=headers, allow_redirects=False) as r:
                assert r.status == 403, (r.status, await r.text())
        # a ticket alone gives no pass to anyone but its customer
        async with thief.get(
            f"{front.url}/q/{front.campaign}/status",
            params={"ticket": admitted["ticket"]},
            headers={"Accept": "application/json"},
            allow_redirects=False,
        ) as r:
            assert r.status == 403, (r.status, await r.text())
            assert "pass" not in await r.text()
    assert front.core_seen(path) == []


async def pass_never_reaches_the_core(front: Front) -> None:
    """The issue: the raw pass was forwarded to the core. The core sees the customer,
    the keyed digest and the seq; neither the X-Gate-Pass header nor the fg_pass cookie
    (the customer's other cookies, yes), and no identity header the client made up."""
    customer = unique("saver")
    plain = f"/core/deposit-{secrets.token_hex(4)}?product=5pct"
    forged = f"/core/forged-{secrets.token_hex(4)}"
    async with front.client(customer) as client:
        admitted = await front.admitted(client)
        pass_token = admitted["pass"]
        client.cookie_jar.update_cookies({"theme": "dark", "lang": "ko"}, URL(front.url))
        for path, extra in ((plain, {}), (forged, FORGED_HEADERS)):
            async with client.post(
                front.url + path,
                headers={"X-Gate-Pass": pass_token, **extra},
                allow_redirects=False,
            ) as r:
                assert r.status == 200, (path, r.status, await r.text())
            [seen] = front.core_seen(path)
            assert "x-gate-pass" not in seen.headers, path
            assert "fg_pass" not in seen.cookies, path
            assert pass_token not in json.dumps(seen.headers), path
            assert seen.cookies.get("theme") == "dark" and seen.cookies.get("lang") == "ko"
            assert seen.headers.get("x-gate-seq") == str(admitted["seq"]), path
            assert seen.headers.get("x-customer-id") == customer, path  # the login's
            assert "x-gate-proxy-secret" not in seen.headers, path
            assert seen.headers.get("x-authenticated-customer", "") in ("", customer), path
            assert seen.headers.get("x-gate-customer") != FORGED_HEADERS["X-Gate-Customer"]
            assert seen.headers.get("x-gate-campaign") in (None, front.campaign), path


async def pass_check_answers_any_method(front: Front) -> None:
    """Envoy's ext_authz asks /gate/auth with the client's method (a POST to the core is
    checked with a POST): the gate answers the check whatever the method."""
    customer = unique("method")
    async with front.client(customer) as client:
        admitted = await front.admitted(client)
    headers = {
        "X-Customer-Id": customer,
        "X-Gate-Proxy-Secret": PROXY_SECRET,
        "X-Gate-Campaign": front.campaign,
        "X-Gate-Pass": admitted["pass"],
    }
    async with aiohttp.ClientSession() as proxy:
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            async with proxy.request(method, front.gate.url + "/gate/auth", headers=headers) as r:
                assert r.status == 200, (method, r.status, await r.text())
                assert r.headers["X-Gate-Seq"] == str(admitted["seq"])


async def core_sees_the_keyed_digest(front: Front) -> None:
    """/gate/auth answers X-Gate-Customer, the keyed digest (hex), and the proxy hands
    it to the core: the same value as the customer's receipt, never the raw id."""
    customer = unique("digest")
    async with front.client(customer) as client:
        joined = await front.join(client)
        await front.admitted(client)
        path = f"/core/digest-{secrets.token_hex(4)}"
        async with client.get(front.url + path, allow_redirects=False) as r:
            assert r.status == 200, (r.status, await r.text())
    [seen] = front.core_seen(path)
    assert seen.headers.get("x-gate-customer") == joined["receipt"]["digest"]


async def evidence_is_public(front: Front) -> None:
    """The issue: /.well-known/fairgate/keys was 404 through nginx. The keys are
    reachable through the proxy by anyone, logged in or not; a receipt by its holder
    (their session and ticket) only, anyone else gets 404 (issue 13)."""
    async with front.client(unique("receipt")) as client:
        joined = await front.join(client)
        receipt = f"{front.url}/q/{front.campaign}/receipt/{joined['seq']}"

        async def signed() -> bool:
            async with client.get(receipt, params={"ticket": joined["ticket"]}) as r:
                assert r.status in (200, 404), (r.status, await r.text())
                return r.status == 200

        await wait_for(signed, 10, "the receipt through the proxy", interval_s=0.1)
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(front.url + "/.well-known/fairgate/keys") as r:
            assert r.status == 200, (r.status, await r.text())
            assert (await r.json())["keys"]
        async with anonymous.get(receipt, params={"ticket": joined["ticket"]}) as r:
            assert r.status == 404, (r.status, await r.text())


async def original_url_is_kept(front: Front) -> None:
    """The issue: the redirect to the waiting page dropped the URL the customer came for.
    Unadmitted, they go to /q/{c}?return=<that URL>, escaped so that it comes back whole."""
    async with front.client(unique("browser")) as client:
        for asked in (
            "/core/deposit",
            "/core/deposit?product=5pct&term=12",
            "/core/a%20b+c?x=1&y=%26&z=%2B",
        ):
            async with client.get(front.url + asked, allow_redirects=False) as r:
                assert r.status == 302, (asked, r.status, await r.text())
                location = urlsplit(r.headers["Location"])
                assert location.path == f"/q/{front.campaign}", location
                assert parse_qs(location.query)["return"] == [asked], location


async def core_callbacks_are_not_exposed(front: Front) -> None:
    """The issue: the core system's confirm/release routes sat on the public listener
    that nginx exposes. Through the proxy they are not found, even with the core's own
    token, and the reservation stays held; the core confirms it on the gate's core
    listener. Nor are the gate's own /gate/auth, metrics and health checks."""
    bearer = {"Authorization": f"Bearer {CORE_TOKEN}"}
    async with front.client(unique("core")) as client:
        await front.admitted(client)
        async with client.post(
            f"{front.url}/q/{front.campaign}/claim",
            json={"amount": 1, "idempotency_key": "k1"},
            headers=front.origin,
            allow_redirects=False,
        ) as r:
            assert r.status == 201, (r.status, await r.text())
            reservation = (await r.json())["reservation"]
        for action in ("release", "confirm"):
            async with client.post(
                f"{front.url}/q/{front.campaign}/reservations/{reservation}/{action}",
                headers={**front.origin, **bearer},
                json={},
                allow_redirects=False,
            ) as r:
                assert r.status == 404, (action, r.status, await r.text())
        for internal in ("/gate/auth", "/metrics", "/readyz", "/healthz", "/admin/campaigns"):
            async with client.get(front.url + internal, allow_redirects=False) as r:
                assert r.status == 404, (internal, r.status, await r.text())
    core_listener = f"http://127.0.0.1:{front.gate.env['GATE_CORE_PORT']}"
    async with (
        aiohttp.ClientSession() as core,
        core.post(
            f"{core_listener}/q/{front.campaign}/reservations/{reservation}/confirm",
            headers=bearer,
            json={},
        ) as r,
    ):
        assert r.status == 200, (r.status, await r.text())
        assert (await r.json())["state"] == "confirmed"


async def revoked_pass_is_refused(front: Front) -> None:
    """An operator revokes a customer: the proxy refuses their pass within a second."""
    customer = unique("revoked")
    async with front.client(customer) as client:
        await front.admitted(client)
        async with client.get(f"{front.url}/core/ok", allow_redirects=False) as r:
            assert r.status == 200
        async with (
            aiohttp.ClientSession() as admin,
            admin.post(
                front.gate.admin_url + f"/admin/campaigns/{front.campaign}/revoke",
                json={"customer": customer, "reason": "test"},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as r,
        ):
            assert r.status == 200, await r.text()

        async def refused() -> bool:
            async with client.get(f"{front.url}/core/ok", allow_redirects=False) as r:
                return r.status == 403

        await wait_for(refused, 1.0, "the revoked pass refused by the proxy")


BROWSER = {"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8", "Accept-Language": "en"}


async def join_by_form(front: Front, client: aiohttp.ClientSession, asked: str) -> str:
    """What a browser with JavaScript off does: ask for `asked`, follow the proxy to the
    waiting page, submit its join form. Returns the page's URL it is sent back to."""
    async with client.get(front.url + asked, headers=BROWSER, allow_redirects=False) as r:
        assert r.status == 302, (r.status, await r.text())
        waiting = urljoin(front.url, r.headers["Location"])
    async with client.get(waiting, headers=BROWSER, allow_redirects=False) as r:
        assert r.status == 200 and r.content_type == "text/html", r.status
        page = await r.text()
    form = re.search(r'<form method="post" action="([^"]+)"[^>]*>(.*?)</form>', page, re.S)
    assert form is not None, page
    fields = {
        name: html.unescape(value)
        for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', form.group(2))
    }
    assert fields["return"] == asked
    async with client.post(
        urljoin(front.url, html.unescape(form.group(1))),
        data=fields,
        headers={**BROWSER, **front.origin},
        allow_redirects=False,
    ) as r:
        assert r.status == 303, (r.status, await r.text())
        return urljoin(front.url, r.headers["Location"])


async def sent_on(client: aiohttp.ClientSession, page: str, timeout_s: float = 10) -> str:
    """Reload the waiting page (its meta refresh) until it sends the customer on (303):
    where to. A busy page (503, HTML) on the way is fine; JSON never is."""
    landed: list[str] = []

    async def redirected() -> bool:
        async with client.get(page, headers=BROWSER, allow_redirects=False) as r:
            if r.status == 303:
                landed.append(r.headers["Location"])
                return True
            assert r.status in (200, 503), (r.status, await r.text())
            assert r.content_type == "text/html", (r.status, r.content_type)
            return False

    await wait_for(redirected, timeout_s, "the waiting page sending the customer on", 0.1)
    return landed[0]


async def customer_without_script_lands_on_the_product(front: Front) -> None:
    """A browser with JavaScript off asks for the product, is sent to the waiting page,
    joins with its form, refreshes until admitted and is sent back to the URL it asked
    for, where the core takes its pass: through the proxy, cookies and all."""
    asked = "/core/deposit?product=5pct&term=12"
    async with front.client(unique("no-script")) as client:
        page = await join_by_form(front, client, asked)
        assert await sent_on(client, page) == asked
        async with client.get(front.url + asked, headers=BROWSER, allow_redirects=False) as r:
            assert r.status == 200, (r.status, await r.text())
            assert (await r.json())["path"] == asked


async def redis_pause_shows_busy_then_admits(front: Front, redis: Any) -> None:
    """The issue: through nginx, a 2.5 s Redis pause sent an admitted customer to a raw
    JSON 503. Now the pass check fails closed, the customer is sent to the waiting page,
    which says "busy, keep this page open" (HTML, both languages), and once Redis is
    back the page sends them on to the product with their place kept."""
    assert redis.process is not None
    asked = "/core/deposit?product=5pct"
    async with front.client(unique("paused")) as client:
        page = await join_by_form(front, client, asked)
        assert await sent_on(client, page) == asked
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            async with aiohttp.ClientSession() as direct:

                async def stale() -> bool:
                    async with direct.get(front.gate.url + "/readyz") as r:
                        return r.status == 503

                await wait_for(stale, 10, "the gate to notice Redis paused", interval_s=0.05)
            async with client.get(front.url + asked, headers=BROWSER, allow_redirects=False) as r:
                assert r.status == 302, (r.status, await r.text())  # fail closed: no core
                waiting = urljoin(front.url, r.headers["Location"])
            async with client.get(waiting, headers=BROWSER, allow_redirects=False) as r:
                assert r.status == 503, (r.status, await r.text())
                assert r.content_type == "text/html", r.content_type
                assert r.headers.get("Retry-After")
                busy = await r.text()
            assert 'lang="ko"' in busy and 'lang="en"' in busy, busy
            assert "aria-live" in busy
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        assert await sent_on(client, waiting, timeout_s=20) == asked
        async with client.get(front.url + asked, headers=BROWSER, allow_redirects=False) as r:
            assert r.status == 200, (r.status, await r.text())


async def login_down_lets_nobody_in(front: Front) -> None:
    """The bank's login check failing (5xx): nobody is named, nobody reaches the core;
    a customer sees a page (the busy page, or the way to the login), never a stock error."""
    customer = unique("login-down")
    product = f"/core/login-down-{secrets.token_hex(4)}"
    async with front.client(customer) as client:
        await front.admitted(client)
        front.login.down = True
        try:
            for path in (f"/q/{front.campaign}", product):
                async with client.get(
                    front.url + path, headers=BROWSER, allow_redirects=False
                ) as r:
                    body = await r.text()
                    if r.status == 302:
                        assert "/login" in r.headers["Location"], r.headers["Location"]
                    else:
                        assert r.status == 503 and r.content_type == "text/html", r.status
                        assert 'lang="ko"' in body and 'lang="en"' in body, body
        finally:
            front.login.down = False
        assert front.core_seen(product) == []
        async with client.get(front.url + product, allow_redirects=False) as r:
            assert r.status == 200, (r.status, await r.text())  # back, with the same pass


async def gate_down_shows_busy_then_admits(front: Front) -> None:
    """The gate itself unreachable (stopped): the proxy answers the product and the
    waiting page with its own "busy, keep this page open" page in both languages (an API
    client: a 503 it can retry), and once the gate is back the customer lands on the
    product."""
    asked = "/core/deposit?product=5pct"
    async with front.client(unique("gate-down")) as client:
        page = await join_by_form(front, client, asked)
        assert await sent_on(client, page) == asked
        front.gate.stop()
        try:
            for url in (front.url + asked, page):
                async with client.get(url, headers=BROWSER, allow_redirects=False) as r:
                    assert r.status in (502, 503, 504), (url, r.status, await r.text())
                    assert r.content_type == "text/html", r.content_type
                    assert r.headers.get("Retry-After"), dict(r.headers)
                    busy = await r.text()
                assert 'lang="ko"' in busy and 'lang="en"' in busy, busy
                assert "aria-live" in busy and 'http-equiv="refresh"' in busy, busy
            api = {"Accept": "application/json"}
            async with client.get(page, headers=api, allow_redirects=False) as r:
                assert r.status in (502, 503, 504) and r.headers.get("Retry-After"), r.status
                if r.content_type == "application/json":
                    assert (await r.json())["error"]["code"] == "unavailable"
        finally:
            front.gate.start()
        await front.gate.wait_ready()
        assert await sent_on(client, page) == asked


SCENARIOS = (
    forged_identity_cannot_join,
    untrusted_peer_is_refused,
    pass_only_for_its_customer,
    pass_never_reaches_the_core,
    core_sees_the_keyed_digest,
    pass_check_answers_any_method,
    evidence_is_public,
    original_url_is_kept,
    core_callbacks_are_not_exposed,
    revoked_pass_is_refused,
    customer_without_script_lands_on_the_product,
    login_down_lets_nobody_in,
)


# -- the bank's login token, passed through the proxy and checked by the gate ---------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def jwt_join(front: Front, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            f"{front.url}/q/{front.campaign}/join",
            headers={"Accept": "application/json", **headers},
            allow_redirects=False,
        ) as r,
    ):
        body: dict[str, Any] = await r.json()
        return r.status, body


async def jwt_names_the_customer(front: Front) -> None:
    """With a valid token the customer is its subject: a forged identity header changes
    nothing, and the token's subject keeps one ticket."""
    assert front.issuer is not None
    customer, victim = unique("jwt-customer"), unique("victim")
    token = front.issuer.token(customer)
    status, first = await jwt_join(front, bearer(token))
    assert status == 201, first
    forged = {**FORGED_HEADERS, "X-Customer-Id": victim, "X-Authenticated-Customer": victim}
    status, again = await jwt_join(front, {**bearer(token), **forged})
    assert status == 200 and again["seq"] == first["seq"], again
    status, anonymous = await jwt_join(front, forged)  # no token: nobody
    assert status == 401 and anonymous["error"]["code"] == "no_identity", anonymous
    status, own = await jwt_join(front, bearer(front.issuer.token(victim)))
    assert status == 201 and own["created"] is True, own  # nobody took the victim's place


async def jwt_bad_tokens_are_refused(front: Front) -> None:
    """A bad signature, another issuer or audience, an expired token: 401 bad_identity."""
    assert front.issuer is not None
    issuer, customer = front.issuer, unique("jwt-bad")
    published = issuer.keys[-1]
    impostor = SigningKey(published.kid, published.algorithm, SigningKey.new("RS256").private)
    for why, token in (
        ("bad signature", issuer.token(customer, key=impostor)),
        ("wrong issuer", issuer.token(customer, iss="https://evil.test")),
        ("wrong audience", issuer.token(customer, aud="another-service")),
        ("expired", issuer.token(customer, expires_in_s=-120)),
    ):
        status, body = await jwt_join(front, bearer(token))
        assert status == 401, (why, status, body)
        assert body["error"]["code"] == "bad_identity", (why, body)


async def jwt_key_rotation(front: Front) -> None:
    """The login rotates its key: a token with the new kid makes the gate fetch the JWKS
    again, and then works; a token of the retired key no longer does."""
    assert front.issuer is not None
    issuer = front.issuer
    old = issuer.keys[-1]
    status, body = await jwt_join(front, bearer(issuer.token(unique("before"))))
    assert status == 201, body
    issuer.rotate()
    fetches = issuer.jwks_fetches
    rotated = issuer.token(unique("after"))
    answers: list[int] = []

    async def accepted() -> bool:
        status, _ = await jwt_join(front, bearer(rotated))
        answers.append(status)
        return status == 201

    # a reload at most every 0.1 s: the new kid works within a few tries
    await wait_for(accepted, 5, "the rotated key accepted", interval_s=0.05)
    assert issuer.jwks_fetches > fetches
    assert set(answers) <= {401, 201}, answers
    status, body = await jwt_join(front, bearer(issuer.token(unique("retired"), key=old)))
    assert status == 401 and body["error"]["code"] == "bad_identity", body


async def jwt_pass_for_its_token_only(front: Front) -> None:
    """A pass reaches the core with its own customer's token, and not with another's."""
    assert front.issuer is not None
    owner, thief = unique("jwt-owner"), unique("jwt-thief")
    token = front.issuer.token(owner)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        status, joined = await jwt_join(front, bearer(token))
        assert status == 201, joined
        body = await front.poll_until_admitted(client, joined["ticket"], **bearer(token))
    path = f"/core/jwt-{secrets.token_hex(4)}"
    as_pass = {"X-Gate-Pass": body["pass"]}
    async with aiohttp.ClientSession() as client:
        async with client.get(
            front.url + path,
            headers={**as_pass, **bearer(front.issuer.token(thief))},
            allow_redirects=False,
        ) as r:
            assert r.status == 403, (r.status, await r.text())
        async with client.get(front.url + path, headers=as_pass, allow_redirects=False) as r:
            assert r.status in (302, 401), (r.status, await r.text())
        assert front.core_seen(path) == []
        async with client.get(
            front.url + path, headers={**as_pass, **bearer(token)}, allow_redirects=False
        ) as r:
            assert r.status == 200, (r.status, await r.text())
    [seen] = front.core_seen(path)
    assert "x-gate-pass" not in seen.headers
    assert seen.headers.get("x-gate-seq") == str(joined["seq"])


JWT_SCENARIOS = (
    jwt_names_the_customer,
    jwt_bad_tokens_are_refused,
    jwt_key_rotation,
    jwt_pass_for_its_token_only,
)
