"""`gate` as an operator meets it (issue 14): help and an example for every command and
option, `--version`, `--output table`, a confirmation before what cannot be undone, a quiet
exit on a closed pipe, one clear line for a data dir or port in use, an unreachable Redis
named and logged at a bounded rate, and log lines that are valid logfmt (or JSON).

Everything runs the installed `gate` (.venv/bin/gate) as a real process, against the
session's private redis-server."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from importlib.metadata import version
from pathlib import Path

import aiohttp
import pytest

from gate.cli import build_parser
from gate.redis_server import free_port
from tests.helpers import ADMIN_TOKEN, CORE_TOKEN, GateProcess, Result, spec, wait_for

GATE = str(Path(sys.executable).parent / "gate")


def clean_env(**more: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATE_")}
    return {**base, **more}


async def run_gate(*args: str, env: dict[str, str] | None = None, stdin: bytes = b"") -> Result:
    process = await asyncio.create_subprocess_exec(
        GATE,
        *args,
        env=env if env is not None else clean_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def one_error_line(result: Result, code: str, exit_code: int = 2) -> str:
    assert result.code == exit_code, result
    assert "Traceback" not in result.err + result.out, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"gate: error: {code}: "), lines[0]
    return lines[0]


def final_error_line(result: Result, code: str) -> str:
    """Exit 2 and no traceback; the last line `gate: error: CODE: ...`, the only such line,
    after any log lines that start-up wrote before it (each valid logfmt)."""
    assert result.code == 2, result
    assert "Traceback" not in result.err + result.out, result.err
    *logged, last = result.err.strip().splitlines()
    assert last.startswith(f"gate: error: {code}: "), result.err
    assert_logfmt("\n".join(logged))
    return last


# -- a strict logfmt parser -------------------------------------------------------------

KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
BARE = re.compile(r'[^\s"=\\\x00-\x1f\x7f]+')
ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def parse_logfmt(line: str) -> dict[str, str]:
    """`key=value` pairs separated by one space; a value is bare (no space, quote, `=`,
    backslash or control character) or double-quoted with \\" \\\\ \\n \\r \\t \\uXXXX
    escapes; every key once. Anything else raises ValueError."""
    fields: dict[str, str] = {}
    i = 0
    while True:
        key = KEY.match(line, i)
        if key is None or line[key.end() : key.end() + 1] != "=":
            raise ValueError(f"no key=value at column {i}: {line!r}")
        name = key.group()
        if name in fields:
            raise ValueError(f"key {name} twice: {line!r}")
        i = key.end() + 1
        if line[i : i + 1] == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= len(line):
                    raise ValueError(f"unterminated quote: {line!r}")
                c = line[i]
                if c == '"':
                    i += 1
                    break
                if ord(c) < 0x20 or c == "\x7f":
                    raise ValueError(f"raw control character in a value: {line!r}")
                if c == "\\":
                    nxt = line[i + 1 : i + 2]
                    if nxt in ESCAPES:
                        chars.append(ESCAPES[nxt])
                        i += 2
                    elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", line[i + 2 : i + 6]):
                        chars.append(chr(int(line[i + 2 : i + 6], 16)))
                        i += 6
                    else:
                        raise ValueError(f"bad escape at column {i}: {line!r}")
                    continue
                chars.append(c)
                i += 1
            fields[name] = "".join(chars)
        else:
            bare = BARE.match(line, i)
            if bare is None:
                raise ValueError(f"empty or bad bare value at column {i}: {line!r}")
            fields[name] = bare.group()
            i = bare.end()
        if i == len(line):
            return fields
        if line[i] != " " or line[i + 1 : i + 2] == " ":
            raise ValueError(f"pairs must be separated by one space, column {i}: {line!r}")
        i += 1


def test_the_logfmt_parser_is_strict() -> None:
    assert parse_logfmt('a=1 b="x y" c="q\\"\\\\\\n"') == {"a": "1", "b": "x y", "c": 'q"\\\n'}
    for bad in (
        "a=x y",  # free word
        "a=b=c",
        'a="open',
        "a=1  b=2",
        "a=",
        "a=1 a=2",
        'a="\\q"',
        "ts=2026-11-30 23:12:34,739 level=INFO",  # what gate logged before
        "event=seal_error detail=the gate is temporarily unavailable",
    ):
        with pytest.raises(ValueError):
            parse_logfmt(bad)


def assert_logfmt(text: str) -> list[dict[str, str]]:
    records = []
    for line in text.splitlines():
        fields = parse_logfmt(line)
        assert {"ts", "level", "logger"} <= set(fields), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["ts"]), line
        records.append(fields)
    return records


def test_a_log_record_with_awkward_values_is_one_logfmt_line() -> None:
    """Through the formatter `gate serve` installs: values with spaces, quotes, `=`,
    backslashes, newlines and Hangul stay one value each; free words become `msg`."""
    import logging

    from gate.logs import formatter

    awkward = 'a b "c" d=e \\ f\nsecond line 특판'

    def line(fmt: str, msg: str, *args: object, exc: bool = False) -> str:
        record = logging.LogRecord("gate.test", logging.WARNING, __file__, 1, msg, args, None)
        if exc:
            try:
                raise RuntimeError("boom\nline two")
            except RuntimeError:
                record.exc_info = sys.exc_info()
        text = formatter(fmt).format(record)
        assert "\n" not in text, text
        return text

    fields = parse_logfmt(line("logfmt", "event=x detail=%s count=%d", awkward, 3))
    assert fields["event"] == "x" and fields["detail"] == awkward and fields["count"] == "3"
    assert fields["level"] == "WARNING" and fields["logger"] == "gate.test"
    fields = parse_logfmt(
        line("logfmt", "event=gave_up deaths=%d window_s=%d: the gate stops", 6, 60)
    )
    assert fields["window_s"] == "60" and fields["msg"] == "the gate stops"
    fields = parse_logfmt(line("logfmt", "plain words from a library %s", "x=y"))
    assert fields["msg"] == "plain words from a library x=y"
    fields = parse_logfmt(line("logfmt", "event=unhandled route=%s", "/q", exc=True))
    assert "RuntimeError: boom\nline two" in fields["exc"]
    fields = parse_logfmt(
        line(
            "logfmt",
            'event=no_tokens admin=%s:%d refuses="every /admin/ request (401 x)" fix="set A=b:c"',
            "127.0.0.1",
            8081,
        )
    )
    assert fields["admin"] == "127.0.0.1:8081" and fields["fix"] == "set A=b:c"
    assert fields["refuses"] == "every /admin/ request (401 x)"
    fields = parse_logfmt(line("logfmt", "event=empty value=%s", ""))
    assert fields["value"] == ""
    as_json = json.loads(line("json", "event=x detail=%s", awkward))
    assert (
        as_json["event"] == "x" and as_json["detail"] == awkward and as_json["level"] == "WARNING"
    )


# -- help, version, output ------------------------------------------------------------


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str, argparse.ArgumentParser]]:
    """Every (command path, parser, the help its parent lists it with, that parent)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help or "" for a in action._choices_actions}
            for name, child in action.choices.items():
                yield (*path, name), child, listed.get(name, ""), parser
                yield from walk(child, (*path, name))


