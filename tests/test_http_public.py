"""The public listener: negotiation, waiting, admission, the pass, and what a poll costs."""

from __future__ import annotations

import base64
import dataclasses
import math
import random
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import pytest
import redis as sync_redis
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gate.config import Config
from gate.http.admin import create_admin_app
from gate.http.public import create_public_app, poll_after_ms
from gate.service import Gate
from gate.tokens import PASS, customer_digest
from tests.helpers import (
    ADMIN_TOKEN,
    as_customer,
    create_campaign,
    join,
    quiet_gate,
    spec,
    wait_for,
)

MSGPACK = "application/msgpack"
Client = TestClient[web.Request, web.Application]


@dataclasses.dataclass
class Quiet:
    """A gate with no background tasks: the cache refreshes and admission runs only when
    the test says so, which makes positions exact and Redis traffic countable."""

    gate: Gate
    public: Client
    admin: Client

    async def refresh(self) -> None:
        await self.gate.cache.refresh_once()

    async def admit(self, campaign: str) -> int:
        result = await self.gate.room.admit(campaign)
        assert result is not None
        await self.refresh()
        return result.cursor


@pytest.fixture
async def quiet(config: Config, aiohttp_client: Any) -> AsyncIterator[Quiet]:
    async with quiet_gate(config, stale_after_ms=60000, cookie_secure=True) as gate:
        public = await aiohttp_client(create_public_app(gate))
        admin = await aiohttp_client(
            create_admin_app(gate), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        yield Quiet(gate, public, admin)


async def status(public: Any, campaign: str, ticket: str, customer: str) -> dict[str, Any]:
    """The ticket's status, asked by its customer (through the trusted proxy)."""
    r = await public.get(
        f"/q/{campaign}/status", params={"ticket": ticket}, headers=as_customer(customer)
    )
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


# -- negotiation ----------------------------------------------------------------------


async def test_msgpack_negotiation_on_join_and_status(public: Any, admin: Any) -> None:
    await create_campaign(admin, rate_per_s=0.001, burst=1)
    packed = {"Content-Type": MSGPACK, "Accept": MSGPACK, "X-Customer-Id": "alice"}
    r = await public.post("/q/c1/join", data=msgpack.packb({}), headers=packed)
    assert r.status == 201, await r.read()
    assert r.content_type == MSGPACK
    body = msgpack.unpackb(await r.read())
    assert body["seq"] == 1 and body["state"] == "waiting" and body["created"] is True

    # the same customer through JSON gets the same ticket
    r = await public.post("/q/c1/join", headers={"X-Customer-Id": "alice"})
    assert r.status == 200 and r.content_type == "application/json"
    assert (await r.json())["ticket"] == body["ticket"]

    r = await public.get(
        "/q/c1/status",
        params={"ticket": body["ticket"]},
        headers=as_customer("alice", Accept=MSGPACK),
    )
    assert r.status == 200 and r.content_type == MSGPACK
    polled = msgpack.unpackb(await r.read())
    assert polled["state"] == "waiting" and polled["seq"] == 1 and polled["position"] == 1

    r = await public.get(
        "/q/c1/status", params={"ticket": body["ticket"]}, headers=as_customer("alice")
    )
    assert r.content_type == "application/json"
    assert (await r.json())["position"] == 1

    # an error asked for in msgpack keeps the error shape
    r = await public.get("/q/c1/status", headers={"Accept": MSGPACK})
    assert r.status == 400 and r.content_type == MSGPACK
    assert msgpack.unpackb(await r.read())["error"]["code"] == "missing_ticket"


# -- waiting --------------------------------------------------------------------------


async def test_waiting_position_eta_and_poll_after(quiet: Quiet) -> None:
    # max_active caps each admit call at three customers, whatever the bucket holds
    await create_campaign(quiet.admin, rate_per_s=1000, burst=100, max_active=3)
    tickets = {}
    for n in range(1, 11):
        body = await join(quiet.public, "c1", f"customer-{n}")
        assert body["seq"] == n and body["created"] is True
        assert body["state"] == "waiting" and body["position"] == n
        tickets[n] = body["ticket"]
    await quiet.refresh()
    assert await quiet.admit("c1") == 3
    r = await quiet.admin.patch("/admin/campaigns/c1", json={"rate_per_s": 2})
    assert r.status == 200, await r.text()

    live = quiet.gate.cache.peek("c1")
    assert live is not None and live.state.cursor == 3
    rate = live.admission_rate()
    assert rate == pytest.approx(2.0)
    etas = []
    for n in range(4, 11):
        body = await status(quiet.public, "c1", tickets[n], f"customer-{n}")
        position = n - 3
        assert body["state"] == "waiting", body
        assert body["position"] == position
        assert body["eta_s"] == math.ceil(position / rate)
        base = min(max(position / rate * 1000 / 4, 500), 30000)
        assert 0.8 * base - 1 <= body["poll_after_ms"] <= 1.2 * base + 1
        etas.append(body["eta_s"])
    assert etas == sorted(etas) and etas[0] < etas[-1]

    # a paused campaign has no honest ETA, but the position stays
    r = await quiet.admin.post("/admin/campaigns/c1/pause")
    assert r.status == 200
    body = await status(quiet.public, "c1", tickets[10], "customer-10")
    assert body["state"] == "waiting" and body["position"] == 7 and body["eta_s"] is None


def test_poll_after_grows_with_position_and_has_jitter() -> None:
    rng = random.Random(7)
    rate = 100.0
    medians = []
    for position in (1, 1000, 4000, 20000, 10**6):
        base = min(max(position / rate * 1000 / 4, 500), 30000)
        samples = [poll_after_ms(position, rate, rng) for _ in range(400)]
        assert all(0.8 * base - 1 <= s <= 1.2 * base for s in samples), (position, base)
        # the jitter is real: it spreads over most of the ±20% band
        assert min(samples) < 0.85 * base and max(samples) > 1.15 * base
        assert len(set(samples)) > 100
        medians.append(statistics.median(samples))
    assert medians == sorted(medians) and medians[0] < medians[-2]
    # bounded both ways: never hammering, never a browser that stops polling
    assert min(poll_after_ms(1, 10**6, rng) for _ in range(100)) >= 400
    assert max(poll_after_ms(10**9, 0.001, rng) for _ in range(100)) <= 36000
    # no admission at all (paused): a slow, still bounded poll
    assert all(1000 <= poll_after_ms(5, 0.0, rng) <= 36000 for _ in range(100))


# -- admission and the pass -----------------------------------------------------------


async def test_admitted_status_sets_httponly_cookie_and_pass_works(
    public: Any, admin: Any, gate: Gate
) -> None:
    await create_campaign(admin, rate_per_s=1000, burst=10, pass_ttl_s=120)
    ticket = (await join(public, "c1", "alice"))["ticket"]
    state: dict[str, Any] = {}
    last: Any = None

    async def admitted() -> bool:
        nonlocal last
        last = await public.get(
            "/q/c1/status", params={"ticket": ticket}, headers=as_customer("alice")
        )
        state.update(await last.json())
        return state["state"] == "admitted"

    await wait_for(admitted, 5, "alice admitted")
    assert state["position"] == 0 and state["eta_s"] == 0 and state["poll_after_ms"] is None
    pass_token = state["pass"]
    assert abs(state["pass_expires_at"] - (time.time() + 120)) < 5
    token = gate.signer.verify(pass_token, PASS)
    assert token.campaign == "c1" and token.seq == 1
    assert token.digest == customer_digest(gate.keys, "c1", "alice")

    cookie = last.headers["Set-Cookie"]
    assert cookie.startswith(f"fg_pass={pass_token};")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age", "samesite"} <= attributes
    assert "secure" not in attributes  # this config turns it off for plain-HTTP tests
    assert "samesite=lax" in cookie.lower()

    # via the cookie (what a browser sends through the proxy, which names the campaign it
    # guards and the customer it authenticated)
    through_proxy = as_customer("alice", **{"X-Gate-Campaign": "c1"})
    r = await public.get("/gate/auth", headers=through_proxy)
    assert r.status == 200, await r.text()
    assert r.headers["X-Gate-Campaign"] == "c1" and r.headers["X-Gate-Seq"] == "1"
    digest = customer_digest(gate.keys, "c1", "alice").hex()
    assert r.headers["X-Gate-Customer"] == digest  # the keyed digest, never the raw id
    assert "alice" not in str(r.headers) and pass_token not in str(r.headers)
    public.session.cookie_jar.clear()
    r = await public.get("/gate/auth", headers=through_proxy)
    assert r.status == 401
    # via the header, with the campaign and the customer named by the proxy
    r = await public.get(
        "/gate/auth",
        headers={"X-Gate-Pass": pass_token, "X-Gate-Campaign": "c1", "X-Customer-Id": "alice"},
    )
    assert r.status == 200, await r.text()
    assert (await r.json()) == {"ok": True, "campaign": "c1", "seq": 1, "customer": digest}

    # the pass is logged once, however often the customer polls
    for _ in range(3):
        assert (await status(public, "c1", ticket, "alice"))["state"] == "admitted"
    passes = [e for e in await gate.room.audit_entries("c1") if e["k"] == b"pass"]
    assert len(passes) == 1 and passes[0]["s"] == 1


async def test_secure_cookie_when_configured(quiet: Quiet) -> None:
    await create_campaign(quiet.admin)
    ticket = (await join(quiet.public, "c1", "alice"))["ticket"]
    await quiet.refresh()
    assert await quiet.admit("c1") == 1
    r = await quiet.public.get(
        "/q/c1/status", params={"ticket": ticket}, headers=as_customer("alice")
    )
    assert (await r.json())["state"] == "admitted"
    assert "secure" in {p.strip().lower() for p in r.headers["Set-Cookie"].split(";")}


# -- what a poll costs in Redis -------------------------------------------------------


def command_calls(client: sync_redis.Redis) -> dict[str, int]:
    info: dict[str, Any] = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in info.items()}
    calls.pop("info", None)  # our own measuring
    return calls


def diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


async def test_waiting_poll_makes_no_redis_round_trip(quiet: Quiet, redis_url: str) -> None:
    await create_campaign(quiet.admin, max_active=1)
    first = (await join(quiet.public, "c1", "first"))["ticket"]
    waiting = (await join(quiet.public, "c1", "waiting"))["ticket"]
    await quiet.refresh()
    assert await quiet.admit("c1") == 1
    assert (await status(quiet.public, "c1", first, "first"))["state"] == "admitted"
    pass_token = (await status(quiet.public, "c1", first, "first"))["pass"]
    # the joins' receipt records, left for a next join call, are written now (issue 15)
    await quiet.gate.receipts.flush()

    counter = sync_redis.Redis.from_url(redis_url)
    auth_headers = as_customer("first", **{"X-Gate-Pass": pass_token, "X-Gate-Campaign": "c1"})
    try:
        command_calls(counter)  # connect (and let redis-py send its handshake) first
        # a pass's first use is the customer's arrival at the core: one script call meters
        # it (issue 12); the process remembers the pass from then on
        before = command_calls(counter)
        assert (await quiet.public.get("/gate/auth", headers=auth_headers)).status == 200
        assert diff(before, command_calls(counter))["evalsha"] == 1
        before = command_calls(counter)
        for _ in range(50):
            body = await status(quiet.public, "c1", waiting, "waiting")
            assert body["state"] == "waiting" and body["position"] == 1
        for _ in range(50):
            r = await quiet.public.get("/gate/auth", headers=auth_headers)
            assert r.status == 200
        polls = diff(before, command_calls(counter))
        assert polls == {}, f"50 waiting polls and 50 auth checks reached Redis: {polls}"

        # an admitted poll after the first makes no script call either: the process
        # remembers the pass it issued (gate/pass_cache.py, issue 15)
        before = command_calls(counter)
        assert (await status(quiet.public, "c1", first, "first"))["state"] == "admitted"
        assert diff(before, command_calls(counter)) == {}
        # the measurement can see a round trip: one cache refresh is one pipelined read
        before = command_calls(counter)
        await quiet.refresh()
        assert diff(before, command_calls(counter)).get("hmget") == 1
    finally:
        counter.close()


