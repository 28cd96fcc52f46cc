"""Redis is touched only where the contract needs it (issue 15): the polls of an admitted
ticket run pass.lua once per process, not once each, while a hit answers what pass.lua
would (the same pass until its expiry; revoked, blocked, claimed or closed as soon as this
process's cache knows it); a flood of requests for campaign ids that do not exist reads
Redis at most once per id and refresh period, in bounded memory, and a campaign created
afterwards is seen within that period. Counts come from the test Redis's own command log."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gate.cache import MISSING_MAX, MISSING_TTL_S
from gate.config import Config
from gate.redis_client import connect
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.service import Gate
from gate.tokens import customer_digest
from tests.command_log import CommandLog
from tests.helpers import admitted, as_customer, create_campaign, spec, wait_for

POLLS = 2000


async def _poll(public: Any, campaign: str, customer: str, ticket: str) -> tuple[int, Any]:
    r = await public.get(
        f"/q/{campaign}/status", params={"ticket": ticket}, headers=as_customer(customer)
    )
    return r.status, await r.json()


async def test_polls_of_an_admitted_ticket_run_pass_lua_once(
    gate: Gate, public: Any, admin: Any, redis_url: str
) -> None:
    await create_campaign(admin, "c1")
    ticket, first_pass = await admitted(public, "c1", "alice")
    sha = gate.scripts["pass"].sha
    with CommandLog(redis_url) as log:
        for _ in range(POLLS):
            status, body = await _poll(public, "c1", "alice", ticket)
            assert status == 200, body
            assert body["state"] == "admitted"
            assert body["pass"] == first_pass  # the same pass, not a new one each time
        calls = log.script_calls(sha)
    # before: one pass.lua call per poll (2,000)
    assert calls <= 1, f"{calls} pass.lua calls for {POLLS} polls of one admitted ticket"


async def test_a_remembered_pass_still_answers_claimed_revoked_and_closed(
    gate: Gate, public: Any, admin: Any
) -> None:
    await create_campaign(admin, "c1")
    tickets = {}
    for customer in ("alice", "bob", "carol"):
        tickets[customer], tickets[customer + "-pass"] = await admitted(public, "c1", customer)
    for customer in ("alice", "bob", "carol"):  # remembered now
        assert (await _poll(public, "c1", customer, tickets[customer]))[1]["state"] == "admitted"
    public.session.cookie_jar.clear()  # an API client: the pass goes in the header
    r = await public.post(
        "/q/c1/claim",
        json={"amount": 1, "idempotency_key": "k1"},
        headers=as_customer("alice", **{"X-Gate-Pass": tickets["alice-pass"]}),
    )
    assert r.status == 201, await r.text()
    status, body = await _poll(public, "c1", "alice", tickets["alice"])
    assert (status, body["state"]) == (200, "claimed"), body
    r = await admin.post("/admin/campaigns/c1/revoke", json={"customer": "bob"})
    assert r.status == 200, await r.text()
    status, body = await _poll(public, "c1", "bob", tickets["bob"])
    assert (status, body["error"]["code"]) == (403, "revoked"), body
    r = await admin.post("/admin/campaigns/c1/close")
    assert r.status == 200, await r.text()
    status, body = await _poll(public, "c1", "carol", tickets["carol"])
    assert (status, body["state"]) == (200, "closed"), body


async def test_another_process_change_is_seen_at_the_next_refresh(
    gate: Gate, public: Any, admin: Any, config: Config
) -> None:
    """A claim, a revocation or a door's wait made by another gate process (a Room of its
    own here) reaches this process's answer through its cache refresh, with no pass.lua
    call of its own needed to learn it."""
    await create_campaign(admin, "c1", rate_per_s=2, burst=3)
    tickets = {}
    for customer in ("alice", "bob"):
        tickets[customer], tickets[customer + "-pass"] = await admitted(public, "c1", customer)
    other_redis = connect(config.redis_url, timeout_s=5)
    try:
        other = Room(other_redis, gate.scripts)
        spec_obj = gate.cache.campaigns["c1"].spec
        alice = customer_digest(gate.keys, "c1", "alice", spec_obj.digest_key)
        bob = customer_digest(gate.keys, "c1", "bob", spec_obj.digest_key)
        alice_seq = (await _poll(public, "c1", "alice", tickets["alice"]))[1]["seq"]
        claimed = await other.claim("c1", alice_seq, alice, 1, "other-process")
        assert claimed.ok, claimed
        await other.revoke("c1", bob, "ops", "test")

        async def alice_claimed() -> bool:
            return (await _poll(public, "c1", "alice", tickets["alice"]))[1]["state"] == "claimed"

        async def bob_revoked() -> bool:
            return (await _poll(public, "c1", "bob", tickets["bob"]))[0] == 403

        await wait_for(alice_claimed, 5, "the other process's claim seen")
        await wait_for(bob_revoked, 5, "the other process's revocation seen")
    finally:
        await other_redis.aclose()


async def test_a_door_wait_told_elsewhere_shows_as_not_before(
    gate: Gate, public: Any, admin: Any, config: Config
) -> None:
    """pass.lua answers a customer the door told to come back later with that time as
    not_before; a remembered pass must not hide it once the cache has refreshed."""
    await create_campaign(admin, "c1", rate_per_s=1, burst=1)
    # at 1/s with a burst of 1, two admitted customers: the second's first arrival waits
    tickets = {}
    for customer in ("alice", "bob"):
        tickets[customer], tickets[customer + "-pass"] = await admitted(public, "c1", customer)
    other_redis = connect(config.redis_url, timeout_s=5)
    try:
        other = Room(other_redis, gate.scripts)
        seqs = {c: (await _poll(public, "c1", c, tickets[c]))[1]["seq"] for c in ("alice", "bob")}
        waits = [await other.arrive("c1", seqs[c]) for c in ("alice", "bob")]
        told = [c for c, w in zip(("alice", "bob"), waits, strict=True) if w]
        if not told:
            pytest.skip("both arrivals were due (the clock's slots passed while admitting)")
        customer = told[0]

        async def shows_not_before() -> bool:
            body = (await _poll(public, "c1", customer, tickets[customer]))[1]
            return body["state"] == "waiting" and body.get("not_before", 0) > 0

        await wait_for(shows_not_before, 5, "the door's time shown as not_before")
    finally:
        await other_redis.aclose()


async def test_an_expired_pass_is_not_answered_from_memory(
    gate: Gate, public: Any, admin: Any, redis_url: str
) -> None:
    await create_campaign(admin, "c1", pass_ttl_s=2)
    ticket, _ = await admitted(public, "c1", "alice")

    async def expired() -> bool:
        return (await _poll(public, "c1", "alice", ticket))[1]["state"] == "expired"

    await wait_for(expired, 10, "the pass's expiry answered")


async def test_unknown_campaigns_read_redis_once_per_refresh_period(
    gate: Gate, public: Any, admin: Any, redis_url: str
) -> None:
    requests = 300
    meta = CampaignKeys("nope").meta
    with CommandLog(redis_url) as log:
        started = time.monotonic()
        for _ in range(requests):
            r = await public.post("/q/nope/join", headers=as_customer("alice"))
            assert r.status == 404, await r.text()
            assert (await r.json())["error"]["code"] == "unknown_campaign"
        elapsed = time.monotonic() - started
        reads = log.count("HGETALL", meta)
    allowed = 1 + int(elapsed / MISSING_TTL_S) + 1
    # before: one read per request (300)
    assert reads <= allowed, f"{reads} reads of {meta} for {requests} requests in {elapsed:.1f}s"


async def test_a_campaign_created_after_a_miss_is_seen_within_the_refresh_period(
    gate: Gate, public: Any, admin: Any, config: Config
) -> None:
    r = await public.post("/q/later/join", headers=as_customer("alice"))
    assert r.status == 404
    # created by another process (its own Room), so this process is not told directly
    other_redis = connect(config.redis_url, timeout_s=5)
    try:
        from gate.campaign import parse_spec

        created = await Room(other_redis, gate.scripts).create(parse_spec(spec("later")), "ops")
        assert created
    finally:
        await other_redis.aclose()
    started = time.monotonic()

    async def joined() -> bool:
        return (await public.post("/q/later/join", headers=as_customer("alice"))).status == 201

    await wait_for(joined, 5, "the new campaign seen")
    assert time.monotonic() - started <= MISSING_TTL_S + 1.0


async def test_a_campaign_created_here_after_a_miss_is_seen_at_once(
    gate: Gate, public: Any, admin: Any
) -> None:
    r = await public.post("/q/now/join", headers=as_customer("alice"))
    assert r.status == 404
    await create_campaign(admin, "now")
    r = await public.post("/q/now/join", headers=as_customer("alice"))
    assert r.status == 201, await r.text()


async def test_a_flood_of_random_ids_keeps_the_negative_cache_bounded(gate: Gate) -> None:
    gate.cache.missing_max = 16  # the bound, made small (MISSING_MAX in production)
    assert gate.cache.missing_max <= MISSING_MAX
    for i in range(100):
        assert await gate.cache.get(f"random-{i}") is None
        assert 0 < gate.cache.missing_count() <= 16
