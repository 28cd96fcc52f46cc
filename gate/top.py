"""`gate top`: a live view of the campaigns through the admin API, and `gate campaign stats
--watch`.

Each sample is one `GET /admin/campaigns/{c}` per campaign (state, spec and stats in one
answer), and `GET /admin/campaigns/{c}/checkpoints` at most every CHECKPOINTS_EVERY_S
(it answers every checkpoint, up to 1,000 from Redis and the older ones from their files:
read each second it would cost the gate more than everything else `top` asks). What the
view shows is read from them:

- admitted/s is measured here: the admitted counter's difference between two samples over
  the time between them (the first frame has none; `--once` takes two samples
  `--interval` apart so that its one frame has it);
- the rate configured (the spec's `rate_per_s`, what an operator set) and the rate in force
  (`rate_per_s` of the stats: the adaptive controller may have moved it);
- core health, as the adaptive controller has judged it (docs/adaptive-admission.md): the
  controller cuts the rate when the core is slow or failing and raises it again when it is
  well, so a rate in force below the configured one says the core was judged unhealthy;
  `at floor` is the rate down at `rate_min`; a campaign held after a Redis failover says so;
- sealing: the audit entries no checkpoint covers yet and, while there are any, how long
  ago the latest checkpoint was signed (the sealing lag), as of the last read of the
  checkpoints (said when older than a second; a read that finds every entry covered needs
  no new one);
- errors: the admin API calls about the campaign that failed in this session.

Keys act through the admin API, so each action is an audit entry with the operator's
token as its actor (`admin-pause`, `admin-resume`, `admin-update`), and each is asked
about first in the view.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gate.admin_client import AdminClient
from gate.cli_output import render
from gate.errors import GateError

BAR_WIDTH = 30
CHECKPOINTS_EVERY_S = 5.0
# A rate key (+/-) moves the rate by this factor; `e` sets any rate.
RATE_STEP = 1.25
KEYS_HELP = "↑/↓ or j/k select   p pause   r resume   e set rate   +/- rate ×/÷1.25   q quit"


def _quote(campaign: str) -> str:
    return urllib.parse.quote(campaign, safe="")


@dataclass(frozen=True)
class Sealing:
    """The latest checkpoint and the log's length, read together."""

    checkpoint: dict[str, Any] | None  # None while none is published
    entries: int  # the audit entries then
    read_ms: int
    read_at: float  # time.monotonic()


@dataclass(frozen=True)
class Sample:
    """What the admin API said about one campaign at one moment."""

    campaign: str
    at: float  # time.monotonic() when the answer came
    wall_ms: int
    view: dict[str, Any] | None  # GET /admin/campaigns/{c}, None when it failed
    sealing: Sealing | None
    error: str | None = None

    @property
    def stats(self) -> dict[str, Any]:
        stats = (self.view or {}).get("stats")
        return stats if isinstance(stats, dict) else {}

    @property
    def admission(self) -> dict[str, Any]:
        spec = (self.view or {}).get("spec")
        admission = spec.get("admission") if isinstance(spec, dict) else None
        return admission if isinstance(admission, dict) else {}


def admitted_per_s(before: Sample | None, after: Sample) -> float | None:
    """Customers admitted per second between two samples of one campaign; None without
    two good samples (or when the counter went back: another campaign by the same id)."""
    if before is None or before.view is None or after.view is None:
        return None
    elapsed = after.at - before.at
    first, last = before.stats.get("admitted"), after.stats.get("admitted")
    if elapsed <= 0 or not isinstance(first, int) or not isinstance(last, int) or last < first:
        return None
    return (last - first) / elapsed


def core_health(sample: Sample) -> str:
    """The core's health as the adaptive controller judged it (the module's docstring)."""
    view = sample.view or {}
    if view.get("failover_hold"):
        return "held after a Redis failover"
    adaptive = sample.admission.get("adaptive")
    if not isinstance(adaptive, dict):
        return "no controller (fixed rate)"
    mode = adaptive.get("mode", "auto")
    if mode != "auto":
        return f"{mode}: rate pinned by an operator"
    in_force = _number(sample.stats.get("rate_per_s"))
    configured = _number(sample.admission.get("rate_per_s"))
    floor = _number(adaptive.get("rate_min"))
    if in_force is None:
        return "unknown"
    if floor is not None and in_force <= floor:
        return "UNHEALTHY: rate at floor"
    if configured is not None and in_force < configured:
        return "degraded: rate cut by the controller"
    return "ok"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"


