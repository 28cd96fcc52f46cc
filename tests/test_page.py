"""The waiting page, server side (aiohttp client): every state a page in Korean and
English, the no-script join and refresh, the redirect of an admitted customer with the
pass cookie, errors as pages for browsers (JSON stays for API clients), the spec's page
fields, the static files and the OpenAPI document."""

from __future__ import annotations

import itertools
import re
import time
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from gate.campaign import parse_spec
from gate.errors import BadRequest
from gate.http.page import choose_lang, eta_text, prefers_html, safe_return
from gate.http.public import create_public_app
from gate.service import Gate
from tests.helpers import admitted_pass, spec, wait_for

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
TITLE = {"ko": "정기예금 연 5% 특판", "en": "5% fixed deposit"}


class Page(HTMLParser):
    """What a test reads from a page: lang, h1, the live region, the form, the refresh."""

    def __init__(self, text: str):
        super().__init__()
        self.lang = ""
        self.h1 = ""
        self.live = ""
        self.lead = ""
        self.refresh = ""
        self.forms: list[str] = []
        self.hidden: set[str] = set()
        self.switch_lang = ""
        self._in: list[str] = []
        self.text = text
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "html":
            self.lang = a.get("lang", "")
        if tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            self.refresh = a.get("content", "")
        if tag == "form":
            self.forms.append(a.get("action", ""))
        if "hidden" in a and "id" in a:
            self.hidden.add(a["id"])
        if a.get("id") == "fg-switch":
            self.switch_lang = a.get("lang", "")
        key = "h1" if tag == "h1" else a.get("id", "")
        self._in.append(key)

    def handle_endtag(self, tag: str) -> None:
        if self._in:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        if "h1" in self._in:
            self.h1 += data
        if "fg-live" in self._in:
            self.live += data
        if "fg-lead" in self._in:
            self.lead += data


async def wait_cursor(gate: Gate, campaign: str, cursor: int) -> None:
    """Until this process's cache has seen `cursor` customers admitted."""

    async def reached() -> bool:
        live = gate.cache.peek(campaign)
        return live is not None and live.state.cursor >= cursor

    await wait_for(reached, 5, f"{campaign}'s cursor at {cursor}")


def page_spec(campaign: str, **admission: Any) -> dict[str, Any]:
    body = spec(campaign, **admission)
    body["title"] = TITLE
    return body


async def create(admin: Any, body: dict[str, Any]) -> None:
    r = await admin.post("/admin/campaigns", json=body)
    assert r.status == 201, await r.text()


def origin(public: Any) -> str:
    """The Origin a browser sends from the gate's own pages."""
    return str(public.make_url("/")).rstrip("/")


async def form_join(
    public: Any, campaign: str, customer: str, query: str = "", **fields: str
) -> Any:
    """The no-script form's POST, as a browser sends it (same-origin Origin)."""
    return await public.post(
        f"/q/{campaign}/join{query}",
        data={"lang": "ko", **fields},
        headers={"X-Customer-Id": customer, "Origin": origin(public), **BROWSER},
        allow_redirects=False,
    )


async def get_page(public: Any, path: str, customer: str | None, lang: str = "ko") -> Any:
    headers = {**BROWSER, "Accept-Language": lang}
    if customer is not None:
        headers["X-Customer-Id"] = customer
    return await public.get(path, headers=headers, allow_redirects=False)


# -- pure helpers ------------------------------------------------------------------------


def test_eta_says_seconds_below_a_minute_and_never_goes_up_as_it_falls() -> None:
    # the old page never went below "about 1 min"
    assert eta_text("en", 12) == "About 15 seconds left."
    assert eta_text("ko", 40) == "약 40초 남았습니다."
    assert eta_text("en", 60) == "About 1 minute left."
    assert eta_text("en", 61) == "About 2 minutes left."
    assert eta_text("en", 1) == "About 5 seconds left."
    # as the seconds fall (the rate holds), the words never promise more time
    shown = [eta_text("en", s) for s in range(600, 0, -1)]

    def seconds(text: str) -> int:
        n = int(re.sub(r"\D", "", text) or 1)
        return n * 60 if "minute" in text else n

    values = [seconds(t) for t in shown]
    assert all(a >= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("/product/deposit?x=1", True),
        ("/", True),
        ("//evil.example/x", False),
        ("/\\evil.example", False),
        ("https://evil.example/", False),
        ("javascript:alert(1)", False),
        ("/a b", False),
        ("/" + "a" * 3000, False),
        ("", False),
    ],
)
def test_return_is_kept_only_as_a_same_site_path(value: str, kept: bool) -> None:
    assert (safe_return(value) == value) is kept


