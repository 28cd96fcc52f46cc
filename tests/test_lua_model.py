"""The Lua scripts against a small pure-Python model of the same rules, on Redis 7.x and 6.2.

Hypothesis drives random sequences of join (batches with repeats), admit, block, revoke,
pause/resume/close and pass checks through `Room`, and after every step compares Redis
with the model: tickets, seq, cursor, active set, revoked/blocked/passed sets, state,
and the audit log entry by entry.

Timing is kept out of the model on purpose: the campaign has a huge rate and burst (the
bucket never binds), a small max_active (the cap binds all the time) and a pass TTL of
an hour (nothing expires), so every outcome is determined by the order of operations.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gate.audit.format import decode_entry
from gate.campaign import parse_spec
from gate.errors import Conflict, NotFound
from gate.redis_server import RedisServer
from gate.room import JOIN_CLOSED, JOIN_OK
from gate.room.keys import CampaignKeys
from tests.helpers import ScriptsMachine, admit_in_order, spec, wait_redis_time

CAMPAIGN = "model"
CUSTOMERS = 10
MAX_ACTIVE = 3
ACTOR = "ops"
KEYS = CampaignKeys(CAMPAIGN)
MOVES = {
    "pause": {"open": "paused"},
    "resume": {"paused": "open"},
    "close": {"open": "closed", "paused": "closed"},
}


def digest(i: int) -> bytes:
    return hashlib.blake2b(f"model-customer-{i}".encode(), digest_size=16).digest()


class Model:
    """The rules of join/admit/block/revoke/pass, without time."""

    def __init__(self) -> None:
        self.state = "open"
        self.max_active = MAX_ACTIVE
        self.seq_of: dict[bytes, int] = {}
        self.last_seq = 0
        self.cursor = 0
        self.admitted = 0
        self.skipped = 0
        self.blocked: set[bytes] = set()
        self.revoked: set[int] = set()
        self.active: set[int] = set()
        self.passed: set[int] = set()
        self.log: list[tuple[Any, ...]] = [("admin-create", ACTOR)]

    def join(self, digests: list[bytes]) -> tuple[int, list[tuple[int, bool]]]:
        if self.state == "closed":
            return JOIN_CLOSED, []
        tickets: list[tuple[int, bool]] = []
        created: list[Any] = []
        for d in digests:
            if d in self.blocked:  # refused even when they already hold a ticket
                tickets.append((0, False))
            elif d in self.seq_of:
                tickets.append((self.seq_of[d], False))
            else:
                self.last_seq += 1
                self.seq_of[d] = self.last_seq
                tickets.append((self.last_seq, True))
                created += [self.last_seq, d]
        if created:
            self.log.append(("join", tuple(created)))
        return JOIN_OK, tickets

    def admit(self) -> tuple[int, int, int, int, str]:
        if self.state != "open":
            return 0, self.cursor, len(self.active), 0, self.state
        k = min(self.max_active - len(self.active), self.last_seq - self.cursor)
        admitted, skipped = admit_in_order(self.cursor, self.last_seq, k, self.revoked)
        last = self.cursor + len(admitted) + len(skipped)
        if last > self.cursor:
            self.log.append(("admit", self.cursor + 1, last, len(admitted), tuple(skipped)))
            self.cursor = last
            self.active |= set(admitted)
            self.admitted += len(admitted)
            self.skipped += len(skipped)
        return len(admitted), self.cursor, len(self.active), 0, self.state

    def block(self, d: bytes, reason: str) -> int:
        self.blocked.add(d)
        seq = self.seq_of.get(d, 0)
        if seq:
            self.revoked.add(seq)
            self.active.discard(seq)
        self.log.append(("block", d, seq, reason.encode()))
        return seq

    def revoke(self, d: bytes, reason: str) -> int | None:
        seq = self.seq_of.get(d)
        if seq is None:
            return None
        self.revoked.add(seq)
        self.active.discard(seq)
        self.log.append(("revoke", d, seq, reason.encode()))
        return seq

    def set_state(self, action: str) -> str | None:
        target = MOVES[action].get(self.state)
        if target is None:
            return None
        self.state = target
        self.log.append((f"admin-{action}", ACTOR))
        return target

    def set_max_active(self, value: int) -> bool:
        if self.state == "closed":
            return False
        self.log.append(
            (
                "admin-update",
                ACTOR,
                (b"max_active",),
                (str(self.max_active).encode(),),
                (str(value).encode(),),
            )
        )
        self.max_active = value
        return True

    def pass_check(self, seq: int, d: bytes) -> tuple[str, int | None]:
        """(state, value); value None means "the deadline Redis holds"."""
        if self.seq_of.get(d) != seq:
            return "ticket_unknown", 0  # a signed (seq, digest) Redis holds no ticket for
        if self.state == "closed":
            return "closed", 0
        if seq in self.revoked:
            return "revoked", 0
        if seq > self.cursor:
            return "waiting", self.cursor
        if seq in self.active:
            if seq not in self.passed:
                self.passed.add(seq)
                self.log.append(("pass", seq, d))
            return "admitted", None
        return "expired", 0


def project(entry: dict[str, Any]) -> tuple[Any, ...]:
    """The fields of a real audit entry that the model predicts."""
    kind = entry["k"].decode()
    if kind == "join":
        return kind, tuple(entry["s"])
    if kind == "admit":
        return kind, entry["f"], entry["l"], entry["n"], tuple(entry.get("x", ()))
    if kind in ("block", "revoke"):
        return kind, entry["c"], entry["s"], entry["r"]
    if kind == "pass":
        return kind, entry["s"], entry["c"]
    if kind == "admin-update":
        return kind, entry["a"].decode(), tuple(entry["f"]), tuple(entry["o"]), tuple(entry["n"])
    if kind.startswith("admin-"):
        return kind, entry["a"].decode()
    return (kind,)  # expire, close: the model predicts none


class LuaModelMachine(ScriptsMachine):
    """One subclass per Redis version (the test sets `url`)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.campaign = campaign = parse_spec(
            spec(CAMPAIGN, rate_per_s=1e6, burst=1_000_000, max_active=MAX_ACTIVE, pass_ttl_s=3600)
        )
        created_at = self.run(self.room.create(campaign, ACTOR))
        # at 1e6 tokens/s, 5 ms of Redis time is far more than MAX_ACTIVE tokens
        self.run(wait_redis_time(self.redis, created_at + 5_000))

    @initialize(customers=st.lists(st.integers(0, CUSTOMERS - 1), min_size=3, max_size=10))
    def first_joins(self, customers: list[int]) -> None:
        self.join(customers)

    @rule(customers=st.lists(st.integers(0, CUSTOMERS - 1), min_size=1, max_size=6))
    def join(self, customers: list[int]) -> None:
        digests = [digest(c) for c in customers]
        result = self.run(self.room.join(CAMPAIGN, digests))
        assert (result.status, result.tickets) == self.model.join(digests)

    @rule()
    def admit(self) -> None:
        result = self.run(self.room.admit(CAMPAIGN))
        assert result is not None
        real = (result.admitted, result.cursor, result.active, result.expired, result.state)
        skipped_before = self.model.skipped
        assert real == self.model.admit()
        event(f"admit: {result.admitted} admitted, state {result.state}")
        if self.model.skipped > skipped_before:
            event("admit: skipped revoked seqs")

    @rule(calls=st.integers(2, 4))
    def admit_repeatedly(self, calls: int) -> None:
        """What several gate processes do: admit calls back to back."""
        for _ in range(calls):
            self.admit()

    @rule(customer=st.integers(0, CUSTOMERS - 1), reason=st.sampled_from(["", "fraud"]))
    def block(self, customer: int, reason: str) -> None:
        seq = self.run(self.room.block(CAMPAIGN, digest(customer), ACTOR, reason))
        assert seq == self.model.block(digest(customer), reason)

    @rule(customer=st.integers(0, CUSTOMERS - 1), reason=st.sampled_from(["", "chargeback"]))
    def revoke(self, customer: int, reason: str) -> None:
        expected = self.model.revoke(digest(customer), reason)
        if expected is None:
            try:
                self.run(self.room.revoke(CAMPAIGN, digest(customer), ACTOR, reason))
            except NotFound as error:
                assert error.code == "no_ticket"
            else:
                raise AssertionError("revoke without a ticket did not raise NotFound")
        else:
            assert self.run(self.room.revoke(CAMPAIGN, digest(customer), ACTOR, reason)) == expected

    @rule(action=st.sampled_from(["pause", "resume"]))
    def pause_or_resume(self, action: str) -> None:
        self.set_state(action)

    @precondition(lambda self: len(self.model.log) >= 20)  # late, so runs explore first
    @rule()
    def close(self) -> None:
        self.set_state("close")

    @rule(value=st.integers(1, 6))
    def set_max_active(self, value: int) -> None:
        update = self.room.update(CAMPAIGN, self.campaign, {"max_active": str(value)}, ACTOR)
        if self.model.set_max_active(value):
            self.run(update)
            return
        try:
            self.run(update)
        except Conflict as error:
            assert error.code == "campaign_closed"
        else:
            raise AssertionError("a closed campaign accepted an update")

    def set_state(self, action: str) -> None:
        expected = self.model.set_state(action)
        if expected is None:
            try:
                self.run(self.room.set_state(CAMPAIGN, action, ACTOR))
            except Conflict as error:
                assert error.code == "bad_state"
            else:
                raise AssertionError(f"{action} was allowed in state {self.model.state}")
        else:
            assert self.run(self.room.set_state(CAMPAIGN, action, ACTOR)) == expected

    @rule(pick=st.integers(0, 2 * CUSTOMERS), other_seq=st.integers(1, CUSTOMERS + 2))
    def pass_check(self, pick: int, other_seq: int) -> None:
        """Mostly a ticket holder with their own seq; else any customer and any seq."""
        holders = sorted(self.model.seq_of.items(), key=lambda item: item[1])
        if pick < CUSTOMERS and holders:
            d, seq = holders[pick % len(holders)]
        else:
            d = digest(pick % CUSTOMERS)
            seq = self.model.seq_of.get(d, other_seq)
        try:
            state, value = self.run(self.room.pass_check(CAMPAIGN, seq, d))
        except Conflict as refused:
            state, value = refused.code, 0
        expected_state, expected_value = self.model.pass_check(seq, d)
        assert state == expected_state
        event(f"pass_check: {state}")
        if expected_value is None:
            assert value == self.sync.zscore(KEYS.active, seq) and value > 0
        else:
            assert value == expected_value

    @invariant()
    def redis_agrees_with_the_model(self) -> None:
        m = self.model
        fields = (
            "state",
            "seq",
            "cursor",
            "admitted",
            "skipped",
            "expired",
            "max_active",
        )
        # Every read in one round trip (a pipeline, nothing else writes between the steps).
        pipe = self.sync.pipeline(transaction=False)
        pipe.hmget(KEYS.meta, fields)
        pipe.hgetall(KEYS.tickets)
        pipe.zrange(KEYS.active, 0, -1)
        for key in (KEYS.revoked, KEYS.blocked, KEYS.passed):
            pipe.smembers(key)
        pipe.lrange(KEYS.audit, 0, -1)
        pipe.hget(KEYS.meta, "audit_n")
        (
            meta_values,
            tickets_hash,
            active_members,
            revoked_members,
            blocked_members,
            passed_members,
            raw_audit,
            audit_n,
        ) = pipe.execute()
        meta = dict(zip(fields, meta_values, strict=True))
        assert meta["state"] == m.state.encode()
        assert int(meta["seq"]) == m.last_seq
        assert int(meta["cursor"]) == m.cursor
        assert int(meta["admitted"]) == m.admitted
        assert int(meta["skipped"]) == m.skipped
        assert int(meta["expired"]) == 0
        assert int(meta["max_active"]) == m.max_active
        tickets = {d: int(s) for d, s in tickets_hash.items()}
        assert tickets == m.seq_of
        assert {int(s) for s in active_members} == m.active
        assert len(m.active) <= 6  # the largest max_active ever set
        assert {int(s) for s in revoked_members} == m.revoked
        assert set(blocked_members) == m.blocked
        assert {int(s) for s in passed_members} == m.passed
        # the audit log numbered 1..n without a gap, audit_n saying n (as audit_log checks)
        entries = [decode_entry(raw) for raw in raw_audit]
        assert [e["i"] for e in entries] == list(range(1, len(entries) + 1))
        assert int(audit_n or 0) == len(entries)
        assert [project(e) for e in entries] == m.log


SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.slow
def test_scripts_follow_the_model(any_redis: RedisServer) -> None:
    class Machine(LuaModelMachine):
        url = any_redis.url

    # Fail fast (not through Hypothesis' retries) if setting up a campaign is broken.
    Machine().teardown()
    run_state_machine_as_test(Machine, settings=SETTINGS)
