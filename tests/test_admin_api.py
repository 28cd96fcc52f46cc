"""The admin listener: campaign lifecycle, live changes, block and revoke, and the audit."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from gate.config import Config
from gate.http.admin import create_admin_app
from gate.http.public import create_public_app
from gate.service import Gate, running_gate
from gate.tokens import customer_digest
from tests.helpers import ADMIN_TOKEN, admitted, as_customer, create_campaign, join, spec, wait_for


async def error_code(response: Any, status: int) -> str:
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json"
    code: str = (await response.json())["error"]["code"]
    return code


async def test_create_duplicate_list_show(admin: Any) -> None:
    body = spec("c1", rate_per_s=25, burst=5, max_active=40, pass_ttl_s=90)
    r = await admin.post("/admin/campaigns", json=body)
    assert r.status == 201, await r.text()
    created = await r.json()
    assert created["id"] == "c1" and created["state"] == "open"
    admission = created["spec"]["admission"]
    wanted = {"rate_per_s": 25, "burst": 5, "max_active": 40, "pass_ttl_s": 90}
    assert {k: admission[k] for k in wanted} == wanted
    assert admission["reservation_ttl_s"] == 120  # the default
    assert created["spec"]["quota"]["total"] == "1000000"
    opens = datetime.fromisoformat(body["opens_at"])
    assert datetime.fromisoformat(created["spec"]["opens_at"]) == opens

    r = await admin.post("/admin/campaigns", json=spec("c1", rate_per_s=99))
    assert await error_code(r, 409) == "campaign_exists"
    r = await admin.get("/admin/campaigns/c1")
    assert (await r.json())["spec"]["admission"]["rate_per_s"] == 25  # not overwritten

    await create_campaign(admin, "c0")
    r = await admin.get("/admin/campaigns")
    assert r.status == 200
    listed = (await r.json())["campaigns"]
    assert [c["id"] for c in listed] == ["c0", "c1"]
    assert listed[1] == {"id": "c1", "state": "open", "joined": 0, "cursor": 0}

    r = await admin.get("/admin/campaigns/c1")
    shown = await r.json()
    assert shown["id"] == "c1" and shown["state"] == "open"
    assert shown["spec"] == created["spec"]
    assert shown["stats"]["joined"] == 0


async def test_patch_live_settings(admin: Any, gate: Gate) -> None:
    await create_campaign(admin, rate_per_s=10, burst=5, max_active=100)
    closes = (datetime.now(UTC) + timedelta(hours=3)).replace(microsecond=0)
    for patch, field, value in [
        ({"rate_per_s": 5}, "rate_per_s", 5),
        ({"admission": {"burst": 7}}, "burst", 7),
        ({"max_active": 50}, "max_active", 50),
        ({"pass_ttl_s": 60}, "pass_ttl_s", 60),
    ]:
        r = await admin.patch("/admin/campaigns/c1", json=patch)
        assert r.status == 200, await r.text()
        assert (await r.json())["spec"]["admission"][field] == value
    r = await admin.patch("/admin/campaigns/c1", json={"closes_at": closes.isoformat()})
    assert r.status == 200, await r.text()
    assert (await r.json())["spec"]["closes_at"] == closes.isoformat().replace("+00:00", "Z")

    meta = await gate.room.meta("c1")
    assert meta is not None
    assert float(meta["rate"]) == 5.0 and meta["burst"] == "7" and meta["max_active"] == "50"
    assert meta["pass_ttl_us"] == str(60 * 1_000_000)
    assert meta["closes_at_us"] == str(int(closes.timestamp()) * 1_000_000)

    async def cached() -> bool:  # what every process's cache sees, within its reload period
        live = gate.cache.peek("c1")
        return live is not None and live.state.rate == 5.0 and live.spec.closes_at == closes

    await wait_for(cached, 3, "the new settings in the cache")

    updates = [e for e in await gate.room.audit_entries("c1") if e["k"] == b"admin-update"]
    assert [e["f"] for e in updates] == [
        [b"rate"],
        [b"burst"],
        [b"max_active"],
        [b"pass_ttl_us"],
        [b"closes_at_us"],
    ]
    assert updates[0]["o"] == [b"10.0"] and updates[0]["n"] == [b"5.0"]

    # refused changes leave the campaign as it was
    for patch, field in [
        ({"quota": {"total": 5}}, "quota"),
        ({"colour": "red"}, "colour"),
        ({"rate_per_s": -1}, "admission.rate_per_s"),
        ({"closes_at": "2000-01-01T00:00:00Z"}, "closes_at"),
        ({}, "body"),
    ]:
        r = await admin.patch("/admin/campaigns/c1", json=patch)
        assert await error_code(r, 400) == "bad_spec"
        assert (await r.json())["error"]["message"].startswith(f"{field}:")
    r = await admin.patch("/admin/campaigns/nope", json={"rate_per_s": 5})
    assert await error_code(r, 404) == "unknown_campaign"
    r = await admin.post("/admin/campaigns/c1/close")
    assert r.status == 200
    r = await admin.patch("/admin/campaigns/c1", json={"rate_per_s": 9})
    assert await error_code(r, 409) == "campaign_closed"
    meta = await gate.room.meta("c1")
    assert meta is not None and float(meta["rate"]) == 5.0
    assert len([e for e in await gate.room.audit_entries("c1") if e["k"] == b"admin-update"]) == 5


async def test_state_transitions(admin: Any) -> None:
    await create_campaign(admin)
    moves = [
        ("resume", 409, "open"),
        ("pause", 200, "paused"),
        ("pause", 409, "paused"),
        ("resume", 200, "open"),
        ("pause", 200, "paused"),
        ("close", 200, "closed"),
        ("pause", 409, "closed"),
        ("resume", 409, "closed"),
        ("close", 409, "closed"),
    ]
    for action, status, state in moves:
        r = await admin.post(f"/admin/campaigns/c1/{action}")
        if status == 200:
            assert r.status == 200, await r.text()
            assert (await r.json())["state"] == state
        else:
            assert await error_code(r, 409) == "bad_state"
            assert state in (await r.json())["error"]["message"]
        shown = await (await admin.get("/admin/campaigns/c1")).json()
        assert shown["state"] == state, (action, shown["state"])
    r = await admin.post("/admin/campaigns/nope/pause")
    assert await error_code(r, 404) == "unknown_campaign"


async def test_stats_fields(public: Any, admin: Any) -> None:
    await create_campaign(admin, rate_per_s=1000, burst=100)
    r = await admin.post("/admin/campaigns/c1/pause")
    assert r.status == 200
    for name in ("a", "b", "c"):
        await join(public, "c1", name)
    r = await admin.get("/admin/campaigns/c1/stats")
    assert r.status == 200
    stats = await r.json()
    for field in (
        "id",
        "state",
        "joined",
        "cursor",
        "waiting",
        "admitted",
        "active",
        "expired",
        "blocked",
        "revoked",
        "audit_entries",
        "admission_rate_per_s",
    ):
        assert field in stats, field
    assert stats["id"] == "c1" and stats["state"] == "paused"
    assert (stats["joined"], stats["waiting"], stats["admitted"], stats["active"]) == (3, 3, 0, 0)

    r = await admin.post("/admin/campaigns/c1/resume")
    assert r.status == 200

    async def all_admitted() -> bool:
        s = await (await admin.get("/admin/campaigns/c1/stats")).json()
        stats.update(s)
        return bool(s["admitted"] == 3)

    await wait_for(all_admitted, 5, "three admitted")
    assert stats["waiting"] == 0 and stats["active"] == 3 and stats["cursor"] == 3
    r = await admin.post("/admin/campaigns/c1/revoke", json={"customer": "b"})
    assert r.status == 200
    stats = await (await admin.get("/admin/campaigns/c1/stats")).json()
    assert stats["revoked"] == 1 and stats["active"] == 2
    # join batch(es), admit(s), pause, resume, revoke and the create: all in the log
    assert stats["audit_entries"] >= 6


async def test_every_change_is_audited_with_the_operator_name(
    public: Any, admin: Any, gate: Gate
) -> None:
    await create_campaign(admin)
    await join(public, "c1", "alice")
    steps = [
        ("PATCH", "/admin/campaigns/c1", {"rate_per_s": 3}, "admin-update"),
        ("POST", "/admin/campaigns/c1/pause", None, "admin-pause"),
        ("POST", "/admin/campaigns/c1/resume", None, "admin-resume"),
        ("POST", "/admin/campaigns/c1/block", {"customer": "mallory", "reason": "bot"}, "block"),
        ("POST", "/admin/campaigns/c1/revoke", {"customer": "alice", "reason": "x"}, "revoke"),
        ("POST", "/admin/campaigns/c1/close", None, "admin-close"),
    ]
    for method, path, body, _ in steps:
        r = await admin.request(method, path, json=body)
        assert r.status == 200, (path, await r.text())
    entries = await gate.room.audit_entries("c1")
    assert [e["i"] for e in entries] == list(range(1, len(entries) + 1))  # gap-free
    operator = [e for e in entries if "a" in e]
    assert [e["k"].decode() for e in operator] == ["admin-create"] + [s[3] for s in steps]
    assert all(e["a"] == b"ops" for e in operator), operator
    block = operator[4]
    assert block["c"] == customer_digest(gate.keys, "c1", "mallory") and block["r"] == b"bot"
    assert block["s"] == 0  # mallory never joined
    assert operator[5]["s"] == 1 and operator[5]["c"] == customer_digest(gate.keys, "c1", "alice")
    times = [e["t"] for e in entries]
    assert times == sorted(times)

    # a refused action changes nothing, so it writes nothing
    r = await admin.post("/admin/campaigns/c1/pause")
    assert r.status == 409
    assert len(await gate.room.audit_entries("c1")) == len(entries)


async def second_gate_public(config: Config, aiohttp_client: Any, stack: Any) -> Any:
    """Another gate process on the same Redis (its own cache, refreshed in the background)."""
    other = await stack.enter_async_context(running_gate(config))
    await other.wait_ready()
    return await aiohttp_client(create_public_app(other))


async def test_block_stops_join_and_pass_within_one_second(
    public: Any, admin: Any, gate: Gate, config: Config, aiohttp_client: Any
) -> None:
    import contextlib

    await create_campaign(admin)
    async with contextlib.AsyncExitStack() as stack:
        other = await second_gate_public(config, aiohttp_client, stack)
        ticket, pass_token = await admitted(public, "c1", "alice")
        headers = as_customer("alice", **{"X-Gate-Pass": pass_token, "X-Gate-Campaign": "c1"})

        async def works_on_other() -> bool:
            return bool((await other.get("/gate/auth", headers=headers)).status == 200)

        await wait_for(works_on_other, 3, "the other gate knows c1")
        assert (await public.get("/gate/auth", headers=headers)).status == 200

        r = await admin.post("/admin/campaigns/c1/block", json={"customer": "alice"})
        assert r.status == 200, await r.text()
        assert (await r.json()) == {"campaign": "c1", "blocked": True, "seq": 1}
        blocked_at = time.monotonic()
        for client in (public, other):

            async def refused(client: Any = client) -> bool:
                r = await client.get("/gate/auth", headers=headers)
                return bool(r.status == 403 and (await r.json())["error"]["code"] == "revoked")

            await wait_for(
                refused,
                max(0.0, 1.0 - (time.monotonic() - blocked_at)),
                "pass refused after block",
                interval_s=0.005,
            )
        assert time.monotonic() - blocked_at < 1.0

        # blocked customers cannot join, whether or not they held a ticket
        for customer in ("alice", "bob"):
            if customer == "bob":
                r = await admin.post("/admin/campaigns/c1/block", json={"customer": "bob"})
                assert (await r.json())["seq"] is None
            r = await public.post("/q/c1/join", headers={"X-Customer-Id": customer})
            assert await error_code(r, 403) == "blocked"
        r = await public.get(
            "/q/c1/status", params={"ticket": ticket}, headers=as_customer("alice")
        )
        assert await error_code(r, 403) == "revoked"
        # someone else is unaffected
        r = await public.post("/q/c1/join", headers={"X-Customer-Id": "carol"})
        assert r.status == 201


async def test_revoke_stops_pass_within_one_second(
    public: Any, admin: Any, config: Config, aiohttp_client: Any
) -> None:
    import contextlib

    await create_campaign(admin)
    async with contextlib.AsyncExitStack() as stack:
        other = await second_gate_public(config, aiohttp_client, stack)
        _, pass_token = await admitted(public, "c1", "alice")
        _, bob_pass = await admitted(public, "c1", "bob")
        headers = as_customer("alice", **{"X-Gate-Pass": pass_token, "X-Gate-Campaign": "c1"})

        async def works_on_other() -> bool:
            return bool((await other.get("/gate/auth", headers=headers)).status == 200)

        await wait_for(works_on_other, 3, "the other gate knows c1")
        r = await admin.post("/admin/campaigns/c1/revoke", json={"customer": "alice"})
        assert r.status == 200, await r.text()
        assert (await r.json())["seq"] == 1
        revoked_at = time.monotonic()
        for client in (public, other):

            async def refused(client: Any = client) -> bool:
                return bool((await client.get("/gate/auth", headers=headers)).status == 403)

            await wait_for(
                refused,
                max(0.0, 1.0 - (time.monotonic() - revoked_at)),
                "pass refused after revoke",
                interval_s=0.005,
            )
        assert time.monotonic() - revoked_at < 1.0
        r = await public.get(
            "/gate/auth",
            headers=as_customer("bob", **{"X-Gate-Pass": bob_pass, "X-Gate-Campaign": "c1"}),
        )
        assert r.status == 200  # only alice
        r = await admin.post("/admin/campaigns/c1/revoke", json={"customer": "nobody"})
        assert await error_code(r, 404) == "no_ticket"
        for body in (
            {},
            {"customer": ""},
            {"customer": 5},
            {"customer": "x" * 300},
            {"customer": "a", "reason": 5},
        ):
            r = await admin.post("/admin/campaigns/c1/revoke", json=body)
            assert r.status == 400, body


async def test_several_tokens_each_named_in_the_audit(config: Config, aiohttp_client: Any) -> None:
    alice_token = "alice-token-0123456789abcdef"
    cfg = dataclasses.replace(
        config,
        admin_tokens=(("ops", ADMIN_TOKEN), ("alice", alice_token), ("robot", "r" * 16)),
    )
    async with running_gate(cfg) as gate:
        await gate.wait_ready()
        client = await aiohttp_client(create_admin_app(gate))
        for token, campaign in (
            (ADMIN_TOKEN, "by-ops"),
            (alice_token, "by-alice"),
            ("r" * 16, "by-robot"),
        ):
            r = await client.post(
                "/admin/campaigns",
                json=spec(campaign),
                headers={"Authorization": f"Bearer {token}"},
            )
            assert r.status == 201, await r.text()
        r = await client.post(
            "/admin/campaigns/by-ops/pause", headers={"Authorization": f"Bearer {alice_token}"}
        )
        assert r.status == 200
        r = await client.get(
            "/admin/campaigns", headers={"Authorization": f"Bearer {alice_token[:-1]}"}
        )
        assert r.status == 401
        actors = {}
        for campaign in ("by-ops", "by-alice", "by-robot"):
            entries = await gate.room.audit_entries(campaign)
            actors[campaign] = [(e["k"], e["a"]) for e in entries if "a" in e]
        assert actors == {
            "by-ops": [(b"admin-create", b"ops"), (b"admin-pause", b"alice")],
            "by-alice": [(b"admin-create", b"alice")],
            "by-robot": [(b"admin-create", b"robot")],
        }


async def test_admin_healthz_needs_no_token(admin: Any) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(str(admin.make_url("/healthz"))) as r,
    ):
        assert r.status == 200 and (await r.json()) == {"ok": True}
