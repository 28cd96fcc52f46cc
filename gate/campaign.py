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
from gate.signing import valid_kid

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


HEALTH_KINDS = ("callbacks", "http", "prometheus")
DEFAULT_ERROR_REASONS = ("core_error", "timeout")
MAX_SOURCES = 4


@dataclass(frozen=True)
class HealthSource:
    """Where the controller reads the core's health: the confirm/release callbacks, a
    health endpoint the gate polls, or Prometheus instant queries."""

    kind: str
    url: str | None = None
    timeout_ms: int = 500
    latency_query: str | None = None
    error_query: str | None = None
    # callbacks: a release whose reason is one of these counts as an error of the core
    error_reasons: tuple[str, ...] = DEFAULT_ERROR_REASONS
    # fewer answers than this in a window is no signal (the rate holds)
    min_samples: int = 1

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"kind": self.kind, "min_samples": self.min_samples}
        if self.kind == "callbacks":
            shown["error_reasons"] = list(self.error_reasons)
        else:
            shown["url"] = self.url
            shown["timeout_ms"] = self.timeout_ms
        if self.kind == "prometheus":
            for name in ("latency_query", "error_query"):
                if getattr(self, name) is not None:
                    shown[name] = getattr(self, name)
        return shown


@dataclass(frozen=True)
class Targets:
    """Over either one, the core is unhealthy. None: that signal is not judged."""

    latency_ms: float | None = None
    error_ratio: float | None = None


