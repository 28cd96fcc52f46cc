"""Process safety of `gate serve` with its embedded Redis: nothing outlives a killed parent,
one gate per data dir, and a dead embedded Redis is restarted (or the gate exits 1)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import ADMIN_TOKEN, GateProcess, spec, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

Identity = tuple[int, str]  # a pid and its start time: a reused pid is another process


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name, in parentheses, may hold spaces: fields start after its last ')'.
    return text[text.rindex(")") + 2 :].split()


def _identity(pid: int) -> Identity | None:
    fields = _stat(pid)
    return (pid, fields[19]) if fields is not None else None


def _running(identity: Identity) -> bool:
    """Running and not a zombie waiting to be reaped."""
    fields = _stat(identity[0])
    return fields is not None and fields[19] == identity[1] and fields[0] != "Z"


def _group_empty(pgid: int) -> bool:
    """No process left in the group, not even a zombie that init has yet to reap."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _descendants(root: int) -> list[Identity]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[Identity] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if (identity := _identity(child)) is not None:
                found.append(identity)
                todo.append(child)
    return found


def _embedded(log: Path) -> tuple[int, int]:
    """The embedded Redis's port and pid, from the gate's log."""
    match = re.search(r"event=embedded_redis version=\S+ port=(\d+) pid=(\d+)", log.read_text())
    assert match, log.read_text()[-2000:]
    return int(match.group(1)), int(match.group(2))


async def _stop(gate: GateProcess) -> None:
    """SIGTERM, then every process of the gate gone (zombies reaped) within a deadline:
    a worker, the embedded Redis or multiprocessing's resource tracker may take a moment
    after the parent, and only a process that never goes counts as left over."""
    assert gate.process is not None
    pid = gate.process.pid
    gate.process.terminate()
    assert await asyncio.to_thread(gate.process.wait, 15) == 0, gate.log_path.read_text()

    async def group_empty() -> bool:
        return _group_empty(pid)

    await wait_for(group_empty, 15, "every process of the stopped gate to exit")


async def _workers_listening(gate: GateProcess, workers: int) -> None:
    """/readyz answers once one worker listens; a signal to a worker still starting kills it
    before its handlers are in place, so the tests wait for them all."""

    async def listening() -> bool:
        return gate.log_path.read_text().count("event=listening ") == workers

    await wait_for(listening, 30, f"{workers} workers listening")


