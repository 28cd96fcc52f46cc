"""I7: with Redis unreachable the gate fails closed, answers fast, and recovers by itself.

Each test runs its own redis-server (AOF, appendfsync always, a fixed port and directory
so it can come back where it was) and a real `gate serve` process against it. Redis is
then killed (kill -9) or hung (SIGSTOP): joins and polls answer 503 with Retry-After at
once, proxy auth answers 401, no pass is handed out, nothing answers 500. When Redis is
back the gate becomes ready again on its own, every ticket is still there, and
admission carries on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gate.redis_server import RedisServer
from gate.room.keys import CampaignKeys
from tests.helpers import ADMIN_TOKEN, GateProcess, redis_binaries, spec, wait_for

CAMPAIGN = "i7-outage"
CUSTOMERS = 50
REDIS_TIMEOUT_MS = 200
FAST_S = 0.100  # answers that need no Redis: from the cache, or refused at once
HUNG_JOIN_S = 0.500  # a join that was already on its way to a hung Redis


@dataclass
class Answer:
    status: int
    headers: Any
    body: dict[str, Any]
    seconds: float
    sets_pass_cookie: bool


@dataclass
class Scene:
    redis: RedisServer
    gate: GateProcess
    session: aiohttp.ClientSession
    seq: dict[str, int] = field(default_factory=dict)
    ticket: dict[str, str] = field(default_factory=dict)
    passes: dict[str, str] = field(default_factory=dict)  # admitted before the outage
    statuses: list[int] = field(default_factory=list)

    @classmethod
    def on(
        cls, server: RedisServer, redis_url: str, work: Path, keys_file: Path, redis_timeout_ms: int
    ) -> Scene:
        """A scene on `server`: a gate (in `work`, not started yet) that reaches Redis at
        `redis_url` with this Redis timeout, and a client session that keeps no cookies."""
        gate = GateProcess(
            redis_url,
            work / "gate",
            keys_file,
            extra_env={"GATE_REDIS_TIMEOUT_MS": str(redis_timeout_ms)},
        )
        return cls(server, gate, aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()))

    async def call(self, method: str, path: str, **kwargs: Any) -> Answer:
        started = time.perf_counter()
        async with self.session.request(method, self.gate.url + path, **kwargs) as r:
            raw = await r.read()
            seconds = time.perf_counter() - started
            body = await r.json() if raw and r.content_type == "application/json" else {}
            answer = Answer(r.status, r.headers, body, seconds, "fg_pass" in r.cookies)
        self.statuses.append(answer.status)
        return answer

    async def join(self, customer: str) -> Answer:
        return await self.call("POST", f"/q/{CAMPAIGN}/join", headers={"X-Customer-Id": customer})

    async def status(self, customer: str) -> Answer:
        return await self.call(
            "GET",
            f"/q/{CAMPAIGN}/status",
            params={"ticket": self.ticket[customer]},
            headers={"X-Customer-Id": customer},
        )

    async def auth(self, customer: str, pass_token: str) -> Answer:
        """The proxy's check of `customer`'s request with this pass, for this campaign."""
        headers = {
            "X-Gate-Pass": pass_token,
            "X-Gate-Campaign": CAMPAIGN,
            "X-Customer-Id": customer,
        }
        return await self.call("GET", "/gate/auth", headers=headers)

    async def through_door(self, customer: str, pass_token: str) -> Answer:
        """`auth` as a customer's browser goes through the proxy: told `pass_not_yet` (the
        door lets the admitted in at the rate), it comes back when told, within 5 s."""
        deadline = time.monotonic() + 5
        while True:
            answer = await self.auth(customer, pass_token)
            if answer.status != 401 or time.monotonic() > deadline:
                return answer
            if answer.body.get("error", {}).get("code") != "pass_not_yet":
                return answer
            await asyncio.sleep(int(answer.headers.get("X-Gate-Retry-After-Ms", "50")) / 1000)

    async def ready(self) -> bool:
        async with self.session.get(self.gate.url + "/readyz") as r:
            return r.status == 200

    async def not_ready(self) -> bool:
        async with self.session.get(self.gate.url + "/readyz") as r:
            return r.status == 503

    def last_in_line(self, count: int) -> list[str]:
        """The customers furthest back: still waiting whatever admission did meanwhile."""
        return sorted(self.seq, key=self.seq.__getitem__)[-count:]

    async def queue(
        self, customers: int, join: Callable[[str], Awaitable[Answer]] | None = None
    ) -> None:
        """The campaign created (admission slow), then `customers` joins at once (by
        `join`, `self.join` unless told), each one's seq and ticket noted."""
        body = spec(CAMPAIGN, rate_per_s=2, burst=3, max_active=1000, pass_ttl_s=300)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with self.session.post(
            self.gate.admin_url + "/admin/campaigns", json=body, headers=headers
        ) as r:
            assert r.status == 201, await r.text()
        answers = await asyncio.gather(
            *((join or self.join)(_customer(n)) for n in range(customers))
        )
        for n, answer in enumerate(answers):
            assert answer.status in (200, 201), answer.body
            self.seq[_customer(n)] = answer.body["seq"]
            self.ticket[_customer(n)] = answer.body["ticket"]

    async def wait_first_passes(self, count: int = 3) -> None:
        """Waits (with a deadline) until the first `count` in line hold a pass."""
        first = sorted(self.seq, key=self.seq.__getitem__)[:count]

        async def first_hold_a_pass() -> bool:
            for customer in first:
                if customer not in self.passes:
                    answer = await self.status(customer)
                    assert answer.status == 200, answer.body
                    if answer.body["state"] == "admitted":
                        self.passes[customer] = answer.body["pass"]
            return len(self.passes) == len(first)

        await wait_for(first_hold_a_pass, 10, f"the first {count} customers admitted")


