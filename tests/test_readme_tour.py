"""The README's tour runs as written: its commands (between `<!-- tour:begin` and
`<!-- tour:end -->`) are run one by one in one bash session from the repository root,
against a real `gate serve` (the tour's own `.venv/bin/gate serve` line, given a private
redis-server and free ports instead of the embedded Redis and 8080-8082), and each
command's output agrees with the output the README shows under it. The example specs
in examples/ parse with the gate's spec parser."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gate.campaign import parse_spec
from gate.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
TOUR_BEGIN = "<!-- tour:begin"
TOUR_END = "<!-- tour:end -->"
STEP_TIMEOUT_S = 30
# The end of each command's output in the session: its exit status.
MARKER = "@@tour-rc="
# `"key": value` as the README shows it; values with an ellipsis are elided.
PAIR = re.compile(r'"(\w+)": ?("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|true|false|null)')
# Different on every run: only their presence is checked.
VOLATILE = frozenset(
    {"ticket", "pass", "reservation", "eta_s", "poll_after_ms", "pass_expires_at", "expires_at"}
)


@dataclass
class Step:
    command: str
    shown: str  # the output the README shows under it


def tour_steps(text: str) -> list[Step]:
    start = text.index(TOUR_BEGIN)
    block = text[start : text.index(TOUR_END, start)]
    body = block.split("```")[1]
    steps: list[Step] = []
    continued = False
    for line in body.splitlines()[1:]:
        if continued:
            steps[-1].command += "\n" + line
        elif line.startswith("$ "):
            steps.append(Step(line[2:], ""))
        elif steps:
            steps[-1].shown += line + "\n"
        continued = (continued or line.startswith("$ ")) and line.endswith("\\")
    return steps


def test_the_tour_is_marked_and_has_its_steps() -> None:
    steps = tour_steps(README.read_text())
    commands = [step.command for step in steps]
    assert sum(command.rstrip().endswith("&") for command in commands) == 1
    assert any("examples/" in command for command in commands)
    # `gate` is not on PATH outside the venv: the tour says where it is.
    for command in commands:
        assert not re.match(r"^(\S+=\S+ )*gate ", command), command
    claim = next(command for command in commands if "/claim" in command)
    assert "Content-Type: application/json" in claim


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_example_spec_parses(path: Path) -> None:
    spec = parse_spec(json.loads(path.read_text()))
    assert f"{spec.id}" in path.read_text()


def _find(value: Any, key: str) -> tuple[bool, Any]:
    """`key` at the shallowest level of a JSON document (breadth first)."""
    queue = [value]
    while queue:
        item = queue.pop(0)
        if isinstance(item, dict):
            if key in item:
                return True, item[key]
            queue.extend(item.values())
        elif isinstance(item, list):
            queue.extend(item)
    return False, None


def agrees(shown: str, output: str) -> None:
    """Every `"key": value` the README shows is in the output, with that value unless the
    README elides it (…) or it differs on every run."""
    pairs = PAIR.findall(shown)
    if not pairs:
        return
    document = json.loads(output)
    for key, literal in pairs:
        found, value = _find(document, key)
        assert found, f"{key!r} missing from {output[:500]}"
        if "…" in literal or key in VOLATILE:
            continue
        assert value == json.loads(literal), f"{key}: README {literal}, got {value!r}"


class Session:
    """One bash, fed one command at a time, stdout and stderr together."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process

    async def run(self, command: str) -> tuple[int, str]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{command}\nprintf '\\n{MARKER}%s\\n' \"$?\"\n".encode())
        await self.process.stdin.drain()
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.process.stdout.readline(), STEP_TIMEOUT_S)
            assert raw, f"bash ended during {command!r}: {''.join(lines)}"
            line = raw.decode()
            if line.startswith(MARKER):
                return int(line[len(MARKER) :]), "".join(lines).strip()
            lines.append(line)

    async def environment(self, path: Path) -> dict[str, str]:
        code, _ = await self.run(f"env -0 > {path}")
        assert code == 0
        return _environment_file(path)


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[Session]:
    process = await asyncio.create_subprocess_exec(
        "bash",
        "--noprofile",
        "--norc",
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("GATE_")},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield Session(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _environment_file(path: Path) -> dict[str, str]:
    entries = path.read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def _start(command: str, environment: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`command` (the tour's `... &` line without the `&`) in a process group of its own."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            ["bash", "-c", f"exec {command.rstrip().removesuffix('&')}"],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


@pytest.mark.slow  # a gate, its Redis and nine commands: 2.4-4.2 s on two cores
async def test_readme_tour_runs_as_written(session: Session, tmp_path: Path) -> None:
    steps = tour_steps(README.read_text())
    ports = {8080: free_port(), 8081: free_port(), 8082: free_port()}
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    # The tour's gate: its own Redis and data dir, on free ports.
    setup = [
        f"export GATE_REDIS_URL={redis.url} GATE_DATA_DIR={tmp_path / 'gate-data'}",
        f"export GATE_PORT={ports[8080]} GATE_ADMIN_PORT={ports[8081]}",
        f"export GATE_CORE_PORT={ports[8082]} GATE_ADMIN_URL=http://127.0.0.1:{ports[8081]}",
    ]
    gate: subprocess.Popen[bytes] | None = None
    gate_log = tmp_path / "gate.log"
    try:
        for line in setup:
            assert (await session.run(line))[0] == 0
        for step in steps:
            command = step.command
            for shown, port in ports.items():
                command = command.replace(f"localhost:{shown}", f"localhost:{port}")
            if command.rstrip().endswith("&"):
                # Run by the test, so that it is stopped by its pid at the end.
                environment = await session.environment(tmp_path / "env")
                gate = _start(command, environment, gate_log)
                continue
            code, output = await session.run(command)
            # A status may still say waiting: poll again, as a customer would.
            deadline = asyncio.get_running_loop().time() + 10
            while '"state":"waiting"' in output.replace(" ", "") and "/status" in command:
                assert asyncio.get_running_loop().time() < deadline, output
                await asyncio.sleep(0.1)
                code, output = await session.run(command)
            assert code == 0, f"{step.command}\n{output}"
            agrees(step.shown, output)
        assert gate is not None and gate.poll() is None, _read(gate_log)
        serve = next(step for step in steps if step.command.rstrip().endswith("&"))
        for event in re.findall(r"event=\w+", serve.shown):
            if event != "event=embedded_redis":  # the test gave it a Redis of its own
                assert event in _read(gate_log), event
    finally:
        if gate is not None:
            _stop(gate)
        redis.stop()
    assert "Traceback" not in _read(gate_log)
