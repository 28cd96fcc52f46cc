"""The pass checked at the edge (issue 15): nginx with njs (deploy/nginx/fairgate-edge.*)
and HAProxy with its Lua (deploy/haproxy/fairgate-edge.*) verify the pass themselves, with
the key file of `gate keys edge` and the revocation list of GET /gate/revoked, in front of
a real gate, the bank's login and its core system.

- every scenario the auth_request configs pass (tests/proxy_support.py) passes through
  the edge variant too: the same statuses and redirects;
- refusals, one by one: forged MAC, unknown kid, a ticket, another campaign, another
  customer, expired, not yet valid, revoked (refused within ~1 s, waited on);
- 0 calls to /gate/auth across 200 protected requests once the customer has arrived
  (the gate's own count of its pass checks, fairgate_auth_decisions_total);
- the edge's verdict agrees with the gate's (/gate/auth, gate/tokens.py) on random valid
  and tampered tokens, signed and not.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgpack
import pytest

from gate import base64url
from gate.redis_server import RedisServer, free_port
from gate.signing import parse_keys
from tests.helpers import wait_for
from tests.proxy_support import (
    DEPLOY,
    HAPROXY,
    NGINX,
    NJS_MODULE,
    PROXY_SECRET,
    SCENARIOS,
    Front,
    edge_key_file,
    haproxy_conf,
    nginx_accepts,
    proxied_gate,
    unique,
)

needs_nginx = pytest.mark.skipif(
    NGINX is None or not Path(NJS_MODULE).exists(),
    reason="nginx with njs is not installed (.ci/run installs libnginx-mod-http-js)",
)
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (.ci/run installs it)"
)
PROXIES = [
    pytest.param("nginx", marks=needs_nginx),
    pytest.param("haproxy", marks=needs_haproxy),
]


@pytest.fixture(scope="module", params=PROXIES)
def edge(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    keys_file: Path,
) -> Iterator[Front]:
    campaign = f"{request.param}-edge"
    root = tmp_path_factory.mktemp(campaign)
    with proxied_gate(
        request.param, redis_server.url, root, keys_file, campaign=campaign, edge=True
    ) as front:
        yield front


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_edge_passes_every_proxy_scenario(
    edge: Front, scenario: Callable[[Front], Awaitable[None]]
) -> None:
    await scenario(edge)


# -- what the tests forge and count ----------------------------------------------------


def signing(keys_file: Path) -> tuple[str, bytes, bytes]:
    """The current pass key (kid, key) and the digest key of the suite's key file."""
    keys = parse_keys(json.loads(keys_file.read_text()), str(keys_file))
    return keys.hmac_current, keys.hmac_keys[keys.hmac_current], keys.digest_key


def digest_of(digest_key: bytes, campaign: str, customer: str) -> bytes:
    message = campaign.encode() + b"\x00" + customer.encode()
    return hmac.new(digest_key, message, hashlib.sha256).digest()[:16]


def sign(key: bytes, payload: bytes) -> str:
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return f"{base64url.encode(payload)}.{base64url.encode(mac)}"


def arrived(key: bytes, text: str) -> str:
    """The arrival mark the edge gives a pass's first use (deploy/nginx/fairgate-edge.js)."""
    mark = hmac.new(key, b"fairgate-arrived\x00" + text.encode(), hashlib.sha256).digest()
    return base64url.encode(mark[:16])


async def auth_checks(front: Front) -> int:
    """How many pass checks the gate has answered (/gate/auth), by its own metrics."""
    async with aiohttp.ClientSession() as client, client.get(front.gate.url + "/metrics") as r:
        text = await r.text()
    return sum(
        int(float(value))
        for value in re.findall(r"^fairgate_auth_decisions_total\{[^}]*\} (\S+)$", text, re.M)
    )


