"""/gate/auth hands back the request's cookies without the pass.

A proxy that cannot drop one cookie (Traefik's ForwardAuth copies whole headers from the
auth answer onto the upstream request) uses this Cookie header, so the core system never
sees the pass: only the bank's own cookies go on.
"""

from __future__ import annotations

from typing import Any

from gate.http.public import without_pass_cookie
from tests.helpers import admitted_pass, create_campaign

CAMPAIGN = "cookie-c"


def test_without_pass_cookie_keeps_every_other_cookie_as_sent() -> None:
    assert without_pass_cookie("a=1; fg_pass=xyz; b=two=2") == "a=1; b=two=2"
    assert without_pass_cookie("fg_pass=xyz") == ""
    assert without_pass_cookie("fg_pass=1;fg_pass=2; fg_passport=keep") == "fg_passport=keep"
    assert without_pass_cookie(" session=abc ;  ; theme=dark") == "session=abc; theme=dark"


async def test_auth_answers_the_cookies_less_the_pass(public: Any, admin: Any) -> None:
    await create_campaign(admin, CAMPAIGN)
    pass_token = await admitted_pass(public, CAMPAIGN, "kim-0042")
    who = {"X-Customer-Id": "kim-0042", "X-Gate-Campaign": CAMPAIGN}
    cookies = f"bank_session=s3cr3t; fg_pass={pass_token}; theme=dark"
    r = await public.get("/gate/auth", headers={**who, "Cookie": cookies})
    assert r.status == 200, await r.text()
    assert r.headers["Cookie"] == "bank_session=s3cr3t; theme=dark"
    assert pass_token not in r.headers["Cookie"]
    # the pass in the header only: no cookies, nothing to hand back
    r = await public.get("/gate/auth", headers={**who, "X-Gate-Pass": pass_token})
    assert r.status == 200, await r.text()
    assert "Cookie" not in r.headers
    # a refused pass hands back nothing either
    r = await public.get("/gate/auth", headers={**who, "Cookie": "fg_pass=forged; a=1"})
    assert r.status == 401
    assert "Cookie" not in r.headers
