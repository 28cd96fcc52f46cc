"""Bounded sealing (issue 13): every entry sealed within the campaign's seal bound, the
sealer not silenced unseen by overwriting its lease, and `gate audit verify` checking both.

Real Redis, a real `gate serve` whose sealer seals, the insider acting on Redis directly
(redis-py, one Lua call for the rewrite) with no key."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gate.audit.report import VerificationFailed
from gate.audit.verify import verify_file
from gate.campaign import parse_spec
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.signing import SigningKeys
from gate.tokens import customer_digest
from tests.helpers import (
    ADMIN_TOKEN,
    GateProcess,
    export_to_file,
    open_amount_spec,
    pack_like_redis,
    unpack,
    wait_for,
    wait_redis_time,
)

KRW = 1_000_000
MOVED = 5_000_000

# The insider's rewrite, in one call: only entries no checkpoint covers yet (a rewrite of a
# sealed one is caught by its checkpoint anyway); KEYS: frontier, meta, audit;
# ARGV: index, raw, index, raw, ...
REWRITE_UNSEALED = """
local sealed = tonumber(redis.call('HGET', KEYS[1], 'size') or '0')
local trimmed = tonumber(redis.call('HGET', KEYS[2], 'audit_trimmed') or '0')
for i = 1, #ARGV, 2 do
  if tonumber(ARGV[i]) <= sealed then return 0 end
end
for i = 1, #ARGV, 2 do
  redis.call('LSET', KEYS[3], tonumber(ARGV[i]) - trimmed - 1, ARGV[i + 1])
end
return 1
"""


async def _sealed_to_end(redis: Redis, campaign: str) -> bool:
    k = CampaignKeys(campaign)
    size = int(await redis.hget(k.frontier, "size") or 0)
    n = int(await redis.hget(k.meta, "audit_n") or 0)
    return n > 0 and size == n


async def _redis_us(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1_000_000 + int(micros)


async def _create(gate: GateProcess, body: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gate.admin_url + "/admin/campaigns",
            json=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r,
    ):
        assert r.status == 201, await r.text()


async def _admitted(room: Room, campaign: str, seq: int, digest: bytes) -> None:
    async def admitted() -> bool:
        state, _ = await room.pass_check(campaign, seq, digest)
        return state == "admitted"

    await wait_for(admitted, 10, f"seq {seq} admitted by the gate", interval_s=0.02)


def _with_amount(raw: bytes, amount: int, fields: tuple[bytes, ...]) -> bytes:
    entry = unpack(raw)
    for name in fields:
        entry[name] = str(amount).encode()
    return pack_like_redis(entry)


def _verify(path: Path, **options: Any) -> str:
    """'OK: <report>' or the failure's kind and text."""
    try:
        report = verify_file(path, **options)
    except VerificationFailed as exc:
        return f"FAILED {exc.failure.kind}: {exc}"
    return "OK: " + " | ".join(report.lines())


