"""`gate serve`: the embedded Redis when no URL is given, then one process per worker.

Workers share the listening ports through SO_REUSEPORT; the parent owns the embedded
Redis and the signing-key file, so every worker signs and verifies with the same keys.

Process safety of the embedded mode:
- the data dir is locked (`gate.lock`) before anything else: a second `gate serve` on it
  stops with `data_dir_in_use` (exit 2) instead of starting a second Redis on the same AOF;
  the embedded Redis inherits the lock, so it holds until that Redis has exited too;
- the embedded Redis and every worker get SIGTERM from the kernel when the parent dies,
  even by kill -9 (Linux; `die_with_parent`);
- a dead embedded Redis is restarted by the parent on the same port and data dir, and
  loads its AOF (`appendfsync always`: nothing acknowledged is lost). While it is down each
  process's cache refresh fails, so `/readyz` answers 503 and the gate fails closed. After
  `MAX_RESTARTS` deaths within `RESTART_WINDOW_S`, or a Redis that does not answer within
  `START_TIMEOUT_S`, the gate stops and exits 1, so that its supervisor (systemd
  `Restart=on-failure`) and an operator take over from a Redis that cannot stay up;
- a running embedded Redis that answers no PING for `embedded_redis_hang_ms` (hung, or
  stopped: its process still exists) is killed and counts as a death, as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import wait as wait_any
from pathlib import Path

from aiohttp import web

from gate.config import Config
from gate.errors import GateError
from gate.http.app import create_app
from gate.http.listener import ListenerRunner
from gate.logs import setup_logging
from gate.metrics import METRICS_DIR_ENV, prepare_folder
from gate.redis_server import RedisServer, die_with_parent, lock_data_dir
from gate.service import load_keys
from gate.signing import load_or_create_keys

log = logging.getLogger("gate.server")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
START_TIMEOUT_S = 30.0
WATCH_INTERVAL_S = 0.1
# How often the keeper PINGs a running embedded Redis, and how long one PING may take.
PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 0.2


class RedisKeeper:
    """Keeps the embedded Redis running: `tick()`, called every `WATCH_INTERVAL_S` from the
    parent's main thread, restarts a dead Redis and returns False once it gives up.

    A process that exists is not proof of a Redis that answers: a stopped (SIGSTOP) or
    wedged one keeps its pid. So the caller also PINGs it every `PROBE_INTERVAL_S`
    (`probe_due`, then `answered`), and a Redis that has not answered for `hang_s` is
    killed (SIGKILL) and counts as a death: restarted on its AOF (nothing acknowledged is
    lost with `appendfsync always`), or the gate gives up as for any other death."""

    def __init__(self, server: RedisServer, hang_s: float = 10.0):
        self.server = server
        self.hang_s = hang_s
        self.deaths: deque[float] = deque()
        self.starting_since: float | None = None
        self.last_answer = time.monotonic()
        self.last_probe = 0.0

    def probe_due(self) -> bool:
        """A running Redis (not one starting) whose last PING is `PROBE_INTERVAL_S` old."""
        return (
            self.starting_since is None
            and time.monotonic() - self.last_probe >= PROBE_INTERVAL_S
            and self.server.alive()
        )

    def answered(self, ok: bool) -> None:
        now = time.monotonic()
        self.last_probe = now
        if ok:
            self.last_answer = now

    def tick(self) -> bool:
        now = time.monotonic()
        code: int | None
        if self.starting_since is not None:
            if self.server.alive() and self.server.answering():
                log.warning(
                    "event=embedded_redis_restarted pid=%s port=%d after_s=%.2f",
                    self.server.pid,
                    self.server.port,
                    now - self.starting_since,
                )
                self.starting_since = None
                self.last_answer = now
                return True
            if self.server.alive() and now - self.starting_since < START_TIMEOUT_S:
                return True
            if self.server.alive():
                log.error("event=embedded_redis_start_timeout port=%d", self.server.port)
                self.server.kill()
                return False
        elif self.server.alive():
            silent_s = now - self.last_answer
            if silent_s < self.hang_s:
                return True
            log.error(
                "event=embedded_redis_hung pid=%s port=%d silent_s=%.1f: killed, to restart",
                self.server.pid,
                self.server.port,
                silent_s,
            )
            self.server.kill()
        code = self.server.process.returncode if self.server.process is not None else -9
        log.error("event=embedded_redis_died code=%s port=%d", code, self.server.port)
        while self.deaths and now - self.deaths[0] > RESTART_WINDOW_S:
            self.deaths.popleft()
        self.deaths.append(now)
        if len(self.deaths) > MAX_RESTARTS:
            log.error(
                "event=embedded_redis_gave_up deaths=%d window_s=%d: the gate stops",
                len(self.deaths),
                RESTART_WINDOW_S,
            )
            return False
        self.server.launch()
        self.starting_since = now
        return True


async def _ping(port: int) -> bool:
    """PING the embedded Redis without holding up the event loop that serves requests."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PING\r\n")
            return (await reader.readline()).startswith(b"+PONG")
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()