@dataclass(frozen=True)
class Adaptive:
    """Admission that follows the core's health (docs/adaptive-admission.md)."""

    rate_min: float
    rate_max: float
    mode: str  # auto: the controller moves the rate; manual: pinned by the operator
    interval_s: float
    targets: Targets
    sources: tuple[HealthSource, ...]
    # the latency judged: this percentile of the window's answers
    latency_percentile: float = 90.0
    # multiplicative decrease when unhealthy; additive increase (rate/s per interval)
    # when healthy, None: (rate_max - rate_min) / 20
    decrease: float = 0.7
    increase: float | None = None
    # windows after a decrease in which no further decrease is made: the window right
    # after a decrease still shows the customers admitted at the old rate
    cooldown_intervals: int = 2

    def step_up(self) -> float:
        return self.increase if self.increase is not None else (self.rate_max - self.rate_min) / 20

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "rate_min": self.rate_min,
            "rate_max": self.rate_max,
            "mode": self.mode,
            "interval_s": self.interval_s,
            "targets": {k: v for k, v in dataclasses.asdict(self.targets).items() if v is not None},
            "sources": [source.to_json() for source in self.sources],
            "latency_percentile": self.latency_percentile,
            "decrease": self.decrease,
            "cooldown_intervals": self.cooldown_intervals,
        }
        if self.increase is not None:
            shown["increase"] = self.increase
        return shown


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
    # The rate follows the core's health between bounds (gate/controller.py); None: fixed.
    adaptive: Adaptive | None = None

    def to_json(self) -> dict[str, Any]:
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shown.pop("adaptive")
        if self.adaptive is not None:
            shown["adaptive"] = self.adaptive.to_json()
        return shown


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
    # The id of the customer-digest key this campaign's digests use, fixed at creation
    # (the admin API fills in the current one): digests of one campaign never mix keys,
    # and a rotation changes new campaigns only. None: created before digest keys had
    # ids (gate/signing.py, the legacy key).
    digest_key: str | None = None
    # Every entry of this campaign's log is sealed within this many ms of its time,
    # fixed at creation (the admin API fills in the gate's seal_bound_ms; an explicit
    # value may only be larger): `gate audit verify` checks each entry's seal delay
    # against it (docs/audit-format.md, "Seal bound"). None: no bound recorded.
    seal_bound_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {}
        if self.digest_key is not None:
            shown["digest_key"] = self.digest_key
        if self.seal_bound_ms is not None:
            shown["seal_bound_ms"] = self.seal_bound_ms
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
            "admission": self.admission.to_json(),
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
        {"rate_per_s", "burst", "max_active", "pass_ttl_s", "reservation_ttl_s", "overbook"}
        | {"adaptive"},
        "admission",
    )
    if "rate_per_s" not in a:
        raise _fail("admission.rate_per_s", "is required")
    rate = _number(a["rate_per_s"], "admission.rate_per_s", lo=0.001, hi=1e6, integer=False)
    adaptive = None
    if a.get("adaptive") is not None:
        adaptive = parse_adaptive(a["adaptive"])
        if not adaptive.rate_min <= rate <= adaptive.rate_max:
            raise _fail(
                "admission.rate_per_s",
                f"must be within admission.adaptive's rate_min and rate_max "
                f"({adaptive.rate_min:g}..{adaptive.rate_max:g})",
            )
    return Admission(
        rate_per_s=rate,
        adaptive=adaptive,
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


def _text(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise _fail(field, f"must be a non-empty string of at most {limit} characters")
    if not value.isprintable():
        raise _fail(field, "must be printable text")
    return value


def _health_url(value: Any, field: str) -> str:
    if value is None:
        raise _fail(field, "is required")
    url = parse_url(value, field)
    if url is None or url.startswith("/"):
        raise _fail(field, "must be an absolute http(s) URL")
    return url


def parse_source(raw: Any, field: str) -> HealthSource:
    source = _obj(raw, field)
    kind = source.get("kind")
    if kind not in HEALTH_KINDS:
        raise _fail(f"{field}.kind", f"must be one of {', '.join(HEALTH_KINDS)}")
    common = {"kind", "min_samples"}
    min_samples = _int(source.get("min_samples", 1), f"{field}.min_samples", 1, 100_000)
    if kind == "callbacks":
        _only(source, common | {"error_reasons"}, field)
        reasons = source.get("error_reasons", list(DEFAULT_ERROR_REASONS))
        if not isinstance(reasons, list) or len(reasons) > 32:
            raise _fail(f"{field}.error_reasons", "must be a list of at most 32 reasons")
        return HealthSource(
            kind,
            error_reasons=tuple(
                _text(r, f"{field}.error_reasons[{i}]", 500) for i, r in enumerate(reasons)
            ),
            min_samples=min_samples,
        )
    timeout = _int(source.get("timeout_ms", 500), f"{field}.timeout_ms", 1, 60_000)
    url = _health_url(source.get("url"), f"{field}.url")
    if kind == "http":
        _only(source, common | {"url", "timeout_ms"}, field)
        return HealthSource(kind, url=url, timeout_ms=timeout, min_samples=min_samples)
    _only(source, common | {"url", "timeout_ms", "latency_query", "error_query"}, field)
    queries = {
        name: _text(source[name], f"{field}.{name}", 2000)
        for name in ("latency_query", "error_query")
        if source.get(name) is not None
    }
    if not queries:
        raise _fail(field, "a prometheus source needs latency_query and/or error_query")
    return HealthSource(
        kind,
        url=url,
        timeout_ms=timeout,
        latency_query=queries.get("latency_query"),
        error_query=queries.get("error_query"),
        min_samples=min_samples,
    )


def parse_adaptive(raw: Any) -> Adaptive:
    where = "admission.adaptive"
    a = _obj(raw, where)
    _only(
        a,
        {"rate_min", "rate_max", "mode", "interval_s", "targets", "sources"}
        | {"latency_percentile", "decrease", "increase", "cooldown_intervals"},
        where,
    )
    for required in ("rate_min", "rate_max", "targets", "sources"):
        if required not in a:
            raise _fail(f"{where}.{required}", "is required")
    low = _number(a["rate_min"], f"{where}.rate_min", lo=0.001, hi=1e6, integer=False)
    high = _number(a["rate_max"], f"{where}.rate_max", lo=0.001, hi=1e6, integer=False)
    if high < low:
        raise _fail(f"{where}.rate_max", "must be at least rate_min")
    mode = a.get("mode", "auto")
    if mode not in ("auto", "manual"):
        raise _fail(f"{where}.mode", "must be auto or manual")
    t = _obj(a["targets"], f"{where}.targets")
    _only(t, {"latency_ms", "error_ratio"}, f"{where}.targets")
    if not t:
        raise _fail(f"{where}.targets", "give latency_ms and/or error_ratio")
    targets = Targets(
        latency_ms=None
        if t.get("latency_ms") is None
        else _number(
            t["latency_ms"], f"{where}.targets.latency_ms", lo=0.001, hi=3.6e6, integer=False
        ),
        error_ratio=None
        if t.get("error_ratio") is None
        else _number(t["error_ratio"], f"{where}.targets.error_ratio", lo=0, hi=1, integer=False),
    )
    raw_sources = a["sources"]
    if not isinstance(raw_sources, list) or not 1 <= len(raw_sources) <= MAX_SOURCES:
        raise _fail(f"{where}.sources", f"must be a list of 1 to {MAX_SOURCES} sources")
    sources = tuple(
        parse_source(item, f"{where}.sources[{i}]") for i, item in enumerate(raw_sources)
    )
    if sum(source.kind == "callbacks" for source in sources) > 1:
        raise _fail(f"{where}.sources", "at most one callbacks source")
    increase = a.get("increase")
    return Adaptive(
        rate_min=low,
        rate_max=high,
        mode=mode,
        interval_s=_number(
            a.get("interval_s", 1.0), f"{where}.interval_s", lo=0.05, hi=3600, integer=False
        ),
        targets=targets,
        sources=sources,
        latency_percentile=_number(
            a.get("latency_percentile", 90.0),
            f"{where}.latency_percentile",
            lo=1,
            hi=100,
            integer=False,
        ),
        decrease=_number(
            a.get("decrease", 0.7), f"{where}.decrease", lo=0.05, hi=0.99, integer=False
        ),
        increase=None
        if increase is None
        else _number(increase, f"{where}.increase", lo=0.001, hi=1e6, integer=False),
        cooldown_intervals=_int(
            a.get("cooldown_intervals", 2), f"{where}.cooldown_intervals", 0, 100
        ),
    )


def parse_spec(raw: Any) -> CampaignSpec:
    spec = _obj(raw, "spec")
    _only(
        spec,
        {"id", "opens_at", "closes_at", "quota", "policy", "admission", "prequeue"}
        | {"title", "target_url", "page", "digest_key", "seal_bound_ms"},
        "",
    )
    seal_bound = spec.get("seal_bound_ms")
    if seal_bound is not None:
        seal_bound = _int(seal_bound, "seal_bound_ms", 100, 3600000)
    digest_key = spec.get("digest_key")
    if digest_key is not None and not valid_kid(digest_key):
        raise _fail("digest_key", "must be a digest key id: 1 to 32 of [A-Za-z0-9_-]")
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
        digest_key=digest_key,
        seal_bound_ms=seal_bound,
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
PATCHABLE_BLOCKS = ("adaptive",)
# The meta field `mode` without an adaptive block: the controller has nothing to drive.
MODE_OFF = "off"


def _merge_adaptive(base: dict[str, Any] | None, change: Any) -> dict[str, Any] | None:
    """A PATCH's `adaptive` over the one in force, field by field (targets too); null
    removes the block (the rate stays where it is, fixed)."""
    if change is None:
        return None
    given = _obj(change, "admission.adaptive")
    merged = {**(base or {}), **given}
    if isinstance((base or {}).get("targets"), dict) and isinstance(given.get("targets"), dict):
        merged["targets"] = {**(base or {})["targets"], **given["targets"]}
    return merged


def _bound(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def mode_of(admission: Admission) -> str:
    return admission.adaptive.mode if admission.adaptive is not None else MODE_OFF


def parse_patch(
    raw: Any, current: CampaignSpec, live_rate: float | None = None
) -> tuple[CampaignSpec, dict[str, str]]:
    """Apply a PATCH body; returns the new spec and the meta fields to change in Redis.

    `live_rate` is the rate in force (a controller may have moved it from the spec's
    `rate_per_s`): the new spec's `rate_per_s` is that rate unless the PATCH gives one,
    moved to the nearer bound when new `rate_min`/`rate_max` leave it outside."""
    body = _obj(raw, "body")
    flat = dict(body)
    nested = flat.pop("admission", None)
    if nested is not None:
        flat.update(_obj(nested, "admission"))
    _only(flat, set(PATCHABLE) | set(PATCHABLE_BLOCKS), "")
    if not flat:
        raise _fail("body", f"nothing to change; allowed: {', '.join(PATCHABLE)}, adaptive")
    in_force = float(live_rate if live_rate is not None else current.admission.rate_per_s)
    merged = current.admission.to_json()
    merged["rate_per_s"] = in_force
    for name in ("rate_per_s", "burst", "max_active", "pass_ttl_s", "overbook"):
        if name in flat:
            merged[name] = flat[name]
    if "adaptive" in flat:
        adaptive = _merge_adaptive(merged.pop("adaptive", None), flat["adaptive"])
        if adaptive is not None:
            merged["adaptive"] = adaptive
            low, high = _bound(adaptive.get("rate_min")), _bound(adaptive.get("rate_max"))
            if "rate_per_s" not in flat and low is not None and high is not None:
                merged["rate_per_s"] = min(max(in_force, low), high)
    admission = parse_admission(merged)
    closes = current.closes_at
    if "closes_at" in flat:
        closes = parse_time(flat["closes_at"], "closes_at")
        if closes <= current.opens_at:
            raise _fail("closes_at", "must be after opens_at")
    new = dataclasses.replace(current, admission=admission, closes_at=closes)
    fields: dict[str, str] = {}
    if "rate_per_s" in flat or float(admission.rate_per_s) != in_force:
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
    if "adaptive" in flat:
        # Always logged, even unchanged: the entry is the operator's pin (or release) of
        # the rate, and the script refuses a controller's change made while it is manual.
        fields["mode"] = mode_of(admission)
    return new, fields


def load_stored_spec(text: str) -> CampaignSpec:
    return parse_spec(json.loads(text))