def test_every_command_and_option_has_help_and_an_example() -> None:
    root = build_parser()
    commands = list(walk(root))
    assert len(commands) > 20
    missing: list[str] = []
    for path, parser, listed, parent in commands:
        name = " ".join(path)
        if not listed.strip():
            missing.append(f"{name}: no help in its parent's list")
        if not (parser.description or "").strip():
            missing.append(f"{name}: no description")
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        epilog = parser.epilog or ""
        if leaf and "example" not in epilog:
            missing.append(f"{name}: no example")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            what = "/".join(action.option_strings) or action.dest
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {what}: no help")
            # every option of a command is shown in one of its examples (the admin API's
            # options, which every campaign and audit action takes, in the group's)
            if (
                leaf
                and action.option_strings
                and not any(
                    re.search(rf"{re.escape(option)}(?![\w-])", text)
                    for option in action.option_strings
                    for text in (epilog, parent.epilog or "")
                )
            ):
                missing.append(f"{name} {what}: in no example")
            if leaf and not action.option_strings and f"gate {name}" not in epilog:
                missing.append(f"{name} {what}: no example of the command")
    for action in root._actions:
        if action.option_strings and action.help in (None, "", argparse.SUPPRESS):
            missing.append(f"gate {'/'.join(action.option_strings)}: no help")
    assert "exit codes" in (root.epilog or "").lower(), root.epilog
    assert not missing, "\n".join(missing)


