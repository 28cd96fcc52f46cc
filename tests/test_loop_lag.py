"""A gate process starved of CPU is not a Redis outage (issue 12).

On a busy host the gate's event loop runs late: a Redis answer that arrived in a
millisecond waits in the socket until the loop comes back, and the cache's last refresh
grows old although none failed. Before, both were taken for a dead Redis: the command's
timeout fired as soon as the loop ran again (fail-closed 503 `unavailable`), and a claim,
a pass or `/gate/auth` answered 503/401 because the cache was older than `stale_after_ms`.

Here a real `gate serve` gets no CPU for 1.3 s at a time (SIGSTOP, then SIGCONT: what a
starved host does to it, made exact) while customers keep asking for passes, checking
them at `/gate/auth` and claiming: every answer must be the one a healthy gate gives.
Redis itself stays up, so nothing may fail closed. (`tests/test_i7_fail_closed.py` keeps
the other side: with Redis really gone, the gate answers 503 quickly.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import ADMIN_TOKEN, GateProcess, amount_quota, spec, wait_for

CAMPAIGN = "lag"
CUSTOMERS = 12
STALLS = 3
STALL_S = 1.3  # longer than stale_after_ms (1 s) and the Redis timeout (500 ms)


def _who(customer: str, **more: str) -> dict[str, str]:
    return {"X-Customer-Id": customer, "X-Gate-Campaign": CAMPAIGN, **more}


async def _admitted(
    session: aiohttp.ClientSession, gate: GateProcess, customers: list[str]
) -> dict[str, tuple[str, str]]:
    """customer -> (ticket, pass), once each is admitted and its pass is valid."""
    tickets: dict[str, str] = {}
    for customer in customers:
        async with session.post(f"{gate.url}/q/{CAMPAIGN}/join", headers=_who(customer)) as r:
            assert r.status in (200, 201), await r.text()
            tickets[customer] = (await r.json())["ticket"]
    passes: dict[str, str] = {}

    async def all_admitted() -> bool:
        for customer, ticket in tickets.items():
            if customer in passes:
                continue
            async with session.get(
                f"{gate.url}/q/{CAMPAIGN}/status", params={"ticket": ticket}, headers=_who(customer)
            ) as r:
                body = await r.json()
                if r.status == 200 and body["state"] == "admitted":
                    passes[customer] = body["pass"]
        return len(passes) == len(tickets)

    await wait_for(all_admitted, 10, "every customer admitted")
    return {c: (tickets[c], passes[c]) for c in customers}


async def test_a_starved_gate_process_answers_as_a_healthy_one(
    redis_url: str, tmp_path: Path, keys_file: Path
) -> None:
    body = spec(CAMPAIGN, rate_per_s=1000, burst=100, pass_ttl_s=300, reservation_ttl_s=300)
    body["quota"] = amount_quota(10**12, 10_000, 10_000_000, 10_000)
    async with (
        GateProcess(redis_url, tmp_path / "gate", keys_file) as gate,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
    ):
        assert gate.process is not None
        async with session.post(
            f"{gate.admin_url}/admin/campaigns",
            json=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r:
            assert r.status == 201, await r.text()
        customers = [f"lag-{n:03d}" for n in range(CUSTOMERS)]
        held = await _admitted(session, gate, customers)
        answers: list[tuple[str, int, str]] = []
        stop = asyncio.Event()

        async def ask(what: str, method: str, path: str, **kwargs: Any) -> None:
            try:
                async with session.request(method, gate.url + path, **kwargs) as r:
                    text = await r.text()
                    answers.append((what, r.status, text[:200]))
            except aiohttp.ClientError as exc:
                answers.append((what, 0, repr(exc)))

        async def customer(n: int, name: str) -> None:
            ticket, pass_token = held[name]
            pass_header = {"X-Gate-Pass": pass_token}
            while not stop.is_set():
                await asyncio.gather(
                    ask(
                        "status (pass)",
                        "GET",
                        f"/q/{CAMPAIGN}/status",
                        params={"ticket": ticket},
                        headers=_who(name),
                    ),
                    ask(
                        "auth",
                        "GET",
                        "/gate/auth",
                        headers=_who(name, **pass_header),
                    ),
                    ask(
                        "claim",
                        "POST",
                        f"/q/{CAMPAIGN}/claim",
                        # the same key each time: the first reserves, the rest replay it
                        json={"amount": "1000000", "idempotency_key": f"k{n}"},
                        headers=_who(name, **pass_header),
                    ),
                )
                await asyncio.sleep(0.02)

        traffic = [asyncio.create_task(customer(n, c)) for n, c in enumerate(customers)]
        pid = gate.process.pid
        try:
            for _ in range(STALLS):
                await asyncio.sleep(0.3)
                os.kill(pid, signal.SIGSTOP)
                stopped = time.monotonic()
                try:
                    await asyncio.sleep(STALL_S)
                finally:
                    os.kill(pid, signal.SIGCONT)
                assert time.monotonic() - stopped >= STALL_S
            await asyncio.sleep(0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
            stop.set()
            await asyncio.gather(*traffic)
        wrong = [a for a in answers if a[1] not in (200, 201)]
        kinds = {what for what, _, _ in answers}
        assert kinds == {"status (pass)", "auth", "claim"}
        assert len(answers) > 3 * CUSTOMERS * STALLS, len(answers)
        by = Counter(
            (what, status, text.partition('"code":"')[2][:20]) for what, status, text in wrong
        )
        assert not wrong, f"{len(wrong)} of {len(answers)} answers failed: {dict(by)}"
