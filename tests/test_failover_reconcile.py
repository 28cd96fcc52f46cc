"""A new Redis primary that lacks acknowledged writes: the gate notices, holds writes
(503 `reconciling`), reconciles, and never gives a seq or a reservation id out twice.

No Sentinel here (tests/test_failover_sentinel.py has the whole topology): a real `gate
serve` runs on a Redis with AOF `always`; a copy of that Redis's data directory is taken
after some acknowledged writes; more writes are acknowledged; then Redis is killed and a
Redis started on the same port from the copy. That is what a failover to a lagging replica
looks like to the gate (a new run id, the last writes missing), and what a standalone
Redis restarted from an old AOF or without it looks like too.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import redis as sync_redis

from gate.audit.format import decode_entry
from gate.campaign import parse_spec
from gate.errors import GateError
from gate.redis_server import RedisServer, free_port
from gate.room import Room
from gate.room.keys import CampaignKeys
from tests.helpers import (
    ADMIN_TOKEN,
    CORE_TOKEN,
    GateProcess,
    as_customer,
    gate_cli,
    spec,
    unb64url,
    wait_for,
)

CAMPAIGN = "fo"


class Client:
    """A real listener as the helpers' test clients look (relative paths, `.session`)."""

    def __init__(self, session: aiohttp.ClientSession):
        self.session = session
        self.post = session.post
        self.get = session.get


@dataclass
class Scene:
    tmp: Path
    port: int
    redis: RedisServer
    gate: GateProcess
    public: Client
    admin: Client
    core: Client

    def copy_redis(self, name: str) -> Path:
        """The data directory as it is now (AOF `always`: every acknowledged write)."""
        target = self.tmp / name
        shutil.copytree(
            self.redis.data_dir, target, ignore=shutil.ignore_patterns("redis.log", "*.tmp*")
        )
        return target

    def swap_redis(self, data_dir: Path) -> str:
        """kill -9 the primary, start one on the same port from `data_dir`; its run id."""
        self.redis.kill()
        self.redis = RedisServer(data_dir, port=self.port)
        self.redis.start()
        return run_id(self.port)

    def log(self) -> str:
        return self.gate.log_path.read_text()


def run_id(port: int) -> str:
    client = sync_redis.Redis(port=port)
    try:
        return str(client.info("server")["run_id"])
    finally:
        client.close()


@pytest.fixture
async def scene(
    tmp_path: Path, keys_file: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Scene]:
    port = free_port()
    redis = RedisServer(tmp_path / "redis-a", port=port)
    redis.start()
    # By default no checkpoint after the first: the sealed log stays behind the copy (no
    # seal bound either, which would seal 4 times a second: docs/audit-format.md).
    env = {
        "GATE_SEAL_INTERVAL_MS": "600000",
        "GATE_SEAL_BOUND_MS": "0",
        **getattr(request, "param", {}),
    }
    gate = GateProcess(f"redis://127.0.0.1:{port}/0", tmp_path / "gate", keys_file, extra_env=env)
    holder: dict[str, Any] = {"redis": redis}
    try:
        async with (
            gate,
            aiohttp.ClientSession(base_url=gate.url) as public,
            aiohttp.ClientSession(
                base_url=gate.admin_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            ) as admin,
            aiohttp.ClientSession(
                base_url=gate.core_url, headers={"Authorization": f"Bearer {CORE_TOKEN}"}
            ) as core,
        ):
            s = Scene(tmp_path, port, redis, gate, Client(public), Client(admin), Client(core))
            holder["scene"] = s
            yield s
    finally:
        current = holder["scene"].redis if "scene" in holder else redis
        current.stop()
        redis.stop()


async def create(scene: Scene) -> None:
    body = spec(CAMPAIGN)
    body["quota"] = {"unit": "item", "total": 100}
    body["admission"]["reservation_ttl_s"] = 600
    r = await scene.admin.post("/admin/campaigns", json=body)
    assert r.status == 201, await r.text()


