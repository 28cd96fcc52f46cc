"""The waiting page in a real browser: Debian's headless Chromium driven by Playwright
(no browser download), in front of a real `gate serve`, a Redis of this module's own and
a small stand-in for the bank's proxy (the customer's session cookie names them; the
product URL asks the gate's /gate/auth and sends an unadmitted customer to the waiting
page with the URL they asked for).

Screenshots of every state, at phone and desktop width, in Korean and English, are
written under $FAIRGATE_ARTIFACTS (default tests/artifacts/, git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from aiohttp import web

from gate.redis_server import RedisServer
from tests.helpers import ADMIN_TOKEN, GateProcess, redis_binaries, spec
from tests.proxy_support import (
    HAPROXY,
    LOGIN_COOKIE,
    NGINX,
    PROXY_SECRET,
    BackgroundServers,
    proxied_gate,
    wait_gate_ready,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -e .[dev]")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason="chromium is not installed (.ci/run installs it)"
    ),
]

ARTIFACTS = Path(os.environ.get("FAIRGATE_ARTIFACTS", Path(__file__).parent / "artifacts"))
SIZES = {"phone": (360, 740), "desktop": (1280, 800)}
SESSION_COOKIE = "bank_session"
TITLE = {"ko": "정기예금 연 5% 특판", "en": "5% fixed deposit, one day only"}
WAIT_S = 20.0


# -- the bank around the gate: a stand-in proxy ------------------------------------------


@dataclass
class StandInProxy:
    """The bank's reverse proxy, as small as it can be: the session cookie names the
    customer (a client's own identity headers are dropped), /product/{campaign}/... needs
    a pass (asked of the gate's /gate/auth, as nginx's auth_request does) and sends an
    unadmitted customer to /q/{campaign}?return=..., everything else goes to the gate."""

    gate_url: str
    sessions: dict[str, str] = field(default_factory=dict)

    def login(self, customer: str) -> str:
        session = secrets.token_urlsafe(12)
        self.sessions[session] = customer
        return session

    def app(self) -> web.Application:
        client: dict[str, aiohttp.ClientSession] = {}

        async def open_client(app: web.Application) -> Any:
            client["c"] = aiohttp.ClientSession()
            yield
            await client["c"].close()

        def customer_headers(request: web.Request) -> dict[str, str]:
            customer = self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
            return {"X-Customer-Id": customer} if customer else {}

        async def product(request: web.Request) -> web.Response:
            campaign = request.match_info["campaign"]
            headers = {**customer_headers(request), "X-Gate-Campaign": campaign}
            pass_token = request.cookies.get("fg_pass")
            if pass_token:
                headers["X-Gate-Pass"] = pass_token
            async with client["c"].get(self.gate_url + "/gate/auth", headers=headers) as r:
                if r.status == 200:
                    return web.Response(
                        text=f'<!doctype html><html lang="en"><title>Product</title>'
                        f'<h1 id="product">Product {request.path}</h1></html>',
                        content_type="text/html",
                    )
            back = quote(request.path_qs, safe="")
            raise web.HTTPFound(f"/q/{campaign}?return={back}")

        async def forward(request: web.Request) -> web.StreamResponse:
            drop = {"host", "content-length", "connection", "x-customer-id", "x-gate-campaign"}
            headers = {k: v for k, v in request.headers.items() if k.lower() not in drop}
            headers.update(customer_headers(request))
            headers["Host"] = request.host  # the gate compares Origin with it
            async with client["c"].request(
                request.method,
                self.gate_url + request.path_qs,
                headers=headers,
                data=await request.read(),
                allow_redirects=False,
            ) as r:
                body = await r.read()
                response = web.Response(status=r.status, body=body)
                for name, value in r.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        response.headers.add(name, value)
                return response

        app = web.Application()
        app.cleanup_ctx.append(open_client)
        app.router.add_get("/product/{campaign}/{tail:.*}", product)
        app.router.add_route("*", "/{tail:.*}", forward)
        return app


@dataclass
class Bank:
    url: str
    proxy: StandInProxy
    gate: GateProcess
    redis: RedisServer

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.gate.admin_url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
            method=method,
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.loads(r.read() or b"null")

    def campaign(self, name: str, **changes: Any) -> str:
        """A campaign with a title in both languages; `changes` override spec fields,
        `admission=` fields of the admission."""
        body = spec(name, **changes.pop("admission", {}))
        body["title"] = TITLE
        body.update(changes)
        self.admin("POST", "/admin/campaigns", body)
        return name

    def join(self, campaign: str, customer: str) -> dict[str, Any]:
        """A customer joining from an app (straight to the gate, from a trusted peer)."""
        request = urllib.request.Request(
            f"{self.gate.url}/q/{campaign}/join",
            headers={"X-Customer-Id": customer},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            answer: dict[str, Any] = json.loads(r.read())
            return answer

    def status(self, campaign: str, customer: str, ticket: str) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.gate.url}/q/{campaign}/status?ticket={quote(ticket)}",
            headers={"X-Customer-Id": customer},
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            answer: dict[str, Any] = json.loads(r.read())
            return answer


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory, keys_file: Path) -> Iterator[Bank]:
    root = tmp_path_factory.mktemp("browser")
    # a Redis of this module's own: one test stops and restarts it
    redis = RedisServer(root / "redis", binary=redis_binaries()[0][1])
    redis.start()
    gate = GateProcess(redis.url, root / "gate", keys_file)
    servers = BackgroundServers()
    try:
        gate.start()
        wait_gate_ready(gate)
        proxy = StandInProxy(gate.url)
        port = servers.serve(proxy.app())
        yield Bank(f"http://127.0.0.1:{port}", proxy, gate, redis)
    finally:
        gate.stop()
        servers.close()
        redis.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope, not session: Playwright's sync API runs an event loop in this thread
    # while it is started, and every async test after it would find a loop running.
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def customer_context(
    browser: Any,
    bank: Bank,
    customer: str,
    *,
    lang: str = "ko",
    size: str = "phone",
    js: bool = True,
) -> Any:
    width, height = SIZES[size]
    context = browser.new_context(
        viewport={"width": width, "height": height},
        locale="ko-KR" if lang == "ko" else "en-US",
        extra_http_headers={"Accept-Language": "ko-KR,ko;q=0.9" if lang == "ko" else "en-US,en"},
        java_script_enabled=js,
    )
    context.add_cookies(
        [{"name": SESSION_COOKIE, "value": bank.proxy.login(customer), "url": bank.url}]
    )
    return context


def shoot(page: Any, name: str) -> Path:
    """A screenshot under the artifacts folder, for a person to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def position_of(page: Any) -> int | None:
    """The position the page shows now (None when it shows none); never waits."""
    card = page.query_selector("#fg-wait-card")
    if card is None or not card.is_visible():
        return None
    digits = re.sub(r"\D", "", card.query_selector("#fg-position").text_content() or "")
    return int(digits) if digits else None


def text_of(page: Any, selector: str) -> str:
    """The element's text now ("" when it is not there); never waits."""
    element = page.query_selector(selector)
    return (element.text_content() or "") if element is not None else ""


def fits(page: Any) -> bool:
    """Nothing wider than the screen: readable without scrolling sideways."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


# -- the tests ------------------------------------------------------------------------------


def test_a_customer_waits_sees_the_position_fall_and_lands_on_the_product(
    bank: Bank, browser: Any
) -> None:
    campaign = bank.campaign("browser-js", admission={"rate_per_s": 2, "burst": 1})
    for n in range(4):  # four app customers ahead of her
        bank.join(campaign, f"ahead-{n}")
    context = customer_context(browser, bank, "kim-js", lang="ko", size="phone")
    page = context.new_page()
    product = f"/product/{campaign}/deposit?plan=12m"
    page.goto(bank.url + product)
    assert page.url.startswith(f"{bank.url}/q/{campaign}?return=")  # sent to wait
    assert page.text_content("h1") == TITLE["ko"]
    page.click("#fg-join")
    seen: list[int] = []

    def landed() -> bool:
        if urlsplit(page.url).path.startswith("/product/"):
            return True
        try:
            position = position_of(page)
        except playwright_api.Error:  # navigating away
            return False
        if position is not None and (not seen or seen[-1] != position):
            seen.append(position)
            if len(seen) == 1:
                # the live region says the position, as a screen reader hears it
                snapshot = page.locator("main").aria_snapshot()
                status = [line for line in snapshot.splitlines() if "status" in line]
                assert status and f"{position}번" in status[0], snapshot
                shoot(page, "js-waiting-ko-phone")
        return False

    until(landed, "the product page")
    assert page.url == bank.url + product  # the URL she first asked for
    assert page.text_content("#product") == "Product /product/browser-js/deposit"
    assert seen and seen == sorted(seen, reverse=True) and len(seen) >= 2, seen
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies["fg_pass"]["httpOnly"] and cookies["fg_pass"]["value"]
    context.close()


def test_without_javascript_the_page_refreshes_until_the_product(bank: Bank, browser: Any) -> None:
    campaign = bank.campaign("browser-nojs", admission={"rate_per_s": 1, "burst": 1})
    for n in range(2):
        bank.join(campaign, f"ahead-{n}")
    context = customer_context(browser, bank, "lee-nojs", lang="en", size="desktop", js=False)
    page = context.new_page()
    product = f"/product/{campaign}/loan"
    page.goto(bank.url + product)
    assert page.text_content("h1") == TITLE["en"]
    page.click("#fg-join")  # the form's POST, then a 303 back to the page
    page.wait_for_selector("#fg-wait-card", state="visible")
    assert "Your position is" in text_of(page, "#fg-live")
    shoot(page, "nojs-waiting-en-desktop")
    page.wait_for_url(bank.url + product, timeout=WAIT_S * 1000)  # by the meta refresh
    assert page.text_content("#product") == f"Product {product}"
    assert any(c["name"] == "fg_pass" for c in context.cookies())
    context.close()


def test_a_second_tab_shows_the_same_ticket(bank: Bank, browser: Any) -> None:
    campaign = bank.campaign("browser-tabs", admission={"rate_per_s": 0.001, "burst": 1})
    bank.join(campaign, "ahead")
    context = customer_context(browser, bank, "park-tabs", lang="en")
    first = context.new_page()
    first.goto(f"{bank.url}/q/{campaign}")
    first.click("#fg-join")
    first.wait_for_selector("#fg-seq")
    seq = first.text_content("#fg-seq")
    second = context.new_page()
    second.goto(f"{bank.url}/q/{campaign}")
    assert second.text_content("#fg-seq") == seq == "Ticket number 2"
    assert second.is_hidden("#fg-join-form")
    context.close()


def test_redis_stopped_and_restarted_mid_wait_keeps_the_place(bank: Bank, browser: Any) -> None:
    campaign = bank.campaign(
        "browser-redis", admission={"rate_per_s": 1000, "burst": 100, "max_active": 1}
    )
    holder = bank.join(campaign, "holder")  # takes the one active place
    until(
        lambda: bank.status(campaign, "holder", holder["ticket"])["state"] == "admitted",
        "the holder admitted",
    )
    context = customer_context(browser, bank, "choi-redis", lang="ko")
    page = context.new_page()
    product = f"/product/{campaign}/card"
    page.goto(bank.url + product)
    page.click("#fg-join")
    until(lambda: position_of(page) == 1, "position 1")
    seq = page.text_content("#fg-seq")

    bank.redis.stop()
    try:
        until(lambda: "접속이 많아" in text_of(page, "#fg-lead"), "the busy text")
        assert "접속이 많아" in text_of(page, "#fg-live")  # said aloud as well
        shoot(page, "js-busy-ko-phone")
        # a fresh load while Redis is away: the busy page (503), never raw JSON
        for lang in ("ko", "en"):
            for size in SIZES:
                other = customer_context(browser, bank, "choi-redis", lang=lang, size=size)
                busy = other.new_page()
                answer = busy.goto(f"{bank.url}/q/{campaign}")
                assert answer is not None and answer.status == 503
                assert answer.headers["content-type"].startswith("text/html")
                assert busy.text_content("h1") == TITLE[lang]
                assert fits(busy)
                shoot(busy, f"busy-{lang}-{size}")
                if (lang, size) != ("ko", "phone"):
                    other.close()
                else:
                    kept, kept_context = busy, other  # left to try again by itself
    finally:
        bank.redis.start()  # same port and directory: the AOF brings everything back
    # the busy page tries again by itself and becomes the waiting page
    until(lambda: kept.is_visible("#fg-join-form"), "the busy page to try again by itself")
    assert "접속이 많아" not in text_of(kept, "#fg-lead")
    kept_context.close()
    until(
        lambda: position_of(page) == 1 and "대기 중" in text_of(page, "#fg-lead"),
        "waiting again",
    )
    assert page.text_content("#fg-seq") == seq  # the place is kept
    bank.admin("PATCH", f"/admin/campaigns/{campaign}", {"max_active": 2})
    page.wait_for_url(bank.url + product, timeout=WAIT_S * 1000)
    context.close()


def _open_state(
    bank: Bank, browser: Any, campaign: str, customer: str, lang: str, size: str
) -> Any:
    context = customer_context(browser, bank, customer, lang=lang, size=size)
    page = context.new_page()
    page.goto(f"{bank.url}/q/{campaign}?lang={lang}")
    return context, page


# A phrase each state's page shows, in each language.
STATE_WORDS = {
    "join": {"ko": "대기열에 참여", "en": "Join the queue"},
    "waiting": {"ko": "대기 중입니다", "en": "You are in the queue"},
    "prequeue": {"ko": "무작위로", "en": "random place"},
    "paused": {"ko": "잠시 멈췄습니다", "en": "paused"},
    "soldout": {"ko": "소진되었습니다", "en": "has been taken"},
    "closed": {"ko": "마감되었습니다", "en": "has closed"},
    "blocked": {"ko": "참여할 수 없습니다", "en": "cannot take part"},
    "busy": {"ko": "접속이 많아", "en": "busy"},
}


def state_campaigns(bank: Bank, prefix: str) -> tuple[str, str, str, str, str, str]:
    """One campaign per state a customer can meet: waiting (someone ahead), to be paused,
    sold out (the only item claimed), closed, to be blocked, and not open yet (pre-queue)."""
    now = datetime.now(UTC)
    waiting = bank.campaign(f"{prefix}-waiting", admission={"rate_per_s": 0.001, "burst": 1})
    bank.join(waiting, "ahead")
    paused = bank.campaign(f"{prefix}-paused", admission={"rate_per_s": 0.001, "burst": 1})
    soldout = bank.campaign(
        f"{prefix}-soldout", quota={"unit": "item", "total": 1}, admission={"pass_ttl_s": 600}
    )
    closed = bank.campaign(f"{prefix}-closed")
    blocked = bank.campaign(f"{prefix}-blocked", admission={"rate_per_s": 0.001, "burst": 1})
    later = bank.campaign(
        f"{prefix}-prequeue",
        opens_at=(now + timedelta(minutes=30)).isoformat(),
        closes_at=(now + timedelta(hours=2)).isoformat(),
        prequeue={"window_s": 7200},
    )
    # sold out: the only item is claimed by the first customer
    first = bank.join(soldout, "first")
    until(lambda: "pass" in bank.status(soldout, "first", first["ticket"]), "first admitted")
    claim = urllib.request.Request(
        f"{bank.gate.url}/q/{soldout}/claim",
        data=json.dumps({"amount": "1"}).encode(),
        headers={
            "X-Customer-Id": "first",
            "X-Gate-Pass": bank.status(soldout, "first", first["ticket"])["pass"],
            "Content-Type": "application/json",
        },
        method="POST",
    )
    urllib.request.urlopen(claim, timeout=5).close()
    bank.admin("POST", f"/admin/campaigns/{closed}/close")
    return waiting, paused, soldout, closed, blocked, later


def test_every_state_is_a_page_in_both_languages_at_both_widths(bank: Bank, browser: Any) -> None:
    """join, waiting, prequeue, paused, sold out, closed, blocked: a screenshot of each at
    phone and desktop width in Korean and English; each page entirely in its language
    and no wider than the screen (320 px too)."""
    waiting, paused, soldout, closed, blocked, later = state_campaigns(bank, "st")

    for lang in ("ko", "en"):
        for size in SIZES:
            who = f"cust-{lang}-{size}"
            setups: dict[str, tuple[str, Callable[[Any], None]]] = {
                "join": (waiting, lambda page: None),
                "waiting": (waiting, lambda page: page.click("#fg-join")),
                "prequeue": (later, lambda page: page.click("#fg-join")),
                "paused": (paused, lambda page: page.click("#fg-join")),
                "soldout": (soldout, lambda page: page.click("#fg-join")),
                "closed": (closed, lambda page: None),
                "blocked": (blocked, lambda page: page.click("#fg-join")),
            }
            bank.admin("POST", f"/admin/campaigns/{blocked}/block", {"customer": who})
            for state, (campaign, act) in setups.items():
                context, page = _open_state(bank, browser, campaign, who, lang, size)
                act(page)
                if state == "paused":
                    page.wait_for_selector("#fg-seq")
                    bank.admin("POST", f"/admin/campaigns/{paused}/pause")
                    page.reload()
                words = STATE_WORDS[state][lang]

                def shows(page: Any = page, words: str = words) -> bool:
                    return words in text_of(page, "main")

                until(shows, f"{state} in {lang}")
                assert page.get_attribute("html", "lang") == lang
                assert page.text_content("h1") == TITLE[lang]
                main = page.text_content("main") or ""
                if lang == "en":
                    assert not re.search("[가-힣]", main), (state, main)
                else:
                    assert re.search("[가-힣]", main), (state, main)
                assert fits(page), (state, lang, size)
                shoot(page, f"{state}-{lang}-{size}")
                if state == "paused":
                    bank.admin("POST", f"/admin/campaigns/{paused}/resume")
                context.close()
    # the narrowest phones: still no sideways scrolling
    context = browser.new_context(viewport={"width": 320, "height": 640})
    context.add_cookies(
        [{"name": SESSION_COOKIE, "value": bank.proxy.login("narrow"), "url": bank.url}]
    )
    page = context.new_page()
    page.goto(f"{bank.url}/q/{waiting}")
    page.click("#fg-join")
    page.wait_for_selector("#fg-wait-card", state="visible")
    assert fits(page)
    shoot(page, "waiting-ko-320")
    context.close()


# -- through the shipped proxy configs, run by the real nginx and HAProxy ----------------


@pytest.mark.parametrize("proxy", ["nginx", "haproxy"])
def test_through_the_real_proxy_a_customer_lands_on_the_core_by_herself(
    proxy: str,
    browser: Any,
    redis_server: RedisServer,
    tmp_path: Path,
    keys_file: Path,
) -> None:
    if {"nginx": NGINX, "haproxy": HAPROXY}[proxy] is None:
        pytest.skip(f"{proxy} is not installed (.ci/run installs it)")
    campaign = f"via-{proxy}"
    campaign_spec = spec(campaign, rate_per_s=2, burst=1)
    campaign_spec["title"] = TITLE
    with proxied_gate(
        proxy, redis_server.url, tmp_path, keys_file, campaign=campaign, campaign_spec=campaign_spec
    ) as front:
        ahead = urllib.request.Request(
            f"{front.gate.url}/q/{campaign}/join",
            headers={"X-Customer-Id": "ahead", "X-Gate-Proxy-Secret": PROXY_SECRET},
            method="POST",
        )
        urllib.request.urlopen(ahead, timeout=5).close()
        context = browser.new_context(viewport={"width": 360, "height": 740}, locale="en-US")
        context.add_cookies(
            [{"name": LOGIN_COOKIE, "value": front.login.login(f"kim-{proxy}"), "url": front.url}]
        )
        page = context.new_page()
        product = "/core/deposit/apply?plan=12m"
        page.goto(front.url + product)
        assert urlsplit(page.url).path == f"/q/{campaign}"  # the proxy sent her to wait
        assert page.text_content("h1") in (TITLE["ko"], TITLE["en"])
        page.click("#fg-join")
        page.wait_for_url(front.url + product, timeout=WAIT_S * 1000)
        assert '"booked": true' in (page.text_content("body") or "")
        assert any(c["name"] == "fg_pass" for c in context.cookies())
        # the core never saw the pass, only the customer the login named
        seen = [s for s in front.core.seen if s.path == product]
        assert seen and "fg_pass" not in seen[-1].cookies
        assert "x-gate-pass" not in seen[-1].headers
        # an app's flow with fairgate.js, from the same logged-in browser
        answer = page.evaluate(
            """async (campaign) => {
                const { Fairgate } = await import("/q/_static/fairgate.js");
                const gate = new Fairgate(campaign);
                const states = [];
                const admitted = await gate.waitForPass({ onUpdate: (a) => states.push(a.state) });
                return { state: admitted.state, pass: Boolean(admitted.pass), states };
            }""",
            campaign,
        )
        assert answer["state"] == "admitted" and answer["pass"], answer
        context.close()


def test_fairgate_js_joins_waits_out_a_busy_gate_and_hands_back_the_pass(
    bank: Bank, browser: Any
) -> None:
    """The module alone, with a scripted fetch: join, a 503 with Retry-After (the place
    kept), a waiting answer, then the pass; polls spread by jitter; a refusal thrown."""
    context = customer_context(browser, bank, "module")
    page = context.new_page()
    page.goto(f"{bank.url}/openapi.json")
    result = page.evaluate(
        """async () => {
            const { Fairgate, FairgateError, SteadyEta, jittered } = await import(
                "/q/_static/fairgate.js"
            );
            const script = [
                [201, { ticket: "t1", seq: 7, state: "waiting", position: 3, poll_after_ms: 20 }],
                [503, { error: { code: "unavailable", message: "busy" } }, { "Retry-After": "0" }],
                [200, { seq: 7, state: "waiting", position: 1, poll_after_ms: 20 }],
                [200, { seq: 7, state: "admitted", pass: "p1", pass_expires_at: 9 }],
            ];
            const calls = [];
            const fetch = async (url, init) => {
                calls.push(init.method + " " + url);
                const [status, body, headers] = script.shift();
                return new Response(JSON.stringify(body), { status, headers: headers || {} });
            };
            const gate = new Fairgate("c1", { fetch, random: () => 0.5 });
            const states = [];
            const answer = await gate.waitForPass({ onUpdate: (a) => states.push(a.state) });
            const refusing = new Fairgate("c1", {
                fetch: async () => new Response(
                    JSON.stringify({ error: { code: "blocked", message: "no" } }), { status: 403 }),
            });
            let refused = null;
            try { await refusing.waitForPass({}); } catch (e) {
                refused = e instanceof FairgateError ? e.code + " " + e.status : String(e);
            }
            const spread = new Set(Array.from({ length: 50 }, () => jittered(1000, 0.2)));
            const inRange = [...spread].every((ms) => ms >= 800 && ms <= 1200);
            // the gate's ETA a second apart, its measured rate wobbling, then halving
            let clock = 0;
            const eta = new SteadyEta(() => clock);
            const shown = [];
            for (const seconds of [60, 60, 59, 58, 58, 57, 130]) {
                shown.push(eta.update(seconds));
                clock += 1000;
            }
            return {
                pass: answer.pass, states, calls, refused, spread: spread.size, inRange, shown,
            };
        }"""
    )
    assert result["pass"] == "p1"
    assert result["states"] == ["waiting", "busy", "waiting", "admitted"]
    assert result["calls"] == [
        "POST /q/c1/join",
        "GET /q/c1/status?ticket=t1",
        "GET /q/c1/status?ticket=t1",
        "GET /q/c1/status?ticket=t1",
    ]
    assert result["refused"] == "blocked 403"
    assert result["spread"] > 10 and result["inRange"]
    # while the rate holds the ETA only counts down (the old page's wobbled); a real
    # change of rate shows
    shown = result["shown"]
    assert shown[:6] == [60, 59, 58, 57, 56, 55], shown
    assert shown[6] == 130
    context.close()


# -- contrast and focus, measured in the page --------------------------------------------

# Runs in the page. Every element with text of its own that is on screen: its colour, the
# colour behind it (its own background or its nearest ancestor's, semi-transparent layers
# composed over what is below them, the canvas white), opacity folded into the text, and
# the WCAG 2.1 contrast ratio. Text left to screen readers (clipped to a pixel), text not
# rendered (a progress bar's fallback, noscript with scripting on) and disabled controls
# (exempt in WCAG 1.4.3) are left out. Text over a background image cannot be measured
# this way: it is reported with the image instead of a ratio.
CONTRAST_LIBRARY = r"""
const parseColor = (value) => {
  const m = /^rgba?\(\s*([\d.]+)[,\s]+([\d.]+)[,\s]+([\d.]+)(?:\s*[,/]\s*([\d.]+)(%?))?\s*\)$/
    .exec(value);
  if (m === null) throw new Error("a colour this check cannot read: " + value);
  const alpha = m[4] === undefined ? 1 : parseFloat(m[4]) / (m[5] ? 100 : 1);
  return [parseFloat(m[1]), parseFloat(m[2]), parseFloat(m[3]), alpha];
};
const over = (top, below) => [0, 1, 2].map((i) => top[i] * top[3] + below[i] * (1 - top[3]));
const channel = (c) => {
  const s = c / 255;
  return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
};
const luminance = (c) => 0.2126 * channel(c[0]) + 0.7152 * channel(c[1]) + 0.0722 * channel(c[2]);
const contrast = (a, b) => {
  const [light, dark] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (light + 0.05) / (dark + 0.05);
};
const hex = (c) =>
  "#" + c.slice(0, 3).map((v) => Math.round(v).toString(16).padStart(2, "0")).join("");
const describe = (element) => {
  let name = element.tagName.toLowerCase();
  if (element.id) name += "#" + element.id;
  for (const c of element.classList) name += "." + c;
  return name;
};
// The colour behind `element`, its own background included: {color} or {image, owner}.
const backdrop = (element) => {
  const layers = [];
  for (let e = element; e !== null; e = e.parentElement) {
    const style = getComputedStyle(e);
    if (style.backgroundImage !== "none") return { image: style.backgroundImage, owner: e };
    const color = parseColor(style.backgroundColor);
    if (color[3] > 0) layers.push(color);
    if (color[3] >= 1) break;
  }
  let color = [255, 255, 255];
  for (const layer of layers.reverse()) color = over(layer, color);
  return { color };
};
const opacityOf = (element) => {
  let opacity = 1;
  for (let e = element; e !== null; e = e.parentElement) {
    opacity *= parseFloat(getComputedStyle(e).opacity);
  }
  return opacity;
};
// Left to screen readers: clipped away, or inside a box of a pixel that hides overflow.
const visuallyHidden = (element) => {
  for (let e = element; e !== null; e = e.parentElement) {
    const style = getComputedStyle(e);
    const box = e.getBoundingClientRect();
    if (/^rect\(0(px)?,? 0(px)?,? 0(px)?,? 0(px)?\)$/.test(style.clip)) return true;
    if (style.overflow !== "visible" && (box.width <= 1 || box.height <= 1)) return true;
  }
  return false;
};
const rendered = (node) => {
  const range = document.createRange();
  range.selectNodeContents(node);
  return [...range.getClientRects()].some((r) => r.width > 0 && r.height > 0);
};
const collectTexts = () => {
  const found = new Map();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node !== null; node = walker.nextNode()) {
    const element = node.parentElement;
    if (element === null || found.has(element) || !node.data.trim()) continue;
    if (!rendered(node)) continue;
    if (!element.checkVisibility({ opacityProperty: true, visibilityProperty: true })) continue;
    if (visuallyHidden(element) || element.closest(":disabled") !== null) continue;
    const style = getComputedStyle(element);
    const text = element.textContent.trim().replace(/\s+/g, " ").slice(0, 40);
    const entry = {
      element: describe(element) + ' "' + text + '"',
      fontPx: parseFloat(style.fontSize),
      weight: parseInt(style.fontWeight, 10),
    };
    const behind = backdrop(element);
    if (behind.image !== undefined) {
      entry.image = describe(behind.owner) + ": " + behind.image;
    } else {
      const ink = parseColor(style.color);
      ink[3] *= opacityOf(element);
      const seen = over(ink, behind.color);
      Object.assign(entry, {
        color: hex(seen), background: hex(behind.color), ratio: contrast(seen, behind.color),
      });
    }
    found.set(element, entry);
  }
  return [...found.values()];
};
const FOCUSABLE =
  "a[href], button:not(:disabled), input:not([type=hidden]):not(:disabled), select, " +
  "textarea, [tabindex]:not([tabindex='-1'])";
