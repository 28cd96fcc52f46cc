"""A scenario's HTML report: the summary table and inline SVG plots, with vs without the gate.

No plotting library: each plot is a small hand-written SVG (lines or dots on linear axes).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gate.demo.slowdown import describe

WITHOUT, WITH = "#d62728", "#1f77b4"
Series = tuple[str, str, Sequence[tuple[float, float]], bool]  # label, colour, points, dots


COLUMNS = (
    ("row", "", "row"),
    ("core errors", "core_errors", ""),
    ("core p99", "core_p99_ms", " ms"),
    ("oversell", "oversell_krw", " KRW"),
    ("sold", "sold_krw", " KRW"),
    ("inversions (let in)", "inversions", ""),
    ("inversions (booked)", "sale_inversions", ""),
    ("earliest N served", "earliest_served", ""),
    ("let in, then sold out", "let_in_then_sold_out", ""),
    ("max wait", "max_wait_s", " s"),
    ("told sold out", "told_soldout", ""),
    ("rate changes", "rate_changes", ""),
    ("gate errors", "gate_errors", ""),
)


def _cell(row: dict[str, Any], key: str, unit: str) -> str:
    value = row.get(key)
    if value is None:
        return "n/a"
    if key == "earliest_served":
        return f"{value} of {row.get('earliest_n')}"
    if key.endswith("_krw"):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def table_order(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's rows: without the gate, the nginx limit_req baseline (if run), with it."""
    baseline = report.get("nginx_limit_req")
    middle = [baseline] if baseline is not None else []
    return [report["without_gate"], *middle, report["with_gate"]]


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    header = [name for name, _key, _unit in COLUMNS]
    body = [
        [row["row"]] + [_cell(row, key, unit) for _name, key, unit in COLUMNS[1:]] for row in rows
    ]
    return [header, *body]


