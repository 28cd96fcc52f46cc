"""`gate serve`: the embedded Redis when no URL is given, then one process per worker.

Workers share the listening ports through SO_REUSEPORT; the parent owns the embedded
Redis and the signing-key file, so every worker signs and verifies with the same keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import signal
import sys
from pathlib import Path

from aiohttp import web

from gate.config import Config
from gate.http.app import create_app
from gate.logs import setup_logging
from gate.redis_server import RedisServer
from gate.signing import load_or_create_keys

log = logging.getLogger("gate.server")


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def run_process(
    config: Config, *, reuse_port: bool, ready: asyncio.Event | None = None
) -> None:
    """One gate process: both listeners, until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    # The app starts the gate and the admin listener, and stops them in its cleanup.
    runner = web.AppRunner(
        create_app(config, reuse_port=reuse_port), access_log=None, handle_signals=False
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port, backlog=4096)
        await site.start()
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
        await stop.wait()
    finally:
        await runner.cleanup()


def _worker(config: Config) -> None:
    setup_logging(config.log_level)
    _install_uvloop()
    asyncio.run(run_process(config, reuse_port=True))


def serve(config: Config) -> int:
    setup_logging(config.log_level)
    load_or_create_keys(config.keys_path, create=config.signing_keys is None)
    embedded: RedisServer | None = None
    if not config.redis_url:
        embedded = RedisServer(Path(config.data_dir) / "redis")
        embedded.start()
        config = dataclasses.replace(config, redis_url=embedded.url)
        log.info(
            "event=embedded_redis version=%s port=%d dir=%s appendfsync=always",
            embedded.version(),
            embedded.port,
            embedded.data_dir,
        )
    try:
        if config.workers == 1:
            _install_uvloop()
            asyncio.run(run_process(config, reuse_port=False))
            return 0
        ctx = multiprocessing.get_context("spawn")
        workers = [
            ctx.Process(target=_worker, args=(config,), name=f"gate-worker-{i}")
            for i in range(config.workers)
        ]
        for process in workers:
            process.start()

        def forward(signum: int, _frame: object) -> None:
            for process in workers:
                if process.is_alive() and process.pid is not None:
                    process.terminate()

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        for process in workers:
            process.join()
        return 0 if all(p.exitcode == 0 for p in workers) else 1
    finally:
        if embedded is not None:
            embedded.stop()
            sys.stderr.flush()