const focusKey = (e) =>
  describe(e) + " " + (e.getAttribute("href") || "") +
  ' "' + e.textContent.trim().slice(0, 30) + '"';
const focusables = () =>
  [...document.querySelectorAll(FOCUSABLE)]
    .filter((e) => e.checkVisibility({ visibilityProperty: true }))
    .map(focusKey);
// The focused element's indicator: an outline or a box-shadow, and its contrast with
// what it is drawn on (outside the element unless the outline is inset).
const focusIndicator = () => {
  const element = document.activeElement;
  if (element === null || element === document.body) return null;
  const style = getComputedStyle(element);
  const inside = parseFloat(style.outlineOffset) < 0 ? element : element.parentElement;
  const behind = backdrop(inside);
  const answer = {
    element: focusKey(element), focusVisible: element.matches(":focus-visible"),
    indicator: "", ratio: 0, background: behind.color ? hex(behind.color) : "image",
  };
  const measure = (kind, color) => {
    const c = parseColor(color);
    if (c[3] === 0) return;
    const ratio = behind.color ? contrast(over(c, behind.color), behind.color) : 0;
    if (answer.indicator === "" || ratio > answer.ratio) {
      Object.assign(answer, { indicator: kind + " " + hex(c), ratio });
    }
  };
  if (style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 1) {
    measure("outline", style.outlineColor);
  }
  if (style.boxShadow !== "none") {
    const color = /rgba?\([^)]*\)/.exec(style.boxShadow);
    const lengths = style.boxShadow.replace(/rgba?\([^)]*\)/g, "").match(/-?[\d.]+px/g) || [];
    if (color && lengths.some((l) => parseFloat(l) !== 0)) measure("box-shadow", color[0]);
  }
  return answer;
};
"""


@dataclass(frozen=True)
class TextContrast:
    """One piece of text as measured in the page (`ratio` 0 when it sits on an image)."""

    element: str
    font_px: float
    weight: int
    color: str = ""
    background: str = ""
    ratio: float = 0.0
    image: str = ""

    @property
    def needed(self) -> float:
        """WCAG 2.1 AA, 1.4.3: 3:1 for large text (18 pt, or 14 pt bold), else 4.5:1."""
        large = self.font_px >= 24 or (self.font_px >= 18.66 and self.weight >= 700)
        return 3.0 if large else 4.5

    def problem(self) -> str | None:
        if self.image:
            return f"{self.element} sits on a background image ({self.image}): not measurable"
        if self.ratio < self.needed:
            return (
                f"{self.element} {self.color} on {self.background} is {self.ratio:.2f}:1, "
                f"needs {self.needed}:1 ({self.font_px:g}px, weight {self.weight})"
            )
        return None


def measure_texts(page: Any) -> list[TextContrast]:
    found = page.evaluate(f"() => {{ {CONTRAST_LIBRARY}; return collectTexts(); }}")
    return [
        TextContrast(
            element=t["element"],
            font_px=t["fontPx"],
            weight=t["weight"],
            color=t.get("color", ""),
            background=t.get("background", ""),
            ratio=t.get("ratio", 0.0),
            image=t.get("image", ""),
        )
        for t in found
    ]


def focus_problems(page: Any) -> tuple[list[str], float]:
    """Tab through the page: every visible link, button and field is reached and shows
    an indicator (:focus-visible, an outline or box-shadow of 3:1 against what is around
    it, WCAG 1.4.11). The problems, and the lowest indicator ratio."""
    expected = page.evaluate(f"() => {{ {CONTRAST_LIBRARY}; return focusables(); }}")
    if not expected:
        return ["nothing on the page can take the keyboard's focus"], 0.0
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    problems: list[str] = []
    reached: dict[str, float] = {}
    for _ in range(2 * len(expected) + 2):
        page.keyboard.press("Tab")
        focus = page.evaluate(f"() => {{ {CONTRAST_LIBRARY}; return focusIndicator(); }}")
        if focus is None or focus["element"] in reached:
            if set(reached) >= set(expected):
                break
            continue
        reached[focus["element"]] = focus["ratio"]
        if not focus["focusVisible"]:
            problems.append(f"{focus['element']}: focused by Tab but not :focus-visible")
        elif not focus["indicator"]:
            problems.append(f"{focus['element']}: no outline or box-shadow when focused")
        elif focus["ratio"] < 3.0:
            problems.append(
                f"{focus['element']}: {focus['indicator']} on {focus['background']} "
                f"is {focus['ratio']:.2f}:1, needs 3:1"
            )
    problems += [f"{key}: never reached by Tab" for key in expected if key not in reached]
    return problems, min(reached.values(), default=0.0)


def test_the_contrast_and_focus_checks_find_what_they_are_for(browser: Any) -> None:
    """The measuring itself, on a page of known colours: #777 on white is 4.48:1 (too
    little for body text), #767676 4.54:1; #949494 is 3.03:1, enough only for large
    text; backgrounds are taken from ancestors and composed when translucent; opacity
    fades the text; text on an image is reported; hidden text is left out; a missing or
    faint focus indicator is found."""
    context = browser.new_context()
    page = context.new_page()
    page.set_content(
        """<!doctype html><html><head><style>
          #nofocus:focus-visible { outline: none; }
          #faint:focus-visible { outline: 2px solid #dddddd; }
          #ring:focus-visible { outline: none; box-shadow: 0 0 0 3px #0b57d0; }
          .sr { position: absolute; width: 1px; height: 1px; overflow: hidden;
                clip: rect(0 0 0 0); }
        </style></head><body style="margin:0;font-size:16px">
        <p id="grey77" style="color:#777777">grey 77</p>
        <p id="grey76" style="color:#767676">grey 76</p>
        <p id="large" style="color:#949494;font-size:24px">large</p>
        <p id="bold" style="color:#949494;font-size:19px;font-weight:700">large bold</p>
        <p id="small" style="color:#949494;font-size:19px">not large</p>
        <div style="background:#000"><div><span id="onblack" style="color:#fff">x</span></div>
          <p id="veil" style="background:rgba(255,255,255,0.5);color:#fff">veil</p></div>
        <p id="faded" style="opacity:0.4;color:#000">faded</p>
        <div style="background-image:linear-gradient(#000,#000)"><p id="onimage">img</p></div>
        <p class="sr" id="sr" style="color:#eee">for screen readers</p>
        <p hidden style="color:#eee">hidden</p>
        <progress max="100" value="5">5%</progress>
        <button disabled style="color:#eee;background:#fff">disabled</button>
        <a id="fine" href="#a">fine</a> <a id="nofocus" href="#b">none</a>
        <a id="faint" href="#c">faint</a> <button id="ring">ring</button>
        </body></html>"""
    )
    texts = {re.sub(r" .*", "", t.element): t for t in measure_texts(page)}
    failing = {name for name, t in texts.items() if t.problem()}
    assert failing == {"p#grey77", "p#small", "p#veil", "p#faded", "p#onimage"}, texts
    assert round(texts["p#grey77"].ratio, 2) == 4.48
    assert round(texts["p#grey76"].ratio, 2) == 4.54
    assert texts["span#onblack"].ratio == 21 and texts["span#onblack"].background == "#000000"
    assert texts["p#veil"].background == "#808080"
    assert texts["p#faded"].color == "#999999"
    assert "linear-gradient" in texts["p#onimage"].image
    assert not {"p#sr", "progress", "button"} & set(texts)
    problems, _ = focus_problems(page)
    assert len(problems) == 2, problems
    assert "a#nofocus" in problems[0] and "no outline or box-shadow" in problems[0]
    assert "a#faint" in problems[1] and "needs 3:1" in problems[1]
    page.set_content("<p>no link, no button</p>")
    assert focus_problems(page)[0] == ["nothing on the page can take the keyboard's focus"]
    context.close()


def test_every_state_page_has_readable_contrast_and_a_visible_focus(
    bank: Bank, browser: Any
) -> None:
    """Each state, in both languages, at phone and desktop width: every text on screen
    (links and buttons too) meets WCAG 2.1 AA contrast (4.5:1, large text 3:1), and Tab
    reaches every link and button with a visible focus indicator. The lowest ratios
    measured are written to $FAIRGATE_ARTIFACTS/contrast.json."""
    waiting, paused, soldout, closed, blocked, later = state_campaigns(bank, "ct")
    combos = [(lang, size) for lang in ("ko", "en") for size in SIZES]
    # one browser per language and width; each joins the campaign to be paused first
    pages: dict[tuple[str, str], Any] = {}
    for lang, size in combos:
        who = f"contrast-{lang}-{size}"
        bank.admin("POST", f"/admin/campaigns/{blocked}/block", {"customer": who})
        pages[lang, size] = customer_context(browser, bank, who, lang=lang, size=size).new_page()
        pages[lang, size].goto(f"{bank.url}/q/{paused}?lang={lang}")
        pages[lang, size].click("#fg-join")
        pages[lang, size].wait_for_selector("#fg-seq")
    bank.admin("POST", f"/admin/campaigns/{paused}/pause")

    problems: list[str] = []
    lowest: dict[str, TextContrast] = {}
    focus_lowest: dict[str, float] = {}
    measured: dict[str, int] = {}

    def check(page: Any, state: str, lang: str, size: str) -> None:
        words = STATE_WORDS[state][lang]
        until(lambda: words in text_of(page, "main"), f"{state} in {lang}")
        if state in ("waiting", "paused"):
            page.wait_for_selector("#fg-seq")
        where = f"{state} ({lang}, {size})"
        texts = measure_texts(page)
        assert texts, f"{where}: no text measured"
        problems.extend(f"{where}: {p}" for t in texts if (p := t.problem()))
        measured[state] = measured.get(state, 0) + len(texts)
        for text in texts:
            if text.ratio and (state not in lowest or text.ratio < lowest[state].ratio):
                lowest[state] = text
        focus, ratio = focus_problems(page)
        problems.extend(f"{where}: focus: {p}" for p in focus)
        focus_lowest[state] = min(focus_lowest.get(state, 99.0), ratio)

    for lang, size in combos:
        page = pages[lang, size]
        # (state, campaign to open, "" to stay on the page; whether to press join)
        visits = [
            ("join", waiting, False),
            ("waiting", "", True),
            ("prequeue", later, True),
            ("paused", paused, False),
            ("soldout", soldout, True),
            ("closed", closed, False),
            ("blocked", blocked, True),
        ]
        for state, campaign, join in visits:
            if campaign:
                page.goto(f"{bank.url}/q/{campaign}?lang={lang}")
            if join:
                page.click("#fg-join")
            check(page, state, lang, size)
        page.context.close()
    bank.redis.stop()
    try:
        for lang, size in combos:
            context = customer_context(
                browser, bank, f"contrast-{lang}-{size}", lang=lang, size=size
            )
            page = context.new_page()
            answer = page.goto(f"{bank.url}/q/{waiting}?lang={lang}")
            assert answer is not None and answer.status == 503
            check(page, "busy", lang, size)
            context.close()
    finally:
        bank.redis.start()
    # A restarted Redis is a new primary: the gate reconciles (503 reconciling) first.
    wait_gate_ready(bank.gate)
    bank.admin("POST", f"/admin/campaigns/{paused}/resume")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "contrast.json").write_text(
        json.dumps(
            {
                state: {
                    "texts_measured": measured[state],
                    "lowest_text_ratio": round(text.ratio, 2),
                    "lowest_text": f"{text.element} {text.color} on {text.background}",
                    "lowest_focus_indicator_ratio": round(focus_lowest[state], 2),
                }
                for state, text in lowest.items()
            },
            ensure_ascii=False,
            indent=2,
        )
    )
    assert set(lowest) == set(STATE_WORDS), lowest
    assert not problems, "\n".join(problems)
