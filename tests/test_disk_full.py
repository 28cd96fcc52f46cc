"""A full disk under the segments directory, and under the data dir at start.

The sealer moves sealed entries older than the newest `audit_keep_in_redis` to segment
files. Here that directory is a 3 MiB tmpfs filled to the last byte: no entry may leave
Redis before its file is written and fsynced; customers keep being served (what they are
answered is durable in Redis; the files are the archive of what is already sealed), every
campaign keeps being sealed, the failure is one WARNING line a minute and a metric, not a
line a round; receipts of sealed entries still verify. Once space is freed the moves catch
up by themselves and the export verifies.

At start, a full data dir is a clear CLI error (exit 2), not a traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gate.audit.export import export_chunks
from gate.audit.format import load_public_keys
from gate.audit.receipts import verify_receipt_proof
from gate.audit.store import AuditStore, segments_root
from gate.audit.verify import verify_lines
from gate.config import Config
from gate.http.admin import create_admin_app
from gate.http.public import create_public_app
from gate.room.keys import CampaignKeys
from gate.service import Gate, running_gate
from tests.helpers import (
    ADMIN_TOKEN,
    as_holder,
    assert_clean_error,
    create_campaign,
    gate_cli,
    wait_for,
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
    pytest.mark.slow,
]

KEEP = 10
CAMPAIGNS = ("a-first", "b-second")


def _mount(directory: Path, size: str = "3m") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def _umount(directory: Path) -> None:
    subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)


def _fill(directory: Path) -> Path:
    """Write a ballast file until the file system has not one byte left."""
    ballast = directory / "ballast"
    with open(ballast, "wb", buffering=0) as fh:
        block = b"\0" * 65536
        while True:
            try:
                fh.write(block)
            except OSError:
                break
        while True:
            try:
                fh.write(b"\0")
            except OSError:
                break
    return ballast


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "small"
    _mount(directory)
    try:
        yield directory
    finally:
        _umount(directory)


@pytest.fixture
async def served(
    config: Config, small_disk: Path, aiohttp_client: Any
) -> AsyncIterator[tuple[Gate, Any, Any]]:
    cfg = dataclasses.replace(
        config, data_dir=small_disk, audit_keep_in_redis=KEEP, seal_interval_ms=50
    )
    async with running_gate(cfg) as gate:
        await gate.wait_ready()
        public = await aiohttp_client(create_public_app(gate))
        admin = await aiohttp_client(
            create_admin_app(gate), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        yield gate, public, admin


async def _bounds(gate: Gate, campaign: str) -> tuple[int, int, int]:
    """(entries trimmed from Redis, entries in the log, entries sealed)."""
    store = AuditStore(gate.redis, campaign, segments_root(gate.config))
    trimmed, size = await store.bounds()
    latest = await store.latest_checkpoint()
    return trimmed, size, latest["size"] if latest else 0


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name} in:\n{text}")


async def test_a_full_segments_disk_keeps_every_entry_and_catches_up(
    served: tuple[Gate, Any, Any], small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate, public, admin = served
    caplog.set_level(logging.INFO, logger="gate")
    for campaign in CAMPAIGNS:
        await create_campaign(admin, campaign)

    holders: dict[int, dict[str, Any]] = {}  # seq -> what its receipt request sends

    async def join_all(prefix: str, count: int) -> list[int]:
        seqs = []
        for n in range(count):
            for campaign in CAMPAIGNS:
                r = await public.post(
                    f"/q/{campaign}/join", headers={"X-Customer-Id": f"{prefix}{n}"}
                )
                assert r.status == 201, await r.text()
                if campaign == CAMPAIGNS[0]:
                    body = await r.json()
                    seqs.append(body["seq"])
                    holders[body["seq"]] = as_holder(f"{prefix}{n}", body["ticket"])
        return seqs

    # Some entries move while there is room: the directory and its files exist.
    await join_all("early", 30)

    async def moved() -> bool:
        return all([(await _bounds(gate, c))[0] > 0 for c in CAMPAIGNS])

    await wait_for(moved, 10, "the first entries moved to segment files")
    before = {c: await _bounds(gate, c) for c in CAMPAIGNS}

    ballast = _fill(small_disk)
    caplog.clear()
    full_since = time.monotonic()
    seqs = await join_all("late", 60)

    async def sealed_everything() -> bool:
        for c in CAMPAIGNS:
            _, size, sealed = await _bounds(gate, c)
            if sealed < size:
                return False
        return True

    # Every campaign goes on being sealed, the second as well as the first.
    await wait_for(sealed_everything, 10, "every campaign sealed while the disk is full")
    # A few more rounds of failed moves (each would be a line before).
    await wait_for(lambda: _after(full_since, 3.0), 10, "3 s with the disk full")
    during = {c: await _bounds(gate, c) for c in CAMPAIGNS}
    for c in CAMPAIGNS:
        trimmed, size, sealed = during[c]
        # Nothing left Redis without its file: the segment files hold 1..trimmed (a
        # write may still fit in what a failed one freed), and Redis every entry after.
        store = AuditStore(gate.redis, c, segments_root(gate.config))
        covered = 0
        for segment in await store.segments():
            assert segment.first <= covered + 1, (c, covered, segment)
            covered = max(covered, segment.last)
        assert covered >= trimmed >= before[c][0], (c, covered, before[c], during[c])
        llen = int(await gate.redis.llen(CampaignKeys(c).audit))
        assert llen == size - trimmed, (c, llen, during[c])
        assert sealed == size
        assert size - trimmed > KEEP + KEEP // 4 + 1, (c, during[c])  # held back, not moved
    assert (await public.get("/readyz")).status == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    full_s = time.monotonic() - full_since
    print(f"\n{len(warnings)} warning lines in {full_s:.1f} s: {warnings[:3]}")
    left = await asyncio.to_thread(lambda: list(small_disk.rglob(".*.tmp")))
    assert not left, f"a failed write left its temporary file: {left}"
    assert warnings and all("event=segments_write_failed" in w for w in warnings), warnings
    assert len(warnings) <= 2, warnings  # one per campaign a minute
    assert "errno=ENOSPC" in warnings[0]
    metrics = await (await public.get("/metrics")).text()
    assert _metric(metrics, "fairgate_segments_write_failing") == 1.0
    assert _metric(metrics, "fairgate_segments_write_errors_total") >= 1

    # A sealed customer's receipt and its inclusion proof still verify.
    keys = load_public_keys(gate.keys.public_keys())
    for seq in (seqs[0], seqs[-1]):
        r = await public.get(f"/q/{CAMPAIGNS[0]}/receipt/{seq}", **holders[seq])
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()

        async def proven(seq: int = seq, answer: dict[str, Any] = answer) -> bool:
            r = await public.get(f"/q/{CAMPAIGNS[0]}/receipt/{seq}", **holders[seq])
            answer.update(await r.json())
            return answer.get("inclusion") is not None

        await wait_for(proven, 10, f"receipt {seq} with its proof")
        assert verify_receipt_proof(answer, keys), seq

    # Space again: the moves catch up without new entries.
    ballast.unlink()
    freed = time.monotonic()

    async def caught_up() -> bool:
        for c in CAMPAIGNS:
            trimmed, _, sealed = await _bounds(gate, c)
            if trimmed < sealed - KEEP - KEEP // 4 - 1:
                return False
        return True

    await wait_for(caught_up, 15, "the moves to catch up once space is freed")
    caught_up_s = time.monotonic() - freed

    async def not_failing() -> bool:
        metrics = await (await public.get("/metrics")).text()
        return _metric(metrics, "fairgate_segments_write_failing") == 0.0

    await wait_for(not_failing, 5, "fairgate_segments_write_failing back to 0")
    recovered = [r.getMessage() for r in caplog.records if "segments_write_recovered" in r.message]
    assert len(recovered) == len(CAMPAIGNS), recovered
    for c in CAMPAIGNS:
        store = AuditStore(gate.redis, c, segments_root(gate.config))
        public_keys = gate.keys.public_keys()
        lines = b"".join([chunk async for chunk in export_chunks(store, public_keys)]).splitlines()
        # raises VerificationFailed, naming the first bad entry, on a bad log
        report = verify_lines(lines, public_keys, require_sealed=True)
        _, size, _ = await _bounds(gate, c)
        assert report.entries == size and report.sealed == size, (c, size, report)
    print(
        f"\ndisk full: {len(warnings)} warning lines in {full_s:.1f} s, entries kept in Redis "
        f"{ {c: during[c][1] - during[c][0] for c in CAMPAIGNS} }, readyz 200; "
        f"caught up {caught_up_s:.2f} s after space was freed"
    )


async def _after(since: float, seconds: float) -> bool:
    return time.monotonic() - since >= seconds


@pytest.mark.parametrize("what", ["keys", "lock"])
async def test_a_full_data_dir_at_start_is_a_clear_error(
    small_disk: Path, keys_file: Path, what: str
) -> None:
    """`gate serve` on a data dir with no byte left: the pid it writes into its lock, or
    the keys file it would generate, cannot be written (before: exit 1, a traceback)."""
    data = small_disk / "data"
    data.mkdir()
    if what == "keys":
        # A lock file that already holds a page: truncated, it frees just what the pid
        # needs, so the start gets as far as the keys file.
        (data / "gate.lock").write_bytes(b"0" * 4096)
    _fill(small_disk)
    env = {
        "GATE_REDIS_URL": "",
        "GATE_DATA_DIR": str(data),
        "GATE_PORT": "0",
        "GATE_ADMIN_PORT": "0",
        "GATE_CORE_PORT": "0",
    }
    if what == "lock":
        env["GATE_SIGNING_KEYS"] = str(keys_file)
    result = await gate_cli("serve", env=env)
    line = assert_clean_error(result, "disk_full")
    assert str(data if what == "lock" else data / "keys.json") in line, line
    assert not list(data.glob("*.tmp")), "a half-written keys file was left"