async def test_help_of_every_command_runs_and_shows_its_example() -> None:
    paths = [path for path, _, _, _ in walk(build_parser())]
    results = await asyncio.gather(*(run_gate(*path, "--help") for path in paths))
    for path, result in zip(paths, results, strict=True):
        assert result.code == 0 and not result.err, (path, result)
        assert f"usage: gate {' '.join(path)}" in result.out, (path, result.out[:200])
    root = await run_gate("--help")
    assert root.code == 0 and "exit codes" in root.out.lower(), root
    for code in ("0", "1", "2", "130"):
        assert re.search(rf"^\s+{code}\s", root.out, re.M), root.out


async def test_version() -> None:
    result = await run_gate("--version")
    assert result.code == 0, result
    assert result.out.strip() == f"gate (fairgate) {version('fairgate')}", result.out


@pytest.fixture
async def served(redis_url: str, keys_file: Path, tmp_path: Path) -> AsyncIterator[GateProcess]:
    async with GateProcess(redis_url, tmp_path / "gate", keys_file) as process:
        yield process


def admin_env(process: GateProcess) -> dict[str, str]:
    return clean_env(GATE_ADMIN_URL=process.admin_url, GATE_ADMIN_TOKEN=ADMIN_TOKEN)


async def create(process: GateProcess, campaign: str, tmp_path: Path) -> None:
    spec_file = tmp_path / f"{campaign}.json"
    spec_file.write_text(json.dumps(spec(campaign, rate_per_s=1000, burst=1000)))
    created = await run_gate("campaign", "create", str(spec_file), env=admin_env(process))
    assert created.code == 0, created


async def test_output_table_and_json(served: GateProcess, tmp_path: Path) -> None:
    env = admin_env(served)
    await create(served, "tab-1", tmp_path)
    await create(served, "tab-2", tmp_path)
    listed = await run_gate("campaign", "list", "--output", "json", env=env)
    assert listed.code == 0 and [c["id"] for c in listed.json()["campaigns"]] == [
        "tab-1",
        "tab-2",
    ]
    table = await run_gate("campaign", "list", "-o", "table", env=env)
    assert table.code == 0, table
    lines = table.out.splitlines()
    header = lines[0].split()
    assert header[0] == "ID" and "STATE" in header, table.out
    assert [line.split()[0] for line in lines[2:]] == ["tab-1", "tab-2"], table.out
    stats = await run_gate("campaign", "stats", "tab-1", "--output", "table", env=env)
    assert stats.code == 0, stats
    assert re.search(r"^joined\s+0$", stats.out, re.M), stats.out
    assert re.search(r"^state\s+open$", stats.out, re.M), stats.out
    query = await run_gate("audit", "query", "tab-1", "-o", "table", env=env)
    assert query.code == 0 and query.out.splitlines()[0].split()[0] == "INDEX", query
    # the admin API's options go after the action too (kubectl's habit), and one given
    # before it is not undone by the action
    after = await run_gate(
        "campaign", "list", "--admin-url", served.admin_url, "--token", ADMIN_TOKEN
    )
    assert after.code == 0 and len(after.json()["campaigns"]) == 2, after
    before = await run_gate(
        "audit",
        "--admin-url",
        served.admin_url,
        "query",
        "tab-1",
        env=clean_env(GATE_ADMIN_TOKEN=ADMIN_TOKEN),
    )
    assert before.code == 0 and before.json()["campaign"] == "tab-1", before
    bad = await run_gate("campaign", "list", "--output", "yaml", env=env)
    assert bad.code == 2 and "invalid choice: 'yaml'" in bad.err, bad


