"""The listeners against slow and malformed clients, on a real `gate serve` (raw sockets).

Before the hardening, a request head or body sent slowly held its connection for as long
as the client liked, a chunk size of 2^64-1 hung the join for ever, an idle keep-alive
lasted 3,630 s, a lone surrogate in a customer id or a reason (JSON "\\ud800") was a 500,
and each malformed request was an ERROR with a traceback in the log.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gate.config import default_config
from gate.errors import ConfigError
from tests.helpers import (
    ADMIN_TOKEN,
    CORE_TOKEN,
    GateProcess,
    admitted_pass,
    as_customer,
    create_campaign,
    join,
    spec,
    wait_for,
)

HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
KEEPALIVE_S = 3
MARGIN_S = 1.5
LIMITS = {
    "GATE_HEADER_TIMEOUT_MS": str(int(HEAD_TIMEOUT_S * 1000)),
    "GATE_BODY_TIMEOUT_MS": str(int(BODY_TIMEOUT_S * 1000)),
    "GATE_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_S),
}


@pytest.fixture
async def served(redis_url: str, tmp_path: Path, keys_file: Path) -> AsyncIterator[GateProcess]:
    async with GateProcess(redis_url, tmp_path / "gate", keys_file, extra_env=LIMITS) as gate:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                gate.admin_url + "/admin/campaigns",
                json=spec("c1"),
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as r,
        ):
            assert r.status == 201, await r.text()
        yield gate


async def open_at(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_after(reader: asyncio.StreamReader, deadline_s: float) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it sent before."""
    started = time.monotonic()
    received = await asyncio.wait_for(reader.read(), deadline_s)
    return time.monotonic() - started, received


def request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gate"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def status_of(received: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", received)
    assert match is not None, received[:200]
    return int(match.group(1))


async def slow_head(port: int) -> tuple[float, bytes]:
    """A request head trickled a byte every 0.2 s, never finished."""
    reader, writer = await open_at(port)
    head = b"GET /healthz HTTP/1.1\r\nHost: gate\r\nX-Slow: " + b"a" * 100

    async def trickle() -> None:
        for byte in head:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.2)

    sender = asyncio.create_task(trickle())
    try:
        return await closed_after(reader, HEAD_TIMEOUT_S + MARGIN_S + 2)
    finally:
        sender.cancel()
        writer.close()


async def slow_body(port: int, head: bytes) -> tuple[float, bytes]:
    reader, writer = await open_at(port)
    writer.write(head)
    try:
        return await closed_after(reader, BODY_TIMEOUT_S + MARGIN_S + 2)
    finally:
        writer.close()


async def idle_after_a_request(port: int) -> tuple[float, bytes]:
    reader, writer = await open_at(port)
    writer.write(request("GET", "/healthz"))
    try:
        head = await asyncio.wait_for(reader.readuntil(b'{"ok":true}'), 5)
        assert status_of(head) == 200
        return await closed_after(reader, KEEPALIVE_S + MARGIN_S + 2)
    finally:
        writer.close()


