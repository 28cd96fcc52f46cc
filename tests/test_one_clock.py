"""One clock: what decides or is signed takes its time from Redis, not from a gate process.

A gate process whose wall clock is 120 s behind (or ahead of) Redis must not make a
genuine audit log fail verification (checkpoint times going backwards after a sealer
hand-over), must not accept an expired pass, and is reported: a WARNING line and the
fairgate_clock_skew_seconds gauge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

import gate.audit.sealer as sealer_module
from gate.audit.verify import verify_file, verify_lines
from gate.campaign import parse_spec
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.service import Gate
from gate.signing import SigningKeys
from gate.tokens import PASS, customer_digest
from tests.helpers import (
    ADMIN_TOKEN,
    GateProcess,
    admitted_pass,
    as_customer,
    create_campaign,
    create_committed,
    export_to_file,
    sealer_for,
    spec,
    wait_for,
)

LAG_S = 120.0
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def skewed_time(offset_s: float) -> Any:
    """A stand-in for the `time` module of a process whose wall clock is off by
    `offset_s` (its monotonic clock, which measures intervals, is untouched)."""
    return types.SimpleNamespace(
        time=lambda: time.time() + offset_s,
        monotonic=time.monotonic,
        perf_counter=time.perf_counter,
    )


async def redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def seal_all(sealer: Any, room: Room, campaign: str) -> None:
    k = CampaignKeys(campaign)
    size = int(await room.redis.hget(k.meta, "audit_n") or 0)
    for _ in range(100):
        if int(await room.redis.hget(k.frontier, "size") or 0) >= size:
            return
        await sealer.step(campaign, force=True)
    raise AssertionError(f"{campaign} not sealed to {size}")


async def test_a_sealer_120_s_behind_after_a_handover_keeps_the_log_verifiable(
    room: Room, config: Any, keys: SigningKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sealer A (a good clock) seals, gives the lease back; sealer B, in a process whose
    wall clock is 120 s behind, continues. Before the fix B stamped its checkpoints with
    its own clock: they went 120 s back in time and `gate audit verify` refused the
    genuine log ("checkpoints must come in size and time order"). Now every checkpoint
    carries Redis's time: in order, within the Redis time of its round."""
    c = "clock-seal"
    await create_committed(room, keys, parse_spec(spec(c)), "ops")
    digests = [customer_digest(keys, c, f"customer-{i}") for i in range(40)]
    await room.join(c, digests[:20])
    first = sealer_for(room, config)
    await seal_all(first, room, c)
    await first.close()  # a graceful hand-over: the lease is given back

    monkeypatch.setattr(sealer_module, "time", skewed_time(-LAG_S))
    second = sealer_for(room, config)
    await room.join(c, digests[20:30])
    before = await redis_ms(room.redis)
    await seal_all(second, room, c)
    await room.join(c, digests[30:])
    await seal_all(second, room, c)
    after = await redis_ms(room.redis)
    await second.close()

    path = await export_to_file(room.redis, c, keys, tmp_path / f"{c}.jsonl")
    report = await asyncio.to_thread(
        verify_file, path, keys.public_keys(), keys_from="published", require_sealed=True
    )
    # the commitment's, A's, B's two; verify raises on the first problem
    assert report.checkpoints == 4
    k = CampaignKeys(c)
    checkpoints = [json.loads(x) for x in await room.redis.lrange(k.checkpoints, 0, -1)]
    times = [cp["time_ms"] for cp in checkpoints]
    assert times == sorted(times)
    assert all(before <= t <= after for t in times[2:]), (before, times, after)


