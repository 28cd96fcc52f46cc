"""The application of one gate process: the public app owns the process's Gate.

The Gate, the admin listener and the core listener are opened in the public app's
cleanup context and closed with it, so whoever serves the app (`gate serve`, `gate demo`,
a test server) cannot start one without the others or leave a Redis connection behind.
The admin listener (config.admin_host, config.admin_port) and the core system's
confirm/release listener (config.core_host, config.core_port) have their own hosts and
ports: neither must ever be reachable through the public one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from gate.config import Config
from gate.http.admin import create_admin_app
from gate.http.claims import create_core_app
from gate.http.common import GATE_KEY
from gate.http.listener import ListenerRunner
from gate.http.public import public_app
from gate.service import running_gate

# Where the admin listener took its port (config.admin_port may be 0: any free port).
ADMIN_ADDRESS: web.AppKey[tuple[str, int]] = web.AppKey("admin_address")
# Where the core listener took its port (config.core_port may be 0 too).
CORE_ADDRESS: web.AppKey[tuple[str, int]] = web.AppKey("core_address")


async def _serve(
    app: web.Application, config: Config, listener: str, host: str, port: int, *, reuse_port: bool
) -> tuple[web.AppRunner, tuple[str, int]]:
    """A side listener, started; the runner to clean up and the address it took."""
    runner = ListenerRunner(app, config, listener=listener)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=4096)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, (str(bound_host), int(bound_port))


@contextlib.asynccontextmanager
async def serving(app: web.Application, config: Config | None = None) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port and yield its base URL; the port is closed
    after. With `config`, `app` is the gate's public app, served as `gate serve` serves
    it (ListenerRunner: the connection limits and the fast path); without, plainly (the
    demo's core bank)."""
    runner: web.AppRunner = (
        ListenerRunner(app, config, listener="public")
        if config is not None
        else web.AppRunner(app, access_log=None, handle_signals=False)
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
        yield f"http://127.0.0.1:{int(runner.addresses[0][1])}"
    finally:
        await runner.cleanup()


def create_app(config: Config, *, reuse_port: bool = False) -> web.Application:
    """The public app. On startup it starts a Gate and serves the admin and core apps; on
    cleanup it closes those listeners, then stops the Gate (its tasks and Redis
    connections).

    `reuse_port` is for the side listeners of `gate serve`'s workers, which share their
    ports as they share the public one (SO_REUSEPORT).
    """
    app = public_app(config)

    async def gate_and_side_listeners(app: web.Application) -> AsyncIterator[None]:
        async with running_gate(config) as gate, contextlib.AsyncExitStack() as listeners:
            app[GATE_KEY] = gate
            admin, app[ADMIN_ADDRESS] = await _serve(
                create_admin_app(gate),
                config,
                "admin",
                config.admin_host,
                config.admin_port,
                reuse_port=reuse_port,
            )
            listeners.push_async_callback(admin.cleanup)
            core, app[CORE_ADDRESS] = await _serve(
                create_core_app(gate),
                config,
                "core",
                config.core_host,
                config.core_port,
                reuse_port=reuse_port,
            )
            listeners.push_async_callback(core.cleanup)
            yield

    app.cleanup_ctx.append(gate_and_side_listeners)
    return app