@pytest.mark.slow
@pytest.mark.parametrize("hold_ms", [0, 500])
async def test_an_insider_who_overwrites_the_lease_and_rewrites_the_tail_is_named(
    redis_url: str, tmp_path: Path, keys_file: Path, room: Room, keys: SigningKeys, hold_ms: int
) -> None:
    """The insider (Redis access, no key) writes a token of their own into the sealer's
    lease, so the sealer stops; moves 5,000,000 KRW between two confirmed customers in the
    unsealed claim and confirm entries (at once, or after holding the lease `hold_ms` of
    Redis time); then deletes the lease and lets the real sealer sign the rewrite. Before
    issue 13 that export verified OK. Now the sealer sees a token no gate process made
    (while the insider holds it), or finds its own lease gone before it could have lapsed
    (when the insider was quicker than a tick), takes the lease back at once and records it
    in the log: verify fails naming that entry (lease_stolen), the gate logs
    event=sealer_lease_stolen."""
    c = "insider"
    redis = Redis.from_url(redis_url)
    k = CampaignKeys(c)
    async with GateProcess(
        redis_url, tmp_path, keys_file, extra_env={"GATE_SEAL_INTERVAL_MS": "100"}
    ) as gate:
        try:
            await _create(gate, open_amount_spec(c, 1_000 * KRW, KRW, 20 * KRW, KRW))
            alice, bob = (customer_digest(keys, c, who) for who in ("alice", "bob"))
            assert (await room.join(c, [alice, bob])).tickets == [(1, True), (2, True)]
            await _admitted(room, c, 1, alice)
            await _admitted(room, c, 2, bob)
            await wait_for(lambda: _sealed_to_end(redis, c), 10, "sealed", interval_s=0.02)

            # 1. silence the sealer: the lease now holds the insider's token
            await redis.set(k.sealer, "insider-0123456789abcdef", px=600_000)
            # 2. two customers deposit 10,000,000 KRW each, confirmed
            first = int(await redis.hget(k.meta, "audit_n") or 0) + 1
            claims = [
                await room.claim(c, s, d, 10 * KRW, f"k{s}") for s, d in ((1, alice), (2, bob))
            ]
            assert all(claim.ok for claim in claims), claims
            for claim in claims:
                await room.confirm(c, claim.reservation, "core")
            if hold_ms:
                await wait_redis_time(redis, (await _redis_us(redis)) + hold_ms * 1000)

                # and until the sealer has looked at its lease while the insider's token was
                # in it (on a loaded machine its tick may come later than hold_ms)
                async def looked() -> bool:
                    return await redis.get(k.sealer) != b"insider-0123456789abcdef"

                await wait_for(looked, 10, "the sealer to see the foreign token", interval_s=0.02)
            # 3. rewrite them while unsealed: alice 5,000,000, bob 15,000,000 (same total)
            raws = await redis.lrange(k.audit, first - 1, first + 2)
            kinds = [unpack(raw)[b"k"] for raw in raws]
            assert kinds == [b"claim", b"claim", b"confirm", b"confirm"], kinds
            amounts = [10 * KRW - MOVED, 10 * KRW + MOVED, 10 * KRW - MOVED, 10 * KRW + MOVED]
            rewrite: list[Any] = []
            for n, (raw, amount) in enumerate(zip(raws, amounts, strict=True)):
                fields = (b"m", b"q") if n < 2 else (b"m",)
                rewrite += [first + n, _with_amount(raw, amount, fields)]
            rewritten = await redis.eval(REWRITE_UNSEALED, 3, k.frontier, k.meta, k.audit, *rewrite)
            # 4. let the real sealer resume and sign
            await redis.delete(k.sealer)
            await wait_for(lambda: _sealed_to_end(redis, c), 10, "sealed again", interval_s=0.02)

            path = await export_to_file(redis, c, keys, tmp_path / "insider.jsonl")
            verdict = _verify(path)
            print(f"rewritten while unsealed: {bool(rewritten)}; verify: {verdict}")
            # a token no gate process made seen holding the lease (lease_stolen), or, when
            # the insider was quicker than the sealer's tick, the lease gone (lease_lost)
            expected = (
                ("FAILED lease_stolen: ",)
                if hold_ms
                else (
                    "FAILED lease_stolen: ",
                    "FAILED lease_lost: ",
                )
            )
            assert verdict.startswith(expected), verdict
            # the range unsealed when the sealer took its lease back: the claims and confirms
            # when it found the lease gone after the rewrite; fewer (or none) when a round
            # of its came while the insider's token held the lease
            assert "entries " in verdict or "nothing was unsealed" in verdict, verdict
            assert "without the key" in verdict, verdict
            assert "--allow-seal-gaps" not in verdict or "lease lost" in verdict, verdict
            log = gate.log_path.read_text()
            assert "event=sealer_lease_stolen campaign=insider" in log, log[-3000:]
        finally:
            await redis.aclose()


async def _paused_sealer_export(
    redis_url: str,
    tmp_path: Path,
    keys_file: Path,
    room: Room,
    keys: SigningKeys,
    c: str,
    *,
    env: dict[str, str],
    create_with_room: bool = False,
) -> Path:
    """A gate serve whose sealer holds the lease (30 s) is stopped (SIGSTOP) while
    customers join through another writer (Room, on the same Redis), for 1.5 s of Redis
    time, then continued: it seals them late. Returns the export."""
    redis = Redis.from_url(redis_url)
    body = open_amount_spec(c, 1_000 * KRW, KRW, 20 * KRW, KRW)
    async with GateProcess(
        redis_url,
        tmp_path,
        keys_file,
        extra_env={"GATE_SEAL_INTERVAL_MS": "100", "GATE_SEAL_LEASE_MS": "30000", **env},
    ) as gate:
        assert gate.process is not None
        try:
            if create_with_room:
                await room.create(parse_spec({**body, "seal_bound_ms": 1000}), "ops")
            else:
                await _create(gate, body)
            # the commitment (entry 1) is signed before anyone joins
            await wait_for(lambda: _sealed_to_end(redis, c), 10, "created", interval_s=0.02)
            await room.join(c, [customer_digest(keys, c, "early")])
            await wait_for(lambda: _sealed_to_end(redis, c), 10, "sealed", interval_s=0.02)
            os.kill(gate.process.pid, signal.SIGSTOP)
            try:
                joined = await room.join(c, [customer_digest(keys, c, f"w{i}") for i in range(5)])
                await wait_redis_time(redis, joined.now_us + 1_500_000)
            finally:
                os.kill(gate.process.pid, signal.SIGCONT)
            await wait_for(lambda: _sealed_to_end(redis, c), 10, "sealed again", interval_s=0.02)
            return await export_to_file(redis, c, keys, tmp_path / f"{c}.jsonl")
        finally:
            await redis.aclose()


@pytest.mark.slow
async def test_a_sealer_stopped_past_the_bound_shows_as_a_seal_gap(
    redis_url: str, tmp_path: Path, keys_file: Path, room: Room, keys: SigningKeys
) -> None:
    """The sealing process is stopped for 1.5 s (seal bound 1000 ms) while customers join:
    when it continues it finds them unsealed past the bound and records a seal-gap entry
    before it seals them. verify fails naming that gap (seal_gap); --allow-seal-gaps
    accepts it and reports it. Before issue 13 this export verified OK."""
    c = "paused"
    path = await _paused_sealer_export(redis_url, tmp_path, keys_file, room, keys, c, env={})
    verdict = _verify(path)
    print(f"verify: {verdict}")
    assert verdict.startswith("FAILED seal_gap: "), verdict
    assert "recorded the gap in entry" in verdict and "(late)" in verdict, verdict
    accepted = _verify(path, allow_seal_gaps=True)
    assert accepted.startswith("OK: "), accepted
    assert "seal gap accepted: entries" in accepted, accepted


@pytest.mark.slow
async def test_an_entry_sealed_past_the_bound_with_no_gap_recorded_fails_verify(
    redis_url: str, tmp_path: Path, keys_file: Path, room: Room, keys: SigningKeys
) -> None:
    """The campaign states a seal bound of 1000 ms, but its sealer records no gaps (a gate
    with seal_bound_ms 0, or an older one) and is stopped for 1.5 s: verify fails at the
    first late entry (seal_delay), with or without --allow-seal-gaps."""
    c = "nogap"
    path = await _paused_sealer_export(
        redis_url,
        tmp_path,
        keys_file,
        room,
        keys,
        c,
        env={"GATE_SEAL_BOUND_MS": "0"},
        create_with_room=True,
    )
    for options in ({}, {"allow_seal_gaps": True}):
        verdict = _verify(path, **options)
        print(f"verify {options}: {verdict}")
        assert verdict.startswith("FAILED seal_delay: "), verdict
        assert "beyond the campaign's seal bound of 1000 ms" in verdict, verdict


def _seal_delays_ms(path: Path) -> list[float]:
    """Each entry's delay from its time to the time of the first checkpoint covering it."""
    times: list[int] = []
    delays: list[float] = []
    done = 0
    for line in path.read_text().splitlines():
        data = json.loads(line)
        if data["type"] == "entry":
            import base64

            times.append(unpack(base64.b64decode(data["raw"]))[b"t"])
        elif data["type"] == "checkpoint" and data["size"] > done:
            delays += [data["time_ms"] - t / 1000 for t in times[done : data["size"]]]
            done = data["size"]
    return delays