async def test_slow_and_idle_clients_are_cut_off(served: GateProcess) -> None:
    join_head = (
        b"POST /q/c1/join HTTP/1.1\r\nHost: gate\r\nX-Customer-Id: slow\r\n"
        b"Content-Type: application/json\r\n"
    )
    huge_chunk = join_head + b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\n"
    partial_body = join_head + b"Content-Length: 100\r\n\r\n{"
    admin_partial_body = (
        b"POST /admin/campaigns HTTP/1.1\r\nHost: gate\r\n"
        + f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    head, public_head, chunk, body, admin_body, idle = await asyncio.gather(
        slow_head(served.admin_port),
        slow_head(served.port),
        slow_body(served.port, huge_chunk),
        slow_body(served.port, partial_body),
        slow_body(served.admin_port, admin_partial_body),
        idle_after_a_request(served.port),
    )
    for seconds, received in (head, public_head):
        assert HEAD_TIMEOUT_S - 0.1 < seconds < HEAD_TIMEOUT_S + MARGIN_S, seconds
        assert received == b""
    for seconds, received in (chunk, body, admin_body):
        assert BODY_TIMEOUT_S - 0.1 < seconds < BODY_TIMEOUT_S + MARGIN_S, seconds
        assert status_of(received) == 408
        assert b'"code":"body_timeout"' in received
        assert b"Connection: close" in received
    seconds, received = idle
    assert KEEPALIVE_S - 0.5 < seconds < KEEPALIVE_S + MARGIN_S, seconds
    assert received == b""

    metrics = await metrics_text(served)
    assert 'fairgate_http_refused_total{listener="public",reason="slow_head"} 1.0' in metrics
    assert 'fairgate_http_refused_total{listener="public",reason="body_timeout"} 2.0' in metrics
    log = served.log_path.read_text()
    assert "Traceback" not in log
    assert "reason=slow_head" in log


async def metrics_text(gate: GateProcess) -> str:
    async with aiohttp.ClientSession() as session, session.get(gate.url + "/metrics") as r:
        return await r.text()


async def test_malformed_http_is_400_and_one_counted_warning(served: GateProcess) -> None:
    bad = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS to the HTTP port\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gate\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: gate\r\n\r\n",
        b"POST /q/c1/join HTTP/1.1\r\nHost: gate\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
        b"POST /q/c1/join HTTP/1.1\r\nHost: gate\r\nContent-Length: -1\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: gate\r\n\r\n",
    ]
    for raw in bad:
        reader, writer = await open_at(served.port)
        writer.write(raw)
        _, received = await closed_after(reader, 5)
        writer.close()
        assert status_of(received) == 400, received[:200]
    log = served.log_path.read_text()
    assert "Traceback" not in log
    assert "level=ERROR" not in log
    # one line per second at most: the five above fit in one or two
    assert 1 <= log.count("reason=malformed") <= 2, log
    metrics = await metrics_text(served)
    assert 'fairgate_http_refused_total{listener="public",reason="malformed"} 6.0' in metrics


# -- lone surrogates: every input that is not text is a 400 ------------------------------

SURROGATE_BODIES = [
    b'{"customer": "\\ud800", "reason": "fraud"}',
    b'{"customer": "alice", "reason": "\\udfff"}',
    b'{"\\ud800": 1}',
    b'{"reason": ["\\ud834"]}',
]


@pytest.mark.parametrize("body", SURROGATE_BODIES)
async def test_lone_surrogates_are_400_on_every_listener(
    public: Any, admin: Any, core: Any, body: bytes
) -> None:
    await create_campaign(admin)
    token = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    core_token = {"Authorization": f"Bearer {CORE_TOKEN}", "Content-Type": "application/json"}
    pass_token = await admitted_pass(public, "c1", "alice")
    answers = [
        await admin.post("/admin/campaigns/c1/block", data=body, headers=token),
        await admin.post("/admin/campaigns/c1/revoke", data=body, headers=token),
        await admin.post("/admin/campaigns/c1/pause", data=body, headers=token),
        await admin.patch("/admin/campaigns/c1", data=body, headers=token),
        await admin.post("/admin/campaigns", data=body, headers=token),
        await public.post(
            "/q/c1/join",
            data=body,
            headers=as_customer("bob", **{"Content-Type": "application/json"}),
        ),
        await public.post(
            "/q/c1/claim",
            data=body,
            headers=as_customer(
                "alice", **{"Content-Type": "application/json", "X-Gate-Pass": pass_token}
            ),
        ),
        await core.post("/q/c1/reservations/r1/release", data=body, headers=core_token),
        await core.post("/q/c1/reservations/r1/confirm", data=body, headers=core_token),
    ]
    for response in answers:
        text = await response.text()
        assert response.status == 400, (response.url, text)
        assert json.loads(text)["error"]["code"] == "bad_text", (response.url, text)


