"""The Envoy and Traefik configs, checked without their binaries (neither is packaged
where the tests run): they parse, route what they should and nothing else, never send
a client's identity header on, keep the pass from the core; Envoy's inline Lua runs
under LuaJIT (as in Envoy) against a stand-in request."""

from __future__ import annotations

import os
import re
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from gate.redis_server import free_port
from tests.proxy_support import HAPROXY, PROXY_SECRET, haproxy_conf, running

DEPLOY = Path(__file__).parent.parent / "deploy"
# Every header that names a customer or speaks for the proxy: never from a client.
IDENTITY_HEADERS = {
    "x-customer-id",
    "x-authenticated-customer",
    "x-gate-proxy-secret",
    "x-gate-customer",
    "x-gate-seq",
    "x-gate-campaign",
}
# What the pass check may see of a request: the pass, and the bank's token.
AUTH_INPUTS = {"cookie", "authorization", "x-gate-pass"}
PATHS = {
    "keys": "/.well-known/fairgate/keys",
    "receipt": "/q/deposit-5pct/receipt/17",
    "join": "/q/deposit-5pct/join",
    "page": "/q/deposit-5pct",
    "claim": "/q/deposit-5pct/claim",
    "confirm": "/q/deposit-5pct/reservations/r1/confirm",
    "release": "/q/deposit-5pct/reservations/r1/release",
    "core": "/core/deposit?product=5pct",
}
# The gate's own business: never through the public proxy.
INTERNAL = ("/gate/auth", "/metrics", "/readyz", "/healthz", "/admin/campaigns")
BUSY_PAGE = DEPLOY / "haproxy" / "fairgate-busy.html"


# -- Envoy --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def envoy() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())
    return document