@pytest.mark.slow
async def test_seal_delays_under_load_stay_within_the_bound_or_are_recorded(
    redis_url: str, tmp_path: Path, keys_file: Path, keys: SigningKeys
) -> None:
    """A real gate serve (2 workers, default seal settings: bound 1000 ms) takes 4,000
    joins from 64 concurrent clients; the delays are printed (p50/p99/max, with the
    machine's load) for docs/guarantees.md. Every entry is sealed within the bound and the
    export verifies; or, on a machine others load past what the bound allows (the suite's
    2 shared cores at load average 8), the gate records every late seal itself: verify
    names the recorded gap (seal_gap, never seal_delay) and accepts it with
    --allow-seal-gaps. The median stays within the bound either way."""
    c = "loaded"
    redis = Redis.from_url(redis_url)
    async with GateProcess(redis_url, tmp_path, keys_file, workers=2) as gate:
        try:
            body = open_amount_spec(c, 1_000 * KRW, KRW, 20 * KRW, KRW)
            await _create(gate, body)
            started = time.monotonic()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:

                async def one(i: int) -> None:
                    async with http.post(
                        f"{gate.url}/q/{c}/join", headers={"X-Customer-Id": f"load{i}"}
                    ) as r:
                        assert r.status in (200, 201), await r.text()

                for start in range(0, 4000, 500):
                    await asyncio.gather(*(one(i) for i in range(start, start + 500)))
            took = time.monotonic() - started
            await wait_for(lambda: _sealed_to_end(redis, c), 15, "sealed", interval_s=0.05)
            path = await export_to_file(redis, c, keys, tmp_path / "loaded.jsonl")
        finally:
            await redis.aclose()
    delays = sorted(_seal_delays_ms(path))
    lines = path.read_bytes().splitlines()
    batch_bytes = sum(len(line) + 1 for line in lines if line.startswith(b'{"type":"batch"'))
    print(
        f"export {sum(len(line) + 1 for line in lines)} bytes, {len(delays)} entries; "
        f"batch lines {batch_bytes} bytes ({batch_bytes / len(delays):.0f} per entry, "
        f"{batch_bytes / 4000:.1f} per join)"
    )
    p50 = statistics.median(delays)
    p99 = delays[int(len(delays) * 0.99) - 1]
    print(
        f"4000 joins in {took:.1f} s, {len(delays)} entries: seal delay p50 {p50:.0f} ms, "
        f"p99 {p99:.0f} ms, max {delays[-1]:.0f} ms"
    )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    verdict = _verify(path)
    late = [d for d in delays if d > 1100]
    if late:
        print(f"{len(late)} entries sealed past the bound; verify: {verdict[:300]}")
        assert verdict.startswith("FAILED seal_gap: "), verdict
        accepted = _verify(path, allow_seal_gaps=True)
        assert accepted.startswith("OK: ") and "seal gap accepted" in accepted, accepted
    else:
        assert verdict.startswith("OK: "), verdict
        assert "seal bound: 1000 ms, every sealed entry within it" in verdict, verdict
    assert p50 <= 1000, p50


@pytest.mark.slow
async def test_a_join_rewritten_before_its_seal_fails_its_batch_signature(
    redis_url: str, tmp_path: Path, keys_file: Path, keys: SigningKeys
) -> None:
    """The insider does not touch the lease: right after a customer joins (through a real
    gate serve, which signs the batch at once), they rewrite the unsealed join entry in
    Redis, giving that seq to a friend's digest, before the sealer's next round, which
    then signs a checkpoint over the rewrite. Before issue 13 that export verified OK. Now
    the export carries each join batch's signature, made at join time, and verify fails
    at that entry (batch_signature)."""
    c = "joins"
    redis = Redis.from_url(redis_url)
    k = CampaignKeys(c)
    friend = customer_digest(keys, c, "friend")
    async with (
        GateProcess(redis_url, tmp_path, keys_file) as gate,
        aiohttp.ClientSession() as http,
    ):
        try:
            await _create(gate, open_amount_spec(c, 1_000 * KRW, KRW, 20 * KRW, KRW))
            rewritten, index = 0, 0
            for attempt in range(20):
                async with http.post(
                    f"{gate.url}/q/{c}/join", headers={"X-Customer-Id": f"victim{attempt}"}
                ) as r:
                    assert r.status == 201, await r.text()
                    index = (await r.json())["receipt"]["entry"]
                raw = await redis.lindex(k.audit, index - 1)
                entry = unpack(raw)
                entry[b"s"][1] = friend
                rewritten = await redis.eval(
                    REWRITE_UNSEALED, 3, k.frontier, k.meta, k.audit, index, pack_like_redis(entry)
                )
                if rewritten:
                    break
            assert rewritten, "every join was sealed before the rewrite"
            await wait_for(lambda: _sealed_to_end(redis, c), 10, "sealed", interval_s=0.02)
            path = await export_to_file(redis, c, keys, tmp_path / "joins.jsonl")
        finally:
            await redis.aclose()
    verdict = _verify(path)
    print(f"join entry {index} rewritten unsealed; verify: {verdict}")
    assert verdict.startswith("FAILED batch_signature: "), verdict
    assert f"entry {index}," in verdict, verdict


