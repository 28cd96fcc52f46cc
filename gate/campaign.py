"""The campaign spec: parsed and validated once, with errors that name the field."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from gate.errors import BadRequest

MAX_AMOUNT = 10**30 - 1
# min and step are divisors inside Lua, where they must stay exact doubles.
SMALL_LIMIT = 10**13
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
CAMPAIGN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def valid_campaign_id(campaign: str) -> bool:
    """A campaign id is also a Redis hash tag and a path segment: keep it plain."""
    return bool(CAMPAIGN_ID_RE.fullmatch(campaign))


def _fail(field: str, message: str) -> BadRequest:
    return BadRequest(f"{field}: {message}", code="bad_spec")


def _obj(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(field, "must be an object")
    return value


def _only(obj: dict[str, Any], allowed: set[str], field: str) -> None:
    unknown = sorted(str(key) for key in set(obj) - allowed)  # msgpack keys may be bytes
    if unknown:
        where = f"{field}.{unknown[0]}" if field else unknown[0]
        raise _fail(where, "unknown field")


def parse_zoned(text: str) -> datetime:
    """ISO 8601 with a zone (2026-12-01T00:00:00Z, +09:00) -> an aware UTC datetime;
    ValueError with the reason otherwise."""
    if len(text) > 40:
        raise ValueError("must be an ISO 8601 time with a zone, e.g. 2026-12-01T00:00:00Z")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise ValueError("must carry a time zone (Z or +09:00)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range") from None


def parse_time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise _fail(field, "must be an ISO 8601 time with a zone, e.g. 2026-12-01T00:00:00Z")
    try:
        moment = parse_zoned(value)
    except ValueError as exc:
        raise _fail(field, str(exc)) from None
    # Times travel to Lua in microseconds, exact only below 2^53 (the year 2255).
    if not EARLIEST <= moment < LATEST:
        raise _fail(field, "must be between the years 2000 and 2199")
    return moment


def parse_amount(value: Any, field: str) -> int:
    """An integer amount in the smallest unit, given as an integer or a decimal string."""
    if isinstance(value, bool):
        raise _fail(field, "must be an integer or a decimal string")
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 30:
        amount = int(value)
    else:
        raise _fail(field, "must be an integer or a decimal string")
    if amount < 0 or amount > MAX_AMOUNT:
        raise _fail(field, "out of range")
    return amount


def _number(value: Any, field: str, *, lo: float, hi: float, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(field, "must be a number")
    if integer and not (isinstance(value, int) or float(value).is_integer()):
        raise _fail(field, "must be a whole number")
    if not lo <= value <= hi:
        raise _fail(field, f"must be between {lo:g} and {hi:g}")
    return value


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    return int(_number(value, field, lo=lo, hi=hi, integer=True))


@dataclass(frozen=True)
class Quota:
    unit: str
    total: int
    min: int
    max: int
    step: int
    partial_fill: bool = False


@dataclass(frozen=True)
class Admission:
    rate_per_s: float
    burst: int
    max_active: int
    pass_ttl_s: int
    reservation_ttl_s: int
    # Admit up to overbook x the customers the remaining quota can serve at its minimum
    # (1.0: never more than it can serve; above 1 when many admitted customers abandon).
    overbook: float = 1.0


@dataclass(frozen=True)
class Prequeue:
    window_s: int
    shuffle: bool


@dataclass(frozen=True)
class Page:
    """The waiting page's own look: an HTML template (a file name under the gate's
    page_templates_dir) and a logo."""

    template: str | None = None
    logo_url: str | None = None


@dataclass(frozen=True)
class CampaignSpec:
    id: str
    opens_at: datetime
    closes_at: datetime
    quota: Quota
    policy: str
    admission: Admission
    prequeue: Prequeue
    # What the waiting page shows and where an admitted customer goes: a title (one
    # string, or one per language), the product's URL, the page's template and logo.
    title: str | dict[str, str] | None = None
    target_url: str | None = None
    page: Page | None = None

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {}
        if self.title is not None:
            shown["title"] = self.title
        if self.target_url is not None:
            shown["target_url"] = self.target_url
        if self.page is not None:
            shown["page"] = {k: v for k, v in dataclasses.asdict(self.page).items() if v}
        return {
            "id": self.id,
            "opens_at": _iso(self.opens_at),
            "closes_at": _iso(self.closes_at),
            "quota": {
                "unit": self.quota.unit,
                "total": str(self.quota.total),
                "min": str(self.quota.min),
                "max": str(self.quota.max),
                "step": str(self.quota.step),
                "partial_fill": self.quota.partial_fill,
            },
            "policy": self.policy,
            "admission": dataclasses.asdict(self.admission),
            "prequeue": dataclasses.asdict(self.prequeue),
            **shown,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def to_us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def parse_quota(raw: Any) -> Quota:
    q = _obj(raw, "quota")
    _only(q, {"unit", "total", "min", "max", "step", "partial_fill"}, "quota")
    unit = q.get("unit", "item")
    if not isinstance(unit, str) or not unit or len(unit) > 16 or not unit.isascii():
        raise _fail("quota.unit", "must be a short name such as KRW or item")
    if "total" not in q:
        raise _fail("quota.total", "is required")
    total = parse_amount(q["total"], "quota.total")
    low = parse_amount(q.get("min", 1), "quota.min")
    high = parse_amount(q.get("max", low), "quota.max")
    step = parse_amount(q.get("step", 1), "quota.step")
    partial = q.get("partial_fill", False)
    if not isinstance(partial, bool):
        raise _fail("quota.partial_fill", "must be true or false")
    if total < 1:
        raise _fail("quota.total", "must be at least 1")
    if low < 1:
        raise _fail("quota.min", "must be at least 1")
    if high < low:
        raise _fail("quota.max", "must be at least quota.min")
    if step < 1:
        raise _fail("quota.step", "must be at least 1")
    if low >= SMALL_LIMIT:
        raise _fail("quota.min", f"must be below {SMALL_LIMIT}")
    if step >= SMALL_LIMIT:
        raise _fail("quota.step", f"must be below {SMALL_LIMIT}")
    if low % step:
        raise _fail("quota.min", "must be a multiple of quota.step")
    if unit == "item" and (low != 1 or high != 1):
        raise _fail("quota.min", "an item quota has min = max = 1")
    return Quota(unit, total, low, high, step, partial)


def parse_admission(raw: Any) -> Admission:
    a = _obj(raw, "admission")
    _only(
        a,
        {"rate_per_s", "burst", "max_active", "pass_ttl_s", "reservation_ttl_s", "overbook"},
        "admission",
    )
    if "rate_per_s" not in a:
        raise _fail("admission.rate_per_s", "is required")
    return Admission(
        rate_per_s=_number(
            a["rate_per_s"], "admission.rate_per_s", lo=0.001, hi=1e6, integer=False
        ),
        burst=_int(a.get("burst", 1), "admission.burst", 1, 1_000_000),
        max_active=_int(a.get("max_active", 1000), "admission.max_active", 1, 10_000_000),
        pass_ttl_s=_int(a.get("pass_ttl_s", 300), "admission.pass_ttl_s", 1, 86400),
        reservation_ttl_s=_int(
            a.get("reservation_ttl_s", 120), "admission.reservation_ttl_s", 1, 86400
        ),
        overbook=_number(
            a.get("overbook", 1.0), "admission.overbook", lo=1.0, hi=1000.0, integer=False
        ),
    )


def parse_spec(raw: Any) -> CampaignSpec:
    spec = _obj(raw, "spec")
    _only(
        spec,
        {"id", "opens_at", "closes_at", "quota", "policy", "admission", "prequeue"}
        | {"title", "target_url", "page"},
        "",
    )
    cid = spec.get("id")
    if not isinstance(cid, str) or not valid_campaign_id(cid):
        raise _fail("id", "must match [a-z0-9][a-z0-9_-]{0,63}")
    for required in ("opens_at", "closes_at", "quota", "admission"):
        if required not in spec:
            raise _fail(required, "is required")
    opens = parse_time(spec["opens_at"], "opens_at")
    closes = parse_time(spec["closes_at"], "closes_at")
    if closes <= opens:
        raise _fail("closes_at", "must be after opens_at")
    policy = spec.get("policy", "first_come")
    if policy not in ("first_come", "ballot"):
        raise _fail("policy", "must be first_come or ballot")
    pre = _obj(spec.get("prequeue", {}), "prequeue")
    _only(pre, {"window_s", "shuffle"}, "prequeue")
    shuffle = pre.get("shuffle", True)
    if not isinstance(shuffle, bool):
        raise _fail("prequeue.shuffle", "must be true or false")
    prequeue = Prequeue(_int(pre.get("window_s", 0), "prequeue.window_s", 0, 7 * 86400), shuffle)
    return CampaignSpec(
        cid,
        opens,
        closes,
        parse_quota(spec["quota"]),
        policy,
        parse_admission(spec["admission"]),
        prequeue,
        title=parse_title(spec.get("title")),
        target_url=parse_url(spec.get("target_url"), "target_url"),
        page=parse_page(spec.get("page")),
    )


MAX_TITLE = 200
MAX_URL = 2000
TEMPLATE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.html$")
TITLE_LANGS = ("ko", "en")


def parse_title(raw: Any) -> str | dict[str, str] | None:
    """One title, or one per language ({"ko": ..., "en": ...}); plain text, shown escaped."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return _title_text(raw, "title")
    if isinstance(raw, dict):
        _only(raw, set(TITLE_LANGS), "title")
        if not raw:
            raise _fail("title", "give at least one of ko, en")
        return {
            lang: _title_text(raw[lang], f"title.{lang}") for lang in TITLE_LANGS if lang in raw
        }
    raise _fail("title", 'must be a string or {"ko": ..., "en": ...}')