async def _status(session: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with session.get(url + "/readyz") as r:
            return r.status
    except aiohttp.ClientError:
        return None


async def _join(session: aiohttp.ClientSession, gate: GateProcess, customer: str) -> int:
    r = await session.post(gate.url + "/q/pc/join", headers={"X-Customer-Id": customer})
    assert r.status in (200, 201), await r.text()
    return int((await r.json())["seq"])


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


async def _with_campaign(session: aiohttp.ClientSession, gate: GateProcess) -> None:
    r = await session.post(
        gate.admin_url + "/admin/campaigns",
        json=spec("pc"),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert r.status == 201, await r.text()
    assert [await _join(session, gate, c) for c in ("a", "b")] == [1, 2]


async def test_kill_9_of_the_parent_leaves_no_redis_and_no_worker(
    tmp_path: Path, keys_file: Path, session: aiohttp.ClientSession
) -> None:
    gate = GateProcess("", tmp_path / "data", keys_file, workers=2)
    async with gate:
        assert gate.process is not None
        await _workers_listening(gate, 2)
        await _with_campaign(session, gate)
        port, redis_pid = _embedded(gate.log_path)
        pid = gate.process.pid
        left = _descendants(pid)
        # the Redis, two workers and multiprocessing's resource tracker
        assert len(left) >= 3 and redis_pid in [pid for pid, _ in left], left
        gate.process.send_signal(signal.SIGKILL)
        gate.process.wait()

        async def all_gone() -> bool:
            return not any(_running(identity) for identity in left) and _group_empty(pid)

        await wait_for(all_gone, 15, f"the children of a killed gate serve to exit: {left}")
    assert not gate.leftovers
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()

    # Started again on the same data dir: one Redis, the tickets kept.
    async with GateProcess("", tmp_path / "data", keys_file) as again:
        assert [await _join(session, again, c) for c in ("a", "b", "c")] == [1, 2, 3]
    assert not again.leftovers


async def test_a_second_serve_on_the_same_data_dir_is_refused(
    tmp_path: Path, keys_file: Path, session: aiohttp.ClientSession
) -> None:
    async with GateProcess("", tmp_path / "data", keys_file) as first:
        await _with_campaign(session, first)
        second = GateProcess("", tmp_path / "data", keys_file)
        # the same data dir, its own ports
        second.log_path = tmp_path / "second.log"
        second.start()
        assert second.process is not None
        try:
            code = await asyncio.to_thread(second.process.wait, 20)
        except subprocess.TimeoutExpired:
            second.stop()
            pytest.fail(f"the second gate serve kept running: {second.log_path.read_text()}")
        out = second.log_path.read_text()
        assert code == 2, out
        assert "gate: error: data_dir_in_use:" in out and str(first.process.pid) in out, out  # type: ignore[union-attr]
        assert "Traceback" not in out, out
        second.process = None
        # The first gate goes on, with its Redis and its tickets.
        assert await _status(session, first.url) == 200
        assert [await _join(session, first, c) for c in ("a", "b", "c")] == [1, 2, 3]
        assert len(re.findall("event=embedded_redis ", first.log_path.read_text())) == 1
    assert not first.leftovers


async def _restarted_and_ready(session: aiohttp.ClientSession, gate: GateProcess) -> None:
    """The embedded Redis restarted by the gate, and the gate ready again."""

    async def restarted() -> bool:
        return "event=embedded_redis_restarted pid=" in gate.log_path.read_text()

    async def ready() -> bool:
        return await _status(session, gate.url) == 200

    await wait_for(restarted, 15, "the embedded Redis to be restarted")
    await wait_for(ready, 15, "/readyz 200 once the embedded Redis is restarted")


async def test_a_dead_embedded_redis_is_restarted_with_its_tickets(
    tmp_path: Path, keys_file: Path, session: aiohttp.ClientSession
) -> None:
    async with GateProcess("", tmp_path / "data", keys_file, workers=2) as gate:
        assert gate.process is not None
        await _workers_listening(gate, 2)
        await _with_campaign(session, gate)
        port, redis_pid = _embedded(gate.log_path)
        # The parent (which keeps the Redis) held still, so the outage can be watched.
        gate.process.send_signal(signal.SIGSTOP)
        try:
            os.kill(redis_pid, signal.SIGKILL)

            async def not_ready() -> bool:
                return await _status(session, gate.url) == 503

            await wait_for(not_ready, 10, "/readyz 503 while the embedded Redis is dead")
        finally:
            gate.process.send_signal(signal.SIGCONT)

        await _restarted_and_ready(session, gate)
        log = gate.log_path.read_text()
        assert "event=embedded_redis_died code=-9" in log, log
        assert re.search(f"event=embedded_redis_restarted pid=\\d+ port={port} ", log), log
        assert [await _join(session, gate, c) for c in ("a", "b", "c")] == [1, 2, 3]
        await _stop(gate)
    assert not gate.leftovers


async def test_a_single_process_gate_restarts_its_redis_too(
    tmp_path: Path, keys_file: Path, session: aiohttp.ClientSession
) -> None:
    """With one worker the gate's own event loop keeps the Redis."""
    async with GateProcess("", tmp_path / "data", keys_file) as gate:
        await _with_campaign(session, gate)
        _, redis_pid = _embedded(gate.log_path)
        os.kill(redis_pid, signal.SIGKILL)

        await _restarted_and_ready(session, gate)
        assert [await _join(session, gate, c) for c in ("a", "b", "c")] == [1, 2, 3]
        await _stop(gate)
    assert not gate.leftovers


async def test_a_redis_that_cannot_be_restarted_stops_the_gate_with_exit_1(
    tmp_path: Path, keys_file: Path, session: aiohttp.ClientSession
) -> None:
    gate = GateProcess("", tmp_path / "data", keys_file, workers=2)
    async with gate:
        assert gate.process is not None
        await _workers_listening(gate, 2)
        port, redis_pid = _embedded(gate.log_path)
        pid = gate.process.pid
        left = _descendants(pid)
        gate.process.send_signal(signal.SIGSTOP)
        squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # the killed Redis's connections may linger in TIME_WAIT on its port
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            os.kill(redis_pid, signal.SIGKILL)

            async def port_free() -> bool:
                try:
                    squatter.bind(("127.0.0.1", port))
                except OSError:
                    return False
                return True

            # Redis's port taken by another process: every restart fails at once.
            await wait_for(port_free, 10, "the dead Redis's port to be free")
            squatter.listen()
        finally:
            gate.process.send_signal(signal.SIGCONT)
        try:
            code = await asyncio.to_thread(gate.process.wait, 30)
        finally:
            squatter.close()
        log = gate.log_path.read_text()
        assert code == 1, log
        assert "event=embedded_redis_gave_up" in log, log
        assert "Traceback" not in log, log

        async def all_gone() -> bool:
            return not any(_running(identity) for identity in left) and _group_empty(pid)

        await wait_for(all_gone, 15, f"the workers of a gate that gave up to exit: {left}")
    assert not gate.leftovers


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers"])
async def test_a_hung_embedded_redis_is_killed_and_restarted(
    tmp_path: Path, keys_file: Path, session: aiohttp.ClientSession, workers: int
) -> None:
    """A SIGSTOPped embedded Redis still exists as a process, so a keeper that only asks
    whether the process lives believes it alive forever (before: no restart, 503 until an
    operator came). Unanswered for `embedded_redis_hang_ms`, it is killed and restarted on
    its AOF; the tickets are kept."""
    hang_ms = 1500
    gate = GateProcess(
        "",
        tmp_path / "data",
        keys_file,
        workers=workers,
        extra_env={"GATE_EMBEDDED_REDIS_HANG_MS": str(hang_ms)},
    )
    async with gate:
        await _workers_listening(gate, workers)
        await _with_campaign(session, gate)
        port, redis_pid = _embedded(gate.log_path)
        hung = _identity(redis_pid)
        assert hung is not None
        os.kill(redis_pid, signal.SIGSTOP)
        stopped_at = asyncio.get_running_loop().time()
        try:

            async def not_ready() -> bool:
                return await _status(session, gate.url) == 503

            await wait_for(not_ready, 5, "/readyz 503 while the embedded Redis is hung")
            not_ready_s = asyncio.get_running_loop().time() - stopped_at
            await _restarted_and_ready(session, gate)
            back_s = asyncio.get_running_loop().time() - stopped_at
        finally:
            # a no-op once it is killed; lets it go on if the gate never did
            with contextlib.suppress(ProcessLookupError):
                os.kill(redis_pid, signal.SIGCONT)
        log = gate.log_path.read_text()
        print(f"hung embedded Redis: readyz 503 after {not_ready_s:.2f}s, back {back_s:.2f}s")
        assert re.search(r"event=embedded_redis_hung pid=\d+ port=\d+ silent_s=\d", log), log
        assert re.search(f"event=embedded_redis_restarted pid=\\d+ port={port} ", log), log
        assert not_ready_s < 1.5, not_ready_s
        # the last answer may be one probe interval (0.5 s) older than the stop
        assert hang_ms / 1000 - 0.5 <= back_s < hang_ms / 1000 + 5, back_s
        assert not _running(hung)  # killed, not left stopped beside the new one
        assert [await _join(session, gate, c) for c in ("a", "b", "c")] == [1, 2, 3]
        await _stop(gate)
    assert not gate.leftovers