def _customer(n: int) -> str:
    return f"customer-{n:03d}"


@pytest.fixture
async def scene(tmp_path: Path, keys_file: Path) -> AsyncIterator[Scene]:
    """50 customers queued; the first few admitted and holding a pass; admission slow."""
    server = RedisServer(tmp_path / "redis", binary=redis_binaries()[0][1])
    server.start()
    scene = Scene.on(server, server.url, tmp_path, keys_file, REDIS_TIMEOUT_MS)
    gate, session = scene.gate, scene.session
    try:
        gate.start()
        await gate.wait_ready()
        await scene.queue(CUSTOMERS)
        assert set(scene.statuses) == {201}, scene.statuses
        assert sorted(scene.seq.values()) == list(range(1, CUSTOMERS + 1))
        await scene.wait_first_passes()
        for customer, pass_token in scene.passes.items():
            assert (await scene.through_door(customer, pass_token)).status == 200
        yield scene
    finally:
        await session.close()
        gate.stop()
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def _assert_unavailable(answer: Answer, what: str) -> None:
    assert answer.status == 503, (what, answer.status, answer.body)
    assert int(answer.headers["Retry-After"]) >= 1, what
    assert answer.body["error"]["code"] == "unavailable", (what, answer.body)
    assert "pass" not in answer.body and not answer.sets_pass_cookie, what


async def _fail_closed_checks(scene: Scene, *, join_limit_s: float) -> dict[str, float]:
    """Every kind of request while Redis is out; returns the slowest answer of each kind."""
    slowest = {"join": 0.0, "status waiting": 0.0, "status admitted": 0.0, "auth": 0.0}

    def note(kind: str, answer: Answer) -> None:
        slowest[kind] = max(slowest[kind], answer.seconds)

    for round_ in range(3):
        for n in range(20):  # existing customers retrying, and new ones
            existing = await scene.join(_customer(n * 2 + round_ % 2))
            _assert_unavailable(existing, "join of a customer with a ticket")
            note("join", existing)
            new = await scene.join(f"late-{round_}-{n}")
            _assert_unavailable(new, "join of a new customer")
            note("join", new)
        for customer in scene.last_in_line(20):
            answer = await scene.status(customer)
            _assert_unavailable(answer, "status of a waiting customer")
            note("status waiting", answer)
        for customer, pass_token in scene.passes.items():
            answer = await scene.status(customer)
            _assert_unavailable(answer, "status of an admitted customer")
            note("status admitted", answer)
            denied = await scene.auth(customer, pass_token)
            assert denied.status == 401, denied.body
            assert denied.body["error"]["code"] == "unavailable"
            note("auth", denied)

    assert slowest["join"] < join_limit_s, slowest
    assert slowest["status waiting"] < FAST_S, slowest
    assert slowest["status admitted"] < FAST_S, slowest
    assert slowest["auth"] < FAST_S, slowest
    return slowest


