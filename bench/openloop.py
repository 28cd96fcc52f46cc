"""An open-loop HTTP load generator (and a closed-loop fallback for machines without wrk).

Open loop: requests arrive at a fixed rate whatever the server does. The rate is split
over `procs` generator processes and their keep-alive connections; connection g sends its
k-th request at t0 + g/R + k*C/R (R the total rate, C the number of connections). When an
answer comes late and the next request of that connection is already due, that request
goes out at once and its latency is counted from when it was *scheduled*, not when it
could be sent: the time it spent held back is the server's fault, so coordinated
omission is counted (as wrk2 does). When the generator itself wakes late (timer
granularity, a busy core) and nothing held the request back, the latency is counted from
the actual send, so the generator's own lateness is not blamed on the server; that
lateness is reported separately as `generator_lag_ms` so a reader can see when the
generator was short of CPU.

Requests still unanswered at the hard deadline (end + grace) count as `unfinished`, with
a latency of at least (deadline - scheduled time): a server that stalls shows up in the
percentiles instead of vanishing from them.

The generator is bounded: at most R * duration requests, and every process exits by the
hard deadline. It talks raw HTTP/1.1 to 127.0.0.1 only (aiohttp's client would cost more
than the hello-world server it measures).

Run by the parent (`run_load`) as `python -m bench.openloop SPEC.json`; each process writes
SPEC.json.out (JSON counters) and SPEC.json.lat (latencies, float64 seconds).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from bench.load import REPO_ROOT, LoadResult, Target, child_env, percentiles

CONNECT_LEAD_S = 1.0
# uvloop's loop.time() has millisecond resolution; latencies need better.
clock = time.perf_counter  # processes start and connect before the common start time


@dataclass
class GeneratorSpec:
    host: str
    port: int
    method: str
    path: str
    headers: list[tuple[str, str]]
    unique_customer_prefix: str | None
    rate: float | None  # total over all processes; None = closed loop
    duration_s: float
    grace_s: float
    connections: int  # this process
    first_connection: int  # global index of this process's first connection
    total_connections: int
    start_wall: float  # time.time() at which every process starts sending


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, float]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._complete()

    def _complete(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        status = int(head[9:12])
        del self.buffer[:total]
        self.waiter.set_result((status, clock()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def send(self, data: bytes) -> asyncio.Future[tuple[int, float]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Generator:
    def __init__(self, spec: GeneratorSpec) -> None:
        self.spec = spec
        self.latencies = array.array("d")
        self.codes = array.array("H")  # each latency's status; 0: unanswered
        self.lags = array.array("d")
        self.statuses: dict[int, int] = {}
        self.socket_errors = 0
        self.unfinished = 0
        self.sent = 0
        self.late_start_s = 0.0
        self.connections: list[_Connection] = []
        fixed = "".join(f"{name}: {value}\r\n" for name, value in spec.headers)
        self.head = f"{spec.method} {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
        self.head += fixed
        self.body_headers = "Content-Length: 0\r\n" if spec.method == "POST" else ""
        self.static = (self.head + self.body_headers + "\r\n").encode()

    def request(self, connection: int, k: int) -> bytes:
        if self.spec.unique_customer_prefix is None:
            return self.static
        customer = f"{self.spec.unique_customer_prefix}-c{connection}-{k}"
        return (f"{self.head}X-Customer-Id: {customer}\r\n{self.body_headers}\r\n").encode()

    async def connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_Connection, self.spec.host, self.spec.port)
        self.connections.append(protocol)
        return protocol

    async def run(self) -> None:
        spec = self.spec
        loop = asyncio.get_running_loop()
        conns = [await self.connect() for _ in range(spec.connections)]
        start = clock() + (spec.start_wall - time.time())
        if clock() > start:
            # Connecting took longer than the lead: shift this process's schedule rather
            # than start with a backlog that would be blamed on the server.
            self.late_start_s = clock() - start
            start = clock()
        end = start + spec.duration_s
        hard = end + spec.grace_s
        # At the hard deadline every connection is closed: whatever is in flight fails.
        closer = loop.call_later(hard - clock(), self._close_all)
        try:
            await asyncio.gather(
                *(
                    self._open_loop(conn, spec.first_connection + i, start, end, hard)
                    if spec.rate
                    else self._closed_loop(conn, spec.first_connection + i, start, end)
                    for i, conn in enumerate(conns)
                )
            )
        finally:
            closer.cancel()
            self._close_all()

    def _close_all(self) -> None:
        for conn in self.connections:
            conn.close()

    def _count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    async def _open_loop(
        self, conn: _Connection, g: int, start: float, end: float, hard: float
    ) -> None:
        assert self.spec.rate
        interval = self.spec.total_connections / self.spec.rate
        first = start + g / self.spec.rate
        k = 0
        previous_done = -1.0
        while True:
            scheduled = first + k * interval
            if scheduled >= end:
                return
            now = clock()
            if now < scheduled:
                await asyncio.sleep(scheduled - now)
                now = clock()
            if now >= hard or conn.lost:
                # Scheduled but never answered: count each at its lower-bound latency.
                while scheduled < end:
                    self.unfinished += 1
                    self.latencies.append(hard - scheduled)
                    self.codes.append(0)
                    k += 1
                    scheduled = first + k * interval
                return
            held_back = previous_done > scheduled
            try:
                self.sent += 1
                status, done = await conn.send(self.request(g, k))
            except ConnectionError:
                if clock() >= hard:
                    self.unfinished += 1
                    self.latencies.append(hard - scheduled)
                    self.codes.append(0)
                    k += 1
                    continue
                self.socket_errors += 1
                try:
                    conn = await self.connect()
                except OSError:
                    return
                k += 1
                continue
            self._count(status)
            self.latencies.append(done - (scheduled if held_back else now))
            self.codes.append(status)
            if not held_back:
                self.lags.append(max(0.0, now - scheduled))
            previous_done = done
            k += 1

    async def _closed_loop(self, conn: _Connection, g: int, start: float, end: float) -> None:
        now = clock()
        if now < start:
            await asyncio.sleep(start - now)
        k = 0
        while True:
            sent = clock()
            if sent >= end:
                return
            try:
                self.sent += 1
                status, done = await conn.send(self.request(g, k))
            except ConnectionError:
                if clock() >= end:
                    return
                self.socket_errors += 1
                try:
                    conn = await self.connect()
                except OSError:
                    return
                k += 1
                continue
            if done <= end:
                self._count(status)
                self.latencies.append(done - sent)
                self.codes.append(status)
            k += 1


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def generator_main(spec_path: Path) -> int:
    spec = GeneratorSpec(**json.loads(spec_path.read_text()))
    if spec.host != "127.0.0.1":
        raise SystemExit("the load generator targets 127.0.0.1 only")
    generator = _Generator(spec)
    _install_uvloop()
    asyncio.run(generator.run())
    with open(f"{spec_path}.lat", "wb") as handle:
        generator.latencies.tofile(handle)
    with open(f"{spec_path}.lag", "wb") as handle:
        generator.lags.tofile(handle)
    with open(f"{spec_path}.st", "wb") as handle:
        generator.codes.tofile(handle)
    summary = {
        "sent": generator.sent,
        "statuses": {str(k): v for k, v in generator.statuses.items()},
        "socket_errors": generator.socket_errors,
        "unfinished": generator.unfinished,
        "late_start_s": round(generator.late_start_s, 4),
    }
    Path(f"{spec_path}.out").write_text(json.dumps(summary))
    return 0


def _read_codes(path: Path) -> list[int]:
    values = array.array("H")
    if path.exists():
        with open(path, "rb") as handle:
            values.frombytes(handle.read())
    return values.tolist()


def by_status(latencies: list[float], codes: list[int]) -> dict[str, dict[str, float]]:
    """Latency percentiles per kind of answer: 2xx, 503, other (4xx, other 5xx), and
    unanswered (0: counted at the hard deadline)."""
    groups: dict[str, list[float]] = {}
    for latency, code in zip(latencies, codes, strict=False):
        if 200 <= code < 300:
            kind = "2xx"
        elif code == 503:
            kind = "503"
        elif code == 0:
            kind = "unanswered"
        else:
            kind = "other"
        groups.setdefault(kind, []).append(latency)
    return {kind: percentiles(values) for kind, values in sorted(groups.items())}


def _read_doubles(path: Path) -> list[float]:
    values = array.array("d")
    with open(path, "rb") as handle:
        values.frombytes(handle.read())
    return values.tolist()


def _write_specs(
    target: Target,
    *,
    rate: float | None,
    duration_s: float,
    grace_s: float,
    connections: int,
    procs: int,
    work_dir: Path,
) -> list[Path]:
    work_dir.mkdir(parents=True, exist_ok=True)
    start_wall = time.time() + CONNECT_LEAD_S
    paths = []
    first = 0
    for p in range(procs):
        share = connections // procs + (1 if p < connections % procs else 0)
        spec = GeneratorSpec(
            host="127.0.0.1",
            port=target.port,
            method=target.method,
            path=target.path,
            headers=list(target.headers),
            unique_customer_prefix=target.unique_customer_prefix,
            rate=rate,
            duration_s=duration_s,
            grace_s=grace_s,
            connections=share,
            first_connection=first,
            total_connections=connections,
            start_wall=start_wall,
        )
        first += share
        path = work_dir / f"gen-{target.port}-{os.getpid()}-{p}.json"
        for suffix in (".out", ".lat", ".lag", ".st"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.write_text(json.dumps(asdict(spec)))
        paths.append(path)
    return paths


def _collect(
    paths: list[Path], *, rate: float | None, duration_s: float, connections: int
) -> LoadResult:
    latencies: list[float] = []
    codes: list[int] = []
    lags: list[float] = []
    statuses: dict[str, int] = {}
    sent = socket_errors = unfinished = 0
    late_start = 0.0
    for path in paths:
        summary: dict[str, Any] = json.loads(Path(f"{path}.out").read_text())
        latencies += _read_doubles(Path(f"{path}.lat"))
        codes += _read_codes(Path(f"{path}.st"))
        lags += _read_doubles(Path(f"{path}.lag"))
        for code, count in summary["statuses"].items():
            statuses[code] = statuses.get(code, 0) + count
        sent += summary["sent"]
        socket_errors += summary["socket_errors"]
        unfinished += summary["unfinished"]
        late_start = max(late_start, summary["late_start_s"])
        for suffix in ("", ".out", ".lat", ".lag", ".st"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    ok = sum(count for code, count in statuses.items() if code.startswith("2"))
    answered = sum(statuses.values())
    return LoadResult(
        tool="openloop" if rate else "closedloop",
        mode="open" if rate else "closed",
        duration_s=duration_s,
        connections=connections,
        requests=answered,
        ok=ok,
        errors=answered - ok + socket_errors + unfinished,
        rate_target=rate,
        latency_ms=percentiles(latencies),
        generator_lag_ms=percentiles(lags) if rate else {},
        unfinished=unfinished,
        detail={
            "procs": len(paths),
            "sent": sent,
            "statuses": statuses,
            "late_start_s": late_start,
            "latency_by_status_ms": by_status(latencies, codes) if rate else {},
        },
    )


async def run_load(
    target: Target,
    *,
    rate: float | None,
    duration_s: float,
    connections: int,
    procs: int,
    work_dir: Path,
    grace_s: float = 5.0,
) -> LoadResult:
    """Open loop at `rate` requests/s in total (closed loop when rate is None)."""
    procs = max(1, min(procs, connections))
    paths = _write_specs(
        target,
        rate=rate,
        duration_s=duration_s,
        grace_s=grace_s,
        connections=connections,
        procs=procs,
        work_dir=work_dir,
    )
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.openloop",
            str(path),
            stdin=asyncio.subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env=child_env(),
        )
        for path in paths
    ]
    limit = CONNECT_LEAD_S + duration_s + grace_s + 30
    try:
        codes = await asyncio.wait_for(asyncio.gather(*(c.wait() for c in children)), limit)
    except TimeoutError:
        for child in children:
            if child.returncode is None:
                child.kill()
        await asyncio.gather(*(c.wait() for c in children))
        raise RuntimeError("the load generator did not finish in time") from None
    if any(codes):
        raise RuntimeError(f"a load generator process failed: exit codes {codes}")
    return _collect(paths, rate=rate, duration_s=duration_s, connections=connections)


if __name__ == "__main__":
    raise SystemExit(generator_main(Path(sys.argv[1])))