async def test_no_call_to_the_gate_per_protected_request(edge: Front) -> None:
    """A customer's first request with a pass goes through the gate's door once (their
    arrival is metered, issue 12); the 200 after it are checked by the proxy alone."""
    async with edge.client(unique("edge-many")) as client:
        admitted = await edge.admitted(client)
        before = await auth_checks(edge)
        async with client.get(f"{edge.url}/core/first", allow_redirects=False) as r:
            assert r.status == 200, (r.status, await r.text())
        assert await auth_checks(edge) == before + 1  # the arrival
        assert "fg_arrived" in {c.key for c in client.cookie_jar}
        path = f"/core/many-{secrets.token_hex(4)}"
        started = await auth_checks(edge)

        async def one() -> int:
            async with client.get(edge.url + path, allow_redirects=False) as r:
                return r.status

        statuses: list[int] = []
        for _ in range(20):  # 200 requests, 10 at a time
            statuses += await asyncio.gather(*(one() for _ in range(10)))
        assert statuses == [200] * 200
        assert await auth_checks(edge) == started  # 0 calls to /gate/auth
    seen = edge.core_seen(path)
    assert len(seen) == 200
    assert {s.headers.get("x-gate-seq") for s in seen} == {str(admitted["seq"])}
    assert all("fg_arrived" not in s.cookies and "fg_pass" not in s.cookies for s in seen)


async def test_refusals_one_by_one(edge: Front, keys_file: Path) -> None:
    """Each way a pass can be wrong, refused at the edge as the auth_request config
    refuses it: to the waiting page (302) or 403, never to the core."""
    kid, key, digest_key = signing(keys_file)
    owner = unique("edge-owner")
    now = int(time.time())
    mine = digest_of(digest_key, edge.campaign, owner)

    def pass_of(**fields: Any) -> str:
        values = {
            "kind": "p",
            "kid": kid,
            "campaign": edge.campaign,
            "seq": 1,
            "digest": mine,
            "exp": now + 300,
        }
        values.update(fields)
        payload = [values[f] for f in ("kind", "kid", "campaign", "seq", "digest", "exp")]
        if "not_before" in values:
            payload.append(values["not_before"])
        return sign(fields.get("key", key), msgpack.packb(payload))

    good = pass_of()
    forged = good[:-2] + ("AA" if not good.endswith("AA") else "BA")

    def not_utf8(bad: bytes) -> str:
        """A pass signed by the right key whose campaign is 4 bytes that are not UTF-8."""
        campaign = msgpack.packb(edge.campaign)
        fields = msgpack.packb(["p", kid, NOT_UTF8, 1, mine, now + 300])
        payload = fields.replace(msgpack.packb(NOT_UTF8), msgpack.packb(NOT_UTF8)[:1] + bad)
        assert campaign not in payload and len(payload) == len(fields)
        return sign(key, payload)

    cases = {
        "forged MAC": (forged, 302, "bad_pass"),
        "unknown kid": (pass_of(kid="hunknown1"), 302, "bad_pass"),
        "signed by another key": (pass_of(key=secrets.token_bytes(32)), 302, "bad_pass"),
        "a ticket": (pass_of(kind="t"), 302, "bad_pass"),
        "expired": (pass_of(exp=now - 1), 302, "pass_expired"),
        "not yet valid": (
            pass_of(not_before=(now + 60) * 1_000_000),
            302,
            "pass_not_yet",
        ),
        "another campaign": (pass_of(campaign="another-campaign"), 403, "wrong_campaign"),
        "a campaign beyond ASCII": (pass_of(campaign="kampány-ü"), 403, "wrong_campaign"),
        # read as text with replacement characters these would be "another campaign"
        "a campaign with a stray byte": (not_utf8(b"\xffZZZ"), 302, "bad_pass"),
        "a campaign with a surrogate": (not_utf8(b"\xed\xa0\x80Z"), 302, "bad_pass"),
        "a campaign with an overlong NUL": (not_utf8(b"\xc0\x80ZZ"), 302, "bad_pass"),
        "another customer": (
            pass_of(digest=digest_of(digest_key, edge.campaign, "someone-else")),
            403,
            "wrong_customer",
        ),
    }
    async with edge.client(owner) as client:
        for why, (text, status, code) in cases.items():
            path = f"/core/refused-{secrets.token_hex(4)}"
            headers = {"X-Gate-Pass": text, "Cookie": f"fg_arrived={arrived(key, text)}"}
            async with client.get(edge.url + path, headers=headers, allow_redirects=False) as r:
                assert r.status == status, (why, r.status, await r.text())
                if status == 302:
                    assert urlsplit(r.headers["Location"]).path == f"/q/{edge.campaign}", why
                # nginx names the reason on a 403; a 401's redirect is the waiting room's
                refused = r.headers.get("X-Fairgate-Refused", code if status == 302 else None)
                assert refused == code, (why, dict(r.headers))
            assert edge.core_seen(path) == [], why
        # and the same pass, good, goes through (its first use by the gate's door)
        async with client.get(
            f"{edge.url}/core/good", headers={"X-Gate-Pass": good}, allow_redirects=False
        ) as r:
            assert r.status == 200, (r.status, await r.text())


