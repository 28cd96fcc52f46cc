"""Graceful overload at the edge (issue 15): the shipped nginx and HAProxy configs let at
most a set number of requests be in flight to the gate (nginx `max_conns`, HAProxy
`maxconn`) and answer the excess at once with the busy answer (503 + Retry-After), before
the gate spends anything on it; claims and pass checks, an admitted customer's, are never
cut there.

Before: the proxies passed every request on, so a crowd beyond what the gate serves piled
up inside it, and every answer came late (bench/overload.py: join p99 5.8 s at three times
the gate's capacity, 21,236 requests never answered in the run); the gate's own shedding
answers its 503 only after aiohttp has read and parsed the request, which costs about what
a poll does.

Real nginx and HAProxy with the shipped configs, a real `gate serve`, real Redis: the
gate's requests are held in flight by pausing Redis's writes (CLIENT PAUSE WRITE: joins,
claims wait), with a small cap in place of the shipped one.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gate.redis_server import RedisServer
from tests.helpers import wait_for
from tests.proxy_support import DEPLOY, HAPROXY, NGINX, Front, proxied_gate, unique

needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
CAP = 4  # requests in flight to the gate, in place of the shipped cap
EXCESS = 8


@pytest.fixture(
    scope="module",
    params=[pytest.param("nginx", marks=needs_nginx), pytest.param("haproxy", marks=needs_haproxy)],
)
def capped(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    keys_file: Path,
) -> Iterator[Front]:
    root = tmp_path_factory.mktemp(f"{request.param}-cap")
    with proxied_gate(
        request.param,
        redis_server.url,
        root,
        keys_file,
        campaign=f"{request.param}-cap",
        gate_cap=CAP,
        # the held requests wait out the pause below instead of failing at 500 ms
        gate_settings={"GATE_REDIS_TIMEOUT_MS": "20000"},
    ) as front:
        yield front


async def _status(request: Any) -> tuple[int, str]:
    """A request's (status, body text)."""
    async with request as r:
        return r.status, (await r.text())[:300]


async def _join(front: Front, client: aiohttp.ClientSession) -> tuple[int, float, Any, str]:
    """POST join through the proxy: (status, seconds, seq or None, Retry-After)."""
    started = time.monotonic()
    async with client.post(
        f"{front.url}/q/{front.campaign}/join",
        headers={**front.origin, "Accept": "application/json"},
        allow_redirects=False,
    ) as r:
        body = await r.read()
        seq = None
        if r.status in (200, 201):
            seq = (await r.json())["seq"]
        assert r.status in (200, 201, 503), (r.status, body[:300])
        return r.status, time.monotonic() - started, seq, r.headers.get("Retry-After", "")


async def test_the_excess_over_the_cap_is_answered_503_at_once_and_no_place_is_lost(
    capped: Front, redis_server: RedisServer
) -> None:
    front = capped
    names = [unique("held") for _ in range(CAP + EXCESS + 4)]
    clients = {name: front.client(name) for name in names}
    admitted_name = unique("admitted")
    admitted = front.client(admitted_name)
    redis = Redis.from_url(redis_server.url)
    try:
        # An admitted customer, whose pass has been used once at the core already.
        status = await front.admitted(admitted)
        async with admitted.get(f"{front.url}/core/book", allow_redirects=False) as r:
            assert r.status == 200, (r.status, await r.text())
        seqs = {admitted_name: status["seq"]}

        await redis.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
        try:
            pending = iter(names)
            held: dict[str, asyncio.Task[tuple[int, float, Any, str]]] = {}
            refused: dict[str, tuple[int, float, Any, str]] = {}

            async def one_refused() -> bool:
                """Joins one at a time until the proxy refuses one: the cap is full."""
                name = next(pending)
                task = asyncio.create_task(_join(front, clients[name]))
                done, _ = await asyncio.wait({task}, timeout=1.0)
                if task in done and task.result()[0] == 503:
                    refused[name] = task.result()
                    return True
                held[name] = task
                return False

            await wait_for(one_refused, 10, f"a join refused at the cap of {CAP} in flight")
            assert len(held) >= CAP, held.keys()
            # Claims and pass checks of the admitted customer are not cut at the edge.
            claim = asyncio.create_task(
                _status(
                    admitted.post(
                        f"{front.url}/q/{front.campaign}/claim",
                        json={"amount": 1, "idempotency_key": "k1"},
                        headers=front.origin,
                        allow_redirects=False,
                    )
                )
            )
            core = asyncio.create_task(
                _status(admitted.get(f"{front.url}/core/book", allow_redirects=False))
            )
            # The excess, all at once, while the gate still holds every earlier join.
            excess = [n for n in names if n not in held and n not in refused][:EXCESS]
            answers = await asyncio.gather(*(_join(front, clients[n]) for n in excess))
            assert not any(task.done() for task in held.values()), "Redis is paused"
            for name, answer in zip(excess, answers, strict=True):
                refused[name] = answer
            for name, (code, seconds, _seq, retry_after) in refused.items():
                assert code == 503, (name, code)
                assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
                assert seconds < 1.0, (name, seconds)  # bench/overload.py measures it finely
            if claim.done():  # not refused at the edge: held at the gate like the joins
                assert claim.result()[0] != 503, claim.result()
            if core.done():
                assert core.result()[0] == 200, core.result()
        finally:
            await redis.execute_command("CLIENT", "UNPAUSE")

        for name, task in held.items():
            code, _seconds, seq, _ = await task
            assert code in (200, 201), (name, code)
            seqs[name] = seq
        assert (await claim)[0] == 201, claim.result()
        assert (await core)[0] == 200, core.result()
        # The refused customers come back, as the busy page does by itself.
        for name in refused:
            code, _seconds, seq, _ = await _join(front, clients[name])
            assert code == 201, (name, code)
            seqs[name] = seq
        # No place was taken for a customer who was never told it: the seqs handed out
        # are exactly 1..n, one per customer.
        assert sorted(seqs.values()) == list(range(1, len(seqs) + 1)), seqs
    finally:
        await redis.aclose()
        for client in (*clients.values(), admitted):
            await client.close()


@needs_nginx
def test_the_overload_bench_fronts_the_gate_with_the_shipped_cap(tmp_path: Path) -> None:
    """bench/overload.py's nginx: the shipped maps, locations and gate upstreams, the
    shipped cap included; nginx accepts it."""
    from bench.edge import upstream_conf
    from bench.overload import front_conf
    from tests.proxy_support import nginx_accepts

    shipped = re.search(r"max_conns=(\d+)", (DEPLOY / "nginx" / "nginx.conf").read_text())
    assert shipped is not None
    conf = front_conf(tmp_path, 8001, 8002, 8003)
    assert f"server 127.0.0.1:8003 max_conns={shipped.group(1)};" in conf
    assert "upstream fairgate_admitted" in conf
    for text in (conf, upstream_conf(tmp_path, 8002, "$http_x_customer_id")):
        checked = nginx_accepts(tmp_path, re.sub(r"^pid .*;$", "", text, flags=re.M))
        assert checked.returncode == 0, checked.stderr
