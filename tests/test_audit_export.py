"""The audit routes of the admin listener: queries, the streamed export, checkpoints.

A running in-process gate (its sealer included) against the test Redis; customers join
and get passes over HTTP. Exports are checked with `gate.audit.verify` and the keys the
public listener publishes.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest

from gate.admin_client import AdminClient
from gate.audit.export import export_chunks
from gate.audit.store import AuditStore
from gate.audit.verify import verify_lines
from gate.config import Config
from gate.errors import GateError
from gate.http.admin import create_admin_app
from gate.service import Gate, running_gate, store_for
from gate.tokens import customer_digest
from tests.helpers import ADMIN_TOKEN, admitted_pass, spec, wait_for, wait_sealed


async def test_query_by_customer_seq_and_time(gate: Gate, public: Any, admin: Any) -> None:
    assert (await admin.post("/admin/campaigns", json=spec("q1"))).status == 201
    await admitted_pass(public, "q1", "alice")
    r = await public.post("/q/q1/join", headers={"X-Customer-Id": "bob"})
    assert r.status == 201
    between = datetime.now(UTC)
    r = await public.post("/q/q1/join", headers={"X-Customer-Id": "carol"})
    assert r.status == 201
    alice = customer_digest(gate.keys, "q1", "alice").hex()

    async def admitted_three() -> bool:
        stats = await (await admin.get("/admin/campaigns/q1/stats")).json()
        return bool(stats["admitted"] == 3)

    await wait_for(admitted_three, 5, "three admitted")

    r = await admin.get("/admin/campaigns/q1/audit", params={"customer": "alice"})
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["customer"] == {"digest": alice, "seq": 1}
    kinds = [e["k"] for e in body["entries"]]
    assert kinds == ["join", "admit", "pass"], kinds
    join, admit, passed = body["entries"]
    assert join["s"] == [1, alice] and join["index"] == 2 and join["time"].endswith("Z")
    assert admit["f"] <= 1 <= admit["l"]
    assert passed["c"] == alice and passed["s"] == 1

    r = await admin.get("/admin/campaigns/q1/audit", params={"from_seq": "2", "to_seq": "3"})
    body = await r.json()
    assert {e["k"] for e in body["entries"]} == {"join", "admit"}
    assert all(
        any(2 <= s <= 3 for s in e["s"][0::2]) if e["k"] == "join" else e["l"] >= 2
        for e in body["entries"]
    )

    since = between.isoformat().replace("+00:00", "Z")
    r = await admin.get("/admin/campaigns/q1/audit", params={"since": since})
    later = (await r.json())["entries"]
    assert later and all(e["index"] > 3 for e in later)
    assert ["join", [3, customer_digest(gate.keys, "q1", "carol").hex()]] in [
        [e["k"], e["s"]] for e in later if e["k"] == "join"
    ]
    until = (between - timedelta(days=1)).isoformat()
    r = await admin.get("/admin/campaigns/q1/audit", params={"until": until})
    assert (await r.json())["entries"] == []

    # paging: two at a time, continuing after the last index
    seen: list[int] = []
    after = 0
    while True:
        r = await admin.get("/admin/campaigns/q1/audit", params={"limit": "2", "after": after})
        page = await r.json()
        seen += [e["index"] for e in page["entries"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    stats = await (await admin.get("/admin/campaigns/q1/stats")).json()
    assert seen == list(range(1, stats["audit_entries"] + 1))

    r = await admin.get("/admin/campaigns/q1/audit", params={"customer": "nobody"})
    body = await r.json()
    assert body["entries"] == [] and body["customer"]["seq"] is None


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("from_seq=abc", "from_seq"),
        ("from_seq=0", "from_seq"),
        ("to_seq=-3", "to_seq"),
        ("from_seq=5&to_seq=4", "to_seq"),
        ("since=yesterday", "since"),
        ("until=2026-01-01T00:00:00", "until"),
        ("since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", "until"),
        ("customer=", "customer"),
        ("customer=%0a", "customer"),
        ("limit=0", "limit"),
        ("limit=100001", "limit"),
        ("after=x", "after"),
        ("seq=1", "seq"),
        ("customer=a&customer=b", "customer"),
    ],
)
async def test_bad_query_parameters_are_400_naming_them(
    admin: Any, query: str, parameter: str
) -> None:
    assert (await admin.post("/admin/campaigns", json=spec("q2"))).status == 201
    r = await admin.get(f"/admin/campaigns/q2/audit?{query}")
    assert r.status == 400, await r.text()
    error = (await r.json())["error"]
    assert error["code"] == "bad_query"
    assert error["message"].startswith(f"{parameter}:"), error


async def test_unknown_campaign_and_token(gate: Gate, admin: Any, aiohttp_client: Any) -> None:
    for path in ("audit", "audit/export", "checkpoints", "audit/dispute?customer=a"):
        r = await admin.get(f"/admin/campaigns/nope/{path}")
        assert r.status == 404, path
        assert (await r.json())["error"]["code"] == "unknown_campaign"
    anonymous = await aiohttp_client(create_admin_app(gate))
    r = await anonymous.get("/admin/campaigns/nope/audit/export")
    assert r.status == 401


async def test_export_streams_verifies_and_matches_checkpoints(
    gate: Gate, public: Any, admin: Any
) -> None:
    """GET .../audit/export is chunked JSON Lines that verifies with the published keys;
    GET .../checkpoints lists the same signed checkpoints."""
    c = "ex1"
    assert (await admin.post("/admin/campaigns", json=spec(c))).status == 201
    for i in range(6):
        await admitted_pass(public, c, f"cust{i}")
    # many small entries, so the export is several chunks
    for i in range(1200):
        await gate.room.join(c, [customer_digest(gate.keys, c, f"bulk{i}")])

    async def everyone_admitted() -> bool:  # then the log stops growing
        return bool((await gate.room.stats(c))["admitted"] == 1206)

    await wait_for(everyone_admitted, 10, "all 1,206 customers admitted")
    size = await wait_sealed(gate, c)

    r = await admin.get(f"/admin/campaigns/{c}/audit/export")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/x-ndjson")
    assert r.headers.get("Transfer-Encoding") == "chunked"
    body = await r.read()
    keys = await (await public.get("/.well-known/fairgate/keys")).json()
    report = verify_lines(body.splitlines(), keys, keys_from="published")
    assert report.entries >= size >= 1200 and report.customers == 1206
    assert report.passes == 6

    r = await admin.get(f"/admin/campaigns/{c}/checkpoints")
    listed = (await r.json())["checkpoints"]
    exported = [json.loads(line) for line in body.splitlines() if b'"checkpoint"' in line]
    assert listed[: len(exported)] == exported and exported

    chunks = [chunk async for chunk in export_chunks(store_for(gate, c), keys)]
    assert len(chunks) >= 4  # header, entries in chunks of 500, checkpoints


async def test_export_reads_segment_files_and_redis(config: Config, tmp_path: Path) -> None:
    """Once sealed entries move from Redis to segment files, the export reads both and
    still verifies."""
    fast = dataclasses.replace(config, seal_interval_ms=20, audit_keep_in_redis=10)
    async with running_gate(fast) as gate:
        await gate.wait_ready()
        from gate.audit import commitment
        from gate.campaign import parse_spec

        await gate.room.create(parse_spec(spec("seg")), "ops", publish_first=True)
        assert await commitment.publish(gate.room, gate.sealer, store_for(gate, "seg"), 10)
        for i in range(120):
            await gate.room.join("seg", [customer_digest(gate.keys, "seg", f"s{i}")])
        store = store_for(gate, "seg")

        async def moved() -> bool:
            trimmed, _ = await store.bounds()
            return trimmed >= 50

        async def everyone_admitted() -> bool:  # then the log stops growing
            return bool((await gate.room.stats("seg"))["admitted"] == 120)

        await wait_for(moved, 10, "entries moved to segment files")
        await wait_for(everyone_admitted, 10, "all 120 customers admitted")
        await wait_sealed(gate, "seg")
        assert await store.segments()
        keys = gate.keys.public_keys()
        body = b"".join([chunk async for chunk in export_chunks(store, keys)])
    report = verify_lines(body.splitlines(), keys, require_sealed=True)
    assert report.customers == 120


async def test_export_cut_short_is_not_a_clean_end(
    gate: Gate, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When reading the log fails mid-stream the response is aborted: the client sees an
    incomplete body, never a shorter export that ends cleanly."""
    assert (await admin.post("/admin/campaigns", json=spec("cut"))).status == 201
    for i in range(1100):
        await gate.room.join("cut", [customer_digest(gate.keys, "cut", f"c{i}")])
    original = AuditStore.entries

    async def failing(self: AuditStore, start: int = 1, stop: int | None = None) -> Any:
        async for index, raw in original(self, start, stop):
            if index == 700:
                raise ConnectionError("Redis went away")
            yield index, raw

    monkeypatch.setattr(AuditStore, "entries", failing)
    r = await admin.get("/admin/campaigns/cut/audit/export")
    assert r.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await r.read()
    # and `gate audit export` (AdminClient.stream) reports it instead of ending quietly
    client = AdminClient(str(admin.make_url("")), ADMIN_TOKEN)
    with pytest.raises(GateError) as failed:
        await asyncio.to_thread(client.stream, "/admin/campaigns/cut/audit/export", io.BytesIO())
    assert failed.value.code == "incomplete"