# -- the edge agrees with the gate -----------------------------------------------------

GATE_TO_EDGE = {200: 200, 401: 302, 403: 403}  # /gate/auth's answer -> what auth_request does
NOT_UTF8 = "ZZZZ"  # a marker of 4 bytes, replaced by 4 that are not UTF-8 once packed


def random_token(
    rng: random.Random, kid: str, key: bytes, campaign: str, mine: bytes, other: bytes
) -> tuple[str, str]:
    """A pass, valid or tampered in one or two of many ways (signed with the right key,
    or not): the token's text and what was done to it."""
    now = int(time.time())
    fields: list[Any] = ["p", kid, campaign, rng.randint(1000, 10**6), mine, now + 300]
    if rng.random() < 0.3:
        fields.append((now - rng.randint(1, 100)) * 1_000_000)  # a not_before passed
    done: list[str] = []

    def put(index: int, value: Any) -> None:
        if index < len(fields):  # a field dropped before stays dropped
            fields[index] = value

    structural: list[Callable[[], None]] = [
        lambda: put(0, rng.choice(["t", "q", "P", "", "pp"])),
        lambda: put(1, rng.choice(["h" + secrets.token_hex(4), kid + "x"])),
        lambda: put(2, rng.choice(["another-campaign", campaign + "x", ""])),
        lambda: put(3, rng.choice([0, -1, True, "5", 2**31])),
        lambda: put(4, rng.choice([mine[:15], mine + b"\x00", other, "x" * 16])),
        lambda: put(5, rng.choice([now - 60, now - 86400, "9", 1.5, True, 0])),
        lambda: fields.__setitem__(slice(6, None), [rng.choice([0, -1, (now + 90) * 10**6])]),
        lambda: fields.extend(["extra", 1][: rng.randint(1, 2)] if len(fields) == 7 else [1, 2]),
        lambda: fields.pop(rng.randrange(len(fields))),
        # text beyond ASCII: valid UTF-8, or (the marker, replaced below) not UTF-8
        lambda: put(rng.choice([1, 2]), rng.choice(["kampány-ü", "€€€", NOT_UTF8])),
    ]
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        index = rng.randrange(len(structural))
        structural[index]()
        done.append(f"field change {index}")
    payload = msgpack.packb(fields)
    if NOT_UTF8.encode() in payload:
        # a surrogate, an overlong NUL, a stray byte, a cut sequence: msgpack refuses each
        bad = rng.choice([b"\xed\xa0\x80Z", b"\xc0\x80ZZ", b"\xffZZZ", b"Z\xe2\x82Z"])
        payload = payload.replace(NOT_UTF8.encode(), bad)
        done.append(f"not UTF-8 {bad!r}")
    if rng.random() < 0.1 and 0x90 <= payload[0] <= 0x9F:
        # the list's length in an array 16 header: not the shortest form, read all the same
        payload = b"\xdc\x00" + bytes([payload[0] - 0x90]) + payload[1:]
        done.append("array 16")
    if rng.random() < 0.05:
        payload = rng.choice(
            [payload + b"\x00", msgpack.packb({"k": fields}), msgpack.packb([fields])]
        )
        done.append("payload shape")
    signer = key if rng.random() > 0.1 else secrets.token_bytes(32)
    if signer is not key:
        done.append("another key")
    text = sign(signer, payload)
    if rng.random() < 0.2:
        body, mac = text.split(".")
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        how = rng.randrange(7)
        if how == 0:  # one character of the payload changed
            at = rng.randrange(len(body))
            body = body[:at] + rng.choice(alphabet.replace(body[at], "")) + body[at + 1 :]
        elif how == 1:  # one character of the MAC changed
            at = rng.randrange(len(mac))
            mac = mac[:at] + rng.choice(alphabet.replace(mac[at], "")) + mac[at + 1 :]
        elif how == 2:  # padded
            mac += "="
        elif how == 3:  # the MAC's unused trailing bits set: not canonical
            mac = mac[:-1] + alphabet[alphabet.index(mac[-1]) | 1]
        elif how == 4:
            mac += ".x"
        elif how == 5:
            body = base64.b64encode(payload).decode()  # standard base64, padded
        else:
            mac = mac[: rng.randrange(len(mac))]
        text = f"{body}.{mac}"
        done.append(f"text change {how}")
    return text, ", ".join(done) or "valid"