async def test_a_surrogate_free_block_still_works(public: Any, admin: Any) -> None:
    await create_campaign(admin)
    await join(public, "c1", "alice")
    r = await admin.post(
        "/admin/campaigns/c1/block",
        json={"customer": "alice", "reason": "fraud \u2013 checked"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert r.status == 200, await r.text()


# -- the bound on requests in flight ------------------------------------------------------


async def test_requests_above_the_bound_are_503_at_once(
    redis_url: str, tmp_path: Path, keys_file: Path
) -> None:
    """Slow bodies hold two slots; the third request is refused at once with Retry-After,
    and the admin listener still answers."""
    env = {**LIMITS, "GATE_MAX_CONCURRENT_REQUESTS": "2", "GATE_BODY_TIMEOUT_MS": "5000"}
    async with GateProcess(redis_url, tmp_path / "gate", keys_file, extra_env=env) as gate:
        holders = []
        for _ in range(2):
            reader, writer = await open_at(gate.port)
            writer.write(
                b"POST /q/c1/join HTTP/1.1\r\nHost: gate\r\nX-Customer-Id: a\r\n"
                b"Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{"
            )
            await writer.drain()
            holders.append((reader, writer))

        async def refused() -> bool:
            reader, writer = await open_at(gate.port)
            writer.write(request("GET", "/healthz", headers={"Connection": "close"}))
            _, received = await closed_after(reader, 5)
            writer.close()
            if status_of(received) != 503:
                return False
            assert b"Retry-After: 1" in received
            assert b'"code":"unavailable"' in received
            return True

        deadline = time.monotonic() + 5
        while not await refused():  # the two holders reach the handler
            assert time.monotonic() < deadline, "never refused"
        started = time.monotonic()
        assert await refused()
        assert time.monotonic() - started < 1.0
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                gate.admin_url + "/admin/campaigns",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as r,
        ):
            assert r.status == 200
        for _, writer in holders:
            writer.close()
        # the holders' handlers end once the gate sees their connections close: until
        # then the scrape itself is one request too many (503)
        deadline = time.monotonic() + 5
        metrics = await metrics_text(gate)
        while '"code":"unavailable"' in metrics and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            metrics = await metrics_text(gate)
        assert re.search(
            r'fairgate_http_refused_total\{listener="public",reason="overload"\} [1-9]', metrics
        )


def test_limits_are_validated() -> None:
    assert default_config().keepalive_timeout_s == 15
    for name, value in (
        ("header_timeout_ms", 50),
        ("body_timeout_ms", 10**9),
        ("keepalive_timeout_s", 0),
        ("max_concurrent_requests", 10**7),
    ):
        with pytest.raises(ConfigError, match=name):
            default_config(**{name: value})


# -- the fuzzer ---------------------------------------------------------------------------

ROUTES = [
    ("public", "POST", "/q/{c}/join"),
    ("public", "GET", "/q/{c}/status?ticket={v}"),
    ("public", "GET", "/q/{c}"),
    ("public", "GET", "/gate/auth?campaign={v}"),
    ("public", "POST", "/q/{c}/claim"),
    ("public", "GET", "/q/{c}/receipt/{v}"),
    ("public", "GET", "/.well-known/fairgate/keys"),
    ("public", "GET", "/openapi.json"),
    ("admin", "POST", "/admin/campaigns"),
    ("admin", "GET", "/admin/campaigns/{c}"),
    ("admin", "PATCH", "/admin/campaigns/{c}"),
    ("admin", "POST", "/admin/campaigns/{c}/pause"),
    ("admin", "POST", "/admin/campaigns/{c}/resume"),
    ("admin", "POST", "/admin/campaigns/{c}/block"),
    ("admin", "POST", "/admin/campaigns/{c}/revoke"),
    ("admin", "GET", "/admin/campaigns/{c}/audit?customer={v}"),
    ("admin", "GET", "/admin/campaigns/{c}/audit/dispute?customer={v}"),
    ("core", "POST", "/q/{c}/reservations/{v}/confirm"),
    ("core", "POST", "/q/{c}/reservations/{v}/release"),
]
# The transparency routes (issue 13): the cosign route writes only a cosignature that
# verifies for a configured witness (none here), the others never write.
TRANSPARENCY_ROUTES = [
    ("public", "GET", "/.well-known/fairgate/checkpoint/{c}?size={v}"),
    ("public", "GET", "/.well-known/fairgate/consistency/{c}?old={v}&new=1"),
    ("public", "GET", "/.well-known/fairgate/consistency/{c}?old=0&new={v}"),
    ("public", "POST", "/.well-known/fairgate/cosign/{c}"),
    ("public", "GET", "/.well-known/fairgate/witnessed/{c}"),
]
CAMPAIGNS = ["c1", "c1", "nope", "%ED%A0%80", "%ff", "a" * 300, "%00", ".."]
VALUES = ["", "x", "%ED%A0%80", "%ff%fe", "\\ud800", "1" * 40, "-1", "%00", "a.b", "é"]
STRINGS = ["\\ud800", "\\udfff", "\\ud834\\u0000", "x" * 300, "\\u0000", "", "é", "1e999"]
TEXT_FIELDS = ["customer", "reason", "id", "amount", "quantity", "campaign", "\\ud800"]


def fuzz_body(rng: random.Random) -> tuple[bytes, str]:
    kind = rng.randrange(9)
    if kind == 0:
        fields = rng.sample(TEXT_FIELDS, rng.randint(1, 3))
        pairs = ", ".join(f'"{field}": "{rng.choice(STRINGS)}"' for field in fields)
        return ("{" + pairs + "}").encode(), "application/json"
    if kind == 1:
        return rng.randbytes(rng.randint(1, 64)), rng.choice(
            ["application/json", "application/msgpack", ""]
        )
    if kind == 2:
        return b"[" * 3000 + b"]" * 3000, "application/json"
    if kind == 3:
        return b'{"reason": "\xff\xfe\xed\xa0\x80"}', "application/json"
    if kind == 4:
        return b'{"customer": 1e999, "reason": null}', "text/plain"
    if kind == 5:
        return b"\xc4\xa7\xa8reason\xc4\xa6\xed\xa0\x80", "application/msgpack"
    if kind == 6:
        return b"x" * rng.randint(1, 40), "application/x-www-form-urlencoded"
    if kind == 7:
        return json.dumps(spec("\ud800", rate_per_s="\ud800")).encode(
            errors="surrogatepass"
        ), "application/json"
    return b"{}", rng.choice(["application/json; charset=latin-1", "text/html", "*/*"])


def fuzz_request(
    rng: random.Random, pass_token: str, routes: list[tuple[str, str, str]] = ROUTES
) -> tuple[str, bytes]:
    listener, method, template = rng.choice(routes)
    path = template.replace("{c}", rng.choice(CAMPAIGNS)).replace("{v}", rng.choice(VALUES))
    headers = [b"Host: gate"]
    if listener == "admin" and rng.random() < 0.9:
        headers.append(f"Authorization: Bearer {ADMIN_TOKEN}".encode())
    if listener == "core" and rng.random() < 0.9:
        headers.append(f"Authorization: Bearer {CORE_TOKEN}".encode())
    if listener == "public":
        customer = rng.choice([b"alice", b"bob", b"\xff\xfe", b"\xed\xa0\x80", b"a" * 300, b""])
        headers.append(b"X-Customer-Id: " + customer)
        if rng.random() < 0.5:
            headers.append(b"X-Gate-Pass: " + rng.choice([pass_token.encode(), b"\xed\xa0\x80"]))
        if rng.random() < 0.2:
            headers.append(b"Cookie: fg_pass=\xff" + rng.choice([b"", b"; x=\xed\xa0\x80"]))
    body, ctype = fuzz_body(rng)
    if ctype:
        headers.append(b"Content-Type: " + ctype.encode())
    framing = rng.randrange(10)
    if framing == 0:  # bad chunking
        headers.append(b"Transfer-Encoding: chunked")
        payload = rng.choice([b"ZZ\r\nx\r\n0\r\n\r\n", b"5\r\nabc\r\n0\r\n\r\n", b"-1\r\n\r\n"])
    elif framing == 1:  # a chunk that could never end
        headers.append(b"Transfer-Encoding: chunked")
        payload = b"FFFFFFFFFFFFFFFF\r\n" + body
    elif framing == 2:
        headers.append(b"Content-Encoding: " + rng.choice([b"gzip", b"deflate", b"br", b"zz"]))
        headers.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == 3:  # header junk
        headers.append(
            rng.choice(
                [b"Bad Header", b"X: \x00\x01", b"Content-Length: 1, 2", b"X-" + b"a" * 9000]
            )
        )
        headers.append(b"Content-Length: %d" % len(body))
        payload = body
    else:
        headers.append(b"Content-Length: %d" % len(body))
        payload = body
    headers.append(b"Connection: close")
    line = f"{method} {path} HTTP/1.1".encode()
    if rng.random() < 0.03:
        line = rng.choice(
            [b"GARBAGE", b"GET  / HTTP/1.1", b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1 x"]
        )
    return listener, line + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + payload


@pytest.mark.slow
async def test_fuzzer_never_5xx_never_hangs(served: GateProcess) -> None:
    """10,000 malformed requests over the three listeners: no 5xx other than 503, each
    answered (or closed) within the body timeout plus a margin, no traceback logged."""
    pass_token = await pass_of(served, "alice")
    ports = {"public": served.port, "admin": served.admin_port, "core": served.core_port}
    rng = random.Random(11)
    routes = ROUTES + TRANSPARENCY_ROUTES
    cases = [fuzz_request(rng, pass_token, routes) for _ in range(10_000)]
    failures: list[str] = []
    statuses: dict[int, int] = {}
    deadline_s = max(HEAD_TIMEOUT_S, BODY_TIMEOUT_S) + 3

    async def one(listener: str, raw: bytes) -> None:
        reader, writer = await open_at(ports[listener])
        try:
            writer.write(raw)
            received = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), deadline_s)
        except TimeoutError:
            failures.append(f"hang: {raw[:160]!r}")
            return
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # closed without an answer (a slow head, a reset): not a 5xx
        finally:
            writer.close()
        status = status_of(received)
        statuses[status] = statuses.get(status, 0) + 1
        if status >= 500 and status != 503:
            failures.append(f"{status}: {raw[:160]!r}")

    queue = list(enumerate(cases))
    started = time.monotonic()

    async def worker() -> None:
        while queue:
            _, (listener, raw) = queue.pop()
            await one(listener, raw)

    await asyncio.gather(*(worker() for _ in range(32)))
    elapsed = time.monotonic() - started
    assert not failures, failures[:10]
    assert sum(statuses.values()) > 9_000, statuses
    log = served.log_path.read_text()
    assert "Traceback" not in log
    assert "event=unhandled" not in log
    print(f"fuzz: {len(cases)} requests in {elapsed:.1f}s, statuses {sorted(statuses.items())}")