def test_accept_and_language_negotiation() -> None:
    def request(**headers: str) -> web.Request:
        from aiohttp.test_utils import make_mocked_request

        return make_mocked_request("GET", "/q/c1", headers=headers)

    assert prefers_html(request(**BROWSER))
    assert not prefers_html(request(Accept="*/*"))
    assert not prefers_html(request(Accept="application/json"))
    assert not prefers_html(request(Accept="application/json, text/html;q=0.5"))
    assert not prefers_html(request())
    assert choose_lang(request(**{"Accept-Language": "en-US,en;q=0.9,ko;q=0.8"})) == "en"
    assert choose_lang(request(**{"Accept-Language": "ko-KR,ko;q=0.9,en;q=0.8"})) == "ko"
    assert choose_lang(request(**{"Accept-Language": "fr, en;q=0.5"})) == "en"
    assert choose_lang(request(**{"Accept-Language": "fr"})) == "ko"
    assert choose_lang(request(**{"Accept-Language": "en;q=0.1, ko;q=0.2"})) == "ko"


def test_spec_page_fields_are_validated_naming_the_field() -> None:
    good = page_spec("c1")
    good["target_url"] = "https://promo.bank.example/deposit"
    good["page"] = {"template": "promo.html", "logo_url": "/static/logo.svg"}
    parsed = parse_spec(good)
    assert parsed.title == TITLE and parsed.target_url == good["target_url"]
    assert parse_spec(parsed.to_json()) == parsed
    # a spec without them is stored exactly as before
    assert "title" not in parse_spec(spec("c2")).to_json()
    bad: list[tuple[str, Any, str]] = [
        ("title", "x" * 201, "title:"),
        ("title", {"fr": "x"}, "title.fr:"),
        ("title", {}, "title:"),
        ("title", 5, "title:"),
        ("target_url", "javascript:alert(1)", "target_url:"),
        ("target_url", "//evil.example/", "target_url:"),
        ("target_url", "https:///nohost", "target_url:"),
        ("page", {"template": "../etc/passwd"}, "page.template:"),
        ("page", {"template": "a/b.html"}, "page.template:"),
        ("page", {"logo_url": "data:image/png;base64,AA"}, "page.logo_url:"),
        ("page", {"colour": "red"}, "page.colour:"),
    ]
    for field, value, message in bad:
        body = page_spec("c1")
        body[field] = value
        with pytest.raises(BadRequest) as caught:
            parse_spec(body)
        assert caught.value.message.startswith(message), (field, value, caught.value.message)


# -- the page, end to end through the public listener ------------------------------------


async def test_the_heading_is_the_title_in_the_chosen_language(public: Any, admin: Any) -> None:
    await create(admin, page_spec("c1"))
    r = await get_page(public, "/q/c1", "kim", lang="en-US,en;q=0.9")
    assert r.status == 200 and r.content_type == "text/html"
    assert r.headers["Cache-Control"] == "no-store"
    page = Page(await r.text())
    assert page.lang == "en" and page.h1 == TITLE["en"]
    assert page.switch_lang == "ko"  # the switch names its language in that language
    assert not re.search("[가-힣]", page.lead)  # every text of an English page in English
    r = await get_page(public, "/q/c1", "kim", lang="ko")
    page = Page(await r.text())
    assert page.lang == "ko" and page.h1 == TITLE["ko"] and "c1" not in page.h1
    # the switch wins over Accept-Language, and is remembered for the campaign's pages
    r = await get_page(public, "/q/c1?lang=en", "kim", lang="ko")
    assert Page(await r.text()).lang == "en"
    assert r.cookies["fg_lang"].value == "en"
    r = await get_page(public, "/q/c1", "kim", lang="ko")
    assert Page(await r.text()).lang == "en"
    # without a title the heading is the room's name, never the campaign id
    await create(admin, spec("untitled"))
    r = await get_page(public, "/q/untitled", "kim", lang="en")
    assert Page(await r.text()).h1 == "Waiting room"