class Sampler:
    """Samples the campaigns (all of them, or those named) through the admin API."""

    def __init__(self, client: AdminClient, campaigns: list[str]):
        self.client = client
        self.named = campaigns
        self.errors: dict[str, int] = {}
        self.last_error = ""
        self.sealing: dict[str, Sealing] = {}

    def campaigns(self) -> list[str]:
        if self.named:
            return self.named
        listed = self.client.call("GET", "/admin/campaigns")
        return [c["id"] for c in listed.get("campaigns", []) if isinstance(c, dict)]

    def sample_one(self, campaign: str) -> Sample:
        base = f"/admin/campaigns/{_quote(campaign)}"
        try:
            view = self.client.call("GET", base)
            sealing = self._sealing(campaign, view)
        except GateError as exc:
            if exc.code == "unreachable":
                raise  # the whole view says it, not one campaign
            self.errors[campaign] = self.errors.get(campaign, 0) + 1
            self.last_error = f"{campaign}: {exc.code}: {exc.message}"
            return Sample(campaign, time.monotonic(), _now_ms(), None, None, self.last_error)
        return Sample(campaign, time.monotonic(), _now_ms(), view, sealing)

    def _sealing(self, campaign: str, view: dict[str, Any]) -> Sealing | None:
        stats = view.get("stats")
        if not isinstance(stats, dict):
            return None  # a campaign a failover lost whole has no log here
        entries = _int(stats.get("audit_entries"))
        now, cached = time.monotonic(), self.sealing.get(campaign)
        if (
            cached is not None
            and cached.checkpoint is not None
            and _int(cached.checkpoint.get("size")) == entries
        ):  # every entry there is now is covered: no need to read the checkpoints again
            cached = Sealing(cached.checkpoint, entries, _now_ms(), now)
            self.sealing[campaign] = cached
            return cached
        if cached is not None and now - cached.read_at < CHECKPOINTS_EVERY_S:
            return cached
        path = f"/admin/campaigns/{_quote(campaign)}/checkpoints"
        checkpoints = self.client.call("GET", path).get("checkpoints") or []
        fresh = Sealing(checkpoints[-1] if checkpoints else None, entries, _now_ms(), now)
        self.sealing[campaign] = fresh
        return fresh

    def sample(self) -> dict[str, Sample]:
        return {campaign: self.sample_one(campaign) for campaign in self.campaigns()}


def _now_ms() -> int:
    return int(time.time() * 1000)


def quota_bar(held: int, confirmed: int, total: int, width: int = BAR_WIDTH) -> Text:
    """confirmed (green), held (yellow), remaining (dim), `width` cells in all."""
    if total <= 0:
        return Text("░" * width, style="dim")
    confirmed_cells = round(width * min(confirmed, total) / total)
    held_cells = min(round(width * min(held, total) / total), width - confirmed_cells)
    bar = Text()
    bar.append("█" * confirmed_cells, style="green")
    bar.append("▓" * held_cells, style="yellow")
    bar.append("░" * (width - confirmed_cells - held_cells), style="dim")
    return bar


