"""What `gate` prints: the admin API's answer as JSON (the default, for scripts) or as a
text table for a person at a terminal (`--output table`)."""

from __future__ import annotations

import json
from typing import Any

OUTPUTS = ("json", "table")
# In a table a longer cell is cut (a hash, a spec): `--output json` has every byte.
MAX_CELL = 48
# Columns that go first when a row has them; the rest keep the order they came in.
FIRST_COLUMNS = ("id", "index", "time", "k", "state", "seq")


def render(data: Any, output: str) -> str:
    if output == "table":
        return table(data)
    return json.dumps(data, indent=2, ensure_ascii=False)


def _cell(value: Any, limit: int = MAX_CELL) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = " ".join(text.split())  # one line per row
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            pairs += _flatten(value, f"{name}.")
        else:
            pairs.append((name, value))
    return pairs


def _rows(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    columns.sort(key=lambda c: FIRST_COLUMNS.index(c) if c in FIRST_COLUMNS else len(FIRST_COLUMNS))
    cells = [[c.upper() for c in columns]]
    cells += [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    cells.insert(1, ["-" * width for width in widths])
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def table(data: Any) -> str:
    """A list of objects (or an answer holding one, such as `campaigns` or `entries`) as
    rows under a header; any other object as `key  value` lines, nested keys dotted."""
    if isinstance(data, dict):
        lists = [
            v for v in data.values() if isinstance(v, list) and all(isinstance(r, dict) for r in v)
        ]
        if len(lists) == 1:
            data = lists[0]
    if isinstance(data, list):
        if not data:
            return "(none)"
        if all(isinstance(row, dict) for row in data):
            return _rows(data)
        return "\n".join(_cell(item, 1 << 16) for item in data)
    if isinstance(data, dict):
        pairs = _flatten(data)
        width = max((len(key) for key, _ in pairs), default=0)
        return "\n".join(
            f"{key.ljust(width)}  {_cell(value, 1 << 16)}".rstrip() for key, value in pairs
        )
    return _cell(data, 1 << 16)