# -- irreversible actions ---------------------------------------------------------------


async def state_of(process: GateProcess, campaign: str) -> str:
    shown = await run_gate("campaign", "show", campaign, env=admin_env(process))
    assert shown.code == 0, shown
    state: str = shown.json()["state"]
    return state


def run_on_a_tty(args: list[str], env: dict[str, str], answer: bytes) -> tuple[int, str]:
    """`gate ARGS` with a terminal as stdin (a pty), answering its question with `answer`."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [GATE, *args],
            env=env,
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=follower,
            start_new_session=True,
        )
        os.close(follower)
        seen = b""
        deadline = time.monotonic() + 30
        while b"[y/N]" not in seen:
            assert time.monotonic() < deadline, seen
            seen += os.read(leader, 1024)
        os.write(leader, answer)
        out, _ = process.communicate(timeout=30)
        while True:  # what it wrote to the terminal after the answer
            try:
                more = os.read(leader, 1024)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not more:
                break
            seen += more
        return process.returncode, seen.decode() + out.decode()
    finally:
        os.close(leader)


async def test_irreversible_actions_ask_first(served: GateProcess, tmp_path: Path) -> None:
    env = admin_env(served)
    await create(served, "ask", tmp_path)
    # no terminal to ask on, no --yes: refused, nothing done
    refused = await run_gate("campaign", "close", "ask", env=env)
    line = one_error_line(refused, "confirmation_needed")
    assert "--yes" in line and "ask" in line, line
    assert await state_of(served, "ask") == "open"
    for action in ("block", "revoke"):
        refused = await run_gate("campaign", action, "ask", "--customer", "kim", env=env)
        one_error_line(refused, "confirmation_needed")
    # on a terminal: asked; anything but yes leaves it open
    code, seen = await asyncio.to_thread(run_on_a_tty, ["campaign", "close", "ask"], env, b"n\n")
    assert code == 2 and "cannot be undone" in seen and "not confirmed" in seen, seen
    assert await state_of(served, "ask") == "open"
    code, seen = await asyncio.to_thread(run_on_a_tty, ["campaign", "close", "ask"], env, b"y\n")
    assert code == 0, seen
    assert await state_of(served, "ask") == "closed"
    await create(served, "ask-2", tmp_path)
    closed = await run_gate("campaign", "close", "ask-2", "--yes", env=env)
    assert closed.code == 0 and closed.json()["state"] == "closed", closed


async def test_keys_generate_does_not_overwrite_a_key_file_unasked(tmp_path: Path) -> None:
    out = tmp_path / "keys.json"
    first = await run_gate("keys", "generate", "--out", str(out))
    assert first.code == 0, first
    before = out.read_bytes()
    again = await run_gate("keys", "generate", "--out", str(out))
    assert "--yes" in one_error_line(again, "confirmation_needed")
    assert out.read_bytes() == before
    forced = await run_gate("keys", "generate", "--out", str(out), "--yes")
    assert forced.code == 0 and out.read_bytes() != before, forced


# -- a closed pipe ----------------------------------------------------------------------


def closed_pipe_run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """`gate ARGS` writing into a pipe nobody reads any more (its read end closed before
    the command writes): what `gate ... | head -1` does once head has its line."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = subprocess.run(
            [GATE, *args], env=env, stdout=write_end, stderr=subprocess.PIPE, timeout=60
        )
    finally:
        os.close(write_end)
    return process.returncode, process.stderr.decode()