async def test_no_script_join_wait_and_admission_to_the_url_first_asked_for(
    gate: Gate, public: Any, admin: Any
) -> None:
    await create(admin, page_spec("c1", max_active=1))
    await form_join(public, "c1", "first")  # takes the one place there is
    await wait_cursor(gate, "c1", 1)
    r = await form_join(public, "c1", "kim", **{"return": "/product/deposit?from=ad"})
    assert r.status == 303, await r.text()
    location = r.headers["Location"]
    assert urlsplit(location).path == "/q/c1"
    assert parse_qs(urlsplit(location).query)["return"] == ["/product/deposit?from=ad"]
    assert r.cookies["fg_ticket"]["httponly"] and r.cookies["fg_ticket"]["path"] == "/q/c1"

    r = await get_page(public, location, "kim")
    assert r.status == 200
    page = Page(await r.text())
    # position 1 (first is admitted): said in the live region, with the ETA
    assert "1번" in page.live and "fg-wait-card" not in page.hidden
    seconds, _, url = page.refresh.partition("; url=")
    assert 1 <= int(seconds) <= 60 and url.startswith("/q/c1?")
    assert '<noscript><meta http-equiv="refresh"' in page.text  # not doubled under JS
    assert "/q/c1/receipt/2" in page.text

    r = await admin.patch("/admin/campaigns/c1", json={"max_active": 2})
    assert r.status == 200, await r.text()
    answer: dict[str, Any] = {}

    async def sent_on() -> bool:
        r = await get_page(public, location, "kim")
        answer.update(status=r.status, location=r.headers.get("Location"), r=r)
        return r.status == 303

    await wait_for(sent_on, 5, "the page to send kim on")
    assert answer["location"] == "/product/deposit?from=ad"
    pass_cookie = answer["r"].cookies["fg_pass"]
    assert pass_cookie["httponly"] and pass_cookie.value


async def test_an_admitted_customer_goes_to_the_target_url_and_never_off_site(
    public: Any, admin: Any
) -> None:
    body = page_spec("c1")
    body["target_url"] = "https://promo.bank.example/deposit"
    await create(admin, body)
    r = await form_join(public, "c1", "kim", **{"return": "//evil.example/steal"})
    location = r.headers["Location"]
    assert "evil" not in location
    answer: dict[str, Any] = {}

    async def sent_on() -> bool:
        r = await get_page(public, location, "kim")
        answer.update(location=r.headers.get("Location", ""))
        return r.status == 303

    await wait_for(sent_on, 5, "admission")
    assert answer["location"] == "https://promo.bank.example/deposit"


async def test_two_tabs_of_one_customer_are_one_ticket(public: Any, admin: Any) -> None:
    await create(admin, page_spec("c1", rate_per_s=0.001, burst=1))
    await form_join(public, "c1", "first")
    public.session.cookie_jar.clear()
    # the first tab's script joins (a browser's fetch carries the page's Origin)
    r = await public.post("/q/c1/join", headers={"X-Customer-Id": "kim", "Origin": origin(public)})
    seq = (await r.json())["seq"]
    # the second tab: the same browser (its cookie) shows the same ticket...
    r = await get_page(public, "/q/c1", "kim")
    page = Page(await r.text())
    assert f"접수 번호 {seq}" in page.text and f'data-seq="{seq}"' in page.text
    # ...and its own join (a click in each tab) is the same ticket again
    r = await form_join(public, "c1", "kim")
    assert r.status == 303
    # the page's script sends its Origin (the browser does)
    r = await public.post("/q/c1/join", headers={"X-Customer-Id": "kim", "Origin": origin(public)})
    assert (await r.json())["seq"] == seq and r.status == 200
    # another customer on the same computer does not see kim's ticket
    r = await get_page(public, "/q/c1", "lee")
    page = Page(await r.text())
    assert "fg-join-form" not in page.hidden and page.forms == ["/q/c1/join?lang=ko"]
    assert f'data-seq="{seq}"' not in page.text