async def test_checkpoint_times_never_go_back_even_when_redis_time_does(
    room: Room, config: Any, keys: SigningKeys, tmp_path: Path
) -> None:
    """A failover to a primary whose clock is behind the old one: the next checkpoint
    carries the previous checkpoint's time, not an earlier one, so the log verifies."""
    c = "clock-back"
    await create_committed(room, keys, parse_spec(spec(c)), "ops")
    await room.join(c, [customer_digest(keys, c, "a")])
    sealer = sealer_for(room, config)
    await seal_all(sealer, room, c)
    k = CampaignKeys(c)
    # As if the previous primary's clock had been an hour ahead of this one.
    raw = await room.redis.lindex(k.checkpoints, -1)
    assert raw is not None
    ahead = json.loads(raw)["time_ms"] + 3_600_000
    from gate.audit.checkpoints import make_checkpoint
    from gate.audit.format import parse_checkpoint

    fields = parse_checkpoint(json.loads(raw), c)
    forged = make_checkpoint(keys, c, fields.size, fields.root, ahead)
    await room.redis.lset(k.checkpoints, -1, json.dumps(forged))
    await room.join(c, [customer_digest(keys, c, "b")])
    await seal_all(sealer, room, c)
    await sealer.close()
    checkpoints = [json.loads(x) for x in await room.redis.lrange(k.checkpoints, 0, -1)]
    # after the commitment's: the forged one, then one that does not go back from it
    assert [cp["time_ms"] for cp in checkpoints][1:] == [ahead, ahead]
    path = await export_to_file(room.redis, c, keys, tmp_path / f"{c}.jsonl")
    lines = path.read_text().splitlines()
    assert verify_lines(lines, keys.public_keys(), require_sealed=True).checkpoints == 3