async def test_edge_agrees_with_the_gate(edge: Front, keys_file: Path) -> None:
    """Random passes, valid and tampered: the edge's answer (with the arrival mark, so that
    it decides alone) is what auth_request makes of /gate/auth's (gate/tokens.py and
    gate/http/checks.py): 200, 401 -> the waiting page, 403; the same reason where the
    edge names one."""
    kid, key, digest_key = signing(keys_file)
    customer = unique("edge-fuzz")
    mine = digest_of(digest_key, edge.campaign, customer)
    other = digest_of(digest_key, edge.campaign, customer + "-other")
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    tokens = [random_token(rng, kid, key, edge.campaign, mine, other) for _ in range(160)]
    to_gate = {
        "X-Customer-Id": customer,
        "X-Gate-Proxy-Secret": PROXY_SECRET,
        "X-Gate-Campaign": edge.campaign,
    }
    limit = asyncio.Semaphore(8)
    verdicts: list[tuple[str, int, str]] = []
    async with edge.client(customer) as client, aiohttp.ClientSession() as proxy:

        async def compare(text: str, why: str) -> None:
            async with limit:
                headers = {"X-Gate-Pass": text, "Cookie": f"fg_arrived={arrived(key, text)}"}
                async with client.get(
                    f"{edge.url}/core/fuzz", headers=headers, allow_redirects=False
                ) as r:
                    at_edge, edge_code = r.status, r.headers.get("X-Fairgate-Refused")
                async with proxy.get(
                    edge.gate.url + "/gate/auth", headers={**to_gate, "X-Gate-Pass": text}
                ) as r:
                    by_gate = r.status
                    gate_code = "" if r.status == 200 else (await r.json())["error"]["code"]
            verdicts.append((why, by_gate, gate_code))
            context = (seed, why, text, at_edge, edge_code, by_gate, gate_code)
            assert at_edge == GATE_TO_EDGE.get(by_gate), context
            if edge_code is not None:
                assert edge_code == gate_code, context

        await asyncio.gather(*(compare(text, why) for text, why in tokens))
    outcomes = {by_gate for _, by_gate, _ in verdicts}
    assert outcomes == {200, 401, 403}, (seed, outcomes)  # the mix covered each answer


# -- the list, the keys, and a gate that does not answer -------------------------------


async def test_revocation_list_for_the_proxy_only(edge: Front) -> None:
    """GET /gate/revoked answers a trusted proxy (its secret) with the campaign's list;
    anyone else 401, an unknown campaign 404."""
    url = f"{edge.gate.url}/gate/revoked"
    secret = {"X-Gate-Proxy-Secret": PROXY_SECRET}
    async with aiohttp.ClientSession() as client:
        async with client.get(url, params={"campaign": edge.campaign}, headers=secret) as r:
            assert r.status == 200, await r.text()
            lines = dict(line.split(" ", 1) for line in (await r.text()).splitlines()[1:])
        assert lines["campaign"] == edge.campaign and lines["state"] == "open"
        assert lines["digest_key"] == "legacy"  # the suite's key file (tests/conftest.py)
        assert abs(int(lines["time_ms"]) / 1000 - time.time()) < 5
        for headers in ({}, {"X-Gate-Proxy-Secret": "guessed-secret-0123456789"}):
            async with client.get(url, params={"campaign": edge.campaign}, headers=headers) as r:
                assert r.status == 401, await r.text()
                assert (await r.json())["error"]["code"] == "untrusted_proxy"
        for campaign in ("no-such-campaign", "../x", ""):
            async with client.get(url, params={"campaign": campaign}, headers=secret) as r:
                assert r.status == 404, await r.text()
                assert (await r.json())["error"]["code"] == "unknown_campaign"