# -- service endpoints ----------------------------------------------------------------


async def test_health_ready_metrics_and_keys(public: Any, admin: Any, gate: Gate) -> None:
    await create_campaign(admin)
    await join(public, "c1", "alice")
    await join(public, "c1", "bob")

    r = await public.get("/healthz")
    assert r.status == 200 and (await r.json()) == {"ok": True}
    r = await public.get("/readyz")
    assert r.status == 200
    assert (await r.json()) == {"ready": True, "redis": True, "scripts": True, "reason": None}

    async def counted() -> bool:
        text = await (await public.get("/metrics")).text()
        return 'fairgate_campaign_joined_total{campaign="c1"} 2.0' in text

    await wait_for(counted, 2, "joined gauge at 2")
    r = await public.get("/metrics")
    assert r.status == 200 and r.content_type == "text/plain"
    text = await r.text()
    for name in (
        "fairgate_http_requests_total",
        "fairgate_http_request_duration_seconds_bucket",
        "fairgate_campaign_cursor",
        "fairgate_campaign_waiting",
        "fairgate_campaign_admission_rate_configured",
        "fairgate_campaign_admission_rate_effective",
        "fairgate_campaign_open",
        "fairgate_redis_fresh 1.0",
    ):
        assert name in text, name
    assert 'route="/q/{campaign}/join",status="201"' in text

    r = await public.get("/.well-known/fairgate/keys")
    assert r.status == 200 and r.content_type == "application/json"
    keys = (await r.json())["keys"]
    assert [k["kid"] for k in keys if k["current"]] == [gate.keys.ed25519_current]
    for entry in keys:
        assert entry["alg"] == "Ed25519"
        private = gate.keys.ed25519_keys[entry["kid"]]
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert base64.urlsafe_b64decode(entry["public_key"] + "=" * 3) == raw
        assert "private" not in str(entry).lower()