async def test_paused_soldout_closed_and_blocked_are_pages_in_both_languages(
    gate: Gate, public: Any, admin: Any
) -> None:
    body = page_spec("c1", pass_ttl_s=600)
    body["quota"] = {"unit": "item", "total": 1}  # first is admitted, kim waits behind
    await create(admin, body)
    pass_token = await admitted_pass(public, "c1", "first")
    await form_join(public, "c1", "kim")

    async def lead(lang: str) -> Page:
        r = await get_page(public, "/q/c1", "kim", lang=lang)
        assert r.status == 200, await r.text()
        return Page(await r.text())

    r = await admin.post("/admin/campaigns/c1/pause")
    assert r.status == 200
    await gate.cache.refresh_once()
    ko, en = await lead("ko"), await lead("en")
    assert "멈췄습니다" in ko.lead and "paused" in en.lead and "1번" in ko.live
    # an app's status poll says so too (the page's script shows the same)
    app = {"X-Customer-Id": "kim", "Origin": origin(public)}
    ticket = (await (await public.post("/q/c1/join", headers=app)).json())["ticket"]
    r = await public.get("/q/c1/status", params={"ticket": ticket}, headers=app)
    paused_answer = await r.json()
    assert paused_answer["state"] == "waiting" and paused_answer["paused"] is True
    document = await (await public.get("/openapi.json")).json()
    assert set(paused_answer) <= set(document["components"]["schemas"]["Status"]["properties"])
    assert "paused" in en.live.lower() or "resumes" in en.live

    r = await admin.post("/admin/campaigns/c1/resume")
    assert r.status == 200
    r = await public.post(
        "/q/c1/claim",
        json={"amount": "1", "idempotency_key": "k1"},
        headers={"X-Gate-Pass": pass_token, "X-Customer-Id": "first", "Origin": origin(public)},
    )
    assert r.status == 201, await r.text()
    await gate.cache.refresh_once()
    ko, en = await lead("ko"), await lead("en")
    assert "소진" in ko.lead and "taken" in en.lead and ko.lang == "ko" and en.lang == "en"

    r = await admin.post("/admin/campaigns/c1/block", json={"customer": "kim"})
    assert r.status == 200
    ko, en = await lead("ko"), await lead("en")
    assert "참여할 수 없습니다" in ko.lead and "cannot take part" in en.lead

    r = await admin.post("/admin/campaigns/c1/close")
    assert r.status == 200
    await gate.cache.refresh_once()
    r = await get_page(public, "/q/c1", "lee", lang="en")
    assert "closed" in Page(await r.text()).lead
    # a join from the form of a closed campaign: a page in the language, not JSON
    r = await form_join(public, "c1", "lee", query="?lang=en", lang="en")
    assert r.status == 409 and r.content_type == "text/html"
    page = Page(await r.text())
    assert page.lang == "en" and "closed" in page.lead and page.h1 == TITLE["en"]


async def test_prequeue_page_counts_down_to_the_opening(public: Any, admin: Any) -> None:
    now = datetime.now(UTC)
    body = page_spec("later")
    body["opens_at"] = (now + timedelta(minutes=10)).isoformat()
    body["closes_at"] = (now + timedelta(hours=2)).isoformat()
    body["prequeue"] = {"window_s": 3600}
    await create(admin, body)
    r = await form_join(public, "later", "kim")
    assert r.status == 303
    r = await get_page(public, "/q/later", "kim", lang="en")
    page = Page(await r.text())
    assert "random place" in page.lead
    assert re.search(r"Opens in (9|10) min", page.live), page.live
    assert "KST" in page.text and "fg-open-card" not in page.hidden


async def test_busy_is_a_page_for_browsers_and_json_for_apps(
    gate: Gate, public: Any, admin: Any
) -> None:
    await create(admin, page_spec("c1"))
    ticket = (await (await public.post("/q/c1/join", headers={"X-Customer-Id": "kim"})).json())[
        "ticket"
    ]
    gate.cache.last_error = time.monotonic() + 3600  # as after a refresh that failed
    try:
        r = await get_page(public, "/q/c1", "kim", lang="ko")
        assert r.status == 503 and r.content_type == "text/html"
        assert r.headers["Retry-After"]
        page = Page(await r.text())
        assert page.lang == "ko" and "창을 닫지 마세요" in page.lead and page.h1 == TITLE["ko"]
        assert page.refresh.startswith(r.headers["Retry-After"])
        assert "창을 닫지 마세요" in page.live
        r = await get_page(public, "/q/c1", "kim", lang="en")
        page = Page(await r.text())
        assert "keep this page open" in page.lead.lower() and "{" not in r.headers["Retry-After"]
        # an app (fetch, curl) still gets the JSON error
        r = await public.get(
            "/q/c1/status",
            params={"ticket": ticket},
            headers={"Accept": "*/*", "X-Customer-Id": "kim"},
        )
        assert r.status == 503 and (await r.json())["error"]["code"] == "unavailable"
    finally:
        gate.cache.last_error = 0.0


