"""Commitments published before opening (issue 13).

A campaign's rules (its spec, `opens_at` inside it) and its seeds' commitments (`h`, the
ballot's; `hq`, the pre-queue's) are the `admin-create` entry; a signed checkpoint covers
it before anyone may join, and with witnesses configured, K of N witnesses must have
cosigned it first. The seeds themselves never sit in Redis before their reveal: they are
derived from a secret that lives with the signing key (gate/seeds.py), so someone with
Redis access and no key can neither read them in advance nor swap them.

What was found (the issue's insider): with Redis access alone, the pre-queue seed and its
commitment were replaced before opening and three staff took seqs 1, 2 and 7 of 303.
Here the insider replaces them the same way and the shuffle follows the seed committed
in the sealed `admin-create` entry all the same, which verify confirms; a log whose
first checkpoint came after the first join is refused as `late_commitment`.

Real redis-server processes (Redis 6.2 and 7 for the scripts); waits have deadlines.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gate.audit import merkle
from gate.audit.checkpoints import verify_checkpoint
from gate.audit.format import load_public_keys
from gate.audit.report import VerificationFailed
from gate.audit.verify import verify_lines
from gate.campaign import parse_spec
from gate.redis_client import connect
from gate.room import JOIN_OK, PREQUEUED, Room
from gate.room.keys import CampaignKeys
from gate.room.scripts import Scripts
from gate.seeds import Seeds
from gate.signing import SigningKeys
from tests.helpers import (
    ADMIN_TOKEN,
    Export,
    GateProcess,
    export_to_file,
    of_kind,
    pack_like_redis,
    seal_everything,
    spec,
    unpack,
)
from tests.test_prequeue import wait_open

ACTOR = "ops"


def pq_spec(campaign: str, opens_in_s: float, policy: str = "first_come") -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": campaign,
        "opens_at": (now + timedelta(seconds=opens_in_s)).isoformat(),
        "closes_at": (now + timedelta(hours=1)).isoformat(),
        "policy": policy,
        "quota": {"unit": "item", "total": 1000},
        "admission": {"rate_per_s": 1000, "burst": 1000, "max_active": 100000},
        "prequeue": {"window_s": 600, "shuffle": True},
    }


def digest_of(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()[:16]


async def everything_in_redis(redis: Redis) -> bytes:
    """Every key and value Redis holds, as one byte string to search."""
    parts: list[bytes] = []
    async for key in redis.scan_iter(count=1000):
        parts.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                parts += [field, value]
        elif kind == "list":
            parts += await redis.lrange(key, 0, -1)
        elif kind == "set":
            parts += list(await redis.smembers(key))
        elif kind == "zset":
            parts += [m for m, _ in await redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "string":
            parts.append(await redis.get(key) or b"")
    return b"\x00".join(parts)


def shuffled(seed: bytes, digests: list[bytes]) -> dict[bytes, int]:
    """The published rule, written out here: ascending SHA-256(seed || digest)."""
    order = sorted(digests, key=lambda d: hashlib.sha256(seed + d).digest())
    return {digest: seq for seq, digest in enumerate(order, start=1)}


async def given_seqs(room: Room, campaign: str) -> dict[bytes, int]:
    tickets = await room.redis.hgetall(CampaignKeys(campaign).tickets)
    return {bytes(d): int(s) for d, s in tickets.items()}


async def test_no_seed_is_readable_from_redis_before_its_reveal(any_room: Room) -> None:
    room, redis = any_room, any_room.redis
    await room.create(parse_spec(pq_spec("pq", opens_in_s=1.5)), ACTOR)
    await room.create(parse_spec({**spec("lot"), "policy": "ballot"}), ACTOR)
    customers = [digest_of(f"c{i}") for i in range(20)]
    result = await room.join("pq", customers)
    assert result.status == JOIN_OK and {s for s, _ in result.tickets} == {PREQUEUED}
    lot = await room.join("lot", customers)
    assert lot.status == JOIN_OK
    before = await everything_in_redis(redis)

    await wait_open(redis, "pq")
    assert await room.assign_prequeue("pq") is True
    (reveal,) = of_kind(await room.audit_entries("pq"), "reveal")
    pq_seed = bytes.fromhex(reveal["seed"].decode())
    (create,) = of_kind(await room.audit_entries("pq"), "admin-create")
    assert hashlib.sha256(pq_seed).hexdigest() == create["hq"].decode()
    assert pq_seed.hex().encode() not in before and pq_seed not in before

    await room.set_state("lot", "close", ACTOR)
    assert await room.finalize_ballot("lot") is True
    (result_entry,) = of_kind(await room.audit_entries("lot"), "ballot-result")
    ballot_seed = bytes.fromhex(result_entry["seed"].decode())
    (create,) = of_kind(await room.audit_entries("lot"), "admin-create")
    assert hashlib.sha256(ballot_seed).hexdigest() == create["h"].decode()
    assert ballot_seed.hex().encode() not in before and ballot_seed not in before
    # and the seeds are the campaign's own: two campaigns never share one
    assert pq_seed != ballot_seed


async def test_an_insider_who_swaps_the_seed_in_redis_moves_nobody(
    any_room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    room, redis = any_room, any_room.redis
    c, k = "promo", CampaignKeys("promo")
    await room.create(parse_spec(pq_spec(c, opens_in_s=2.0)), ACTOR)
    # The commitment checkpoint: the admin-create entry signed before anyone joins.
    assert await seal_everything(redis, room.scripts, keys, c) == 1
    public = [digest_of(f"public-{i}") for i in range(300)]
    staff = [digest_of(f"staff-{i}") for i in range(3)]
    crowd = public[:150] + staff + public[150:]
    for start in range(0, len(crowd), 50):
        assert (await room.join(c, crowd[start : start + 50])).status == JOIN_OK
    committed = (await redis.hget(k.meta, "pq_seed_hash")).decode()

    # The insider: Redis access, no key. A seed ground so that staff-0 comes first,
    # written where the gate of before read its seed from, with its commitment.
    n = 0
    while True:
        chosen = n.to_bytes(32, "big")
        if shuffled(chosen, crowd)[staff[0]] == 1:
            break
        n += 1
    await redis.hset(
        k.meta,
        mapping={"pq_seed": chosen.hex(), "pq_seed_hash": hashlib.sha256(chosen).hexdigest()},
    )

    await wait_open(redis, c)
    assert await room.assign_prequeue(c) is True
    (reveal,) = of_kind(await room.audit_entries(c), "reveal")
    revealed = bytes.fromhex(reveal["seed"].decode())
    assert revealed != chosen
    assert hashlib.sha256(revealed).hexdigest() == committed
    assert await given_seqs(room, c) == shuffled(revealed, crowd)

    # The auditor: the log verifies, and the shuffle is the committed seed's.
    await seal_everything(redis, room.scripts, keys, c)
    path = await export_to_file(redis, c, keys, tmp_path / "promo.jsonl")
    report = verify_lines(path.read_text().splitlines(), keys.public_keys(), keys_from="published")
    assert report.prequeue == len(crowd)


async def test_verify_refuses_a_log_whose_commitment_was_signed_after_the_first_join(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """The gate of before let customers join before any checkpoint covered the rules and
    the commitments: an operator could have changed them after seeing who joined."""
    c = "late"
    await room.create(parse_spec(spec(c)), ACTOR)
    assert (await room.join(c, [digest_of("first")])).status == JOIN_OK
    await seal_everything(room.redis, room.scripts, keys, c)
    path = await export_to_file(room.redis, c, keys, tmp_path / "late.jsonl")
    with pytest.raises(VerificationFailed) as failed:
        verify_lines(path.read_text().splitlines(), keys.public_keys(), keys_from="published")
    assert failed.value.failure.kind == "late_commitment", failed.value.failure
    assert failed.value.failure.index == 2  # the first join

    # The same campaign with its commitment signed first verifies.
    c = "early"
    await room.create(parse_spec(spec(c)), ACTOR)
    await seal_everything(room.redis, room.scripts, keys, c)
    assert (await room.join(c, [digest_of("first")])).status == JOIN_OK
    await seal_everything(room.redis, room.scripts, keys, c)
    path = await export_to_file(room.redis, c, keys, tmp_path / "early.jsonl")
    lines = path.read_text().splitlines()
    report = verify_lines(lines, keys.public_keys(), keys_from="published")
    assert report.commitment_checkpoint == 1

    # Stripping the commitment checkpoint out of that export is caught.
    export = Export.parse(path.read_text())
    export.checkpoints = [cp for cp in export.checkpoints if cp["size"] >= 2]
    with pytest.raises(VerificationFailed) as failed:
        verify_lines(export.lines(), keys.public_keys(), keys_from="published")
    assert failed.value.failure.kind == "late_commitment"

    # Rewriting the commitment in the sealed admin-create entry is caught as altered.
    export = Export.parse(path.read_text())
    entry = unpack(export.raw(0))
    entry[b"hq"] = hashlib.sha256(b"another seed").hexdigest().encode()
    export.set_raw(0, pack_like_redis(entry))
    with pytest.raises(VerificationFailed) as failed:
        verify_lines(export.lines(), keys.public_keys(), keys_from="published")
    assert failed.value.failure.kind == "altered"


async def test_the_admin_create_answers_once_its_commitment_is_signed(
    admin: Any, public: Any, keys: SigningKeys
) -> None:
    """Through the gate's own API: 201 comes with the commitment checkpoint, anyone can
    check it before joining with the published keys alone, and the first join may follow
    at once."""
    raw_spec = spec("api")
    r = await public.get("/.well-known/fairgate/commitment/api")
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_checkpoint"
    r = await admin.post("/admin/campaigns", json=raw_spec)
    assert r.status == 201, await r.text()
    body = await r.json()
    commitment = body["commitment"]
    assert commitment["checkpoint"]["size"] == 1 and commitment["entry"] == 1
    assert commitment["published"] is True
    assert commitment["opens_at"] == body["spec"]["opens_at"]

    # What a customer or a journalist checks before joining, with the published keys.
    r = await public.get("/.well-known/fairgate/commitment/api")
    assert r.status == 200, await r.text()
    public_view = await r.json()
    public_keys = load_public_keys(keys.public_keys())
    checkpoint = public_view["checkpoint"]
    assert checkpoint == commitment["checkpoint"]
    assert verify_checkpoint(checkpoint, public_keys, "api")
    raw = base64.b64decode(public_view["raw"])
    assert merkle.verify_inclusion(
        merkle.leaf_hash(raw),
        0,
        checkpoint["size"],
        [base64.b64decode(h) for h in public_view["inclusion"]],
        bytes.fromhex(checkpoint["root"]),
    )
    entry = unpack(raw)
    assert entry[b"k"] == b"admin-create" and entry[b"i"] == 1
    assert hashlib.sha256(entry[b"spec"]).hexdigest() == commitment["spec_sha256"]
    assert (
        json.loads(entry[b"spec"])["id"] == "api" and public_view["spec"] == entry[b"spec"].decode()
    )
    assert entry[b"hq"].decode() == commitment["pq_seed_hash"] == public_view["pq_seed_hash"]
    assert entry[b"h"].decode() == commitment["seed_hash"] == public_view["seed_hash"]
    # the same checkpoint as a signed note (what witnesses cosign): size 1, the same root
    assert public_view["note"].split("\n")[1:3] == [
        "1",
        base64.b64encode(bytes.fromhex(checkpoint["root"])).decode(),
    ]
    r = await public.post("/q/api/join", headers={"X-Customer-Id": "alice"})
    assert r.status == 201, await r.text()


async def test_joins_wait_while_the_commitment_is_not_published(
    room: Room, keys: SigningKeys
) -> None:
    """A campaign created to be published first refuses joins (503, retry) until the
    sealer (or the witnesses' quorum) publishes the checkpoint that covers its creation."""
    c = "unpub"
    await room.create(parse_spec(spec(c)), ACTOR, publish_first=True)
    result = await room.join(c, [digest_of("early-bird")])
    assert result.status == int(room_reply("CAMPAIGN_NOT_PUBLISHED"))
    assert await room.redis.hlen(CampaignKeys(c).tickets) == 0
    assert await room.commitment_pending(c) is True
    # the sealer signs the checkpoint that covers the creation: that publishes it
    await seal_everything(room.redis, room.scripts, keys, c)
    assert await room.commitment_pending(c) is False
    assert (await room.join(c, [digest_of("early-bird")])).status == JOIN_OK


def room_reply(name: str) -> int:
    from gate.room.replies import Reply

    value = Reply[name].value
    assert isinstance(value, int)
    return value


async def test_every_process_with_the_key_file_derives_the_same_seeds(
    redis_url: str, keys_file: Path, keys: SigningKeys, tmp_path: Path
) -> None:
    """A campaign created by one `gate serve` (its own process) opens in another: the
    pre-queue is frozen and shuffled here, by a Room of this process that has the same
    key file, and the revealed seed opens the commitment the gate published. (A seed
    made up by one process would not be the other's: the reveal would not match.)"""
    async with (
        GateProcess(redis_url, tmp_path / "gate", keys_file) as gate,
        aiohttp.ClientSession() as http,
    ):
        r = await http.post(
            gate.admin_url + "/admin/campaigns",
            json=pq_spec("twin", opens_in_s=1.5),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert r.status == 201, await r.text()
        committed = (await r.json())["commitment"]["pq_seed_hash"]
        for who in ("ann", "ben", "cy"):
            r = await http.post(f"{gate.url}/q/twin/join", headers={"X-Customer-Id": who})
            assert r.status == 201, await r.text()
    redis = connect(redis_url, timeout_s=5)
    try:
        room = Room(redis, Scripts(), seeds=Seeds.from_keys(keys))
        await wait_open(redis, "twin")
        assert await room.assign_prequeue("twin") is True
        (reveal,) = of_kind(await room.audit_entries("twin"), "reveal")
        assert hashlib.sha256(bytes.fromhex(reveal["seed"].decode())).hexdigest() == committed
    finally:
        await redis.aclose()
