"""A simulated core bank: it serves a deposit only to a request that carries a valid pass.

Each request is checked exactly as nginx `auth_request` would check it: a GET to the
gate's `/gate/auth` with the request's pass and customer headers; a 401 or 403 from the
gate is passed back to the client, any other failure is a 502. The bank records what it
served and when, so the demo can show that the load it saw stayed at the admission rate.
"""

from __future__ import annotations

import time
from collections import Counter

import aiohttp
from aiohttp import web

PASS_HEADER = "X-Gate-Pass"
CAMPAIGN_HEADER = "X-Gate-Campaign"


class CoreBank:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        auth_url: str,
        campaign: str,
        customer_header: str,
    ):
        self.session = session
        self.auth_url = auth_url
        self.campaign = campaign
        self.customer_header = customer_header
        self.served_at: list[float] = []  # wall-clock time of each deposit served
        self.refused: Counter[int] = Counter()  # status -> count, requests without a valid pass
        self.auth_failures = 0  # the gate answered neither 2xx nor 401/403
        self.in_flight = 0
        self.max_in_flight = 0

    def create_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/deposit", self.deposit)
        return app

    async def _authorised(self, request: web.Request) -> int:
        """The status the gate gives this request's credentials, as an auth subrequest."""
        headers = {CAMPAIGN_HEADER: self.campaign}
        presented = request.headers.get(PASS_HEADER)
        if presented:
            headers[PASS_HEADER] = presented
        customer = request.headers.get(self.customer_header)
        if customer:
            headers[self.customer_header] = customer
        try:
            async with self.session.get(self.auth_url, headers=headers) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return 599

    async def deposit(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await request.read()
            status = await self._authorised(request)
            if status in (401, 403):
                self.refused[status] += 1
                return web.json_response(
                    {"error": {"code": "no_valid_pass", "message": "admission required"}},
                    status=status,
                )
            if not 200 <= status < 300:
                self.auth_failures += 1
                return web.json_response(
                    {"error": {"code": "auth_failed", "message": f"gate answered {status}"}},
                    status=502,
                )
            self.served_at.append(time.time())
            return web.json_response({"ok": True, "booked": True})
        finally:
            self.in_flight -= 1