async def test_the_lease_script_records_a_stolen_lease_and_a_late_seal_on_each_redis(
    any_room: Room, keys: SigningKeys
) -> None:
    """sealer_lease.lua on Redis 7 and 6.2 (cmsgpack, sha1hex, TIME then writes): a foreign
    token is taken back with a lease-stolen seal-gap entry naming the unsealed range and the
    token's SHA-1; a lease deleted under its holder is recorded the same way ('' for the
    token); an entry found unsealed past the bound gets one late entry, not one per look;
    a gate's own tokens verify and a foreign one does not."""
    import hashlib

    from gate.audit.sealer import Sealer, lease_token, lease_token_valid

    room, c = any_room, "lua-lease"
    redis, k = room.redis, CampaignKeys(c)
    await room.create(parse_spec(open_amount_spec(c, 1_000 * KRW, KRW, 20 * KRW, KRW)), "ops")
    assert lease_token_valid(keys, lease_token(keys))
    assert not lease_token_valid(keys, "insider-0123456789abcdef")
    # MACed with a key this process has not loaded (a rotation rolling out): judged by its
    # TTL, which a gate process always sets to a lease's
    other_kid = f"{'0' * 32}.not-loaded.{'1' * 32}"
    assert lease_token_valid(keys, other_kid, 2500, 3000)
    assert not lease_token_valid(keys, other_kid, -1, 3000)
    assert not lease_token_valid(keys, other_kid, 600_000, 3000)
    made = lease_token(keys)
    forged = made[:-1] + ("0" if made[-1] != "0" else "1")
    assert not lease_token_valid(keys, forged, 2500, 3000)
    sealer = Sealer(
        redis,
        room.scripts,
        keys,
        None,
        interval_s=0.0,
        lease_ms=30000,
        keep_in_redis=0,
        # a bound no step below comes near however loaded the machine (at 200 ms, a step
        # 200 ms after its join under load 16 recorded that entry late first); lowered to
        # 200 ms for the late look at the end
        bound_ms=60_000,
    )
    try:
        assert await sealer.step(c, force=True)  # admin-create sealed, lease held
        await room.join(c, [customer_digest(keys, c, "a")])  # entry 2
        await redis.set(k.sealer, "insider-0123456789abcdef", px=600_000)
        assert await sealer.step(c, force=True)  # taken back, the gap sealed with entry 2
        entries = [unpack(raw) for raw in await redis.lrange(k.audit, 0, -1)]
        gap = entries[-1]
        assert gap[b"k"] == b"seal-gap" and gap[b"w"] == b"lease-stolen", gap
        assert (gap[b"f"], gap[b"l"]) == (2, 2), gap
        assert (
            gap[b"h"]
            == hashlib.sha1(b"insider-0123456789abcdef", usedforsecurity=False).hexdigest().encode()
        )
        assert sealer.stats.lease_stolen == 1
        await room.join(c, [customer_digest(keys, c, "b")])
        await redis.delete(k.sealer)  # gone long before its 30 s could lapse
        assert await sealer.step(c, force=True)
        gap = unpack((await redis.lrange(k.audit, -1, -1))[0])
        assert (gap[b"k"], gap[b"w"], gap[b"h"]) == (b"seal-gap", b"lease-lost", b""), gap
        assert sealer.stats.lease_stolen == 2
        sealer.bound_ms = 200
        joined = await room.join(c, [customer_digest(keys, c, "late")])
        await wait_redis_time(redis, joined.now_us + 300_000)
        n = int(await redis.hget(k.meta, "audit_n") or 0)
        for _ in range(3):  # one look records it; the round seals it with the gap
            await sealer._lease(c)
        late = [unpack(raw) for raw in await redis.lrange(k.audit, n, -1)]
        assert [(e[b"k"], e[b"w"], e[b"f"], e[b"l"]) for e in late] == [
            (b"seal-gap", b"late", n, n)
        ], late
        assert late[0][b"d"] >= 300_000
    finally:
        await sealer.close()