async def pass_of(gate: GateProcess, customer: str) -> str:
    """`customer`'s pass once admitted (the campaign admits 1,000 a second)."""
    headers = {"X-Customer-Id": customer}
    state: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        async with session.post(gate.url + "/q/c1/join", headers=headers) as r:
            ticket = (await r.json())["ticket"]

        async def is_admitted() -> bool:
            async with session.get(
                gate.url + "/q/c1/status", params={"ticket": ticket}, headers=headers
            ) as r:
                state.update(await r.json())
            return state.get("state") == "admitted"

        await wait_for(is_admitted, 5, f"{customer} admitted")
    return str(state["pass"])


# -- the fuzzer leaves no partial write ----------------------------------------------------


# What admit.lua writes on every tick, whatever happens: the token bucket's level and time.
ADMITTER_CLOCK_FIELDS = {b"tokens", b"bucket_us"}


async def redis_snapshot(url: str) -> dict[bytes, tuple[bytes, bytes]]:
    """Every key of the gate's Redis: its type and its DUMP (the value, serialized); a
    campaign's meta hash field by field, less the admitter's clock fields."""
    redis = Redis.from_url(url)
    try:
        snapshot: dict[bytes, tuple[bytes, bytes]] = {}
        async for key in redis.scan_iter(count=1000):
            kind = await redis.type(key)
            if key.endswith(b":nb"):
                continue  # admit.lua's arrival schedule, trimmed on every tick as time passes
            if key.endswith(b":meta") and kind == b"hash":
                fields = await redis.hgetall(key)
                kept = sorted((k, v) for k, v in fields.items() if k not in ADMITTER_CLOCK_FIELDS)
                snapshot[key] = (kind, repr(kept).encode())
                continue
            dumped = await redis.dump(key)
            if dumped is not None:
                snapshot[key] = (kind, dumped)
        return snapshot
    finally:
        await redis.aclose()