async def join(scene: Scene, customer: str) -> aiohttp.ClientResponse:
    return await scene.public.post(f"/q/{CAMPAIGN}/join", headers=as_customer(customer))


async def joined_seq(scene: Scene, customer: str) -> tuple[int, str]:
    r = await join(scene, customer)
    assert r.status in (200, 201), await r.text()
    body = await r.json()
    return int(body["seq"]), str(body["ticket"])


async def pass_of(scene: Scene, customer: str, ticket: str) -> str:
    found: dict[str, Any] = {}

    async def admitted() -> bool:
        r = await scene.public.get(
            f"/q/{CAMPAIGN}/status", params={"ticket": ticket}, headers=as_customer(customer)
        )
        if r.status == 200:
            found.update(await r.json())
        return found.get("state") == "admitted"

    await wait_for(admitted, 10, f"{customer} admitted")
    scene.public.session.cookie_jar.clear()
    return str(found["pass"])


async def claim(scene: Scene, customer: str, pass_token: str, key: str) -> aiohttp.ClientResponse:
    return await scene.public.post(
        f"/q/{CAMPAIGN}/claim",
        json={"amount": 1, "idempotency_key": key},
        headers=as_customer(customer, **{"X-Gate-Pass": pass_token}),
    )


def number(reservation: str) -> int:
    """A reservation id's number: "r7" or "r7-<random part>" -> 7."""
    return int(reservation[1:].partition("-")[0])


async def reservation(scene: Scene, customer: str, pass_token: str, key: str) -> str:
    r = await claim(scene, customer, pass_token, key)
    assert r.status == 201, await r.text()
    return str((await r.json())["reservation"])


async def view(scene: Scene) -> dict[str, Any]:
    r = await scene.admin.get(f"/admin/campaigns/{CAMPAIGN}")
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def readiness_until_ready(scene: Scene, timeout_s: float = 20.0) -> list[tuple[int, Any]]:
    """Poll /readyz until 200; every (status, reason) seen on the way, in order."""
    seen: list[tuple[int, Any]] = []

    async def ready() -> bool:
        try:
            r = await scene.public.get("/readyz")
        except aiohttp.ClientError:
            return False
        reason = (await r.json()).get("reason")
        if not seen or seen[-1] != (r.status, reason):
            seen.append((r.status, reason))
        return r.status == 200

    await wait_for(ready, timeout_s, f"/readyz 200 (seen {seen})", interval_s=0.01)
    return seen


async def acknowledged_writes(scene: Scene) -> dict[str, Any]:
    """Before the copy: seqs 1..3, r1 (customer a). After it: seqs 4..6, r2 (customer b),
    r1 confirmed. Returns tickets and passes."""
    await create(scene)
    tickets = {}
    for customer in ("a", "b", "c"):
        tickets[customer] = await joined_seq(scene, customer)
    assert [tickets[c][0] for c in "abc"] == [1, 2, 3]
    passes = {c: await pass_of(scene, c, tickets[c][1]) for c in "abc"}
    rid = await reservation(scene, "a", passes["a"], "k-a")
    assert number(rid) == 1
    return {"tickets": tickets, "passes": passes, "reservations": [rid]}


async def after_copy(scene: Scene, state: dict[str, Any]) -> None:
    for customer in ("d", "e", "f"):
        state["tickets"][customer] = await joined_seq(scene, customer)
    assert [state["tickets"][c][0] for c in "def"] == [4, 5, 6]
    rid = await reservation(scene, "b", state["passes"]["b"], "k-b")
    assert number(rid) == 2
    state["reservations"].append(rid)
    for rid in state["reservations"]:  # r1 (on the copy, held there) and r2 (not on it)
        r = await scene.core.post(f"/q/{CAMPAIGN}/reservations/{rid}/confirm", json={})
        assert r.status == 200, await r.text()