def connection_manager(envoy: dict[str, Any]) -> dict[str, Any]:
    [listener] = envoy["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    [hcm] = chain["filters"]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    config: dict[str, Any] = hcm["typed_config"]
    return config


def http_filter(envoy: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [f for f in connection_manager(envoy)["http_filters"] if f["name"] == name]
    config: dict[str, Any] = found["typed_config"]
    return config


def envoy_route(envoy: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The first route that matches `path`, as Envoy picks it (None: Envoy's 404)."""
    [host] = connection_manager(envoy)["route_config"]["virtual_hosts"]
    bare = path.split("?", 1)[0]
    for route in host["routes"]:
        match = route["match"]
        if "prefix" in match and bare.startswith(match["prefix"]):
            return dict(route)
        if "path" in match and bare == match["path"]:
            return dict(route)
        if "safe_regex" in match and re.fullmatch(match["safe_regex"]["regex"], bare):
            return dict(route)
    return None


def routed(envoy: dict[str, Any], path: str) -> dict[str, Any]:
    route = envoy_route(envoy, path)
    assert route is not None, f"no route for {path}"
    return route


def authz_disabled(route: dict[str, Any]) -> bool:
    per_filter = route.get("typed_per_filter_config", {})
    return bool(per_filter.get("envoy.filters.http.ext_authz", {}).get("disabled", False))


def test_envoy_filters_run_strip_check_unpass_route(envoy: dict[str, Any]) -> None:
    names = [f["name"] for f in connection_manager(envoy)["http_filters"]]
    assert names == [
        "fairgate-strip",
        "envoy.filters.http.ext_authz",
        "fairgate-unpass",
        "envoy.filters.http.router",
    ]


def test_envoy_routes(envoy: dict[str, Any]) -> None:
    """The evidence and the waiting room reach the gate without a pass; the core needs
    one; the core system's callbacks are not found."""
    for name in ("confirm", "release"):
        assert routed(envoy, PATHS[name]).get("direct_response") == {"status": 404}
    for internal in INTERNAL:
        assert envoy_route(envoy, internal) is None, internal
    for name in ("keys", "receipt", "join", "page", "claim"):
        route = routed(envoy, PATHS[name])
        assert route["route"]["cluster"] == "fairgate", name
        assert authz_disabled(route), name
    core = routed(envoy, PATHS["core"])
    assert core["route"]["cluster"] == "core_bank"
    assert not authz_disabled(core)
    assert "x-gate-pass" in core["request_headers_to_remove"]
    clusters = {c["name"] for c in envoy["static_resources"]["clusters"]}
    assert clusters == {"fairgate", "core_bank"}


def test_envoy_pass_check_sees_no_client_identity(envoy: dict[str, Any]) -> None:
    authz = http_filter(envoy, "envoy.filters.http.ext_authz")
    assert authz["failure_mode_allow"] is False  # the gate down: nobody passes
    assert authz["status_on_error"] == {"code": "ServiceUnavailable"}  # ... and it is busy
    service = authz["http_service"]
    assert service["path_prefix"].startswith("/gate/auth?")
    assert service["server_uri"]["cluster"] == "fairgate"
    request = service["authorization_request"]
    assert "allowed_headers" not in request  # deprecated there: ExtAuthz.allowed_headers
    allowed = {p["exact"] for p in authz["allowed_headers"]["patterns"]}
    assert allowed == AUTH_INPUTS
    assert request["headers_to_add"] == [{"key": "x-gate-campaign", "value": "deposit-5pct"}]
    upstream = {
        p["exact"]
        for p in authz["http_service"]["authorization_response"]["allowed_upstream_headers"][
            "patterns"
        ]
    }
    assert upstream == {"x-gate-seq", "x-gate-customer"}


def test_envoy_no_pass_goes_to_the_waiting_room(envoy: dict[str, Any]) -> None:
    hcm = connection_manager(envoy)
    mapper = hcm["local_reply_config"]["mappers"][0]
    filters = mapper["filter"]["and_filter"]["filters"]
    assert filters[0]["status_code_filter"]["comparison"]["value"]["default_value"] == 401
    assert filters[1]["header_filter"]["header"]["string_match"] == {"prefix": "/core/"}
    assert mapper["status_code"] == 302
    [location] = mapper["headers_to_add"]
    assert location["header"] == {
        "key": "location",
        "value": "/q/deposit-5pct?return=%REQ(x-fairgate-return)%",
    }
    # made for the redirect only: never sent on
    assert "x-fairgate-return" in hcm["route_config"]["request_headers_to_remove"]


def test_envoy_busy_page(envoy: dict[str, Any]) -> None:
    """Envoy's own 502-504 (the gate or the core unreachable, the pass check failing):
    the busy page in both languages, as nginx and HAProxy serve it."""
    busy = connection_manager(envoy)["local_reply_config"]["mappers"][1]
    comparison = busy["filter"]["status_code_filter"]["comparison"]
    assert comparison["op"] == "GE" and comparison["value"]["default_value"] == 502
    body = busy["body_format_override"]
    assert body["content_type"].startswith("text/html")
    assert body["text_format_source"]["inline_string"] == BUSY_PAGE.read_text().strip()
    assert "%" not in body["text_format_source"]["inline_string"]  # no format operators
    headers = {h["header"]["key"]: h["header"]["value"] for h in busy["headers_to_add"]}
    assert headers["retry-after"] == "3"


class LuaHeaders:
    """Envoy's header map, as the Lua filter sees it (one value per name here)."""

    def __init__(self, headers: dict[str, str]):
        self.values = {k.lower(): v for k, v in headers.items()}

    def get(self, name: str) -> str | None:
        return self.values.get(name.lower())

    def add(self, name: str, value: str) -> None:
        assert name.lower() not in self.values, f"{name} added twice"
        self.values[name.lower()] = value

    def remove(self, name: str) -> None:
        self.values.pop(name.lower(), None)


def run_envoy_lua(envoy: dict[str, Any], name: str, headers: dict[str, str]) -> dict[str, str]:
    """Run one of the config's Lua filters' envoy_on_request under LuaJIT on `headers`."""
    luajit = pytest.importorskip("lupa.luajit21", reason="lupa (a dev dependency) has LuaJIT")
    runtime = luajit.LuaRuntime()
    runtime.execute(http_filter(envoy, name)["default_source_code"]["inline_string"])
    map_ = LuaHeaders(headers)

    class Handle:
        def headers(self) -> LuaHeaders:
            return map_

    runtime.globals().envoy_on_request(Handle())
    return map_.values


def test_envoy_lua_drops_forged_identity_and_escapes_the_url(envoy: dict[str, Any]) -> None:
    asked = "/core/a%20b+c?x=1&y=%26"
    forged = {name: "victim-123" for name in IDENTITY_HEADERS}
    seen = run_envoy_lua(
        envoy,
        "fairgate-strip",
        {":path": asked, "cookie": "fg_pass=P; s=1", **forged, "x-fairgate-return": "/evil"},
    )
    assert not IDENTITY_HEADERS & set(seen)
    assert seen["cookie"] == "fg_pass=P; s=1"  # the pass check still needs it
    location = urlsplit("/q/deposit-5pct?return=" + seen["x-fairgate-return"])
    assert parse_qs(location.query)["return"] == [asked]


@pytest.mark.parametrize(
    ("cookie", "kept"),
    [
        ("fg_pass=P", None),
        ("fg_pass=P; session=s1", "session=s1"),
        ("a=1; fg_pass=P; b=2", "a=1; b=2"),
        ("a=1;fg_pass=P;fg_pass=Q", "a=1"),
        ("xfg_pass=1; a=2", "xfg_pass=1; a=2"),
    ],
)
def test_envoy_lua_keeps_the_pass_from_the_core(
    envoy: dict[str, Any], cookie: str, kept: str | None
) -> None:
    seen = run_envoy_lua(envoy, "fairgate-unpass", {":path": "/core/x", "cookie": cookie})
    assert seen.get("cookie") == kept
    # the waiting room's claims still carry the pass
    seen = run_envoy_lua(envoy, "fairgate-unpass", {":path": "/q/c/claim", "cookie": cookie})
    assert seen["cookie"] == cookie


# -- Traefik ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traefik() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "traefik" / "dynamic.yml").read_text())
    routing: dict[str, Any] = document["http"]
    return routing


_TOKEN = re.compile(r"\s*(&&|\|\||!|\(|\)|(?:Path|PathPrefix|PathRegexp)\(`[^`]*`\))")


def rule_matches(rule: str, path: str) -> bool:
    """Traefik's path matchers with &&, ||, ! and parentheses, for a request path."""
    tokens: list[str] = []
    position = 0
    while position < len(rule.rstrip()):
        found = _TOKEN.match(rule, position)
        assert found is not None, f"cannot read {rule[position:]!r}"
        tokens.append(found.group(1))
        position = found.end()

    def expression(i: int) -> tuple[bool, int]:
        value, i = conjunction(i)
        while i < len(tokens) and tokens[i] == "||":
            right, i = conjunction(i + 1)
            value = value or right
        return value, i

    def conjunction(i: int) -> tuple[bool, int]:
        value, i = unary(i)
        while i < len(tokens) and tokens[i] == "&&":
            right, i = unary(i + 1)
            value = value and right
        return value, i

    def unary(i: int) -> tuple[bool, int]:
        token = tokens[i]
        if token == "!":
            value, i = unary(i + 1)
            return not value, i
        if token == "(":
            value, i = expression(i + 1)
            assert tokens[i] == ")"
            return value, i + 1
        kind, argument = token[:-2].split("(`", 1)
        if kind == "Path":
            return path == argument, i + 1
        if kind == "PathPrefix":
            return path.startswith(argument), i + 1
        return re.search(argument, path) is not None, i + 1

    value, end = expression(0)
    assert end == len(tokens), rule
    return value


def traefik_router(traefik: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The router Traefik picks for `path`: of those that match, the longest rule."""
    bare = path.split("?", 1)[0]
    matching = [r for r in traefik["routers"].values() if rule_matches(r["rule"], bare)]
    if not matching:
        return None
    return dict(max(matching, key=lambda r: len(r["rule"])))


def test_traefik_routes(traefik: dict[str, Any]) -> None:
    for name in ("confirm", "release"):
        assert traefik_router(traefik, PATHS[name]) is None, name  # Traefik answers 404
    for internal in INTERNAL:
        assert traefik_router(traefik, internal) is None, internal
    for name in ("keys", "receipt", "join", "page", "claim"):
        router = traefik_router(traefik, PATHS[name])
        assert router is not None and router["service"] == "fairgate", name
        assert "fairgate-pass" not in router["middlewares"], name
    core = traefik_router(traefik, PATHS["core"])
    assert core is not None and core["service"] == "core-bank"
    # identity first; the waiting room on a 401 around the pass check; the pass dropped after
    assert core["middlewares"] == ["strip-identity", "wait-on-401", "fairgate-pass", "unpass"]
    for router in traefik["routers"].values():
        assert router["middlewares"][0] == "strip-identity"
        assert set(router["middlewares"]) <= set(traefik["middlewares"])
        assert router["service"] in traefik["services"]


def test_traefik_strips_client_identity(traefik: dict[str, Any]) -> None:
    removed = traefik["middlewares"]["strip-identity"]["headers"]["customRequestHeaders"]
    assert {k.lower() for k, v in removed.items() if v == ""} == IDENTITY_HEADERS


def test_traefik_pass_check(traefik: dict[str, Any]) -> None:
    forward = traefik["middlewares"]["fairgate-pass"]["forwardAuth"]
    address = urlsplit(forward["address"])
    assert address.path == "/gate/auth"
    assert parse_qs(address.query) == {"campaign": ["deposit-5pct"]}
    assert {h.lower() for h in forward["authRequestHeaders"]} == AUTH_INPUTS
    # Cookie: /gate/auth answers with the cookies less fg_pass (tests/test_auth_cookie.py)
    assert {h.lower() for h in forward["authResponseHeaders"]} == {
        "x-gate-seq",
        "x-gate-customer",
        "cookie",
    }
    wait = traefik["middlewares"]["wait-on-401"]["errors"]
    assert wait["status"] == ["401"] and wait["service"] == "fairgate"
    assert wait["query"] == "/q/deposit-5pct"
    unpass = traefik["middlewares"]["unpass"]["headers"]["customRequestHeaders"]
    assert unpass == {"X-Gate-Pass": ""}


# -- nginx and HAProxy: what is not exercised live -------------------------------------


def test_one_busy_page_for_nginx_and_haproxy() -> None:
    """nginx serves the busy page inline (no file to install), HAProxy from a file:
    the same page, in both languages, that reloads itself."""
    locations = (DEPLOY / "nginx" / "fairgate-locations.conf").read_text()
    inline = re.search(r"location @fairgate_busy_page \{.*?return 503 '([^']*)';", locations, re.S)
    assert inline is not None
    page = BUSY_PAGE.read_text().strip()
    assert inline.group(1) == page
    assert '<section lang="ko">' in page and '<section lang="en">' in page
    assert 'aria-live="polite"' in page and 'http-equiv="refresh"' in page


# -- idle connections to the gate --------------------------------------------------------


def test_every_proxy_lets_idle_gate_connections_go_before_the_gate_does() -> None:
    """The gate closes an idle keep-alive connection after keepalive_timeout_s; a proxy that
    kept it longer could send a request on a connection the gate is closing."""
    from gate.config import default_config

    gate_s = default_config().keepalive_timeout_s
    nginx = (DEPLOY / "nginx" / "nginx.conf").read_text()
    upstreams = re.findall(r"upstream (fairgate\w*)\s*\{([^}]*)\}", nginx)
    assert [name for name, _ in upstreams] == ["fairgate", "fairgate_admitted"]
    for name, block in upstreams:
        nginx_s = re.search(r"keepalive_timeout (\d+)s;", block)
        assert nginx_s is not None and int(nginx_s.group(1)) < gate_s, name
    envoy_doc = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())
    cluster = next(c for c in envoy_doc["static_resources"]["clusters"] if c["name"] == "fairgate")
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert int(options["common_http_protocol_options"]["idle_timeout"].rstrip("s")) < gate_s
    traefik_doc = yaml.safe_load((DEPLOY / "traefik" / "dynamic.yml").read_text())["http"]
    transport = traefik_doc["services"]["fairgate"]["loadBalancer"]["serversTransport"]
    timeouts = traefik_doc["serversTransports"][transport]["forwardingTimeouts"]
    assert int(timeouts["idleConnTimeout"].rstrip("s")) < gate_s
    # HAProxy 2.6 has no idle timeout for server connections (its idle pool is purged
    # every pool-purge-delay, measured 15 s for one connection: the gate's own bound).
    # So an upstream connection is never shared (http-reuse never): it lives and dies
    # with its client's, whose idle keep-alive is bounded (timeout http-keep-alive); the
    # Lua's checks (core.httpclient, no pool settings) ask for Connection: close.
    haproxy = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    defaults = re.search(r"^defaults\n((?:[ \t]+.*\n|\n)*)", haproxy, re.MULTILINE)
    assert defaults is not None
    keep_alive = re.search(r"^\s*timeout http-keep-alive (\d+)s\s*$", defaults.group(1), re.M)
    assert keep_alive is not None and int(keep_alive.group(1)) < gate_s
    backend = re.search(r"^backend fairgate\n((?:[ \t]+.*\n|\n)*)", haproxy, re.MULTILINE)
    assert backend is not None
    assert re.search(r"^\s*http-reuse never\s*$", backend.group(1), re.MULTILINE)
    lua = (DEPLOY / "haproxy" / "fairgate.lua").read_text()
    assert re.search(r'\["connection"\] = \{ "close" \}', lua)


class _Upstream(socketserver.ThreadingTCPServer):
    """Stands in for the gate, the login and the core behind a proxy: answers every
    request 200 and keeps the connection open for as long as the proxy does, recording
    for each connection the paths it carried, its last answer and its close."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.connections: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _UpstreamHandler(socketserver.StreamRequestHandler):
    server: _Upstream

    def handle(self) -> None:
        record: dict[str, Any] = {"paths": [], "answered": None, "closed": None}
        with self.server.lock:
            self.server.connections.append(record)
        try:
            while True:
                line = self.rfile.readline()
                if not line.strip():
                    break
                record["paths"].append(line.split()[1].decode())
                length = 0
                while (header := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                self.rfile.read(length)
                extra = (
                    "X-Authenticated-Customer: kim-0001\r\n"
                    "X-Gate-Seq: 1\r\nX-Gate-Customer: 00ff\r\n"
                )
                self.wfile.write(f"HTTP/1.1 200 OK\r\n{extra}Content-Length: 2\r\n\r\nok".encode())
                record["answered"] = time.monotonic()
        except OSError:
            pass
        record["closed"] = time.monotonic()


@pytest.mark.slow
@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (.ci/run installs it)")
def test_haproxy_lets_idle_gate_connections_go_before_the_gate_does(tmp_path: Path) -> None:
    """The shipped haproxy.cfg run by the real binary, every upstream a recorder that
    never closes a connection itself; a customer's connection then stays idle. Before:
    both the connection that carried the customer's request to the gate and the Lua's
    pass and login checks idled 15.0 s in HAProxy's pool, the gate's own bound (a request
    could go out on a connection the gate was closing). Now the customer's upstream
    connection closes with the customer's idle connection (10 s) and the checks' at once."""
    from gate.config import default_config

    gate_s = default_config().keepalive_timeout_s
    upstream = _Upstream()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(haproxy_conf(port))
    address = f"127.0.0.1:{upstream.port}"
    env = {
        **os.environ,
        "FAIRGATE_IDENTITY": "header",
        "FAIRGATE_LUA": str(DEPLOY / "haproxy" / "fairgate.lua"),
        "FAIRGATE_GATE": address,
        "FAIRGATE_CORE": address,
        "FAIRGATE_LOGIN": address,
        "FAIRGATE_CAMPAIGN": "c1",
        "FAIRGATE_LOGIN_PAGE": "/login",
        "FAIRGATE_BUSY_PAGE": str(BUSY_PAGE),
        "FAIRGATE_PROXY_SECRET": PROXY_SECRET,
    }
    assert HAPROXY is not None
    try:
        with (
            running([HAPROXY, "-f", str(conf), "-db"], port, tmp_path / "out", "haproxy", env),
            socket.create_connection(("127.0.0.1", port), timeout=5) as customer,
        ):
            for path in ("/q/c1/status", "/core/accounts"):
                customer.sendall(
                    f"GET {path} HTTP/1.1\r\nHost: promo\r\nCookie: session=1\r\n"
                    "X-Gate-Pass: p\r\n\r\n".encode()
                )
                answer = b""
                while not answer.endswith(b"ok"):
                    chunk = customer.recv(4096)
                    assert chunk, answer
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200"), answer
            # The customer's connection stays open and idle from here.

            def carried(prefix: str) -> list[dict[str, Any]]:
                with upstream.lock:
                    found = list(upstream.connections)
                return [c for c in found if any(p.startswith(prefix) for p in c["paths"])]

            deadline = time.monotonic() + gate_s + 3
            watched = ("/q/", "/gate/auth", "/session")
            while time.monotonic() < deadline:
                if all(c["closed"] for prefix in watched for c in carried(prefix)):
                    break
                time.sleep(0.1)
            idle = {
                prefix: [
                    round((c["closed"] or deadline) - c["answered"], 2) for c in carried(prefix)
                ]
                for prefix in watched
            }
    finally:
        upstream.shutdown()
        upstream.server_close()
    print(f"\nidle upstream connections (s), gate keep-alive {gate_s} s: {idle}")
    assert all(idle.values()), idle  # each kind of upstream request was made
    # the customer's request to the gate: closed with the customer's idle connection
    assert max(idle["/q/"]) < gate_s - 3, idle
    # the pass check and the login: Connection: close, no idle connection left behind
    assert max(idle["/gate/auth"] + idle["/session"]) < 2, idle