@pytest.mark.parametrize("offset_s", [-LAG_S, LAG_S])
async def test_pass_expiry_is_checked_against_redis_time(
    gate: Gate,
    public: Any,
    admin: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    offset_s: float,
) -> None:
    """A process whose wall clock is 120 s behind Redis accepted, before the fix, a pass
    that had expired a minute ago (/gate/auth 200, a claim went on); one 120 s ahead
    refused a pass with a minute left. Now both go by Redis time as the cache measured
    it: the expired pass is 401 pass_expired at /gate/auth and at claim, the live one
    passes; the skew is logged once at WARNING and shown as fairgate_clock_skew_seconds."""
    c = "clock-pass"
    await create_campaign(admin, c)
    genuine = await admitted_pass(public, c, "kim-0042")
    token = gate.signer.verify(genuine, PASS)

    skewed = skewed_time(offset_s)
    monkeypatch.setattr("gate.http.checks.time", skewed, raising=False)
    gate.cache.clock = skewed.time
    with caplog.at_level(logging.WARNING, logger="gate.cache"):
        await gate.cache.measure_clock()
        await gate.cache.measure_clock()  # the same skew again: no second line
    warnings = [r for r in caplog.records if "event=clock_skew" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert warnings[0].levelno == logging.WARNING
    assert abs(gate.cache.skew_s - offset_s) < 1.0

    now_s = await redis_ms(gate.redis) / 1000
    expired = gate.signer.issue(PASS, c, token.seq, token.digest, exp=int(now_s - 60))
    alive = gate.signer.issue(PASS, c, token.seq, token.digest, exp=int(now_s + 60))
    who = as_customer("kim-0042", **{"X-Gate-Campaign": c})
    r = await public.get("/gate/auth", headers={**who, "X-Gate-Pass": expired})
    assert r.status == 401, await r.text()
    assert (await r.json())["error"]["code"] == "pass_expired"
    r = await public.post(
        f"/q/{c}/claim",
        json={"amount": 1, "idempotency_key": "k1"},
        headers=as_customer("kim-0042", **{"X-Gate-Pass": expired}),
    )
    assert r.status == 401, await r.text()
    assert (await r.json())["error"]["code"] == "pass_expired"
    r = await public.get("/gate/auth", headers={**who, "X-Gate-Pass": alive})
    assert r.status == 200, await r.text()

    r = await public.get("/metrics")
    metrics = await r.text()
    [line] = [x for x in metrics.splitlines() if x.startswith("fairgate_clock_skew_seconds ")]
    assert abs(float(line.split()[1]) - offset_s) < 1.0


async def test_skew_report_is_once_per_change(gate: Gate, caplog: pytest.LogCaptureFixture) -> None:
    """In bounds: nothing logged. Skewed: one WARNING. The same skew measured again and
    again: nothing more. Back in bounds: one INFO line."""
    offset = {"s": 0.0}
    gate.cache.clock = lambda: time.time() + offset["s"]
    with caplog.at_level(logging.INFO, logger="gate.cache"):
        await gate.cache.measure_clock()
        offset["s"] = -30.0
        for _ in range(5):
            await gate.cache.measure_clock()
        offset["s"] = 0.0
        await gate.cache.measure_clock()
        await gate.cache.measure_clock()
    lines = [r for r in caplog.records if "event=clock_skew" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO], [
        r.getMessage() for r in lines
    ]
    reported = re.search(r"skew_s=(\S+)", lines[0].getMessage())
    assert reported is not None and abs(float(reported.group(1)) + 30) < 1.0
    assert abs(gate.cache.skew_s) < 1.0
    # Redis time as the cache knows it does not depend on this process's wall clock.
    offset["s"] = -LAG_S
    await gate.cache.measure_clock()
    assert abs(gate.cache.redis_now() - await redis_ms(gate.redis) / 1000) < 1.0


@pytest.mark.slow
@pytest.mark.skipif(not FAKETIME_LIB.exists(), reason="faketime is not installed")
async def test_a_real_gate_120_s_behind_seals_after_a_handover_and_verify_is_clean(
    redis_url: str, tmp_path: Path, keys_file: Path, keys: SigningKeys
) -> None:
    """Two real `gate serve` processes one after the other on the same Redis: the first
    (a good clock) seals, then stops (its lease given back); the second runs under
    libfaketime 120 s behind, takes the lease and seals the rest. The export verifies
    clean, and the second process reports its skew."""
    c = "clock-real"
    env = {"GATE_SEAL_INTERVAL_MS": "100", "GATE_SEAL_LEASE_MS": "1000"}
    lagging_env = {
        **env,
        "LD_PRELOAD": str(FAKETIME_LIB),
        "FAKETIME": f"-{int(LAG_S)}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }
    redis = Redis.from_url(redis_url)
    k = CampaignKeys(c)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        async with aiohttp.ClientSession() as http:
            async with GateProcess(redis_url, tmp_path / "a", keys_file, extra_env=env) as first:
                async with http.post(
                    first.admin_url + "/admin/campaigns", json=spec(c), headers=admin
                ) as r:
                    assert r.status == 201, await r.text()
                for i in range(20):
                    async with http.post(
                        f"{first.url}/q/{c}/join", headers={"X-Customer-Id": f"a-{i}"}
                    ) as r:
                        assert r.status == 201, await r.text()

                async def sealed_by_first() -> bool:
                    size = int(await redis.hget(k.meta, "audit_n") or 0)
                    return int(await redis.hget(k.frontier, "size") or 0) == size

                await wait_for(sealed_by_first, 10, "the first gate's checkpoint")
            fence = int(await redis.get(k.sealer_fence) or 0)
            lagging = GateProcess(redis_url, tmp_path / "b", keys_file, extra_env=lagging_env)
            async with lagging:
                async with http.get(lagging.url + "/metrics") as r:
                    metrics = await r.text()
                [line] = [
                    x for x in metrics.splitlines() if x.startswith("fairgate_clock_skew_seconds ")
                ]
                assert abs(float(line.split()[1]) + LAG_S) < 5.0, line
                for i in range(20):
                    async with http.post(
                        f"{lagging.url}/q/{c}/join", headers={"X-Customer-Id": f"b-{i}"}
                    ) as r:
                        assert r.status == 201, await r.text()
                async with http.post(
                    f"{lagging.admin_url}/admin/campaigns/{c}/close", headers=admin
                ) as r:
                    assert r.status == 200, await r.text()

                async def sealed_by_second() -> bool:
                    size = int(await redis.hget(k.meta, "audit_n") or 0)
                    frontier = await redis.hmget(k.frontier, ["size", "fence"])
                    return int(frontier[0] or 0) == size and int(frontier[1] or 0) > fence

                await wait_for(sealed_by_second, 15, "the lagging gate's final checkpoint")
                async with http.get(
                    f"{lagging.admin_url}/admin/campaigns/{c}/audit/export", headers=admin
                ) as r:
                    assert r.status == 200, await r.text()
                    export = await r.text()
            log_text = lagging.log_path.read_text()
        report = verify_lines(export.splitlines(), keys.public_keys(), require_sealed=True)
        assert report.checkpoints >= 2  # verify raises on the first problem
        assert log_text.count("event=clock_skew ") == 1, log_text[-2000:]
        times = [
            json.loads(x)["time_ms"] for x in export.splitlines() if '"type":"checkpoint"' in x
        ]
        assert len(times) >= 2 and times == sorted(times), times
        print(f"\n{len(times)} checkpoints across the hand-over to a gate {LAG_S:.0f} s behind")
    finally:
        await redis.aclose()


def _lagging_env(extra: dict[str, str]) -> dict[str, str]:
    return {
        "LD_PRELOAD": str(FAKETIME_LIB),
        "FAKETIME": f"-{int(LAG_S)}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
        **extra,
    }


@pytest.mark.slow
@pytest.mark.skipif(not FAKETIME_LIB.exists(), reason="faketime is not installed")
async def test_a_real_gate_120_s_behind_shows_and_checks_redis_time(
    redis_url: str, tmp_path: Path, keys_file: Path
) -> None:
    """A real `gate serve` under libfaketime 120 s behind Redis, with the bank's JWTs as
    identity. Before the fix it refused a token the bank had just issued (its `iat` 120 s
    "in the future") and accepted one that had expired a minute ago; it showed a campaign
    open for a second as "prequeue" with a countdown of 1 min 59 s; it counted a campaign
    opening in 8 s as 2 min 8 s away (page and poll_after_ms); it shuffled the pre-queue
    120 s late; its pass cookie lived 120 s longer than the pass (Max-Age 420 for a
    300 s pass). Now every one of them goes by Redis time."""
    from tests.test_identity import AUDIENCE, ISSUER, mint, new_key

    key = new_key("RS256")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.jwk()]}))
    env = _lagging_env(
        {
            "GATE_IDENTITY": "jwt",
            "GATE_JWT_ISSUER": ISSUER,
            "GATE_JWT_AUDIENCE": AUDIENCE,
            "GATE_JWT_JWKS": str(jwks),
            "GATE_JWT_ALGORITHMS": "RS256",
        }
    )
    redis = Redis.from_url(redis_url)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def bearer(customer: str, *, age_s: float = 0.0) -> dict[str, str]:
        """A token the bank issued `age_s` ago by the true (Redis) clock, valid 300 s."""
        issued = int(await redis_ms(redis) / 1000 - age_s)
        token = mint(key, sub=customer, iat=issued, exp=issued + 300)
        return {"Authorization": f"Bearer {token}"}

    try:
        async with (
            GateProcess(redis_url, tmp_path / "gate", keys_file, extra_env=env) as lagging,
            aiohttp.ClientSession() as http,
        ):
            now_s = await redis_ms(redis) / 1000
            opening = spec("clock-open", pass_ttl_s=300)
            later = spec("clock-later")
            later["opens_at"] = datetime.fromtimestamp(now_s + 8, UTC).isoformat()
            later["prequeue"] = {"window_s": 600, "shuffle": True}
            for body in (opening, later):
                async with http.post(
                    lagging.admin_url + "/admin/campaigns", json=body, headers=admin
                ) as r:
                    assert r.status == 201, await r.text()

            # The bank's fresh token is accepted; one expired a minute ago is not.
            tickets = {}

            async def join_open(customer: str) -> None:
                async with http.post(
                    f"{lagging.url}/q/clock-open/join", headers=await bearer(customer)
                ) as r:
                    assert r.status == 201, await r.text()
                    tickets[customer] = (await r.json())["ticket"]

            await join_open("first")
            async with http.get(
                f"{lagging.url}/q/clock-open/status",
                params={"ticket": tickets["first"]},
                headers=await bearer("first", age_s=360),
            ) as r:
                assert r.status == 401, await r.text()
                assert (await r.json())["error"]["code"] == "bad_identity"

            # The first customer holds a pass whose cookie lives as long as the pass.
            admitted: dict[str, Any] = {}

            async def first_admitted() -> bool:
                async with http.get(
                    f"{lagging.url}/q/clock-open/status",
                    params={"ticket": tickets["first"]},
                    headers=await bearer("first"),
                ) as r:
                    assert r.status == 200, await r.text()
                    admitted.update(await r.json())
                    admitted["cookie"] = r.headers.get("Set-Cookie", "")
                return admitted["state"] == "admitted"

            await wait_for(first_admitted, 10, "the first customer's pass", interval_s=0.1)
            max_age = re.search(r"Max-Age=(\d+)", admitted["cookie"])
            assert max_age is not None, admitted["cookie"]
            assert abs(int(max_age.group(1)) - 300) <= 5, admitted["cookie"]

            # The campaign is open (and paused): the second customer waits in line, with
            # no countdown.
            async with http.post(
                f"{lagging.admin_url}/admin/campaigns/clock-open/pause", headers=admin
            ) as r:
                assert r.status == 200, await r.text()
            await join_open("second")
            async with http.get(
                f"{lagging.url}/q/clock-open/status",
                params={"ticket": tickets["second"]},
                headers=await bearer("second"),
            ) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["state"] == "waiting"
            async with http.get(f"{lagging.url}/q/clock-open", params={"lang": "en"}) as r:
                page = await r.text()
                assert r.status == 200, page
            assert 'id="fg-open-card"' not in page

            # A campaign opening in 8 s: the page and the poll count 8 s, not 2 min 8 s,
            # and the page gives its script Redis's time to count down from.
            async with http.post(
                f"{lagging.url}/q/clock-later/join", headers=await bearer("early")
            ) as r:
                assert r.status == 201, await r.text()
                early = await r.json()
            assert early["state"] == "prequeue" and early["poll_after_ms"] <= 8000, early
            async with http.get(f"{lagging.url}/q/clock-later", params={"lang": "en"}) as r:
                page = await r.text()
            countdown = re.search(r'id="fg-countdown">Opens in ([^<]*)\.<', page)
            assert countdown is not None, page[-3000:]
            seconds = re.fullmatch(r"(\d) s", countdown.group(1))
            assert seconds is not None and int(seconds.group(1)) <= 8, countdown.group(1)
            server_now = re.search(r'data-now="(\d+)"', page)
            assert server_now is not None
            assert abs(int(server_now.group(1)) - await redis_ms(redis)) < 2000

            # At the opening (by Redis time) the pre-queue is shuffled at once.
            state: dict[str, Any] = {}

            async def shuffled() -> bool:
                async with http.get(
                    f"{lagging.url}/q/clock-later/status",
                    params={"ticket": early["ticket"]},
                    headers=await bearer("early"),
                ) as r:
                    assert r.status == 200, await r.text()
                    state.update(await r.json())
                return int(state.get("seq") or 0) > 0

            await wait_for(shuffled, 15, "the pre-queue shuffle at the opening", interval_s=0.2)
            assert await redis_ms(redis) / 1000 < now_s + 15, state
    finally:
        await redis.aclose()