async def _keep_redis(keeper: RedisKeeper, stop: asyncio.Event, gave_up: list[bool]) -> None:
    while not stop.is_set():
        await asyncio.sleep(WATCH_INTERVAL_S)
        if keeper.probe_due():
            keeper.answered(await _ping(keeper.server.port))
        if not keeper.tick():
            gave_up.append(True)
            stop.set()


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def run_process(
    config: Config,
    *,
    reuse_port: bool,
    ready: asyncio.Event | None = None,
    keeper: RedisKeeper | None = None,
) -> bool:
    """One gate process: both listeners, until SIGTERM or SIGINT. With a `keeper`, it also
    keeps the embedded Redis; False when it stopped because that Redis could not be kept."""
    stop = asyncio.Event()
    gave_up: list[bool] = []
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    # The app starts the gate and the admin listener, and stops them in its cleanup.
    runner = ListenerRunner(create_app(config, reuse_port=reuse_port), config, listener="public")
    try:
        await runner.setup()  # the admin and core listeners start here
    except OSError as exc:  # taken since check_ports looked
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise _listen_error(f"admin or core listener ({exc})", exc) from None
    try:
        site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port, backlog=4096)
        try:
            await site.start()
        except OSError as exc:
            raise _listen_error(f"public listener: {config.host}:{config.port}", exc) from None
        log.info(
            "event=listening public=%s:%d admin=%s:%d core=%s:%d identity=%s",
            config.host,
            config.port,
            config.admin_host,
            config.admin_port,
            config.core_host,
            config.core_port,
            config.identity,
        )
        if ready is not None:
            ready.set()
        if keeper is not None:
            watch = asyncio.create_task(_keep_redis(keeper, stop, gave_up))
        await stop.wait()
        if keeper is not None:
            watch.cancel()
    finally:
        await runner.cleanup()
    return not gave_up