def changed_keys(
    before: dict[bytes, tuple[bytes, bytes]], after: dict[bytes, tuple[bytes, bytes]]
) -> list[str]:
    return sorted(
        key.decode(errors="replace")
        for key in before.keys() | after.keys()
        if before.get(key) != after.get(key)
    )


async def settled(url: str) -> dict[bytes, tuple[bytes, bytes]]:
    """A snapshot once Redis stops changing on its own (the sealer catching up with the
    last legitimate writes): two snapshots 1.5 s apart that are the same."""
    deadline = time.monotonic() + 30
    previous = await redis_snapshot(url)
    while True:
        await asyncio.sleep(1.5)
        current = await redis_snapshot(url)
        if current == previous:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"Redis never settled: {changed_keys(previous, current)}")
        previous = current


def with_fresh_customer(raw: bytes, suffix: bytes) -> bytes:
    """The same request for a customer never seen before (a ticket a refused join wrote
    would otherwise hide behind the first one's idempotency); alice keeps her pass."""
    return re.sub(
        rb"X-Customer-Id: (bob|a{300})\r\n",
        lambda m: b"X-Customer-Id: " + m.group(1) + suffix + b"\r\n",
        raw,
    )


@pytest.mark.slow
async def test_fuzzer_leaves_no_partial_write(served: GateProcess, redis_url: str) -> None:
    """The fuzzer's requests (11,500), with a snapshot of every Redis key (type and DUMP)
    before and after: a request refused (anything but 2xx or 303) must change nothing.
    Requests answered 2xx are legitimate writes (a valid join, a block with a valid token),
    and so are 303s (the no-script page form's join, the page once admitted): they are
    dropped and the rest sent again, for fresh customers, on a new snapshot, until a round
    answers none of them so; that round must leave every key as it was."""
    pass_token = await pass_of(served, "alice")
    ports = {"public": served.port, "admin": served.admin_port, "core": served.core_port}
    rng = random.Random(11)
    # 11,500: about 1,100 are legitimate writes, so that the final round sends > 10,000
    routes = ROUTES + TRANSPARENCY_ROUTES
    cases = [fuzz_request(rng, pass_token, routes) for _ in range(11_500)]
    deadline_s = max(HEAD_TIMEOUT_S, BODY_TIMEOUT_S) + 3

    async def status(listener: str, raw: bytes) -> int:
        reader, writer = await open_at(ports[listener])
        try:
            writer.write(raw)
            received = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), deadline_s)
        except (asyncio.IncompleteReadError, ConnectionError):
            return 0  # closed without an answer
        finally:
            writer.close()
        return status_of(received)

    async def send_all(batch: list[tuple[str, bytes]], attempt: int) -> dict[int, int]:
        queue = list(enumerate(batch))
        answers: dict[int, int] = {}

        async def worker() -> None:
            while queue:
                index, (listener, raw) = queue.pop()
                fresh = with_fresh_customer(raw, b"-%d-%d" % (attempt, index))
                answers[index] = await status(listener, fresh)

        await asyncio.gather(*(worker() for _ in range(32)))
        return answers

    rounds: list[tuple[int, int, list[str]]] = []
    for attempt in range(4):
        before = await settled(redis_url)
        answers = await send_all(cases, attempt)
        # 303: the no-script page form's join (and the page once admitted) on success
        accepted = {i for i, code in answers.items() if 200 <= code < 300 or code == 303}
        after = await redis_snapshot(redis_url)
        rounds.append((len(cases), len(accepted), changed_keys(before, after)))
        if not accepted:
            break
        # A well-formed pause or resume is refused (409) only because the campaign is
        # already in that state: the next round's toggles would be legitimate writes.
        toggles = {
            i
            for i, code in answers.items()
            if code == 409 and re.match(rb"POST /admin/campaigns/c1/(pause|resume) ", cases[i][1])
        }
        cases = [case for i, case in enumerate(cases) if i not in accepted | toggles]
    sent, accepted_n, changed = rounds[-1]
    summary = [(n, ok, len(keys)) for n, ok, keys in rounds]
    print(f"\nno partial write: rounds (sent, answered 2xx, keys changed) {summary}")
    assert accepted_n == 0, rounds
    assert sent > 10_000, rounds
    assert changed == [], changed