def _int(value: Any) -> int:
    """An integer the admin API gives as a number or as a decimal string (amounts in the
    smallest currency unit travel as strings: a float would round them)."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    number = _number(value)
    return int(number) if number is not None else 0


def campaign_panel(
    sample: Sample, before: Sample | None, errors: int, selected: bool
) -> RenderableType:
    title = Text(sample.campaign, style="bold reverse" if selected else "bold")
    if sample.view is None:
        body = Text(f"errors    {errors}   {sample.error or ''}", style="red")
        return Panel(body, title=title, title_align="left")
    stats, admission = sample.stats, sample.admission
    state = str(sample.view.get("state", "?"))
    title.append(f"  {state}", style="green" if state == "open" else "yellow")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(no_wrap=True, overflow="ellipsis")
    if not stats:  # lost in a failover: only its report is left
        grid.add_row("state", state)
        return Panel(grid, title=title, title_align="left")
    grid.add_row(
        "queue",
        f"waiting {stats.get('waiting', 0)}   joined {stats.get('joined', 0)}   "
        f"admitted {stats.get('admitted', 0)}   "
        f"active {stats.get('active', 0)}/{admission.get('max_active', '?')}",
    )
    grid.add_row(
        "rate",
        f"admitted/s {_rate(admitted_per_s(before, sample))}   "
        f"configured {_rate(_number(admission.get('rate_per_s')))}   "
        f"effective {_rate(_number(stats.get('rate_per_s')))}   "
        f"mode {stats.get('rate_mode') or 'off'}",
    )
    total, held, confirmed = (
        _int(stats.get("total")),
        _int(stats.get("held")),
        _int(stats.get("confirmed")),
    )
    quota = quota_bar(held, confirmed, total)
    quota.append(
        f"  held {held}   confirmed {confirmed}   remaining {_int(stats.get('remaining'))}"
        f" of {total} {stats.get('unit', '')}",
        style="",
    )
    grid.add_row("quota", quota)
    health = core_health(sample)
    grid.add_row(
        "core",
        Text(
            health, style="green" if health == "ok" else "yellow" if health[0].islower() else "red"
        ),
    )
    grid.add_row("sealing", sealing_text(sample))
    grid.add_row("errors", Text(str(errors), style="red" if errors else ""))
    return Panel(grid, title=title, title_align="left", border_style="cyan" if selected else "")


def sealing_text(sample: Sample) -> str:
    sealing = sample.sealing
    if sealing is None:
        return "-"
    read_age_s = max(sample.wall_ms - sealing.read_ms, 0) / 1000
    as_of = f"   (as of {read_age_s:.0f}s ago)" if read_age_s >= 1 else ""
    checkpoint = sealing.checkpoint
    if checkpoint is None:
        return f"unsealed {sealing.entries}   no checkpoint yet{as_of}"
    size = _int(checkpoint.get("size"))
    unsealed = max(sealing.entries - size, 0)
    age_s = max(sealing.read_ms - _int(checkpoint.get("time_ms")), 0) / 1000
    lag = age_s if unsealed else 0.0
    return (
        f"unsealed {unsealed}   lag {lag:.1f}s   last checkpoint size {size}, "
        f"signed {age_s:.1f}s before{as_of}"
    )


@dataclass
class View:
    """What the screen shows: the samples, the selection, and a question or a message."""

    admin_url: str
    interval_s: float
    samples: dict[str, Sample] = field(default_factory=dict)
    previous: dict[str, Sample] = field(default_factory=dict)
    selected: int = 0
    prompt: str = ""  # a question waiting for y/n, or the rate being typed
    typing: str | None = None  # the rate typed so far, while `e` asks for one
    message: str = ""
    failure: str = ""  # the admin API unreachable

    def take(self, samples: dict[str, Sample]) -> None:
        self.previous = {**self.previous, **self.samples}
        self.samples = samples
        self.failure = ""
        self.selected = min(self.selected, max(len(samples) - 1, 0))

    def current(self) -> str | None:
        names = list(self.samples)
        return names[self.selected] if names else None


def render_view(view: View, errors: dict[str, int], interactive: bool) -> RenderableType:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    header = Text(
        f"gate top   {view.admin_url}   {len(view.samples)} campaign(s)   "
        f"every {view.interval_s:g}s   {stamp}",
        style="bold",
    )
    parts: list[RenderableType] = [header]
    if view.failure:
        parts.append(Text(view.failure, style="bold red"))
    if not view.samples:
        parts.append(Text("(no campaigns)"))
    for index, (campaign, sample) in enumerate(view.samples.items()):
        parts.append(
            campaign_panel(
                sample,
                view.previous.get(campaign),
                errors.get(campaign, 0),
                interactive and index == view.selected,
            )
        )
    if interactive:
        if view.prompt:
            parts.append(Text(view.prompt + (view.typing or ""), style="bold yellow"))
        elif view.message:
            parts.append(Text(view.message))
        parts.append(Text(KEYS_HELP, style="dim"))
    return Group(*parts)


# -- keys ---------------------------------------------------------------------------------


@dataclass
class Pending:
    question: str
    action: Callable[[], str]


@contextlib.contextmanager
def _keys_mode(stream: TextIO) -> Iterator[int]:
    """The terminal in cbreak mode (keys as typed, no echo; Ctrl-C still interrupts)."""
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _split_keys(data: str) -> list[str]:
    keys: list[str] = []
    i = 0
    while i < len(data):
        if data.startswith(("\x1b[A", "\x1b[B"), i):
            keys.append("up" if data[i + 2] == "A" else "down")
            i += 3
        else:
            keys.append(data[i])
            i += 1
    return keys


class Top:
    def __init__(self, client: AdminClient, sampler: Sampler, view: View):
        self.client = client
        self.sampler = sampler
        self.view = view
        self.pending: Pending | None = None
        self.acted = False  # an action was taken: sample again at once to show it

    def _act(self, method: str, campaign: str, what: str, body: Any) -> str:
        path = f"/admin/campaigns/{_quote(campaign)}{what}"
        try:
            answer = self.client.call(method, path, body)
            self.acted = True
        except GateError as exc:
            return f"{campaign}: refused: {exc.code}: {exc.message}"
        stats = answer.get("stats") or {} if isinstance(answer, dict) else {}
        return (
            f"{campaign}: done: state {answer.get('state')}, "
            f"rate in force {_rate(_number(stats.get('rate_per_s')))} (audit-logged)"
        )

    def ask(self, question: str, action: Callable[[], str]) -> None:
        self.pending = Pending(question, action)
        self.view.prompt = f"{question}? [y/N] "

    def key(self, key: str) -> bool:
        """Handle one key; False to quit."""
        view = self.view
        campaign = view.current()
        if self.pending is not None:
            pending, self.pending, view.prompt = self.pending, None, ""
            view.message = pending.action() if key in ("y", "Y") else "not done"
            return True
        if view.typing is not None:
            if key in ("\r", "\n"):
                typed, view.typing, view.prompt = view.typing, None, ""
                rate = _number(typed)
                if rate is None or rate <= 0 or campaign is None:
                    view.message = f"not a rate: {typed!r}"
                else:
                    self._ask_rate(campaign, rate)
            elif key == "\x1b":
                view.typing, view.prompt, view.message = None, "", "not done"
            elif key in ("\x7f", "\b"):
                view.typing = view.typing[:-1]
            elif key.isdigit() or key == ".":
                view.typing += key
            return True
        if key in ("q", "Q"):
            return False
        if key in ("down", "j"):
            view.selected = min(view.selected + 1, max(len(view.samples) - 1, 0))
        elif key in ("up", "k"):
            view.selected = max(view.selected - 1, 0)
        elif campaign is None:
            return True
        elif key == "p":
            self.ask(
                f"pause admission to {campaign}",
                lambda: self._act("POST", campaign, "/pause", {}),
            )
        elif key == "r":
            self.ask(f"resume {campaign}", lambda: self._act("POST", campaign, "/resume", {}))
        elif key == "e":
            view.typing, view.prompt, view.message = "", f"new rate for {campaign} (/s): ", ""
        elif key in ("+", "-"):
            in_force = _number(view.samples[campaign].stats.get("rate_per_s"))
            if in_force is not None:
                rate = in_force * RATE_STEP if key == "+" else in_force / RATE_STEP
                self._ask_rate(campaign, round(rate, 3))
        return True

    def _ask_rate(self, campaign: str, rate: float) -> None:
        in_force = _number(self.view.samples[campaign].stats.get("rate_per_s"))
        self.ask(
            f"set the rate of {campaign} from {_rate(in_force)} to {_rate(rate)}",
            lambda: self._act("PATCH", campaign, "", {"rate_per_s": rate}),
        )

    def sample(self) -> None:
        try:
            self.view.take(self.sampler.sample())
        except GateError as exc:
            self.view.failure = f"{exc.code}: {exc.message}"


def run_top(
    client: AdminClient,
    campaigns: list[str],
    *,
    interval_s: float,
    once: bool,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    sampler = Sampler(client, campaigns)
    view = View(client.base_url, interval_s)
    top = Top(client, sampler, view)
    if once:
        # Two samples, so that the one frame has a measured admitted/s.
        view.take(sampler.sample())
        time.sleep(interval_s)
        view.take(sampler.sample())
        console = Console(file=stdout, width=None if stdout.isatty() else 120)
        console.print(render_view(view, sampler.errors, interactive=False))
        return 0
    if not stdout.isatty():
        # Into a file or a pipe: one frame after another, as `watch` would print them.
        console = Console(file=stdout, width=120)
        while True:
            started = time.monotonic()
            top.sample()
            console.print(render_view(view, sampler.errors, interactive=False))
            stdout.flush()
            time.sleep(max(started + interval_s - time.monotonic(), 0))
    interactive = stdin.isatty()
    console = Console(file=stdout)
    with contextlib.ExitStack() as stack:
        fd = stack.enter_context(_keys_mode(stdin)) if interactive else None
        live = stack.enter_context(
            Live(console=console, auto_refresh=False, screen=interactive, transient=False)
        )
        next_sample = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_sample:
                top.sample()
                next_sample = max(next_sample + interval_s, now)
            live.update(render_view(view, sampler.errors, interactive), refresh=True)
            wait = max(next_sample - time.monotonic(), 0)
            if fd is None:
                time.sleep(wait)
                continue
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                continue
            data = os.read(fd, 64).decode("utf-8", "replace")
            if not data:
                return 0  # the terminal went away
            for key in _split_keys(data):
                if not top.key(key):
                    return 0
                live.update(render_view(view, sampler.errors, interactive), refresh=True)
            if top.acted:
                top.acted = False
                next_sample = time.monotonic()  # show what the action did at once


def watch(fetch: Callable[[], Any], output: str, interval_s: float) -> int:
    """Print `fetch()` every `interval_s` until interrupted: one JSON object a line with
    `-o json` (for `jq` and scripts), a table and a blank line with `-o table`."""
    next_at = time.monotonic()
    while True:
        data = fetch()
        if output == "json":
            print(json.dumps(data, ensure_ascii=False, separators=(",", ":")), flush=True)
        else:
            print(render(data, output) + "\n", flush=True)
        next_at += interval_s
        time.sleep(max(next_at - time.monotonic(), 0))
