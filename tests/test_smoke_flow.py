"""The whole customer path in one process: create, join, wait, admitted, pass, auth."""

from __future__ import annotations

from typing import Any

from tests.helpers import spec, wait_for


async def test_join_wait_admit_pass_auth(public: Any, admin: Any) -> None:
    r = await admin.post("/admin/campaigns", json=spec("c1", rate_per_s=20, burst=5))
    assert r.status == 201, await r.text()

    r = await public.post("/q/c1/join", headers={"X-Customer-Id": "alice"})
    assert r.status == 201, await r.text()
    body = await r.json()
    assert body["seq"] == 1 and body["created"] is True
    ticket = body["ticket"]

    again = await public.post("/q/c1/join", headers={"X-Customer-Id": "alice"})
    assert again.status == 200
    assert (await again.json())["seq"] == 1

    state: dict[str, Any] = {}

    async def admitted() -> bool:
        r = await public.get(
            "/q/c1/status", params={"ticket": ticket}, headers={"X-Customer-Id": "alice"}
        )
        assert r.status == 200, await r.text()
        state.update(await r.json())
        return bool(state["state"] == "admitted")

    await wait_for(admitted, 5, "alice admitted")
    pass_token = state["pass"]
    # the proxy's check names the campaign it guards and the customer it authenticated
    proxy = {"X-Gate-Pass": pass_token, "X-Gate-Campaign": "c1"}
    r = await public.get("/gate/auth", headers={**proxy, "X-Customer-Id": "alice"})
    assert r.status == 200, await r.text()
    r = await public.get("/gate/auth", headers={**proxy, "X-Customer-Id": "mallory"})
    assert r.status == 403
    r = await public.get("/gate/auth", headers=proxy)  # nobody: a pass alone is not enough
    assert r.status == 401
    assert public.session.cookie_jar.filter_cookies(public.make_url("/"))["fg_pass"]
    public.session.cookie_jar.clear()
    r = await public.get("/gate/auth", headers={"X-Customer-Id": "alice", "X-Gate-Campaign": "c1"})
    assert r.status == 401
