"""The Envoy and Traefik configs, checked without their binaries (neither is packaged
where the tests run): they parse, route what they should and nothing else, never send
a client's identity header on, keep the pass from the core; Envoy's inline Lua runs
under LuaJIT (as in Envoy) against a stand-in request."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

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
    upstream = re.search(r"upstream fairgate\s*\{([^}]*)\}", nginx)
    assert upstream is not None
    nginx_s = re.search(r"keepalive_timeout (\d+)s;", upstream.group(1))
    assert nginx_s is not None and int(nginx_s.group(1)) < gate_s
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