def test_gate_keys_edge(tmp_path: Path, keys_file: Path) -> None:
    """`gate keys edge`: every pass key and digest key of the gate's files, mode 0600;
    a missing file is a clear error."""
    out = edge_key_file(keys_file, tmp_path)
    assert out.stat().st_mode & 0o777 == 0o600
    document = json.loads(out.read_text())
    keys = parse_keys(json.loads(keys_file.read_text()), str(keys_file))
    assert {k: base64url.decode(v) for k, v in document["pass_keys"].items()} == keys.hmac_keys
    assert base64url.decode(document["digest_keys"]["legacy"]) == keys.digest_key
    assert "ed25519" not in json.dumps(document)
    gate = Path(sys.executable).parent / "gate"
    missing = subprocess.run(
        [str(gate), "keys", "edge", "--signing-keys", str(tmp_path / "nope.json")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert "bad_keys" in missing.stderr and "nope.json" in missing.stderr


@pytest.mark.parametrize("proxy", [p for p in PROXIES])
async def test_no_fresh_list_fails_closed(
    proxy: str, redis_server: RedisServer, tmp_path: Path, keys_file: Path
) -> None:
    """The gate stopped: the edge keeps serving an arrived customer while its list is
    within the gate's stale limit, then refuses (to the waiting page) until the gate
    answers again."""
    with proxied_gate(
        proxy, redis_server.url, tmp_path, keys_file, campaign=f"{proxy}-stale", edge=True
    ) as front:
        async with front.client(unique("edge-stale")) as client:
            await front.admitted(client)

            async def status() -> int:
                async with client.get(f"{front.url}/core/stale", allow_redirects=False) as r:
                    return r.status

            assert await status() == 200  # arrived
            stopping = time.monotonic()  # the gate may take a while to stop
            front.gate.stop()
            try:

                async def refused() -> bool:
                    return await status() == 302

                await wait_for(refused, 5, "the edge to refuse with no fresh list")
                # not before the list was as old as the gate's stale limit (1 s)
                assert time.monotonic() - stopping > 0.5
            finally:
                front.gate.start()
            await front.gate.wait_ready()

            async def served() -> bool:
                return await status() == 200

            await wait_for(served, 10, "the edge to serve again")


@needs_nginx
def test_the_shipped_edge_example_passes_nginx_t(tmp_path: Path, keys_file: Path) -> None:
    """deploy/nginx/nginx-edge.conf as shipped, its paths made local and TLS off: njs
    compiles fairgate-edge.js and preloads the key file of `gate keys edge`."""
    assert NGINX is not None
    shipped = (DEPLOY / "nginx" / "nginx-edge.conf").read_text()
    secret = tmp_path / "proxy-secret.conf"
    secret.write_text(f'set $fairgate_proxy_secret "{PROXY_SECRET}";\n')
    local = (
        shipped.replace("/etc/fairgate/nginx/proxy-secret.conf", str(secret))
        .replace("/etc/fairgate/nginx/", f"{DEPLOY / 'nginx'}/")
        .replace("/etc/fairgate/edge-keys.json", str(edge_key_file(keys_file, tmp_path)))
        .replace("modules/ngx_http_js_module.so", NJS_MODULE)
        .replace("/run/fairgate-edge", str(tmp_path))
        .replace("listen 443 ssl;", f"listen 127.0.0.1:{free_port()};")
    )
    local = "\n".join(line for line in local.splitlines() if "ssl_certificate" not in line)
    # the maps, the edge's maps and script, the locations and the edge's, as shipped
    assert local.count(str(DEPLOY)) == 5
    check = nginx_accepts(tmp_path, local)
    assert check.returncode == 0, check.stderr


@needs_haproxy
def test_haproxy_edge_refuses_to_start_without_what_it_needs(
    tmp_path: Path, keys_file: Path
) -> None:
    """FAIRGATE_PASS_CHECK=edge with no key file, or with identity = "jwt" (the customer is
    in a token only the gate checks): HAProxy does not start, and says why."""
    assert HAPROXY is not None
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(haproxy_conf(free_port()))
    base = {
        **os.environ,
        "FAIRGATE_LUA": str(DEPLOY / "haproxy" / "fairgate.lua"),
        "FAIRGATE_BUSY_PAGE": str(DEPLOY / "haproxy" / "fairgate-busy.html"),
        "FAIRGATE_PROXY_SECRET": PROXY_SECRET,
        "FAIRGATE_PASS_CHECK": "edge",
        "FAIRGATE_EDGE_KEYS": str(edge_key_file(keys_file, tmp_path)),
    }
    for env, why in (
        ({}, None),
        ({"FAIRGATE_EDGE_KEYS": str(tmp_path / "none.json")}, "cannot read the key file"),
        ({"FAIRGATE_IDENTITY": "jwt"}, "needs FAIRGATE_IDENTITY=header"),
    ):
        check = subprocess.run(
            [HAPROXY, "-c", "-f", str(conf)], capture_output=True, text=True, env={**base, **env}
        )
        if why is None:
            assert check.returncode == 0, check.stdout + check.stderr
        else:
            assert check.returncode != 0 and why in check.stdout + check.stderr, why