def _worker(config: Config, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    setup_logging(config.log_level, config.log_format)
    _install_uvloop()
    asyncio.run(run_process(config, reuse_port=True))


@contextlib.contextmanager
def _start_writes(path: Path) -> Iterator[None]:
    """What `gate serve` writes before it serves (the data-dir lock, a generated keys
    file) failing is a clear error naming the path, exit 2, not a traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise GateError(
                f"{path}: no space left on the device: free space (or move data_dir), "
                "then start again",
                code="disk_full",
            ) from None
        raise GateError(
            f"{path}: {exc.strerror or exc}: the gate cannot write there",
            code="data_dir_unwritable",
        ) from None


def check_ports(config: Config) -> None:
    """Every listener's address free, before an embedded Redis starts or a worker is
    spawned: a port in use is one `port_in_use` line (exit 2), not a worker's traceback."""
    for listener, host, port in (
        ("public", config.host, config.port),
        ("admin", config.admin_host, config.admin_port),
        ("core", config.core_host, config.core_port),
    ):
        if port == 0:  # any free port
            continue
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise GateError(
                f"{listener} listener: {host}: {exc.strerror}", code="bad_address"
            ) from None
        for family, kind, proto, _, address in found:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(address)
                except OSError as exc:
                    raise _listen_error(f"{listener} listener: {host}:{port}", exc) from None


def _listen_error(where: str, exc: OSError) -> GateError:
    if exc.errno == errno.EADDRINUSE:
        return GateError(
            f"{where} is in use by another process: stop it, or give this gate another port",
            code="port_in_use",
        )
    return GateError(f"{where}: cannot listen: {exc.strerror or exc}", code="cannot_listen")


def serve(config: Config) -> int:
    setup_logging(config.log_level, config.log_format)
    lock_fd: int | None = None
    embedded: RedisServer | None = None
    if not config.redis_url:
        # Before anything else is written there (the keys file included).
        with _start_writes(Path(config.data_dir)):
            lock_fd = lock_data_dir(Path(config.data_dir))
    try:
        with _start_writes(config.keys_path):
            load_or_create_keys(config.keys_path, create=config.signing_keys is None)
        with _start_writes(config.digest_keys_path):
            load_keys(config)
        check_ports(config)
        if lock_fd is not None:
            embedded = RedisServer(
                Path(config.data_dir) / "redis", die_with_parent=True, keep_fds=(lock_fd,)
            )
            try:
                with _start_writes(embedded.data_dir):
                    embedded.start()
            except RuntimeError as exc:  # it exited, or did not answer in time
                raise GateError(
                    f"the embedded Redis did not start ({exc}); "
                    f"see {embedded.data_dir / 'redis.log'}",
                    code="embedded_redis_failed",
                ) from None
            config = dataclasses.replace(config, redis_url=embedded.url)
            log.info(
                "event=embedded_redis version=%s port=%d pid=%s dir=%s appendfsync=always",
                embedded.version(),
                embedded.port,
                embedded.pid,
                embedded.data_dir,
            )
        keeper = (
            RedisKeeper(embedded, hang_s=config.embedded_redis_hang_ms / 1000)
            if embedded is not None
            else None
        )
        if not config.admin_tokens:
            # Said once, by the parent, once start-up went well: otherwise the first sign
            # is an operator's 401 on the day.
            log.warning(
                'event=no_admin_tokens admin=%s:%d refuses="every /admin/ request (401 '
                'bad_admin_token): no campaign can be created, paused, resumed or closed" '
                'fix="set GATE_ADMIN_TOKENS=name:token (16+ characters) and restart"',
                config.admin_host,
                config.admin_port,
            )
        if config.workers == 1:
            _install_uvloop()
            kept = asyncio.run(run_process(config, reuse_port=False, keeper=keeper))
            return 0 if kept else 1
        return _run_workers(config, keeper)
    finally:
        if embedded is not None:
            embedded.stop()
            sys.stderr.flush()
        if lock_fd is not None:
            os.close(lock_fd)


def _run_workers(config: Config, keeper: RedisKeeper | None) -> int:
    ctx = multiprocessing.get_context("spawn")
    # The workers add up each other's metrics through this folder (gate/metrics.py); the
    # spawned workers inherit the variable. Emptied first: an earlier run's counts are not
    # this one's.
    folder = Path(config.data_dir) / "metrics"
    with _start_writes(folder):
        os.environ[METRICS_DIR_ENV] = str(prepare_folder(folder))

    def spawn(i: int) -> multiprocessing.process.BaseProcess:
        process = ctx.Process(target=_worker, args=(config, os.getpid()), name=f"gate-worker-{i}")
        process.start()
        log.info("event=worker_started name=%s pid=%s", process.name, process.pid)
        return process

    workers = [spawn(i) for i in range(config.workers)]
    stopping = False
    # Workers killed by a signal (the OOM killer, an operator's kill -9, a crash) are
    # replaced, at most MAX_RESTARTS times within RESTART_WINDOW_S; one that exits by itself
    # or on SIGTERM/SIGINT (asked to stop) is not.
    deaths: deque[float] = deque()
    asked_to_stop = (-signal.SIGTERM, -signal.SIGINT)

    def replace_killed() -> None:
        for i, process in enumerate(workers):
            code = process.exitcode
            if stopping or code is None or code >= 0 or code in asked_to_stop:
                continue
            now = time.monotonic()
            while deaths and now - deaths[0] > RESTART_WINDOW_S:
                deaths.popleft()
            if len(deaths) >= MAX_RESTARTS:
                return
            deaths.append(now)
            log.error(
                "event=worker_killed name=%s pid=%s signal=%d: replaced",
                process.name,
                process.pid,
                -code,
            )
            process.join()
            workers[i] = spawn(i)

    def stop_workers() -> None:
        nonlocal stopping
        stopping = True
        for process in workers:
            if process.is_alive() and process.pid is not None:
                process.terminate()

    def forward(signum: int, _frame: object) -> None:
        stop_workers()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    kept = True
    while any(process.is_alive() for process in workers):
        wait_any([process.sentinel for process in workers], timeout=WATCH_INTERVAL_S)
        replace_killed()
        if kept and keeper is not None and keeper.probe_due():
            keeper.answered(keeper.server.answering())
        if kept and keeper is not None and not keeper.tick():
            kept = False
            stop_workers()
    for process in workers:
        process.join()
        if process.exitcode != 0:
            log.error("event=worker_failed name=%s code=%s", process.name, process.exitcode)
    return 0 if kept and all(p.exitcode == 0 for p in workers) else 1
