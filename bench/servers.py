"""The servers a benchmark run starts for itself, on 127.0.0.1 and free ports only.

`GateServer` runs `gate serve` as a child process (the environment is set the way
tests/helpers.GateProcess sets it); `HelloServer` runs the reference app (bench/hello.py).
Both are ready only when every worker has its own listening socket, so that a load
generator that opens its connections at once spreads them over all the workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.load import REPO_ROOT, child_env
from gate.config import load_config
from gate.redis_server import free_port
from gate.signing import generate_digest_document, write_keys

ADMIN_TOKEN = "bench-admin-token-0123456789"
HOST = "127.0.0.1"


def listening_sockets(port: int) -> int | None:
    """How many sockets listen on 127.0.0.1/0.0.0.0:port (Linux /proc); None if unknown."""
    try:
        text = Path("/proc/net/tcp").read_text()
    except OSError:
        return None
    wanted = f":{port:04X}"
    count = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[1].endswith(wanted) and fields[3] == "0A":
            count += 1
    return count


class _Child:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv,
                env=env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            tail = (
                self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            )
            raise RuntimeError(f"{self.name} exited: {tail}")

    async def wait_listening(self, port: int, workers: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            count = listening_sockets(port)
            if count is None or count >= workers:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {count}/{workers} workers listening")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


async def _wait_http_ok(url: str, timeout_s: float, child: _Child) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            child.check_alive()
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name}: {url} not ready after {timeout_s}s")
            await asyncio.sleep(0.05)


class GateServer(_Child):
    """`gate serve --workers N` against the benchmark's own Redis."""

    def __init__(
        self,
        redis_url: str,
        data_dir: Path,
        keys_file: Path,
        workers: int,
        *,
        metrics: bool = True,
        apart: bool = False,
        shed_lag_ms: int = 0,
    ) -> None:
        # metrics=False: request-path metrics off (config `metrics`), the reference of the
        # metrics-cost row. apart: a data dir of its own (each gate has a metrics folder).
        suffix = ("-metrics-on" if metrics else "-metrics-off") if apart else ""
        if apart:
            data_dir = data_dir / suffix.lstrip("-")
            data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            f"gate(workers={workers}{suffix})", data_dir / f"gate-w{workers}{suffix}.log"
        )
        self.workers = workers
        self.port = free_port()
        self.admin_port = free_port()
        self.core_port = free_port()
        # Signing keys given: the digest key must be given too (gate/service.load_keys).
        digest_file = keys_file.with_name("digest-keys.json")
        if not digest_file.exists():
            write_keys(digest_file, generate_digest_document())
        self.env = child_env(
            {
                "GATE_REDIS_URL": redis_url,
                "GATE_HOST": HOST,
                "GATE_PORT": str(self.port),
                "GATE_ADMIN_HOST": HOST,
                "GATE_ADMIN_PORT": str(self.admin_port),
                "GATE_CORE_HOST": HOST,
                "GATE_CORE_PORT": str(self.core_port),
                "GATE_ADMIN_TOKENS": f"bench:{ADMIN_TOKEN}",
                "GATE_SIGNING_KEYS": str(keys_file),
                "GATE_DIGEST_KEYS": str(digest_file),
                "GATE_DATA_DIR": str(data_dir),
                "GATE_WORKERS": str(workers),
                "GATE_COOKIE_SECURE": "false",
                "GATE_METRICS": "true" if metrics else "false",
                "GATE_SHED_LAG_MS": str(shed_lag_ms),
            }
        )

    def effective_config(self) -> dict[str, Any]:
        """The settings that shape the hot paths, as the child process reads them."""
        config = load_config(None, env=self.env)
        return {
            name: getattr(config, name)
            for name in (
                "workers",
                "join_batch_window_ms",
                "join_batch_max",
                "refresh_interval_ms",
                "admit_interval_ms",
                "redis_wait_replicas",
                "log_level",
            )
        }

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    async def start(self, timeout_s: float = 60.0) -> None:
        self._spawn([sys.executable, "-m", "gate", "serve"], self.env)
        await self.wait_listening(self.port, self.workers, timeout_s)
        await self.wait_listening(self.admin_port, self.workers, timeout_s)
        await _wait_http_ok(self.url + "/readyz", timeout_s, self)


class HelloServer(_Child):
    """The aiohttp hello-world reference with the same number of workers."""

    def __init__(self, data_dir: Path, workers: int) -> None:
        super().__init__(f"hello(workers={workers})", data_dir / f"hello-w{workers}.log")
        self.workers = workers
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self, timeout_s: float = 60.0) -> None:
        argv = [sys.executable, "-m", "bench.hello", "--port", str(self.port)]
        self._spawn([*argv, "--workers", str(self.workers)], child_env())
        await self.wait_listening(self.port, self.workers, timeout_s)
        await _wait_http_ok(self.url + "/", timeout_s, self)


class Admin:
    """Just enough of the admin API to set a benchmark up."""

    def __init__(self, session: aiohttp.ClientSession, gate: GateServer) -> None:
        self.session = session
        self.gate = gate
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.gate.admin_url + path
        async with self.session.post(url, json=body or {}, headers=self.headers) as response:
            data: dict[str, Any] = await response.json(content_type=None)
            if response.status >= 300:
                raise RuntimeError(f"POST {path}: {response.status} {data}")
            return data

    async def create(self, spec: dict[str, Any]) -> None:
        await self._post("/admin/campaigns", spec)

    async def pause(self, campaign: str) -> None:
        await self._post(f"/admin/campaigns/{campaign}/pause")

    async def resume(self, campaign: str) -> None:
        await self._post(f"/admin/campaigns/{campaign}/resume")

    async def close(self, campaign: str) -> None:
        await self._post(f"/admin/campaigns/{campaign}/close")
