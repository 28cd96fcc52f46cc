"""The waiting-room page: server-rendered HTML that works with JavaScript off, in Korean
and English, enhanced by `static/page.js` (which drives `static/fairgate.js`) when on.

Without JavaScript the page is a form that POSTs the join and a meta refresh (inside
<noscript>, so that the script's own polling is not doubled by a reload) at the interval
the gate asks for; an admitted customer gets a 303 to the campaign's target (or the
same-site URL they first asked for) with the pass cookie set. Every state is a page in
the chosen language, and so is every error a browser sees (`error_page`): never raw JSON.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gate.campaign import CampaignSpec

log = logging.getLogger("gate.http.page")

LANGS = ("ko", "en")
LANG_COOKIE = "fg_lang"
TICKET_COOKIE = "fg_ticket"
JOINED_COOKIE = "fg_joined"
STATIC_PREFIX = "/q/_static/"
FORM = "application/x-www-form-urlencoded"
# Korea keeps no daylight saving time: the opening is shown in KST for both languages.
KST = timezone(timedelta(hours=9), "KST")
MAX_RETURN = 2000
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}

# Every text of the page, whole in each language: a page never mixes the two.
TEXT: dict[str, dict[str, str]] = {
    "ko": {
        "room": "대기실",
        "switch": "English",
        "switch_lang": "en",
        "lead_join": "대기열에 참여하시면 도착한 순서대로 입장합니다.",
        "join": "대기열 참여하기",
        "lead_prequeue": (
            "오픈 전에 참여하신 분들은 오픈 시각에 공정하게 무작위로 순서가 정해집니다."
        ),
        "opens_at": "오픈 시각: {time}",
        "opens_in": "오픈까지 {time} 남았습니다.",
        "lead_waiting": "대기 중입니다. 이 창을 닫지 마세요. 새로 고쳐도 순서는 유지됩니다.",
        "lead_paused": (
            "입장이 잠시 멈췄습니다. 순서는 그대로 유지되며, 다시 시작되면 자동으로 진행됩니다."
        ),
        "lead_soldout": (
            "준비된 수량이 모두 소진되었습니다. 취소분이 생기면 이 페이지에서 알려 드립니다."
        ),
        "lead_closed": "이 프로모션은 마감되었습니다. 참여해 주셔서 감사합니다.",
        "lead_blocked": (
            "이 계정은 이 프로모션에 참여할 수 없습니다. 은행 고객센터로 문의해 주세요."
        ),
        "lead_busy": (
            "지금 접속이 많아 잠시 지연되고 있습니다. 이 창을 닫지 마세요. 순서는 유지되며 "
            "자동으로 다시 시도합니다."
        ),
        "lead_admitted": "입장 차례입니다. 상품 페이지로 이동합니다.",
        "lead_expired": "입장 가능 시간이 지났습니다.",
        "lead_claimed": "이미 신청을 마치셨습니다.",
        "lead_error": "요청을 처리하지 못했습니다. 잠시 후 다시 시도해 주세요.",
        "lead_identity": "먼저 은행에 로그인해 주세요.",
        "lead_not_found": "찾으시는 프로모션이 없습니다.",
        "continue": "계속하기",
        "try_again": "다시 시도",
        "position": "내 대기 순번",
        "position_value": "{n}번",
        "ahead": "앞에 {n}명",
        "progress": "진행률",
        "live_waiting": "내 대기 순번은 {n}번입니다. {eta}",
        "live_prequeue": "오픈을 기다리고 있습니다. {when}",
        "eta_s": "약 {n}초 남았습니다.",
        "eta_m": "약 {n}분 남았습니다.",
        "eta_m1": "약 1분 남았습니다.",
        "eta_unknown": "예상 시간을 계산하고 있습니다.",
        "eta_paused": "입장이 다시 시작되면 예상 시간을 알려 드립니다.",
        "duration": "{m}분 {s}초",
        "duration_s": "{s}초",
        "receipt": "접수 확인",
        "receipt_seq": "접수 번호 {seq}",
        "receipt_time": "접수 시각 {time}",
        "receipt_verify": "접수 증명 확인하기",
        "refresh_note": "이 페이지는 {n}초마다 자동으로 새로 고쳐집니다.",
        "logo": "로고",
        "code": "오류 코드",
    },
    "en": {
        "room": "Waiting room",
        "switch": "한국어",
        "switch_lang": "ko",
        "lead_join": "Join the queue and you will be let in in order of arrival.",
        "join": "Join the queue",
        "lead_prequeue": (
            "Everyone who joins before the opening gets a fair, random place when it opens."
        ),
        "opens_at": "Opens at {time}",
        "opens_in": "Opens in {time}.",
        "lead_waiting": "You are in the queue. Keep this page open; refreshing keeps your place.",
        "lead_paused": (
            "Admission is paused for a moment. Your place "
            "is kept, and the queue moves again by itself."
        ),
        "lead_soldout": (
            "Everything on offer has been taken. If some comes back, this page will tell you."
        ),
        "lead_closed": "This promotion has closed. Thank you for taking part.",
        "lead_blocked": "This account cannot take part in this promotion. Please contact the bank.",
        "lead_busy": (
            "We are busy right now. Keep this page open: your "
            "place is kept and the page tries again by itself."
        ),
        "lead_admitted": "It is your turn. Taking you to the product.",
        "lead_expired": "Your turn has expired.",
        "lead_claimed": "You have already made your request.",
        "lead_error": "We could not handle this request. Please try again in a moment.",
        "lead_identity": "Please sign in to the bank first.",
        "lead_not_found": "There is no such promotion.",
        "continue": "Continue",
        "try_again": "Try again",
        "position": "Your position",
        "position_value": "{n}",
        "ahead": "{n} ahead of you",
        "progress": "Progress",
        "live_waiting": "Your position is {n}. {eta}",
        "live_prequeue": "Waiting for the opening. {when}",
        "eta_s": "About {n} seconds left.",
        "eta_m": "About {n} minutes left.",
        "eta_m1": "About 1 minute left.",
        "eta_unknown": "Working out how long it will take.",
        "eta_paused": "We will show the wait again when admission resumes.",
        "duration": "{m} min {s} s",
        "duration_s": "{s} s",
        "receipt": "Your receipt",
        "receipt_seq": "Ticket number {seq}",
        "receipt_time": "Joined at {time}",
        "receipt_verify": "Verify your receipt",
        "refresh_note": "This page refreshes itself every {n} seconds.",
        "logo": "logo",
        "code": "Error code",
    },
}

# The error codes a browser may meet, and the text that explains each (else lead_error).
ERROR_LEADS = {
    "unavailable": "lead_busy",
    "blocked": "lead_blocked",
    "revoked": "lead_blocked",
    "campaign_closed": "lead_closed",
    "sold_out": "lead_soldout",
    "unknown_campaign": "lead_not_found",
    "not_found": "lead_not_found",
    "missing_customer": "lead_identity",
    "no_identity": "lead_identity",
    "bad_identity": "lead_identity",
    "untrusted_identity": "lead_identity",
    "pass_expired": "lead_expired",
}

# What the page shows for each state of the status answer.
STATES = ("join", "prequeue", "waiting", "paused", "soldout", "closed", "blocked", "busy")


@dataclass(frozen=True)
class PageContext:
    """What every page of one request shares: language, where to go back, the campaign."""

    lang: str
    return_to: str | None
    campaign: str | None = None
    spec: CampaignSpec | None = None


# -- request helpers -------------------------------------------------------------------


def quality(params: str) -> float:
    """The q of one Accept or Accept-Language entry from its parameters ("q=0.8;..."):
    1 when absent, 0 when it is no number."""
    q = 1.0
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.strip() == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
    return q


def prefers_html(request: web.Request) -> bool:
    """A browser's navigation (Accept lists text/html above JSON); fetch() and API
    clients (*/*, application/json, msgpack) get JSON."""
    html_q = json_q = 0.0
    for part in request.headers.get("Accept", "").split(","):
        media, _, params = part.strip().partition(";")
        media = media.strip().lower()
        q = quality(params)
        if media in ("text/html", "application/xhtml+xml"):
            html_q = max(html_q, q)
        elif media in ("application/json", "application/msgpack"):
            json_q = max(json_q, q)
    return html_q > 0 and html_q > json_q


def choose_lang(request: web.Request) -> str:
    """?lang= (the page's switch), then the fg_lang cookie it sets, then Accept-Language
    (highest q first); Korean when nothing says otherwise."""
    wanted = request.query.get("lang", "")
    if wanted in LANGS:
        return wanted
    cookie = request.cookies.get(LANG_COOKIE, "")
    if cookie in LANGS:
        return cookie
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(request.headers.get("Accept-Language", "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        q = quality(params)
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGS and q > 0:
            ranked.append((-q, index, primary))
    return min(ranked)[2] if ranked else "ko"


def safe_return(value: str | None) -> str | None:
    """The URL the customer first asked for, kept only when it is a path on this site:
    one leading slash (not // or /\\, which a browser reads as another host), printable
    ASCII, bounded. Anything else is dropped: no open redirect."""
    if not value or len(value) > MAX_RETURN:
        return None
    if not value.startswith("/") or value.startswith(("//", "/\\")):
        return None
    if not all(33 <= ord(ch) < 127 for ch in value) or "\\" in value:
        return None
    return value


def page_context(request: web.Request) -> PageContext:
    return PageContext(choose_lang(request), safe_return(request.query.get("return")))


def page_url(campaign: str, context: PageContext, **more: str) -> str:
    """The waiting page's own URL, keeping the language and the return path."""
    params = {"lang": context.lang}
    if context.return_to:
        params["return"] = context.return_to
    params.update(more)
    return f"/q/{campaign}?{urlencode(params)}"


def target_of(spec: CampaignSpec, context: PageContext) -> str:
    """Where an admitted customer goes: the URL they first asked for, else the campaign's
    target, else the site's front page."""
    return context.return_to or spec.target_url or "/"


def title_of(spec: CampaignSpec | None, lang: str) -> str:
    if spec is None or spec.title is None:
        return TEXT[lang]["room"]
    if isinstance(spec.title, str):
        return spec.title
    return spec.title.get(lang) or next(iter(spec.title.values()))


# -- numbers and times -----------------------------------------------------------------


def eta_text(lang: str, seconds: float | None) -> str:
    """An honest ETA: seconds below a minute (rounded up to 5 s), minutes above; rounding
    up keeps it from ever promising less than the measured rate allows."""
    text = TEXT[lang]
    if seconds is None:
        return text["eta_unknown"]
    if seconds < 60:
        return text["eta_s"].format(n=max(5, 5 * math.ceil(seconds / 5)))
    minutes = math.ceil(seconds / 60)
    return text["eta_m1"] if minutes == 1 else text["eta_m"].format(n=f"{minutes:,}")


def duration_text(lang: str, seconds: float) -> str:
    total = max(0, math.ceil(seconds))
    minutes, rest = divmod(total, 60)
    text = TEXT[lang]
    if minutes:
        return text["duration"].format(m=f"{minutes:,}", s=rest)
    return text["duration_s"].format(s=rest)


def time_text(moment: datetime) -> str:
    return moment.astimezone(KST).strftime("%Y-%m-%d %H:%M:%S KST")


# -- the page --------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _state_of(view: dict[str, Any] | None, campaign_state: str) -> str:
    if view is None:
        return "closed" if campaign_state == "closed" else "join"
    state = str(view.get("state"))
    if state == "waiting" and campaign_state == "paused":
        return "paused"
    if state in ("claimed", "expired", "admitted"):
        return state
    return state if state in STATES else "closed"


def render(
    context: PageContext,
    *,
    state: str,
    view: dict[str, Any] | None,
    ticket: str | None,
    joined_at: datetime | None,
    opens_at: datetime | None,
    templates_dir: Path | None,
    code: str | None = None,
    refresh_s: int | None = None,
    now: datetime | None = None,
) -> str:
    """One whole page in one language (`context.lang`). `now` is Redis's time as the
    gate knows it (the countdown's basis; this process's clock when not given)."""
    now = now or datetime.now(UTC)
    lang = context.lang
    text = TEXT[lang]
    spec = context.spec
    campaign = context.campaign
    title = title_of(spec, lang)
    parts: list[str] = [f'<h1 id="fg-title">{_esc(title)}</h1>']
    lead_key = {
        "join": "lead_join",
        "prequeue": "lead_prequeue",
        "waiting": "lead_waiting",
        "paused": "lead_paused",
        "soldout": "lead_soldout",
        "closed": "lead_closed",
        "blocked": "lead_blocked",
        "busy": "lead_busy",
        "admitted": "lead_admitted",
        "expired": "lead_expired",
        "claimed": "lead_claimed",
    }.get(state) or ERROR_LEADS.get(code or "", "lead_error")
    parts.append(f'<p class="fg-lead" id="fg-lead">{_esc(text[lead_key])}</p>')
    position = view.get("position") if view else None
    eta = view.get("eta_s") if view else None
    live = ""
    # The cards are always there (hidden when they do not apply): the script shows them
    # as the state changes, with no markup of its own.
    waiting = state in ("waiting", "paused") and isinstance(position, int)
    place = position if isinstance(position, int) else 0
    eta_line = text["eta_paused"] if state == "paused" else eta_text(lang, eta)
    mine = int(view["seq"]) if view and isinstance(view.get("seq"), int) else 0
    # how much of the queue up to this customer has gone in: only ever grows
    percent = 0 if mine <= 0 else round(100 * max(0, mine - place) / mine)
    parts.append(
        f'<section class="fg-card" id="fg-wait-card" aria-labelledby="fg-position-label"'
        f"{'' if waiting else ' hidden'}>"
        f'<p class="fg-label" id="fg-position-label">{_esc(text["position"])}</p>'
        '<p class="fg-big" id="fg-position">'
        f"{_esc(text['position_value'].format(n=f'{place:,}'))}</p>"
        f'<p class="fg-muted" id="fg-ahead">'
        f"{_esc(text['ahead'].format(n=f'{max(0, place - 1):,}'))}</p>"
        f'<label class="fg-label" for="fg-progress">{_esc(text["progress"])}</label>'
        f'<progress id="fg-progress" max="100" value="{percent}">{percent}%</progress>'
        f'<p class="fg-eta" id="fg-eta">{_esc(eta_line)}</p>'
        "</section>"
    )
    if waiting:
        live = text["live_waiting"].format(n=f"{place:,}", eta=eta_line)
    when = ""
    if opens_at is not None:
        remaining = (opens_at - now).total_seconds()
        when = text["opens_in"].format(time=duration_text(lang, remaining))
        opening = text["opens_at"].format(time=time_text(opens_at))
        parts.append(
            f'<section class="fg-card" id="fg-open-card"{"" if state == "prequeue" else " hidden"}>'
            f'<p class="fg-label">{_esc(opening)}</p>'
            f'<p class="fg-big" id="fg-countdown">{_esc(when)}</p>'
            "</section>"
        )
    if state == "prequeue":
        live = text["live_prequeue"].format(when=when)
    if state in ("busy", "paused", "soldout", "closed", "blocked") and not live:
        live = text[lead_key]
    parts.append(
        f'<p class="fg-live" id="fg-live" role="status" aria-live="polite">{_esc(live)}</p>'
    )
    if state == "join" and campaign is not None:
        hidden = f'<input type="hidden" name="lang" value="{_esc(lang)}">'
        if context.return_to:
            hidden += f'<input type="hidden" name="return" value="{_esc(context.return_to)}">'
        parts.append(
            # the language in the action too: a refused join's page is in it as well
            f'<form method="post" action="/q/{_esc(campaign)}/join?lang={lang}" id="fg-join-form">'
            f'{hidden}<button type="submit" id="fg-join">{_esc(text["join"])}</button></form>'
        )
    if state == "admitted" and spec is not None:
        parts.append(
            f'<p><a class="fg-button" id="fg-continue" href="{_esc(target_of(spec, context))}">'
            f"{_esc(text['continue'])}</a></p>"
        )
    if state in ("busy", "error") and campaign is not None:
        parts.append(
            f'<p><a class="fg-button" id="fg-retry" href="{_esc(page_url(campaign, context))}">'
            f"{_esc(text['try_again'])}</a></p>"
        )
    if code and state == "error":
        parts.append(f'<p class="fg-muted">{_esc(text["code"])}: <code>{_esc(code)}</code></p>')
    seq = view.get("seq") if view else None
    if campaign is not None and isinstance(seq, int) and seq > 0:
        receipt = [f'<li id="fg-seq">{_esc(text["receipt_seq"].format(seq=f"{seq:,}"))}</li>']
        if joined_at is not None:
            joined = text["receipt_time"].format(time=time_text(joined_at))
            receipt.append(f'<li id="fg-joined">{_esc(joined)}</li>')
        receipt.append(
            f'<li><a href="/q/{_esc(campaign)}/receipt/{seq}">'
            f"{_esc(text['receipt_verify'])}</a></li>"
        )
        parts.append(
            '<section class="fg-receipt" aria-labelledby="fg-receipt-title">'
            f'<h2 id="fg-receipt-title">{_esc(text["receipt"])}</h2>'
            f"<ul>{''.join(receipt)}</ul></section>"
        )
    if refresh_s is not None:
        parts.append(
            f'<noscript><p class="fg-muted">{_esc(text["refresh_note"].format(n=refresh_s))}</p>'
            "</noscript>"
        )
    data = {
        "campaign": campaign or "",
        "state": state,
        "lang": lang,
        "ticket": ticket or "",
        "target": target_of(spec, context) if spec is not None else "",
        "opens_at": opens_at.isoformat() if opens_at is not None else "",
        # the gate's time (ms): the script counts down by it, not by the device's clock
        "now": round(now.timestamp() * 1000),
        "position": position if isinstance(position, int) else "",
        "seq": seq if isinstance(seq, int) else "",
        "eta": eta if isinstance(eta, int | float) else "",
        "refresh": refresh_s if refresh_s is not None else "",
    }
    attributes = " ".join(f'data-{key.replace("_", "-")}="{_esc(v)}"' for key, v in data.items())
    body = f'<main id="fairgate" class="fg-main" {attributes}>{"".join(parts)}</main>'
    switch_lang = text["switch_lang"]
    switch_href = (
        page_url(campaign, context, lang=switch_lang) if campaign else f"?lang={switch_lang}"
    )
    logo = ""
    if spec is not None and spec.page is not None and spec.page.logo_url:
        alt = f"{title} {text['logo']}"
        logo = f'<img class="fg-logo" src="{_esc(spec.page.logo_url)}" alt="{_esc(alt)}">'
    header = (
        f'<header class="fg-header">{logo}<span class="fg-room">{_esc(text["room"])}</span>'
        f'<a class="fg-switch" id="fg-switch" lang="{switch_lang}" hreflang="{switch_lang}" '
        f'href="{_esc(switch_href)}">{_esc(text["switch"])}</a></header>'
    )
    strings = json.dumps({k: v for k, v in text.items()}, ensure_ascii=False).replace("</", "<\\/")
    head = (
        f'<link rel="stylesheet" href="{STATIC_PREFIX}fairgate.css">'
        f'<script type="application/json" id="fg-text">{strings}</script>'
    )
    if campaign is not None:
        head += f'<script type="module" src="{STATIC_PREFIX}page.js"></script>'
    if refresh_s is not None:
        refresh_url = page_url(campaign, context) if campaign else ""
        content = f"{refresh_s}; url={refresh_url}" if refresh_url else str(refresh_s)
        head += f'<noscript><meta http-equiv="refresh" content="{_esc(content)}"></noscript>'
    template = _template(spec, templates_dir)
    page_title = f"{title} · {text['room']}"
    if template is not None:
        return (
            template.replace("{{lang}}", _esc(lang))
            .replace("{{title}}", _esc(page_title))
            .replace("{{fairgate_head}}", head)
            .replace("{{fairgate_body}}", header + body)
        )
    return (
        f'<!doctype html>\n<html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(page_title)}</title>{head}</head>"
        f'<body class="fg-state-{_esc(state)}">{header}{body}</body></html>\n'
    )


def _template(spec: CampaignSpec | None, templates_dir: Path | None) -> str | None:
    """The campaign's own HTML around the page (spec.page.template under
    config.page_templates_dir); the default layout when it is not there."""
    if spec is None or spec.page is None or not spec.page.template or templates_dir is None:
        return None
    path = templates_dir / spec.page.template
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("event=page_template_unreadable campaign=%s error=%s", spec.id, exc)
        return None
    if "{{fairgate_body}}" not in text:
        log.warning("event=page_template_without_body campaign=%s", spec.id)
        return None
    return text


def html_response(
    body: str,
    status: int = 200,
    *,
    lang: str,
    refresh_s: int | None = None,
    refresh_url: str | None = None,
) -> web.Response:
    headers = {
        "Cache-Control": "no-store",
        "Content-Language": lang,
        "Vary": "Accept, Accept-Language, Cookie",
    }
    if refresh_s is not None and refresh_url is not None:
        headers["Retry-After"] = str(refresh_s)
    return web.Response(
        text=body, status=status, content_type="text/html", charset="utf-8", headers=headers
    )


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def refresh_seconds(poll_after_ms: Any) -> int | None:
    if not isinstance(poll_after_ms, int | float) or poll_after_ms <= 0:
        return None
    return max(1, min(60, math.ceil(poll_after_ms / 1000)))


def waiting_page(
    request: web.Request,
    *,
    campaign: str,
    spec: CampaignSpec,
    campaign_state: str,
    view: dict[str, Any] | None,
    ticket: str | None,
    templates_dir: Path | None,
    now: datetime | None = None,
) -> web.StreamResponse:
    """The page for a ticket's view (None: not joined yet); a 303 to the target once
    admitted. The caller sets the pass cookie on an admitted answer. `now`: Redis's time
    as the gate knows it."""
    now = now or datetime.now(UTC)
    context = dataclasses.replace(page_context(request), campaign=campaign, spec=spec)
    state = _state_of(view, campaign_state)
    if state == "admitted":
        going = see_other(target_of(spec, context))
        remember_lang(request, going, campaign)
        return going
    refresh_s = refresh_seconds(view.get("poll_after_ms")) if view else None
    joined_at = joined_time(request)
    page = render(
        context,
        state=state,
        view=view,
        ticket=ticket,
        joined_at=joined_at if view else None,
        opens_at=spec.opens_at if spec.opens_at > now else None,
        templates_dir=templates_dir,
        refresh_s=refresh_s,
        now=now,
    )
    response = html_response(page, lang=context.lang)
    remember_lang(request, response, campaign)
    return response


def error_page(
    request: web.Request,
    status: int,
    code: str,
    *,
    spec: CampaignSpec | None = None,
    retry_after_s: int | None = None,
    templates_dir: Path | None = None,
) -> web.Response:
    """An error as a page in the browser's language: the busy page for a 503 (which
    reloads itself), the closed, blocked or sign-in page for their codes."""
    campaign = request.match_info.get("campaign")
    if campaign is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", campaign):
        campaign = None
    context = dataclasses.replace(page_context(request), campaign=campaign, spec=spec)
    state = {
        "unavailable": "busy",
        "blocked": "blocked",
        "revoked": "blocked",
        "campaign_closed": "closed",
    }.get(code, "busy" if status == 503 else "error")
    refresh_s = None
    if state == "busy":
        refresh_s = max(1, min(60, retry_after_s or 2))
    page = render(
        context,
        state=state,
        view=None,
        ticket=None,
        joined_at=None,
        opens_at=None,
        templates_dir=templates_dir,
        code=code,
        refresh_s=refresh_s,
    )
    if refresh_s is not None and campaign is None:
        # no campaign to go back to: reload the same address (a GET) after the wait
        page = page.replace(
            "</head>",
            f'<noscript><meta http-equiv="refresh" content="{refresh_s}"></noscript></head>',
            1,
        )
    response = html_response(page, status, lang=context.lang)
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    return response


def remember_lang(request: web.Request, response: web.StreamResponse, campaign: str) -> None:
    """The switch's choice, kept for the campaign's later pages (and refreshes)."""
    wanted = request.query.get("lang", "")
    if wanted in LANGS and request.cookies.get(LANG_COOKIE) != wanted:
        response.set_cookie(
            LANG_COOKIE, wanted, path=f"/q/{campaign}", samesite="Lax", max_age=86400 * 30
        )


def joined_time(request: web.Request) -> datetime | None:
    raw = request.cookies.get(JOINED_COOKIE, "")
    if not raw.isdigit() or len(raw) > 12:
        return None
    try:
        return datetime.fromtimestamp(int(raw), UTC)
    except (OverflowError, OSError, ValueError):
        return None


def set_ticket_cookies(
    response: web.StreamResponse, campaign: str, body: dict[str, Any], *, secure: bool
) -> None:
    """The ticket a join answered, kept HttpOnly for the campaign's paths: a reload, a
    second tab or the no-JS page find it there (one customer, one ticket)."""
    ticket = body.get("ticket")
    if not isinstance(ticket, str):
        return
    path = f"/q/{campaign}"
    response.set_cookie(
        TICKET_COOKIE,
        ticket,
        path=path,
        httponly=True,
        secure=secure,
        samesite="Lax",
        max_age=86400 * 2,
    )
    receipt = body.get("receipt")
    if isinstance(receipt, dict) and isinstance(receipt.get("t"), int):
        seconds = int(receipt["t"]) // 1_000_000
        response.set_cookie(
            JOINED_COOKIE,
            str(seconds),
            path=path,
            httponly=True,
            secure=secure,
            samesite="Lax",
            max_age=86400 * 2,
        )


def page_ticket(request: web.Request) -> str | None:
    """The ticket the page shows: ?ticket= (a link an app hands over), else the cookie."""
    text = request.query.get("ticket") or request.cookies.get(TICKET_COOKIE) or ""
    return text if 0 < len(text) <= 512 else None


def is_page_form(request: web.Request) -> bool:
    """The no-JS page's own join form."""
    return request.content_type == FORM


async def form_context(request: web.Request) -> PageContext:
    """The language and return path the no-JS form carries (hidden fields)."""
    form = await request.post()
    lang = form.get("lang")
    ret = form.get("return")
    return PageContext(
        lang if isinstance(lang, str) and lang in LANGS else choose_lang(request),
        safe_return(ret if isinstance(ret, str) else None),
    )


def after_form_join(
    request: web.Request, campaign: str, context: PageContext, body: dict[str, Any], *, secure: bool
) -> web.StreamResponse:
    """A join from the no-JS form: back to the page (303), which now finds the ticket."""
    response = see_other(page_url(campaign, context))
    set_ticket_cookies(response, campaign, body, secure=secure)
    return response


# -- static files ------------------------------------------------------------------------

STATIC_FILES = ("fairgate.js", "page.js", "fairgate.css")


def load_static() -> dict[str, bytes]:
    """The page's script and style sheet, read once from the package."""
    root = resources.files("gate.http").joinpath("static")
    return {name: root.joinpath(name).read_bytes() for name in STATIC_FILES}


def static_response(files: dict[str, bytes], name: str) -> web.Response:
    body = files.get(name)
    if body is None:
        raise web.HTTPNotFound()
    suffix = name[name.rindex(".") :]
    return web.Response(
        body=body,
        content_type=_STATIC_TYPES[suffix],
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )
