"""A network partition between a real `gate serve` and its Redis (tests/tcp_forwarder.py):
the connections stay open and silent, new ones hang in their handshake; nothing is reset.

While it lasts: joins, polls and the admin's pause answer 503 + Retry-After within about
the Redis timeout, `/gate/auth` 401 `unavailable`, `/readyz` 503, and the log stays
short. Healed: the gate serves again within a bounded time, every customer holds the
same seq, and no seq is issued twice. A write sent into the partition may still reach
Redis when it heals (TCP delivers what it retransmits): a customer who retries gets the
same ticket; an operator reads the campaign's state before repeating a change.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gate.redis_server import RedisServer
from gate.room.keys import CampaignKeys
from tests.helpers import ADMIN_TOKEN, GateProcess, redis_binaries, wait_for
from tests.tcp_forwarder import Forwarder
from tests.test_i7_fail_closed import CAMPAIGN, Answer, Scene, _assert_unavailable, _customer

CUSTOMERS = 30
REDIS_TIMEOUT_MS = 200
# An answer during the partition: the Redis timeout, a connection's handshake timing out
# on top of it at worst, and a loaded 2-core machine's slack.
ANSWER_LIMIT_S = 1.0
HEAL_LIMIT_S = 5.0
# One line when the cache finds Redis gone, one from the sealer; then one a minute (before:
# a seal_error line a second, 5 lines in 5 s).
LOG_LINES_LIMIT = 4
# Long enough for every background task (cache, admission, sealer, sanity check) to fail
# many times over, so that a log line per failure would show.
PARTITION_S = 5.0

pytestmark = pytest.mark.slow


@pytest.fixture
async def partition(tmp_path: Path, keys_file: Path) -> AsyncIterator[tuple[Scene, Forwarder]]:
    server = RedisServer(tmp_path / "redis", binary=redis_binaries()[0][1])
    server.start()
    forwarder = Forwarder(server.port).start()
    scene = Scene.on(server, forwarder.url, tmp_path, keys_file, REDIS_TIMEOUT_MS)
    gate, session = scene.gate, scene.session
    try:
        gate.start()
        await gate.wait_ready()
        await scene.queue(CUSTOMERS, join=lambda customer: _joined(scene, customer))
        await scene.wait_first_passes()
        yield scene, forwarder
    finally:
        await session.close()
        forwarder.heal()
        gate.stop()
        forwarder.close()
        server.stop()


async def _joined(scene: Scene, customer: str) -> Answer:
    """A join before the partition: a 503 of a loaded machine (a 200 ms Redis timeout on
    2 shared cores) is retried, as a client would; the setup is not what is measured."""
    answer = await scene.join(customer)
    deadline = time.monotonic() + 10
    while answer.status == 503 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        answer = await scene.join(customer)
    assert answer.status in (200, 201), answer.body
    return answer


def _admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _admin_call(scene: Scene, method: str, path: str) -> Answer:
    started = time.perf_counter()
    async with scene.session.request(method, scene.gate.admin_url + path, headers=_admin()) as r:
        body = await r.json()
        return Answer(r.status, r.headers, body, time.perf_counter() - started, False)


def _log_lines(gate: GateProcess) -> int:
    return len(gate.log_path.read_text().splitlines())


async def test_a_partition_fails_closed_within_the_timeout_and_heals(
    partition: tuple[Scene, Forwarder],
) -> None:
    scene, forwarder = partition
    lines_before = _log_lines(scene.gate)
    forwarder.blackhole()
    cut = time.perf_counter()
    # Joins on their way to Redis as the line goes silent wait for the Redis timeout.
    in_flight = await asyncio.gather(*(scene.join(_customer(n)) for n in range(10)))
    for answer in in_flight:
        _assert_unavailable(answer, "join in flight at the cut")
    await wait_for(scene.not_ready, 5, "/readyz 503 during the partition")
    not_ready_s = time.perf_counter() - cut

    seconds: dict[str, list[float]] = {"join": [], "status": [], "auth": [], "pause": []}
    seconds["join in flight"] = [answer.seconds for answer in in_flight]
    late: list[str] = []  # new customers whose join went into the partition
    round_ = 0
    while round_ < 3 or time.perf_counter() - cut < PARTITION_S:
        round_ += 1
        joins = [scene.join(_customer(n)) for n in range(round_, CUSTOMERS, 3)]
        news = [f"late-{round_}-{n}" for n in range(5)]
        late += news
        joins += [scene.join(customer) for customer in news]
        for answer in await asyncio.gather(*joins):
            _assert_unavailable(answer, "join during the partition")
            seconds["join"].append(answer.seconds)
        for customer in scene.last_in_line(10):
            answer = await scene.status(customer)
            _assert_unavailable(answer, "status during the partition")
            seconds["status"].append(answer.seconds)
        for customer, pass_token in scene.passes.items():
            answer = await scene.auth(customer, pass_token)
            assert answer.status == 401, answer.body
            assert answer.body["error"]["code"] == "unavailable", answer.body
            seconds["auth"].append(answer.seconds)
        paused = await _admin_call(scene, "POST", f"/admin/campaigns/{CAMPAIGN}/pause")
        assert paused.status == 503, paused.body
        assert paused.body["error"]["code"] == "unavailable", paused.body
        assert int(paused.headers["Retry-After"]) >= 1
        seconds["pause"].append(paused.seconds)
        assert not await scene.ready()
        await asyncio.sleep(0.2)  # a client's pace, not a busy loop
    during = scene.gate.log_path.read_text().splitlines()[lines_before:]
    partition_lines = len(during)
    partition_s = time.perf_counter() - cut

    forwarder.heal()
    healed = time.perf_counter()
    await wait_for(scene.ready, HEAL_LIMIT_S, "/readyz 200 once the partition heals")
    ready_s = time.perf_counter() - healed
    joined: dict[str, Any] = {}

    async def serving() -> bool:
        answer = await scene.join(_customer(0))
        joined.update(answer.body)
        return answer.status == 200

    await wait_for(serving, HEAL_LIMIT_S, "a join answered once the partition heals")
    serving_s = time.perf_counter() - healed

    figures = {
        kind: f"p50 {1000 * statistics.median(s):.0f} ms max {1000 * max(s):.0f} ms (n={len(s)})"
        for kind, s in seconds.items()
    }
    print(
        f"\npartition: readyz 503 after {1000 * not_ready_s:.0f} ms; {figures}; "
        f"{partition_lines} log lines in {partition_s:.1f} s; healed: readyz 200 after "
        f"{1000 * ready_s:.0f} ms, joins after {1000 * serving_s:.0f} ms; the lines: "
        + "; ".join(line.partition("event=")[2][:60] for line in during)
    )
    for kind, s in seconds.items():
        assert max(s) < ANSWER_LIMIT_S, (kind, figures)
    assert not_ready_s < ANSWER_LIMIT_S + REDIS_TIMEOUT_MS / 1000
    assert partition_lines <= LOG_LINES_LIMIT, scene.gate.log_path.read_text()[-4000:]
    assert "Traceback" not in scene.gate.log_path.read_text()

    # Nobody lost their place: the same seq for every customer, and no seq twice, also for
    # the new customers whose joins reached Redis only when the partition healed.
    for customer, seq in scene.seq.items():
        answer = await _joined(scene, customer)
        assert answer.status == 200, answer.body
        assert (answer.body["seq"], answer.body["created"]) == (seq, False)
    late_seqs = []
    for customer in late:
        answer = await _joined(scene, customer)
        late_seqs.append(answer.body["seq"])
    everyone = [*scene.seq.values(), *late_seqs]
    assert len(set(everyone)) == len(everyone)
    redis = Redis.from_url(scene.redis.url)
    try:
        keys = CampaignKeys(CAMPAIGN)
        assert await redis.hlen(keys.tickets) == len(everyone)
        assert int(await redis.hget(keys.meta, "seq")) == len(everyone)
    finally:
        await redis.aclose()
    for customer, pass_token in scene.passes.items():
        assert (await scene.auth(customer, pass_token)).status == 200

    # A pause that answered 503 may still have reached Redis when the line healed: the
    # operator reads the state, and resumes (or not) knowingly.
    shown = await _admin_call(scene, "GET", f"/admin/campaigns/{CAMPAIGN}")
    assert shown.status == 200, shown.body
    print(f"partition: the campaign after healing is {shown.body['state']!r}")
    assert all(status < 500 or status == 503 for status in scene.statuses), scene.statuses
