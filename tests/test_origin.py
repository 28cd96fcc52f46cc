"""Writes from browsers: a POST on the public listener that carries a cookie or an Origin
must come from a page of the gate's own site (Origin's host:port is the request's Host, or
one of public_origins): else 403 `bad_origin`. A claim also needs a JSON or msgpack body,
which a cross-site HTML form cannot send (else 415).

Before: a claim made with the pass cookie, `Content-Type: text/plain` and a foreign
Origin was accepted (201), so any page the customer visited could spend their one
reservation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from gate.config import Config
from gate.http.admin import create_admin_app
from gate.http.public import create_public_app
from gate.service import running_gate
from tests.helpers import ADMIN_TOKEN, admitted_pass, as_customer, create_campaign

BANK = "https://www.bank.example"  # the bank's own site, allowed in public_origins


@dataclasses.dataclass
class Site:
    public: Any
    admin: Any

    @property
    def own_origin(self) -> str:
        """The Origin of a page served by this listener (its Host)."""
        return f"http://{self.public.host}:{self.public.port}"

    async def held(self) -> int:
        stats = await (await self.admin.get("/admin/campaigns/c1/stats")).json()
        return int(stats["held"])


@pytest.fixture
async def site(config: Config, aiohttp_client: Any) -> AsyncIterator[Site]:
    cfg = dataclasses.replace(config, public_origins=(BANK,))
    async with running_gate(cfg) as gate:
        await gate.wait_ready()
        public = await aiohttp_client(create_public_app(gate))
        admin = await aiohttp_client(
            create_admin_app(gate), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        await create_campaign(admin, pass_ttl_s=600)
        yield Site(public, admin)


async def error_of(response: Any) -> tuple[int, str]:
    text = await response.text()
    try:
        code = (await response.json())["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = text[:80]
    return response.status, code


async def test_a_cross_site_claim_with_the_pass_cookie_is_refused(public: Any, admin: Any) -> None:
    """The issue's request, as a page on another site makes it in the customer's browser:
    the proxy names the customer (from the bank's session cookie) and the browser adds the
    pass cookie; the body is a text/plain "simple request" that needs no CORS preflight."""
    await create_campaign(admin, pass_ttl_s=600)
    pass_token = await admitted_pass(public, "c1", "alice")
    r = await public.post(
        "/q/c1/claim",
        data=b'{"amount": 1}',
        headers=as_customer(
            "alice",
            **{
                "Cookie": f"fg_pass={pass_token}",
                "Content-Type": "text/plain",
                "Origin": "https://evil.example",
            },
        ),
    )
    assert await error_of(r) == (403, "bad_origin")
    stats = await (await admin.get("/admin/campaigns/c1/stats")).json()
    assert int(stats["held"]) == 0


async def test_claims_need_the_sites_origin_and_an_api_body(site: Site) -> None:
    pass_token = await admitted_pass(site.public, "c1", "alice")
    cookie = as_customer("alice", Cookie=f"fg_pass={pass_token}")
    own = site.own_origin
    refused: list[tuple[dict[str, str], bytes, int, str]] = [
        ({}, b'{"amount": 1}', 403, "bad_origin"),  # a cookie and no Origin
        ({"Origin": "null"}, b'{"amount": 1}', 403, "bad_origin"),  # sandboxed frame
        ({"Origin": "https://evil.example"}, b'{"amount": 1}', 403, "bad_origin"),
        ({"Origin": f"http://127.0.0.1:{site.public.port + 1}"}, b"{}", 403, "bad_origin"),
        ({"Origin": f"{own}.evil.example"}, b'{"amount": 1}', 403, "bad_origin"),
        ({"Origin": "https://bank.example"}, b'{"amount": 1}', 403, "bad_origin"),
        ({"Origin": own, "Content-Type": "text/plain"}, b'{"amount": 1}', 415, ""),
        (
            {"Origin": own, "Content-Type": "application/x-www-form-urlencoded"},
            b"amount=1",
            415,
            "",
        ),
        ({"Origin": own, "Content-Type": "multipart/form-data; boundary=x"}, b"--x--", 415, ""),
    ]
    for extra, body, status, code in refused:
        r = await site.public.post("/q/c1/claim", data=body, headers={**cookie, **extra})
        got = await error_of(r)
        assert got == (status, code or "unsupported_media_type"), (extra, got)
    assert await site.held() == 0

    # the gate's own page (or the bank's listed site), with JSON: the claim goes through
    r = await site.public.post(
        "/q/c1/claim",
        json={"amount": 1, "idempotency_key": "k1"},
        headers={**cookie, "Origin": own},
    )
    assert r.status == 201, await r.text()
    r = await site.public.post(
        "/q/c1/claim",
        data=msgpack.packb({"amount": 1, "idempotency_key": "k1"}),
        headers={**cookie, "Origin": BANK, "Content-Type": "application/msgpack"},
    )
    assert r.status == 200, await r.text()  # the same claim, replayed
    assert await site.held() == 1


async def test_an_app_without_cookies_claims_with_headers_but_only_in_json(site: Site) -> None:
    pass_token = await admitted_pass(site.public, "c1", "alice")
    app = as_customer("alice", **{"X-Gate-Pass": pass_token})
    r = await site.public.post(
        "/q/c1/claim", data=b'{"amount": 1}', headers={**app, "Content-Type": "text/plain"}
    )
    assert await error_of(r) == (415, "unsupported_media_type")
    r = await site.public.post("/q/c1/claim", json={"amount": 1}, headers=app)
    assert r.status == 201, await r.text()


async def test_joins_from_a_browser_need_the_sites_origin(site: Site) -> None:
    public = site.public
    own = site.own_origin
    session = {"Cookie": "bank_session=opaque"}  # what the proxy turned into the header
    cases: list[tuple[dict[str, str], int, str]] = [
        ({**session}, 403, "bad_origin"),
        ({**session, "Origin": "https://evil.example"}, 403, "bad_origin"),
        ({"Origin": "https://evil.example"}, 403, "bad_origin"),  # no cookie, still a browser
        ({**session, "Origin": own}, 201, ""),
        ({**session, "Origin": BANK}, 200, ""),
        ({}, 200, ""),  # an app: no cookie, no Origin
    ]
    for extra, status, code in cases:
        public.session.cookie_jar.clear()
        r = await public.post("/q/c1/join", headers=as_customer("alice", **extra))
        if code:
            assert await error_of(r) == (status, code), extra
        else:
            assert r.status == status, (extra, await r.text())

    # the waiting page's own no-script form: same-site only
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for origin, status in (("https://evil.example", 403), (own, 303)):
        public.session.cookie_jar.clear()
        r = await public.post(
            "/q/c1/join",
            data=b"lang=en",
            headers=as_customer("bob", **form, **session, Origin=origin),
            allow_redirects=False,
        )
        assert r.status == status, (origin, await r.text())


async def test_the_sites_own_host_on_a_default_port(site: Site) -> None:
    """Behind the proxy the Host is the public name: https://bank.example is its own
    origin whether or not the Host header spells out the port."""
    for host, origin, status in (
        ("gate.bank.example", "https://gate.bank.example", 201),
        ("gate.bank.example:443", "https://gate.bank.example", 200),
        ("GATE.bank.example", "https://gate.bank.example", 200),
        ("gate.bank.example", "https://gate.bank.example:8443", 403),
        ("gate.bank.example", "http://gate.bank.example:443", 403),
        ("gate.bank.example", "https://other.bank.example", 403),
    ):
        site.public.session.cookie_jar.clear()
        r = await site.public.post(
            "/q/c1/join",
            headers=as_customer("carol", Host=host, Origin=origin, Cookie="s=1"),
        )
        assert r.status == status, (host, origin, await r.text())


async def test_reads_and_unknown_paths_are_not_writes(site: Site) -> None:
    ticket = (await (await site.public.post("/q/c1/join", headers=as_customer("dave"))).json())[
        "ticket"
    ]
    foreign = {"Origin": "https://evil.example", "Cookie": "s=1"}
    r = await site.public.get(
        "/q/c1/status", params={"ticket": ticket}, headers=as_customer("dave", **foreign)
    )
    assert r.status == 200, await r.text()  # a read changes nothing (and CORS hides it)
    r = await site.public.post("/q/c1/nothing-here", headers=foreign)
    assert r.status == 404
    # the proxies' pass check is no write: Envoy's ext_authz asks it with the method and
    # headers of the request it guards (a POST from the bank's own page, say)
    r = await site.public.post(
        "/gate/auth", headers=as_customer("dave", **foreign, **{"X-Gate-Campaign": "c1"})
    )
    assert await error_of(r) == (401, "no_pass")