async def test_errors_for_browsers_are_pages_never_raw_json(public: Any, admin: Any) -> None:
    r = await get_page(public, "/q/no-such", "kim", lang="en")
    assert r.status == 404 and r.content_type == "text/html"
    assert "no such promotion" in Page(await r.text()).lead
    r = await public.get("/q/no-such", headers={"Accept": "application/json"})
    assert r.status == 404 and r.content_type == "application/json"  # an API client's
    r = await public.get("/q/no-such/status?ticket=x", headers={"Accept": "application/json"})
    assert r.content_type == "application/json"


async def test_a_campaign_template_and_logo_wrap_the_page(
    gate: Gate, admin: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    import dataclasses

    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "promo.html").write_text(
        '<!doctype html><html lang="{{lang}}"><head><title>{{title}}</title>{{fairgate_head}}'
        '</head><body><div class="bank-chrome">BANK</div>{{fairgate_body}}</body></html>',
        encoding="utf-8",
    )
    gate.config = dataclasses.replace(gate.config, page_templates_dir=templates)
    client = await aiohttp_client(create_public_app(gate))
    body = page_spec("c1")
    body["page"] = {"template": "promo.html", "logo_url": "/img/logo.svg"}
    await create(admin, body)
    r = await get_page(client, "/q/c1", "kim", lang="en")
    text = await r.text()
    assert 'class="bank-chrome"' in text and 'src="/img/logo.svg"' in text
    assert Page(text).h1 == TITLE["en"] and Page(text).lang == "en"
    # a template that is not there: the default page, not an error
    body = page_spec("c2")
    body["page"] = {"template": "missing.html"}
    await create(admin, body)
    r = await get_page(client, "/q/c2", "kim", lang="en")
    assert r.status == 200 and Page(await r.text()).h1 == TITLE["en"]


async def test_static_files_and_the_openapi_document(public: Any) -> None:
    r = await public.get("/q/_static/fairgate.js")
    assert r.status == 200 and r.content_type == "text/javascript"
    text = await r.text()
    # dependency-free: no import statement outside the usage comment
    assert "export class Fairgate" in text
    assert not [line for line in text.splitlines() if line.startswith("import")]
    r = await public.get("/q/_static/page.js")
    assert r.status == 200 and 'from "./fairgate.js"' in await r.text()
    r = await public.get("/q/_static/fairgate.css")
    assert r.status == 200 and r.content_type == "text/css"
    r = await public.get("/q/_static/nope.js")
    assert r.status == 404
    r = await public.get("/openapi.json")
    assert r.status == 200
    document = await r.json()
    assert document["openapi"].startswith("3.")
    routes = {
        resource.canonical
        for resource in public.server.app.router.resources()
        if hasattr(resource, "canonical")
    }
    for path in document["paths"]:
        assert path in routes, path


async def test_join_and_status_answers_match_the_openapi_document(public: Any, admin: Any) -> None:
    await create(admin, page_spec("c1"))
    document = await (await public.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    r = await public.post("/q/c1/join", headers={"X-Customer-Id": "kim"})
    joined = await r.json()
    assert set(schemas["JoinAnswer"]["required"]) <= set(joined)
    assert set(joined) <= set(schemas["JoinAnswer"]["properties"])
    answer: dict[str, Any] = {}

    async def admitted() -> bool:
        r = await public.get(
            "/q/c1/status",
            params={"ticket": joined["ticket"]},
            headers={"X-Customer-Id": "kim"},
        )
        answer.clear()
        answer.update(await r.json())
        return answer.get("state") == "admitted"

    await wait_for(admitted, 5, "admission")
    assert set(answer) <= set(schemas["Status"]["properties"])
    public.session.cookie_jar.clear()  # an app keeps no cookies: the pass is its header
    r = await public.post(
        "/q/c1/claim",
        json={"amount": "1"},
        headers={"X-Gate-Pass": answer["pass"], "X-Customer-Id": "kim"},
    )
    assert r.status == 201, await r.text()
    assert set(await r.json()) <= set(schemas["Reservation"]["properties"])
