"""The public listener's fast path (gate/http/fast.py): a waiting customer's poll and a
pass check of a customer already let in are answered without aiohttp's router,
middleware and response objects, byte for byte as the application answers them; every
other request, every error included, is the application's, untouched.

Two public listeners serve one gate here, as `gate serve` serves them: one with the fast
path (the default), one with `http_fast_path = false`. The same request goes to both, as
raw HTTP/1.1 bytes over a socket, and the answers are compared whole (but for the Date
header and an error page's clock, which may tick between the two).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gate.config import Config
from gate.http.admin import create_admin_app
from gate.http.fast import FastPath
from gate.http.public import RNG_KEY, create_public_app
from gate.service import Gate
from tests.helpers import ADMIN_TOKEN, ListenerTestServer, quiet_gate, spec

DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")
PAGE_CLOCK = re.compile(rb'data-now="\d+"')  # an error page's clock, in milliseconds


@dataclasses.dataclass
class Pair:
    gate: Gate
    fast: ListenerTestServer
    slow: ListenerTestServer
    admin: TestClient[Any, Any]

    @property
    def fast_path(self) -> FastPath:
        runner = self.fast.runner
        assert runner is not None and runner.fast_path is not None  # type: ignore[attr-defined]
        return runner.fast_path  # type: ignore[attr-defined,no-any-return]

    async def refresh(self) -> None:
        await self.gate.cache.refresh_once()

    async def both(self, request: bytes) -> tuple[bytes, bytes, int]:
        """The fast listener's answer, the slow one's, and how many of the two the fast
        path answered itself. Both apps draw the poll's jitter from the same seed."""
        before = self.fast_path.answered
        self.fast.app[RNG_KEY].seed(7)
        fast = await exchange(self.fast.port, request)
        self.slow.app[RNG_KEY].seed(7)
        slow = await exchange(self.slow.port, request)
        return fast, slow, self.fast_path.answered - before


async def exchange(port: int | None, request: bytes, *, as_sent: bool = False) -> bytes:
    """One request on a new connection; the whole answer, its Date header and a page's
    clock blanked (`as_sent`: as it came)."""
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        found = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
        length = int(found.group(1)) if found and not request.startswith(b"HEAD ") else 0
        body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
    finally:
        writer.close()
    if as_sent:
        return head + body
    return DATE.sub(b"\r\nDate: -\r\n", head) + PAGE_CLOCK.sub(b'data-now="-"', body)


