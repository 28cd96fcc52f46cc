"""Nothing happens outside the campaign's window (issue 13, "a complete replay").

What was found: a pass, a claim or a subscription dated after `closes_at` was taken, and
verified, as long as no `close` entry had come yet (the scripts checked the campaign's
state, which only the first admit call past `closes_at` moves to closed). Now the scripts
refuse them by Redis time from `closes_at`, and `gate audit verify` fails a log that has
one (with the key, `closes_at` moved before a claim and every checkpoint signed again).

Real redis-server processes (Redis 6.2 and 7 for the scripts); no admission loop runs,
so nothing logs the close in between; waits have deadlines.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gate.audit.report import VerificationFailed
from gate.audit.verify import verify_lines
from gate.campaign import parse_spec, to_us
from gate.room import Room
from gate.signing import SigningKeys
from tests.helpers import (
    Export,
    amount_quota,
    create_committed,
    customer_digest,
    export_to_file,
    of_kind,
    seal_everything,
    spec,
    wait_redis_time,
)
from tests.test_replay_rules import entries_of, resign, rewrite
from tests.test_tamper import admit_upto

ACTOR = "ops"
MIN, MAX, STEP = 1_000_000, 10_000_000, 10_000


def closing_spec(campaign: str, closes_in_s: float, policy: str = "first_come") -> dict[str, Any]:
    raw = spec(campaign, rate_per_s=1000, burst=1000, max_active=1000, pass_ttl_s=300)
    raw["closes_at"] = (datetime.now(UTC) + timedelta(seconds=closes_in_s)).isoformat()
    raw["quota"] = amount_quota(100_000_000, MIN, MAX, STEP)
    raw["policy"] = policy
    return raw


@pytest.mark.parametrize("policy", ["first_come", "ballot"])
async def test_no_pass_claim_or_subscription_after_closes_at(any_room: Room, policy: str) -> None:
    room, c = any_room, f"edge-{policy}"
    raw = closing_spec(c, closes_in_s=1.5, policy=policy)
    await room.create(parse_spec(raw), ACTOR)
    digests = [customer_digest(i) for i in range(3)]
    await room.join(c, digests)
    await admit_upto(room, c, 3)
    state, _ = await room.pass_check(c, 1, digests[0])
    assert state == "admitted"  # seq 1 holds a pass before closes_at; seq 2 asks late
    await wait_redis_time(room.redis, to_us(parse_spec(raw).closes_at) + 1000)

    assert (await room.pass_check(c, 2, digests[1]))[0] == "closed"
    if policy == "first_come":
        result = await room.claim(c, 1, digests[0], 2_000_000, "late")
    else:
        result = await room.subscribe(c, 1, digests[0], 2_000_000)
    assert not result.ok and result.code == "closed", result
    entries = await room.audit_entries(c)
    assert of_kind(entries, "claim") == of_kind(entries, "subscribe") == []
    assert [e["s"] for e in of_kind(entries, "pass")] == [1]
    assert of_kind(entries, "close") == []  # nobody logged the close yet: the clock did it


async def test_verify_refuses_a_claim_dated_after_closes_at(
    room: Room, keys: SigningKeys, tmp_path: Path
) -> None:
    """With the key: closes_at (in the spec of entry 1) moved to just before a claim, every
    checkpoint signed again. Before, the claim verified until a close entry came."""
    c = "edge-keyed"
    await create_committed(room, keys, parse_spec(closing_spec(c, closes_in_s=3600)))
    digests = [customer_digest(i) for i in range(2)]
    await room.join(c, digests)
    await admit_upto(room, c, 2)
    for seq in (1, 2):
        assert (await room.pass_check(c, seq, digests[seq - 1]))[0] == "admitted"
    assert (await room.claim(c, 1, digests[0], 2_000_000, "k1")).ok
    assert (await room.claim(c, 2, digests[1], 3_000_000, "k2")).ok
    await seal_everything(room.redis, room.scripts, keys, c)
    path = await export_to_file(room.redis, c, keys, tmp_path / "edge.jsonl")
    clean = Export.parse(path.read_text())
    verify_lines(clean.lines(), keys.public_keys(), keys_from="published")

    entries = entries_of(clean)
    claims = [p for p, e in enumerate(entries) if e[b"k"] == b"claim"]
    late = entries[claims[-1]]
    spec_doc = json.loads(entries[0][b"spec"])
    spec_doc["closes_at"] = datetime.fromtimestamp((late[b"t"] - 1) / 1e6, UTC).isoformat()
    entries[0][b"spec"] = json.dumps(spec_doc).encode()
    rewrite(clean, entries, [])
    resign(clean, keys)
    with pytest.raises(VerificationFailed) as failed:
        verify_lines(clean.lines(), keys.public_keys(), keys_from="published")
    assert failed.value.failure.index == claims[-1] + 1, failed.value.failure
    assert "after closes_at" in failed.value.failure.message