def _title_text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(field, "must be a non-empty string")
    if len(value) > MAX_TITLE:
        raise _fail(field, f"at most {MAX_TITLE} characters")
    if not value.isprintable():
        raise _fail(field, "must be printable text")
    return value.strip()


def parse_url(raw: Any, field: str) -> str | None:
    """An absolute http(s) URL with a host, or a path on this site (one leading "/")."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw or len(raw) > MAX_URL:
        raise _fail(field, f"must be a URL of at most {MAX_URL} characters")
    if not all(33 <= ord(ch) < 127 for ch in raw) or "\\" in raw:
        raise _fail(field, "must be printable ASCII without spaces or backslashes")
    if raw.startswith("/"):
        if raw.startswith("//"):
            raise _fail(field, 'a path starts with a single "/"')
        return raw
    parsed = urlsplit(raw)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise _fail(field, 'must be an absolute http(s) URL or a path starting with "/"')
    return raw


def parse_page(raw: Any) -> Page | None:
    if raw is None:
        return None
    page = _obj(raw, "page")
    _only(page, {"template", "logo_url"}, "page")
    template = page.get("template")
    if template is not None and (
        not isinstance(template, str) or not TEMPLATE_NAME_RE.fullmatch(template)
    ):
        raise _fail("page.template", "must be a file name such as promo.html (no directories)")
    return Page(template, parse_url(page.get("logo_url"), "page.logo_url"))


PATCHABLE = ("rate_per_s", "burst", "max_active", "pass_ttl_s", "overbook", "closes_at")


def parse_patch(raw: Any, current: CampaignSpec) -> tuple[CampaignSpec, dict[str, str]]:
    """Apply a PATCH body; returns the new spec and the meta fields to change in Redis."""
    body = _obj(raw, "body")
    flat = dict(body)
    nested = flat.pop("admission", None)
    if nested is not None:
        flat.update(_obj(nested, "admission"))
    _only(flat, set(PATCHABLE), "")
    if not flat:
        raise _fail("body", f"nothing to change; allowed: {', '.join(PATCHABLE)}")
    merged = dataclasses.asdict(current.admission)
    for name in ("rate_per_s", "burst", "max_active", "pass_ttl_s", "overbook"):
        if name in flat:
            merged[name] = flat[name]
    admission = parse_admission(merged)
    closes = current.closes_at
    if "closes_at" in flat:
        closes = parse_time(flat["closes_at"], "closes_at")
        if closes <= current.opens_at:
            raise _fail("closes_at", "must be after opens_at")
    new = dataclasses.replace(current, admission=admission, closes_at=closes)
    fields: dict[str, str] = {}
    if "rate_per_s" in flat:
        fields["rate"] = repr(float(admission.rate_per_s))
    if "burst" in flat:
        fields["burst"] = str(admission.burst)
    if "max_active" in flat:
        fields["max_active"] = str(admission.max_active)
    if "pass_ttl_s" in flat:
        fields["pass_ttl_us"] = str(admission.pass_ttl_s * 1_000_000)
    if "overbook" in flat:
        fields["overbook"] = repr(float(admission.overbook))
    if "closes_at" in flat:
        fields["closes_at_us"] = str(to_us(closes))
    return new, fields


def load_stored_spec(text: str) -> CampaignSpec:
    return parse_spec(json.loads(text))