def get(path: str, *headers: str, version: str = "1.1", method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: gate.example", *headers, "", ""]
    return "\r\n".join(lines).encode()


@pytest.fixture
async def pair(config: Config, aiohttp_client: Any) -> AsyncIterator[Pair]:
    async with quiet_gate(config, stale_after_ms=60000) as gate:
        fast = ListenerTestServer(create_public_app(gate), gate.config, listener="public")
        off = dataclasses.replace(gate.config, http_fast_path=False)
        slow = ListenerTestServer(create_public_app(gate), off, listener="public")
        await fast.start_server()
        await slow.start_server()
        admin = await aiohttp_client(
            create_admin_app(gate), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        try:
            yield Pair(gate, fast, slow, admin)
        finally:
            await fast.close()
            await slow.close()


async def join(pair: Pair, campaign: str, customer: str) -> dict[str, Any]:
    request = (
        f"POST /q/{campaign}/join HTTP/1.1\r\nHost: gate.example\r\n"
        f"X-Customer-Id: {customer}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    answer = await exchange(pair.slow.port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201"), answer
    joined: dict[str, Any] = json.loads(body)
    return joined


async def create(pair: Pair, campaign: str, **admission: Any) -> None:
    r = await pair.admin.post("/admin/campaigns", json=spec(campaign, **admission))
    assert r.status == 201, await r.text()
    await pair.refresh()


async def second_waiting(pair: Pair) -> bytes:
    """A campaign that admits nobody, two customers in it: the second's poll."""
    await create(pair, "c1", rate_per_s=0.001, burst=1)
    await join(pair, "c1", "first")
    ticket = (await join(pair, "c1", "second"))["ticket"]
    await pair.refresh()
    return get(f"/q/c1/status?ticket={ticket}", "X-Customer-Id: second")


async def test_a_waiting_poll_is_answered_by_the_fast_path_as_the_app_answers_it(
    pair: Pair,
) -> None:
    await create(pair, "c1", rate_per_s=0.001, burst=1)  # nobody admitted: all wait
    tickets = [(await join(pair, "c1", f"cust-{i}"))["ticket"] for i in range(3)]
    await pair.refresh()
    for i, ticket in enumerate(tickets[1:], start=1):
        poll = get(f"/q/c1/status?ticket={ticket}", f"X-Customer-Id: cust-{i}")
        fast, slow, answered = await pair.both(poll)
        assert answered == 1, "the fast path left a waiting poll to the app"
        assert fast == slow
        assert b'"state":"waiting"' in fast and fast.startswith(b"HTTP/1.1 200 OK\r\n")
    # The Date header as HTTP writes it (IMF-fixdate), as the application writes it.
    sent = await exchange(pair.fast.port, poll, as_sent=True)
    assert re.search(rb"\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} [\d:]{8} GMT\r\n", sent)


async def test_what_the_fast_path_leaves_to_the_app_is_answered_as_before(pair: Pair) -> None:
    await create(pair, "c1", max_active=1)  # the first admitted, the second waits
    first = (await join(pair, "c1", "first"))["ticket"]
    second = (await join(pair, "c1", "second"))["ticket"]
    await pair.gate.room.admit("c1")
    await pair.refresh()
    waiting = f"/q/c1/status?ticket={second}"
    cases = {
        "another customer's ticket": get(waiting, "X-Customer-Id: first"),
        "no customer": get(waiting),
        "a forged ticket": get(f"/q/c1/status?ticket={second[:-2]}xx", "X-Customer-Id: second"),
        "no ticket": get("/q/c1/status", "X-Customer-Id: second"),
        "another campaign in the path": get(
            f"/q/c2/status?ticket={second}", "X-Customer-Id: second"
        ),
        "an escaped path": get(f"/q/%63%31/status?ticket={second}", "X-Customer-Id: second"),
        "msgpack wanted": get(waiting, "X-Customer-Id: second", "Accept: application/msgpack"),
        "a browser's navigation, with an error": get(
            waiting, "X-Customer-Id: first", "Accept: text/html"
        ),
        "HTTP/1.0": get(waiting, "X-Customer-Id: second", version="1.0"),
        "Connection: close": get(waiting, "X-Customer-Id: second", "Connection: close"),
        "HEAD": get(waiting, "X-Customer-Id: second", method="HEAD"),
        "a pass check before the door": get("/gate/auth", "X-Customer-Id: first"),
    }
    for name, request in cases.items():
        fast, slow, answered = await pair.both(request)
        assert answered == 0, f"{name}: answered by the fast path"
        assert fast == slow, name
    # The admitted customer's poll reaches Redis (the pass is logged): the app's.
    before = pair.fast_path.answered
    admitted = await exchange(
        pair.fast.port, get(f"/q/c1/status?ticket={first}", "X-Customer-Id: first")
    )
    assert pair.fast_path.answered == before, admitted
    assert b'"state":"admitted"' in admitted and b"Set-Cookie: fg_pass=" in admitted


async def test_a_pass_check_is_the_fast_paths_once_the_door_let_the_customer_in(
    pair: Pair,
) -> None:
    await create(pair, "c1")
    ticket = (await join(pair, "c1", "alice"))["ticket"]
    await pair.gate.room.admit("c1")
    await pair.refresh()
    answer = await exchange(
        pair.slow.port, get(f"/q/c1/status?ticket={ticket}", "X-Customer-Id: alice")
    )
    found = re.search(rb'"pass":"([^"]+)"', answer)
    assert found is not None, answer
    pass_token = found.group(1).decode()
    check = get(
        "/gate/auth",
        "X-Customer-Id: alice",
        f"X-Gate-Pass: {pass_token}",
        "X-Gate-Campaign: c1",
        "Cookie: theme=dark; fg_pass=x; lang=ko",
    )
    before = pair.fast_path.answered
    first = await exchange(pair.fast.port, check)  # the first use: through the door
    assert pair.fast_path.answered == before
    assert first.startswith(b"HTTP/1.1 200 OK\r\n"), first
    fast, slow, answered = await pair.both(check)
    assert answered == 1
    assert fast == slow == first
    assert b"\r\nCookie: theme=dark; lang=ko\r\n" in fast
    # Another customer with this pass, or another campaign: the app's refusals.
    for request in (
        check.replace(b"X-Customer-Id: alice", b"X-Customer-Id: bob"),
        check.replace(b"X-Gate-Campaign: c1", b"X-Gate-Campaign: c2"),
    ):
        fast, slow, answered = await pair.both(request)
        assert answered == 0 and fast == slow and fast.startswith(b"HTTP/1.1 403"), fast
    # Revoked: refused at once, though the door let the customer in.
    r = await pair.admin.post(
        "/admin/campaigns/c1/revoke", json={"customer": "alice", "reason": "test"}
    )
    assert r.status == 200, await r.text()
    await pair.refresh()
    fast, slow, answered = await pair.both(check)
    assert answered == 0 and fast == slow and fast.startswith(b"HTTP/1.1 403"), fast


async def test_the_fast_path_counts_as_the_middleware_and_keeps_its_bounds(pair: Pair) -> None:
    poll = await second_waiting(pair)
    requests = pair.gate.metrics.requests
    key = ("public", "/q/{campaign}/status", "200")

    def counted() -> float:
        return requests.values.get(key, 0.0)

    before = counted()
    fast, slow, answered = await pair.both(poll)
    assert answered == 1 and fast == slow
    assert counted() == before + 2, "each answer counted once, by the fast path and the app"
    # At the in-flight bound the middleware answers 503 (the fast path stands aside).
    flights = pair.gate.in_flight
    flights["public"] = pair.gate.config.max_concurrent_requests
    try:
        fast, slow, answered = await pair.both(poll)
    finally:
        flights["public"] = 0
    assert answered == 0 and fast == slow and fast.startswith(b"HTTP/1.1 503"), fast


async def test_a_different_rng_seed_makes_the_answers_differ(pair: Pair) -> None:
    """The comparison above can fail: the poll's jitter is in the bytes compared."""
    poll = await second_waiting(pair)
    pair.fast.app[RNG_KEY].seed(1)
    one = await exchange(pair.fast.port, poll)
    pair.fast.app[RNG_KEY].seed(2)
    two = await exchange(pair.fast.port, poll)
    assert one != two


def post_join(campaign: str, customer: str, *headers: str) -> bytes:
    lines = [f"POST /q/{campaign}/join HTTP/1.1", "Host: gate.example"]
    lines += [f"X-Customer-Id: {customer}", "Content-Length: 0", *headers, "", ""]
    return "\r\n".join(lines).encode()


async def test_an_api_join_is_the_fast_paths_and_answered_as_the_app_answers(pair: Pair) -> None:
    await create(pair, "c1", rate_per_s=0.001, burst=1)
    before = pair.fast_path.answered
    pair.fast.app[RNG_KEY].seed(7)
    new = await exchange(pair.fast.port, post_join("c1", "alice"))
    assert pair.fast_path.answered == before + 1
    assert new.startswith(b"HTTP/1.1 201 Created\r\n") and b'"seq":1,' in new, new
    # Joined again, the place is the same and so is the answer, on either listener.
    fast, slow, answered = await pair.both(post_join("c1", "alice"))
    assert answered == 1 and fast == slow
    assert fast.startswith(b"HTTP/1.1 200 OK\r\n") and b'"created":false' in fast, fast
    first_body, again_body = new.partition(b"\r\n\r\n")[2], fast.partition(b"\r\n\r\n")[2]
    assert first_body.replace(b'"created":true', b'"created":false') == again_body
    # A browser's write (an Origin, a cookie, a body), a refusal: the app's, as before.
    for request in (
        post_join("c1", "bob", "Origin: http://evil.example"),
        post_join("c1", "bob", "Cookie: fg_pass=x"),
        post_join("c1", "bob", "Content-Type: application/x-www-form-urlencoded"),
        post_join("c2", "bob"),
    ):
        fast, slow, answered = await pair.both(request)
        assert answered == 0 and fast == slow, fast
        assert fast.startswith((b"HTTP/1.1 303", b"HTTP/1.1 403", b"HTTP/1.1 404")), fast
    r = await pair.admin.post("/admin/campaigns/c1/block", json={"customer": "carol"})
    assert r.status == 200, await r.text()
    fast, slow, answered = await pair.both(post_join("c1", "carol"))
    assert answered == 0 and fast == slow and b'"code":"blocked"' in fast, fast