async def test_lost_writes_hold_the_campaign_and_nothing_is_issued_twice(scene: Scene) -> None:
    state = await acknowledged_writes(scene)
    old_run_id = run_id(scene.port)
    copy = scene.copy_redis("redis-copy")  # holds seqs 1..3 and r1, no more
    await after_copy(scene, state)

    new_run_id = scene.swap_redis(copy)
    seen = await readiness_until_ready(scene)

    # A new customer after the swap: never a seq that was acknowledged to someone else.
    seq_g, ticket_g = await joined_seq(scene, "g")
    given = {seq for seq, _ in state["tickets"].values()}
    assert seq_g not in given, f"seq {seq_g} issued twice (already given: {sorted(given)})"
    assert seq_g == 7
    assert (503, "reconciling") in seen, f"/readyz never said reconciling: {seen}"
    # Its receipt, though its join entry took the index of a lost one (a cached batch of
    # that index must not stand in for it).
    r = await scene.public.get(  # its holder's (issue 13)
        f"/q/{CAMPAIGN}/receipt/{seq_g}", params={"ticket": ticket_g}, headers=as_customer("g")
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["receipt"]["seq"] == seq_g

    # The campaign is held: paused, with a report of exactly what was lost.
    shown = await view(scene)
    assert shown["state"] == "paused"
    report = shown["failover_hold"]
    assert report is not None
    assert report["seqs"] == [4, 6]
    assert report["reservations"] == [2, 2]
    assert report["previous_primary"] == old_run_id
    assert report["primary"] == new_run_id
    assert report["log_broken"] is False
    first_lost, last_lost = report["audit"]
    assert first_lost == report["audit_base"] + 1 and last_lost > first_lost
    # The confirmation of r1, acknowledged to the core system, is done again; r2's cannot be.
    r1, r2 = state["reservations"]
    assert shown["failover_restored"] == {
        r1: "confirmed again",
        r2: "lost: confirmed, then missing on the new primary",
    }
    client = sync_redis.Redis(port=scene.port)
    try:
        record = client.hget(f"fg:{{{CAMPAIGN}}}:res", r1)
    finally:
        client.close()
    assert record is not None and msgpack.unpackb(record, raw=True)[2] == b"confirmed"
    log = scene.log()
    assert re.search(
        rf"event=failover_lost campaign={CAMPAIGN} seqs=4\.\.6 reservations=r2\.\.r2 ", log
    ), log[-3000:]
    metrics = await (await scene.public.get("/metrics")).text()
    assert f'fairgate_failover_lost{{campaign="{CAMPAIGN}"}} 1.0' in metrics
    assert "fairgate_failovers_total 1.0" in metrics

    # Held: no allocation (a claim is 503 campaign_held) until an operator resumes.
    r = await claim(scene, "c", state["passes"]["c"], "k-c")
    assert r.status == 503 and r.headers.get("Retry-After")
    assert (await r.json())["error"]["code"] == "campaign_held"
    r = await scene.admin.post(f"/admin/campaigns/{CAMPAIGN}/resume", json={})
    assert r.status == 200, await r.text()
    assert (await r.json())["failover_hold"] is None

    async def claimed() -> bool:
        r = await claim(scene, "c", state["passes"]["c"], "k-c")
        if r.status == 503:
            return False
        assert r.status == 201, await r.text()
        claimed_ids.append((await r.json())["reservation"])
        return True

    claimed_ids: list[str] = []
    await wait_for(claimed, 5, "a claim once resumed", interval_s=0.05)
    # r2 was acknowledged to customer b before the swap: its number is never given again.
    assert len(claimed_ids) == 1 and claimed_ids[0] not in state["reservations"]
    assert number(claimed_ids[0]) == 3

    # The log still verifies offline: its failover-lost entry names what was lost and moves
    # the seq and reservation counters on.
    env = {"GATE_ADMIN_URL": scene.gate.admin_url, "GATE_ADMIN_TOKEN": ADMIN_TOKEN}
    log_file = scene.tmp / "log.jsonl"
    exported = await gate_cli("audit", "export", CAMPAIGN, "--out", str(log_file), env=env)
    assert exported.code == 0, exported
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    entries = [decode_entry(unb64url(x["raw"])) for x in lines if x["type"] == "entry"]
    lost = [e for e in entries if e["k"] == b"failover-lost"]
    assert len(lost) == 1, lost
    assert lost[0]["sr"] == [4, 6] and lost[0]["rr"] == [2, 2] and lost[0]["p"] == 1
    keys_file = scene.tmp / "keys.json"
    keys_doc = await (await scene.public.get("/.well-known/fairgate/keys")).json()
    keys_file.write_text(json.dumps(keys_doc))
    # The scene seals only once (seal_interval_ms 600 s: the sealed log stays behind the
    # copy), so the entries after the create are checked but not verified: verify is
    # strict unless told otherwise, and says so.
    verified = await gate_cli(
        "audit", "verify", str(log_file), "--keys", str(keys_file), "--allow-unsealed"
    )
    assert verified.code == 0, verified
    # the one round seals what was there when it ran: the create, or a few entries more
    covered = re.search(r"checkpoints cover 1\.\.(\d+) of (\d+)", verified.out)
    assert covered is not None and int(covered[1]) < int(covered[2]), verified.out
    assert "NOT verified" in verified.out


async def test_a_primary_that_lost_nothing_resumes_without_a_hold(scene: Scene) -> None:
    await create(scene)
    before = [(await joined_seq(scene, c))[0] for c in ("a", "b")]
    assert before == [1, 2]
    old_run_id = run_id(scene.port)
    # kill -9 with AOF always: the restarted Redis has everything (a new run id all the same)
    new_run_id = scene.swap_redis(scene.redis.data_dir)
    assert new_run_id != old_run_id
    seen = await readiness_until_ready(scene)
    assert (503, "reconciling") in seen, f"/readyz never said reconciling: {seen}"
    assert (await joined_seq(scene, "c"))[0] == 3
    shown = await view(scene)
    assert shown["state"] == "open" and shown["failover_hold"] is None
    log = scene.log()
    assert re.search(
        rf"event=failover_reconciled old_run_id={old_run_id} new_run_id={new_run_id} .*lost=0", log
    ), log[-2000:]
    assert "event=failover_lost" not in log


async def test_writes_answer_503_reconciling_while_reconciling(scene: Scene) -> None:
    await create(scene)
    await joined_seq(scene, "a")
    scene.swap_redis(scene.redis.data_dir)
    codes: list[tuple[int, str]] = []

    async def refused_reconciling() -> bool:
        try:
            r = await join(scene, "b")
        except aiohttp.ClientError:
            return False
        code = (await r.json()).get("error", {}).get("code", "") if r.status != 201 else ""
        codes.append((r.status, code))
        if r.status == 201:
            raise AssertionError(f"a join went through before reconciling: {codes}")
        return r.status == 503 and code == "reconciling" and bool(r.headers.get("Retry-After"))

    await wait_for(refused_reconciling, 10, "a join answered 503 reconciling", interval_s=0.01)
    await readiness_until_ready(scene)
    assert (await joined_seq(scene, "b"))[0] == 2


# Seal every 20 ms and move all but the newest 10 sealed entries to segment files.
SEAL_AND_MOVE = {"GATE_SEAL_INTERVAL_MS": "20", "GATE_AUDIT_KEEP_IN_REDIS": "10"}


def segments_last(scene: Scene) -> int:
    found = [
        int(m[1])
        for path in (scene.gate.data_dir / "audit").glob(f"{CAMPAIGN}.*/seg-*.fgs")
        if (m := re.fullmatch(r"seg-\d{12}-(\d{12})\.fgs", path.name))
    ]
    return max(found, default=0)


@pytest.mark.parametrize("scene", [{}, SEAL_AND_MOVE], indirect=True, ids=["redis", "sealed"])
async def test_a_primary_without_the_whole_campaign_holds_it_and_refuses_its_id(
    scene: Scene,
) -> None:
    """The new primary has none of the campaign (a replica promoted before the primary
    streamed it anything, or a Redis restarted empty): neither its meta nor the registry.
    The marks show ten acknowledged joins: the campaign is held, not forgotten, and its id
    cannot be created again (that would give seqs 1..10 out a second time)."""
    await create(scene)
    tickets = {f"c{n}": await joined_seq(scene, f"c{n}") for n in range(10)}
    assert sorted(seq for seq, _ in tickets.values()) == list(range(1, 11))
    pass_c0 = await pass_of(scene, "c0", tickets["c0"][1])
    if scene.gate.env.get("GATE_AUDIT_KEEP_IN_REDIS"):

        async def on_disk() -> bool:
            return segments_last(scene) > 0

        await wait_for(on_disk, 10, "sealed entries in a segment file")
    old_run_id = run_id(scene.port)
    new_run_id = scene.swap_redis(scene.tmp / "redis-empty")
    client = sync_redis.Redis(port=scene.port)
    try:
        assert client.dbsize() == 0
    finally:
        client.close()
    await readiness_until_ready(scene)

    async def held(response: aiohttp.ClientResponse) -> None:
        body = await response.text()
        assert response.status == 503, body
        assert json.loads(body)["error"]["code"] == "campaign_held", body
        assert response.headers.get("Retry-After"), body

    await held(await join(scene, "c10"))
    await held(await join(scene, "c0"))
    await held(
        await scene.public.get(
            f"/q/{CAMPAIGN}/status",
            params={"ticket": tickets["c1"][1]},
            headers=as_customer("c1"),
        )
    )
    await held(await claim(scene, "c0", pass_c0, "k-c0"))

    log = scene.log()
    assert re.search(rf"event=failover_lost campaign={CAMPAIGN} seqs=1\.\.10 ", log), log[-3000:]
    assert re.search(r"event=failover_reconciled .*campaigns=1 lost=1 ", log), log[-3000:]
    metrics = await (await scene.public.get("/metrics")).text()
    assert f'fairgate_failover_lost{{campaign="{CAMPAIGN}"}} 1.0' in metrics
    shown = await view(scene)
    report = shown["failover_hold"]
    assert report["campaign_missing"] is True
    assert report["seqs"] == [1, 10] and report["reservations"] is None
    assert report["audit"][0] == 1 and report["audit"][1] >= 11  # create + 10 joins at least
    # Sealed entries are acknowledged too: those in segment files on disk (the new
    # primary's missing meta named their directory) and any checkpoint seen.
    assert report["sealed"] >= segments_last(scene)
    assert report["log_broken"] is (report["sealed"] > 0)
    assert report["previous_primary"] == old_run_id and report["primary"] == new_run_id

    # The id cannot be taken again: no seq of 1..10 goes to a second customer.
    body = spec(CAMPAIGN)
    r = await scene.admin.post("/admin/campaigns", json=body)
    assert r.status == 409, await r.text()
    assert (await r.json())["error"]["code"] == "campaign_lost_in_failover"
    r = await scene.admin.post(f"/admin/campaigns/{CAMPAIGN}/resume", json={})
    assert r.status == 409, await r.text()
    assert (await r.json())["error"]["code"] == "campaign_lost_in_failover"
    listed = (await (await scene.admin.get("/admin/campaigns")).json())["campaigns"]
    assert listed == [{"id": CAMPAIGN, "state": "lost_in_failover", "joined": 10, "cursor": None}]
    await held(await join(scene, "c11"))
    client = sync_redis.Redis(port=scene.port)
    try:
        assert not client.exists(f"fg:{{{CAMPAIGN}}}:meta")
    finally:
        client.close()

    # The sealer goes on: it looks at the campaign on the new primary (its lease is there)
    # and finds nothing to seal.
    async def sealer_looked() -> bool:
        client = sync_redis.Redis(port=scene.port)
        try:
            return bool(client.exists(f"fg:{{{CAMPAIGN}}}:sealer"))
        finally:
            client.close()

    await wait_for(sealer_looked, 10, "the sealer's lease on the new primary")
    log = scene.log()
    assert "event=seal_error" not in log.partition("event=failover_reconciled")[2], log[-3000:]
    assert "Traceback" not in log


@pytest.mark.parametrize("scene", [SEAL_AND_MOVE], indirect=True)
async def test_sealed_entries_beyond_the_new_primary_keep_the_campaign_held(
    scene: Scene,
) -> None:
    state = await acknowledged_writes(scene)
    client = sync_redis.Redis(port=scene.port)
    try:
        copied_size = int(client.hget(f"fg:{{{CAMPAIGN}}}:meta", "audit_n") or 0)
    finally:
        client.close()
    copy = scene.copy_redis("redis-copy")
    await after_copy(scene, state)
    for n in range(15):  # enough entries that sealed ones move to a segment file
        assert (await joined_seq(scene, f"x{n}"))[0] == 7 + n

    async def on_disk() -> bool:
        return segments_last(scene) > copied_size

    await wait_for(on_disk, 10, "sealed entries past the copy in a segment file")
    on_disk_last = segments_last(scene)
    scene.swap_redis(copy)
    await readiness_until_ready(scene)
    report = (await view(scene))["failover_hold"]
    assert report["log_broken"] is True
    assert report["seqs"] == [4, 21] and report["reservations"] == [2, 2]
    assert report["audit_base"] == copied_size
    assert report["sealed_beyond"] >= on_disk_last
    # Nothing may be appended: joins too are held, and resume is refused.
    r = await join(scene, "g")
    assert r.status == 503 and (await r.json())["error"]["code"] == "campaign_held"
    r = await scene.admin.post(f"/admin/campaigns/{CAMPAIGN}/resume", json={})
    assert r.status == 409, await r.text()
    assert "held" in (await r.json())["error"]["message"]


async def reconcile_script(
    room: Room, campaign: str, marks: dict[str, str], run: str = "new-run"
) -> list[Any]:
    """reconcile.lua on `campaign` after the processes' `marks` are recorded."""
    k = CampaignKeys(campaign)
    if marks:
        await room.redis.hset(k.failover_marks, mapping=marks)  # type: ignore[arg-type]
    reply: list[Any] = await room.scripts.call(
        room.redis,
        "reconcile",
        [k.meta, k.audit, k.failover_marks, k.revoked, k.failover_restored, k.failover_gone],
        [run, 5],
    )
    return reply


async def test_reconcile_takes_every_process_marks_and_merges_reports(room: Room) -> None:
    """Two processes' marks in one call (the maximum of each counter), then a third that
    finds more lost after the first report: the report's ranges grow, nothing is issued
    twice, and a process with lower marks changes nothing."""
    await room.create(parse_spec(spec("rc")), "ops")
    digests = [bytes([n]) * 16 for n in range(1, 4)]
    await room.join("rc", digests)  # seqs 1..3 here; the lost primary had more
    k = CampaignKeys("rc")
    redis = room.redis
    audit_n = int(await redis.hget(k.meta, "audit_n"))

    async def reconcile(marks: dict[str, str]) -> list[Any]:
        return await reconcile_script(room, "rc", marks)

    first = await reconcile({"p1": f"5,2,{audit_n + 3},0,old-run", "p2": "6,1,0,0,old-run"})
    assert first[:2] == [1, 1]
    report = json.loads(first[2])
    assert report["seqs"] == [4, 6] and report["reservations"] == [1, 2]
    assert report["audit"] == [audit_n + 1, audit_n + 3] and report["log_broken"] is False
    assert report["previous_primary"] == "old-run" and report["primary"] == "new-run"
    meta = await room.meta("rc")
    assert meta is not None
    assert (meta["seq"], meta["res_n"], meta["state"]) == ("6", "2", "paused")
    assert await redis.smembers(k.revoked) == {b"4", b"5", b"6"}
    assert not await redis.exists(k.failover_marks)
    # A process whose marks are all covered now: nothing more.
    assert (await reconcile({"p3": "6,2,0,0,old-run"}))[:2] == [1, 0]
    # One that acknowledged more: the ranges grow; the failover's own entry is not counted
    # as the primary's (audit_base stays).
    grown = json.loads((await reconcile({"p4": f"8,3,{audit_n + 2},0,old-run"}))[2])
    assert grown["seqs"] == [4, 8] and grown["reservations"] == [1, 3]
    assert grown["audit_base"] == audit_n and grown["audit"] == [audit_n + 1, audit_n + 3]
    assert (await room.meta("rc") or {})["seq"] == "8"
    joined = await room.join("rc", [bytes([9]) * 16])
    assert joined.tickets == [(9, True)]


async def test_a_campaign_lacking_whole_keeps_a_tombstone_until_a_copy_has_it(
    any_room: Room,
) -> None:
    """No meta: marks of nothing acknowledged forget the campaign as before; marks of
    something keep a tombstone that later marks widen and that refuses the id. A primary
    that has the campaign again (restored from a copy) counts the tombstone's figures as
    marks, drops it and holds what the copy still lacks."""
    k = CampaignKeys("gone")
    assert (await reconcile_script(any_room, "gone", {"p0": "0,0,0,0,old-run"}))[0] == -1
    assert not await any_room.redis.exists(k.failover_gone, k.failover_marks)
    first = await reconcile_script(any_room, "gone", {"p1": "10,0,11,0,old-run", "p2": "9,1,8,0,"})
    assert first[:2] == [1, 1]
    report = json.loads(first[2])
    assert report["campaign_missing"] is True and report["log_broken"] is False
    assert report["seqs"] == [1, 10] and report["reservations"] == [1, 1]
    assert report["audit"] == [1, 11] and report["sealed"] == 0
    assert report["primary"] == "new-run" and report["previous_primary"] == "old-run"
    assert not await any_room.redis.exists(k.meta, k.failover_marks)
    # Nothing beyond it: nothing new. More: the ranges grow (a sealed size too).
    assert await reconcile_script(any_room, "gone", {"p3": "10,1,11,0,old-run"}) == [1, 0]
    grown = json.loads((await reconcile_script(any_room, "gone", {"p4": "12,1,11,14,old-run"}))[2])
    assert grown["seqs"] == [1, 12] and grown["audit"] == [1, 14] and grown["sealed"] == 14
    assert grown["log_broken"] is True and grown["at_us"] == report["at_us"]
    assert json.loads(await any_room.redis.get(k.failover_gone)) == grown
    # The id is not free.
    with pytest.raises(GateError) as refused:
        await any_room.create(parse_spec(spec("gone")), "ops")
    assert refused.value.code == "campaign_lost_in_failover" and refused.value.status == 409
    assert not await any_room.redis.exists(k.meta)
    # A copy that holds the campaign (seqs 1..3 of it) comes back.
    await any_room.redis.delete(k.failover_gone)
    await any_room.create(parse_spec(spec("gone")), "ops")
    await any_room.join("gone", [bytes([n]) * 16 for n in range(1, 4)])
    await any_room.redis.set(k.failover_gone, json.dumps(grown))
    restored = await reconcile_script(any_room, "gone", {}, run="copy-run")
    assert restored[:2] == [1, 1] and not await any_room.redis.exists(k.failover_gone)
    held = json.loads(restored[2])
    assert held["seqs"] == [4, 12] and held["reservations"] == [1, 1]
    assert held["previous_primary"] == "old-run" and held.get("campaign_missing") is None
    assert (await any_room.meta("gone") or {})["seq"] == "12"