async def test_a_closed_pipe_ends_the_command_quietly(served: GateProcess, tmp_path: Path) -> None:
    env = admin_env(served)
    await create(served, "pipe", tmp_path)
    async with aiohttp.ClientSession() as session:
        for i in range(400):  # an export and a query well beyond a pipe's 64 KiB
            r = await session.post(
                f"{served.url}/q/pipe/join", headers={"X-Customer-Id": f"cust-{i:04d}"}
            )
            assert r.status == 201, await r.text()
    for args in (
        ["campaign", "list"],
        ["campaign", "stats", "pipe"],
        ["campaign", "stats", "pipe", "-o", "table"],
        ["audit", "query", "pipe"],
        ["audit", "export", "pipe"],
        ["--help"],
        ["keys", "generate"],
    ):
        code, err = await asyncio.to_thread(closed_pipe_run, args, env)
        assert code == 0 and err == "", (args, code, err)
    # a verdict is not lost with the reader: a failed verify stays exit 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    code, err = await asyncio.to_thread(closed_pipe_run, ["audit", "verify", str(bad)], env)
    assert code == 1 and err.startswith("gate: error: verify_failed: line 1"), (code, err)
    # and through a shell, as an operator types it
    for command in ("audit query pipe", "audit export pipe", "campaign list -o table"):
        shell = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            f'set -o pipefail; "{GATE}" {command} | head -1',
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(shell.communicate(), 60)
        assert shell.returncode == 0 and err == b"", (command, shell.returncode, err)
        assert len(out.splitlines()) == 1, out


# -- gate serve: the data dir, the ports, an unreachable Redis, the log ----------------


def serve_env(tmp_path: Path, keys_file: Path, **more: str) -> dict[str, str]:
    return clean_env(
        GATE_PORT=str(free_port()),
        GATE_ADMIN_PORT=str(free_port()),
        GATE_CORE_PORT=str(free_port()),
        GATE_ADMIN_TOKENS=f"ops:{ADMIN_TOKEN}",
        GATE_CORE_TOKENS=f"core:{CORE_TOKEN}",
        GATE_SIGNING_KEYS=str(keys_file),
        GATE_DATA_DIR=str(tmp_path / "data"),
        GATE_COOKIE_SECURE="false",
        **more,
    )


