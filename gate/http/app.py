"""The application of one gate process: the public app owns the process's Gate.

The Gate and the admin listener are opened in the public app's cleanup context and closed
with it, so whoever serves the app (`gate serve`, `gate demo`, a test server) cannot
start one without the other or leave a Redis connection behind. The admin listener has
its own host and port (config.admin_host, config.admin_port): it must never be reachable
through the public one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gate.config import Config
from gate.http.admin import create_admin_app
from gate.http.common import GATE_KEY
from gate.http.public import public_app
from gate.service import running_gate

# Where the admin listener took its port (config.admin_port may be 0: any free port).
ADMIN_ADDRESS: web.AppKey[tuple[str, int]] = web.AppKey("admin_address")


def create_app(config: Config, *, reuse_port: bool = False) -> web.Application:
    """The public app. On startup it starts a Gate and serves the admin app; on cleanup
    it closes the admin listener, then stops the Gate (its tasks and Redis connections).

    `reuse_port` is for the admin listener of `gate serve`'s workers, which share its
    port as they share the public one (SO_REUSEPORT).
    """
    app = public_app(config)

    async def gate_and_admin(app: web.Application) -> AsyncIterator[None]:
        async with running_gate(config) as gate:
            app[GATE_KEY] = gate
            admin = web.AppRunner(create_admin_app(gate), access_log=None, handle_signals=False)
            await admin.setup()
            try:
                site = web.TCPSite(
                    admin, config.admin_host, config.admin_port, reuse_port=reuse_port, backlog=4096
                )
                await site.start()
                host, port = admin.addresses[0][:2]
                app[ADMIN_ADDRESS] = (str(host), int(port))
                yield
            finally:
                await admin.cleanup()

    app.cleanup_ctx.append(gate_and_admin)
    return app