async def test_readyz_and_status_fail_closed_when_the_cache_is_stale(
    config: Config, aiohttp_client: Any
) -> None:
    async with quiet_gate(config, stale_after_ms=100) as gate:
        public = await aiohttp_client(create_public_app(gate))
        await gate.cache.refresh_once()
        r = await public.get("/readyz")
        assert r.status == 200

        async def stale() -> bool:
            return (await public.get("/readyz")).status == 503

        await wait_for(stale, 2, "readyz 503 once nothing refreshes the cache")
        r = await public.get("/readyz")
        assert r.headers["Retry-After"] == "1"
        assert (await r.json())["redis"] is False
        # A refresh that is only late (none failed) is the event loop's lag, not an outage:
        # a join still goes to Redis (here it has no such campaign); only what grants
        # access fails closed on it (tests/test_poll_staleness.py).
        r = await public.post("/q/c1/join", headers={"X-Customer-Id": "alice"})
        assert r.status == 404, await r.text()


async def test_waiting_room_page(public: Any, admin: Any) -> None:
    await create_campaign(admin, "deposit-5pct")
    r = await public.get("/q/deposit-5pct")
    assert r.status == 200 and r.content_type == "text/html"
    assert r.headers["Cache-Control"] == "no-store"
    page = await r.text()
    assert page.lstrip().lower().startswith("<!doctype html>")
    # the page's script finds the campaign in the page (tests/test_page.py has the rest)
    assert "<title>" in page and 'data-campaign="deposit-5pct"' in page


async def test_join_states_prequeue_and_closed(public: Any, admin: Any) -> None:
    now = datetime.now(UTC)
    later = spec("later")
    later["opens_at"] = (now + timedelta(hours=1)).isoformat()
    later["closes_at"] = (now + timedelta(hours=2)).isoformat()
    later["prequeue"] = {"window_s": 7200}
    r = await admin.post("/admin/campaigns", json=later)
    assert r.status == 201, await r.text()
    body = await join(public, "later", "alice")
    assert body["state"] == "prequeue" and body["eta_s"] is None
    assert body["opens_at"] == later["opens_at"].replace("+00:00", "Z")
    assert 400 <= body["poll_after_ms"] <= 30000
    assert (await status(public, "later", body["ticket"], "alice"))["state"] == "prequeue"

    too_early = spec("too-early")
    too_early["opens_at"] = (now + timedelta(hours=1)).isoformat()
    too_early["closes_at"] = (now + timedelta(hours=2)).isoformat()
    r = await admin.post("/admin/campaigns", json=too_early)
    assert r.status == 201
    r = await public.post("/q/too-early/join", headers={"X-Customer-Id": "alice"})
    assert r.status == 409 and (await r.json())["error"]["code"] == "not_open_yet"

    await create_campaign(admin, "c1", rate_per_s=0.001, burst=1)
    await join(public, "c1", "first")
    ticket = (await join(public, "c1", "alice"))["ticket"]
    r = await admin.post("/admin/campaigns/c1/close")
    assert r.status == 200
    r = await public.post("/q/c1/join", headers={"X-Customer-Id": "bob"})
    assert r.status == 409 and (await r.json())["error"]["code"] == "campaign_closed"
    assert (await status(public, "c1", ticket, "alice"))["state"] == "closed"
