"""The reference server: an aiohttp hello-world served exactly as `gate serve` serves the gate.

Same process model (one process for one worker; spawned workers sharing the port through
SO_REUSEPORT otherwise), uvloop, no access log, the same backlog. Every path and method
answers `web.Response(text="ok")`, so it is the floor under any aiohttp handler.

    python -m bench.hello --port 18080 --workers 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import signal

from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(host: str, port: int, reuse_port: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=4096).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _worker(host: str, port: int) -> None:
    _install_uvloop()
    asyncio.run(_serve(host, port, reuse_port=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.host != "127.0.0.1":
        parser.error("the reference server listens on 127.0.0.1 only")
    if args.workers == 1:
        _install_uvloop()
        asyncio.run(_serve(args.host, args.port, reuse_port=False))
        return 0
    ctx = multiprocessing.get_context("spawn")
    workers = [
        ctx.Process(target=_worker, args=(args.host, args.port), name=f"hello-worker-{i}")
        for i in range(args.workers)
    ]
    for process in workers:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in workers:
            if process.is_alive():
                process.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in workers:
        process.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