def svg_chart(
    title: str,
    series: Sequence[Series],
    xlabel: str,
    ylabel: str,
    hlines: Sequence[tuple[str, float]] = (),
    width: int = 640,
    height: int = 260,
) -> str:
    left, right, top, bottom = 60, 20, 30, 40
    xs = [x for _l, _c, pts, _d in series for x, _y in pts] or [0.0, 1.0]
    ys = [y for _l, _c, pts, _d in series for _x, y in pts] + [v for _n, v in hlines] + [0.0]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y1 = max(ys) * 1.1 or 1.0
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + ph - y / y1 * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">'
        f"{html.escape(title)}</text>",
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for i in range(5):
        v = y1 * i / 4
        parts.append(
            f'<text x="{left - 4}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.4g}</text>'
            f'<line x1="{left}" x2="{left + pw}" y1="{py(v):.1f}" y2="{py(v):.1f}" '
            'stroke="#eee"/>'
        )
        xv = x0 + (x1 - x0) * i / 4
        parts.append(
            f'<text x="{px(xv):.1f}" y="{top + ph + 14}" text-anchor="middle">{xv:.4g}</text>'
        )
    parts.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">'
        f"{html.escape(xlabel)}</text>"
        f'<text x="12" y="{top + ph / 2}" transform="rotate(-90 12 {top + ph / 2})" '
        f'text-anchor="middle">{html.escape(ylabel)}</text>'
    )
    for name, value in hlines:
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{py(value):.1f}" y2="{py(value):.1f}" '
            f'stroke="#2ca02c" stroke-dasharray="5,3"/><text x="{left + pw - 4}" '
            f'y="{py(value) - 4:.1f}" text-anchor="end" fill="#2ca02c">{html.escape(name)}</text>'
        )
    for n, (label, colour, points, dots) in enumerate(series):
        if dots:
            parts += [
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="1.8" fill="{colour}"/>'
                for x, y in points
            ]
        elif points:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        parts.append(
            f'<text x="{left + 8}" y="{top + 14 + 14 * n}" fill="{colour}">'
            f"{html.escape(label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _per_second(row: dict[str, Any], key: str) -> list[tuple[float, float]]:
    return [(r["t"] + 0.5, float(r[key] or 0)) for r in row["per_second"]]


def at_the_core(row: dict[str, Any]) -> list[tuple[float, float]]:
    """The core's queue length: customers who had arrived at the core and not yet had
    their answer (in a session or queued for one), at the end of each second."""
    inside, points = 0, []
    for r in row["per_second"]:
        inside += int(r["arrivals"]) - int(r["answered"])
        points.append((r["t"] + 1.0, float(inside)))
    return points


def _capacity_steps(report: dict[str, Any], row: dict[str, Any]) -> list[tuple[float, float]]:
    """The core's capacity (sessions / (service + bureau latency)) over the run, as steps
    at each change of the bureau's latency."""
    core = report["core"]
    end = float(len(row["per_second"]) or 1)
    points: list[tuple[float, float]] = []
    changes = row.get("bureau_changes") or [[0.0, core["bureau_ms"]]]
    for n, (t, bureau_ms) in enumerate(changes):
        session_s = (core["service_ms"] + bureau_ms) / 1000
        value = core["capacity"] / session_s if session_s > 0 else 0.0
        start = 0.0 if n == 0 else max(0.0, float(t))
        if points:
            points.append((start, points[-1][1]))
        points.append((start, value))
    points.append((end, points[-1][1]))
    return points


def _rate_steps(report: dict[str, Any], row: dict[str, Any]) -> list[tuple[float, float]]:
    """The gate's admission rate in force, from the controller's entries in the audit log."""
    end = float(len(row["per_second"]) or 1)
    changes = row.get("rate_log") or []
    rate = changes[0]["old"] if changes and changes[0]["old"] is not None else report["rate"]
    points = [(0.0, float(rate))]
    for change in changes:
        t = max(0.0, float(change["t"]))
        points += [(t, points[-1][1]), (t, float(change["new"]))]
    points.append((end, points[-1][1]))
    return points


def admission_plot(report: dict[str, Any]) -> str:
    """Admitted per second (the audit log) and the gate's rate, against the core's capacity."""
    without, gated = report["without_gate"], report["with_gate"]
    return svg_chart(
        "Admitted per second vs the core's capacity",
        [
            ("core capacity (sessions / session time)", "#2ca02c", _capacity_steps(report, gated),
             False),
            ("the gate's rate (audit log: controller entries)", "#ff7f0e",
             _rate_steps(report, gated), False),
            ("admitted/s, with gate (audit log)", WITH,
             [(t + 0.5, float(n)) for t, n in gated.get("admitted_per_second", [])], False),
            ("arrivals/s at the core, without gate", WITHOUT, _per_second(without, "arrivals"),
             False),
        ],
        "seconds since the first customer",
        "customers/s",
    )  # fmt: skip


def plots(report: dict[str, Any]) -> list[str]:
    without, gated = report["without_gate"], report["with_gate"]
    core = report["core"]
    session_s = (core["service_ms"] + core["bureau_ms"]) / 1000
    capacity = core["capacity"] / session_s if session_s > 0 else 0.0
    pair = (("without gate", WITHOUT, without), ("with gate", WITH, gated))
    target = (gated.get("slowdown") or {}).get("latency_target_ms")
    p99_lines = [(f"target p99 {target:g} ms", float(target))] if target is not None else []
    extra = [admission_plot(report)] if gated.get("admitted_per_second") is not None else []
    return [
        *extra,
        svg_chart(
            "Requests arriving at the core per second",
            [(label, colour, _per_second(row, "arrivals"), False) for label, colour, row in pair],
            "seconds since the first customer",
            "arrivals/s",
            [(f"core capacity ~{capacity:.0f}/s (bureau at its usual latency)", capacity)],
        ),
        svg_chart(
            "Queue length at the core (arrived, not yet answered: in a session or queued)",
            [(label, colour, at_the_core(row), False) for label, colour, row in pair],
            "seconds since the first customer",
            "customers",
            [(f"the core's sessions ({core['capacity']})", float(core["capacity"]))],
        ),
        svg_chart(
            "Core errors (503 overloaded, 504 bureau timeout) per second",
            [(label, colour, _per_second(row, "errors"), False) for label, colour, row in pair],
            "seconds since the first customer",
            "errors/s",
        ),
        svg_chart(
            "Core latency p99 per second",
            [(label, colour, _per_second(row, "p99_ms"), False) for label, colour, row in pair],
            "seconds since the first customer",
            "ms",
            p99_lines,
        ),
        svg_chart(
            "Wait by arrival order (click to final answer)",
            [
                (label, colour, [(p[0], p[1]) for p in row["wait_by_arrival"]], True)
                for label, colour, row in pair
            ],
            "arrival rank (with the gate: seq)",
            "seconds",
        ),
    ]


def write_html(report: dict[str, Any], path: Path) -> Path:
    rows = table_rows(table_order(report))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
    )
    checks = "".join(
        f"<li>{'&#10003;' if ok else '&#10007;'} {html.escape(name)}</li>"
        for name, ok in report["checks"].items()
    )
    figures = "".join(f"<div>{svg}</div>" for svg in plots(report))
    slowdowns = "".join(
        f"<p>{html.escape(row['row'])}: {html.escape(describe(row))}</p>"
        for row in table_order(report)
        if row.get("slowdown")
    )
    path.write_text(
        "<!doctype html><meta charset=utf-8>"
        f"<title>fairgate demo: {html.escape(report['scenario'])}</title>"
        "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}td:first-child{text-align:left}</style>"
        f"<h1>fairgate demo: {html.escape(report['scenario'])}</h1>"
        f"<p>{report['customers']} customers; {html.escape(report['what'])}. The same "
        "arrivals (same seed, times and amounts) ran straight at the simulated core, behind "
        "nginx limit_req at the gate's rate and burst (when nginx is installed), then "
        "through the gate. Earliest N served: of the first N arrivals (N: what the stock "
        "serves in arrival order; a ballot: everyone), how many booked.</p>"
        f"<table><tr>{head}</tr>{body}</table>{slowdowns}"
        f"<p>Result: <b>{'OK' if report['ok'] else 'FAILED'}</b></p><ul>{checks}</ul>"
        f"{figures}"
        "<p>Inversions (let in): pairs of customers where the one who arrived first was let "
        "in to be served later, or not at all while the other was (Kendall tau distance; the "
        "gate lets in by its admission, the core alone by starting a session). Inversions "
        "(booked): the same by who got the deposit: a customer let in who then found it sold "
        "out while a later one booked counts here.</p>"
    )
    return path