async def _recovers(scene: Scene) -> None:
    """Ready again by itself; every ticket kept; the passes work; admission carries on."""
    await wait_for(scene.ready, 15, "the gate ready again after Redis came back")
    cursor = await _cursor(scene)

    for customer, seq in scene.seq.items():
        answer = await scene.join(customer)
        assert answer.status == 200, answer.body
        assert (answer.body["seq"], answer.body["created"]) == (seq, False)
    for customer, pass_token in scene.passes.items():
        assert (await scene.auth(customer, pass_token)).status == 200

    keys = CampaignKeys(CAMPAIGN)
    redis = Redis.from_url(scene.redis.url)
    try:
        assert await redis.hlen(keys.tickets) == CUSTOMERS
        assert int(await redis.hget(keys.meta, "seq")) == CUSTOMERS
    finally:
        await redis.aclose()

    # The next customer in line is admitted without anyone's help.
    nxt = next(c for c, s in scene.seq.items() if s == cursor + 1)
    admitted: dict[str, Any] = {}

    async def next_customer_admitted() -> bool:
        answer = await scene.status(nxt)
        assert answer.status == 200, answer.body
        admitted.update(answer.body)
        return bool(answer.body["state"] == "admitted")

    await wait_for(next_customer_admitted, 10, "admission to resume")
    assert (await scene.through_door(nxt, admitted["pass"])).status == 200
    assert all(status < 500 or status == 503 for status in scene.statuses), scene.statuses


async def _cursor(scene: Scene) -> int:
    redis = Redis.from_url(scene.redis.url)
    try:
        return int(await redis.hget(CampaignKeys(CAMPAIGN).meta, "cursor"))
    finally:
        await redis.aclose()


async def test_redis_killed_fails_closed_fast_and_recovers(scene: Scene) -> None:
    scene.redis.kill()  # kill -9
    await wait_for(scene.not_ready, 5, "the gate to notice that Redis is gone")

    slowest = await _fail_closed_checks(scene, join_limit_s=FAST_S)
    print(
        "\nI7 Redis killed: slowest answers (ms): "
        + ", ".join(f"{kind} {1000 * s:.1f}" for kind, s in slowest.items())
    )

    scene.redis.start()  # same port, same directory: the AOF brings everything back
    await _recovers(scene)


async def test_redis_hung_fails_closed_fast_and_recovers(scene: Scene) -> None:
    assert scene.redis.process is not None
    pid = scene.redis.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        # Requests already on their way to Redis wait for at most the Redis timeout. Only
        # customers who hold a ticket join here: a hung Redis still runs what it had
        # received once it continues, so a new customer might get a ticket after all.
        in_flight = await asyncio.gather(*(scene.join(_customer(n)) for n in range(10)))
        for answer in in_flight:
            _assert_unavailable(answer, "join while Redis hangs")
        first_wave = max(answer.seconds for answer in in_flight)
        assert first_wave < HUNG_JOIN_S, first_wave

        await wait_for(scene.not_ready, 5, "the gate to notice that Redis hangs")
        slowest = await _fail_closed_checks(scene, join_limit_s=HUNG_JOIN_S)
        print(
            f"\nI7 Redis hung: joins in flight at the hang {1000 * first_wave:.1f} ms; "
            "slowest answers (ms): "
            + ", ".join(f"{kind} {1000 * s:.1f}" for kind, s in slowest.items())
        )
    finally:
        os.kill(pid, signal.SIGCONT)

    await _recovers(scene)
