"""What one request costs the demo's crowd: the lean client ÷ aiohttp's, in the same run.

`gate demo --scenario ipo-rush --full` sends a million simulated customers from this
machine's own cores, so the crowd's CPU per request bounds what the demo can offer the gate
and the core. This bench serves the aiohttp hello-world (bench/hello.py, its own process,
uvloop) and sends it the same requests through each client of gate/demo/crowd.py in turn
(the lean keep-alive client, gate/demo/lean_http.Pool, and the aiohttp reference), in
alternating rounds; each round's figure is the client process's own CPU time (user +
system) per answered request. The ratio aiohttp ÷ lean (median of the rounds' ratios) is
what the lean client saves; requests/s are shown too, but on a shared machine they follow
the other load, the CPU per request much less.

    python -m bench.crowd_client [--requests 20000] [--rounds 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.servers import HelloServer
from gate.demo.lean_http import AiohttpPool, Pool

HEADERS = b"X-Customer-Id: c0000001-0000abcd\r\n"
TARGET = "/q/special-deposit/status?ticket=v1.abcdefghijklmnopqrstuvwxyz.0123456789"


async def one_round(
    pool: Pool | AiohttpPool, requests: int, concurrency: int
) -> tuple[float, float]:
    """(CPU µs per request, requests/s) of `requests` GETs, `concurrency` at a time."""
    per_task = requests // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            response = await pool.request("GET", TARGET, HEADERS)
            if response.status != 200:
                raise RuntimeError(f"answered {response.status}")

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = per_task * concurrency
    return cpu / done * 1e6, done / wall


async def measure(requests: int, rounds: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="crowd-client-") as tmp:
        server = HelloServer(Path(tmp), 1)
        await server.start()
        try:
            load_before = os.getloadavg()
            runs: list[dict[str, Any]] = []
            for n in range(rounds + 1):  # the first round warms both up, not counted
                row: dict[str, Any] = {}
                for name in ("lean", "aiohttp"):
                    pool: Pool | AiohttpPool = (
                        Pool.for_url(server.url, concurrency)
                        if name == "lean"
                        else AiohttpPool(server.url, concurrency)
                    )
                    try:
                        row[name] = await one_round(pool, requests, concurrency)
                    finally:
                        await pool.close()
                if n:
                    runs.append(row)
            load_after = os.getloadavg()
        finally:
            server.stop()
    ratios = [r["aiohttp"][0] / r["lean"][0] for r in runs]
    return {
        "requests_per_round": requests,
        "rounds": rounds,
        "concurrency": concurrency,
        "cpu_us_per_request": {
            name: round(statistics.median(r[name][0] for r in runs), 1)
            for name in ("lean", "aiohttp")
        },
        "requests_per_s": {
            name: round(statistics.median(r[name][1] for r in runs)) for name in ("lean", "aiohttp")
        },
        "cpu_ratio_aiohttp_over_lean": round(statistics.median(ratios), 2),
        "cpu_ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
        "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }


def markdown(result: dict[str, Any]) -> str:
    cpu, rps = result["cpu_us_per_request"], result["requests_per_s"]
    low, high = result["cpu_ratio_range"]
    return "\n".join(
        [
            "| client | CPU µs per request (median) | requests/s (median) |",
            "| --- | ---: | ---: |",
            f"| lean (gate/demo/lean_http.Pool) | {cpu['lean']} | {rps['lean']} |",
            f"| aiohttp (reference) | {cpu['aiohttp']} | {rps['aiohttp']} |",
            "",
            f"CPU per request, aiohttp ÷ lean: **{result['cpu_ratio_aiohttp_over_lean']}** "
            f"({low}-{high} over {result['rounds']} rounds of "
            f"{result['requests_per_round']:,} requests, {result['concurrency']} connections); "
            f"{result['cores']} cores, load average {result['load_average_before']} before, "
            f"{result['load_average_after']} after.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= args.requests or args.rounds < 1:
        parser.error("need 1 <= --concurrency <= --requests and --rounds >= 1")
    try:
        import uvloop

        result = uvloop.run(measure(args.requests, args.rounds, args.concurrency))
    except ImportError:
        result = asyncio.run(measure(args.requests, args.rounds, args.concurrency))
    text = markdown(result)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "crowd-client.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "crowd-client.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