async def test_export_header_carries_the_public_keys(gate: Gate, admin: Any) -> None:
    assert (await admin.post("/admin/campaigns", json=spec("hd"))).status == 201
    r = await admin.get("/admin/campaigns/hd/audit/export")
    lines = (await r.read()).splitlines()
    header = json.loads(lines[0])
    assert header == {
        "type": "header",
        "format": "fairgate-audit/1",
        "campaign": "hd",
        "keys": gate.keys.public_keys(),
    }
    first = json.loads(lines[1])
    assert first["type"] == "entry" and first["i"] == 1
    entry = msgpack.unpackb(base64.b64decode(first["raw"]), raw=True)
    assert entry[b"k"] == b"admin-create" and entry[b"a"] == b"ops"  # the token's name
    assert ADMIN_TOKEN.encode() not in b"".join(lines)


async def test_a_client_leaving_mid_export_does_no_harm(gate: Gate, admin: Any) -> None:
    assert (await admin.post("/admin/campaigns", json=spec("gone"))).status == 201
    for i in range(2000):
        await gate.room.join("gone", [customer_digest(gate.keys, "gone", f"g{i}")])
    r = await admin.get("/admin/campaigns/gone/audit/export")
    assert r.status == 200
    await r.content.readexactly(1000)
    r.close()  # the connection goes away with most of the export unread
    r = await admin.get("/admin/campaigns/gone/audit/export")
    # still being admitted and sealed: the tail is checked, reported NOT verified
    report = verify_lines(
        (await r.read()).splitlines(), gate.keys.public_keys(), require_sealed=False
    )
    assert report.customers == 2000