class Served:
    """`gate serve` as a process with its stderr in a file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str):
        self.env = env
        self.log = log
        self.handle = open(log, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [GATE, "serve", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text()

    async def ready(self) -> None:
        url = f"http://127.0.0.1:{self.env['GATE_PORT']}/readyz"
        async with aiohttp.ClientSession() as session:

            async def answers() -> bool:
                assert self.process.poll() is None, self.text()
                try:
                    async with session.get(url) as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(answers, 30, "gate serve ready", interval_s=0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.handle.close()
        return self.process.returncode


async def test_a_second_serve_on_the_same_data_dir_is_one_line(
    tmp_path: Path, keys_file: Path
) -> None:
    env = serve_env(tmp_path, keys_file)  # no GATE_REDIS_URL: the embedded Redis
    first = Served(env, tmp_path / "first.log")
    try:
        await first.ready()
        second = await run_gate(
            "serve",
            env={**env, "GATE_PORT": str(free_port()), "GATE_ADMIN_PORT": str(free_port())},
        )
        line = one_error_line(second, "data_dir_in_use")
        assert str(first.process.pid) in line, line
        assert first.process.poll() is None  # the first one serves on
    finally:
        assert first.stop() == 0, first.text()
    assert_logfmt(first.text())


@pytest.mark.parametrize("listener", ["public", "admin", "core"])
async def test_a_port_in_use_is_one_line(
    listener: str, redis_url: str, keys_file: Path, tmp_path: Path
) -> None:
    env = serve_env(tmp_path, keys_file, GATE_REDIS_URL=redis_url)
    variable = {"public": "GATE_PORT", "admin": "GATE_ADMIN_PORT", "core": "GATE_CORE_PORT"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env[variable[listener]] = str(port)
        for workers in ("1", "2"):
            result = await run_gate("serve", env={**env, "GATE_WORKERS": workers})
            line = final_error_line(result, "port_in_use")
            assert f"127.0.0.1:{port}" in line and listener in line, line


async def test_an_unreachable_redis_is_named_and_logged_at_a_bounded_rate(
    tmp_path: Path, keys_file: Path
) -> None:
    with socket.socket() as nobody:  # a port that refuses connections
        nobody.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{nobody.getsockname()[1]}"
        env = serve_env(tmp_path, keys_file, GATE_REDIS_URL=f"redis://:secret-pw@{address}/0")
        gate = Served(env, tmp_path / "gate.log")
        try:

            async def named() -> bool:
                assert gate.process.poll() is None, gate.text()
                text = gate.text()  # named, and listening (the gate starts before its socket)
                return f"redis={address}" in text and "event=listening" in text

            await wait_for(named, 20, "a log line naming the Redis address")
            first_seen = time.monotonic()
            # watch it fail closed for 3 s: /readyz 503 all along
            url = f"http://127.0.0.1:{env['GATE_PORT']}/readyz"
            answers: set[int] = set()
            async with aiohttp.ClientSession() as session:

                async def watched() -> bool:
                    async with session.get(url) as r:
                        answers.add(r.status)
                    return time.monotonic() - first_seen >= 3.0

                await wait_for(watched, 10, "3 s of an unreachable Redis", interval_s=0.1)
        finally:
            assert gate.stop() == 0, gate.text()
    assert answers == {503}
    text = gate.text()
    assert "secret-pw" not in text
    records = assert_logfmt(text)
    warnings = [
        r
        for r in records
        if r["level"] in ("WARNING", "ERROR") and r.get("event") != "digest_key_in_signing_file"
    ]
    # before: script_load_retry 5 times a second, naming no address
    assert 1 <= len(warnings) <= 4, text
    unreachable = [r for r in warnings if r.get("event") == "redis_unreachable"]
    assert unreachable and all(r["redis"] == address for r in unreachable), text


async def test_serve_logs_are_logfmt_or_json(
    redis_url: str, keys_file: Path, tmp_path: Path
) -> None:
    env = serve_env(tmp_path, keys_file, GATE_REDIS_URL=redis_url)
    gate = Served(env, tmp_path / "logfmt.log", "--workers", "2")
    try:
        await gate.ready()
        # malformed HTTP: a warning whose detail has spaces and quotes in it
        reader, writer = await asyncio.open_connection("127.0.0.1", int(env["GATE_PORT"]))
        writer.write(b'GET /q "x=y" HTTP/1.1\r\nBad Header\r\n\r\n')
        await writer.drain()
        await reader.read()
        writer.close()

        async def refused_logged() -> bool:
            return "event=http_refused" in gate.text()

        await wait_for(refused_logged, 10, "the malformed request logged")

        async def both_listening() -> bool:  # a worker stopped while starting exits -15
            return gate.text().count("event=listening") == 2

        await wait_for(both_listening, 20, "both workers listening")
    finally:
        assert gate.stop() == 0, gate.text()
    records = assert_logfmt(gate.text())
    assert any(r.get("event") == "listening" for r in records), gate.text()

    env = serve_env(tmp_path, keys_file, GATE_REDIS_URL=redis_url)
    gate = Served(env, tmp_path / "json.log", "--log-format", "json")
    try:
        await gate.ready()
    finally:
        assert gate.stop() == 0, gate.text()
    lines = gate.text().splitlines()
    assert lines, gate.text()
    for line in lines:
        record = json.loads(line)
        assert {"ts", "level", "logger"} <= set(record), line
    assert any(json.loads(line).get("event") == "listening" for line in lines)
