"""Logging: one event per line, as logfmt (`key=value`, a value quoted where it must be)
or as JSON; never a raw customer id or a token.

Call sites write `log.warning("event=seal_error error=%s detail=%s", name, detail)`. The
template is split at its spaces and each `key=%s` is filled in alone, so a value with
spaces, quotes or `=` in it stays one value and is quoted here, not by every caller.
Words of the template that are not `key=value` (a library's plain message, a trailing
explanation) become the `msg` field; a traceback becomes the `exc` field, escaped onto
the same line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

FORMATS = ("logfmt", "json")

_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_.\-]*)=(.*)", re.S)
# A template's tokens: `key="quoted value, spaces kept"` or a run of non-spaces.
_TOKEN = re.compile(r'([A-Za-z_][A-Za-z0-9_.\-]*=)"((?:[^"\\]|\\.)*)"(?!\S)|\S+')
# One printf-style conversion, as the `%` operator reads it (`%%` is not one).
_CONVERSION = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[a-zA-Z%]")
_BARE = re.compile(r'[^\s"=\\\x00-\x1f\x7f]+')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _conversions(token: str) -> int:
    return sum(1 for found in _CONVERSION.findall(token) if found != "%%")


def message_fields(record: logging.LogRecord) -> list[tuple[str, str]]:
    """The record's message as (key, value) pairs, in the template's order."""
    template = str(record.msg)
    args = record.args if isinstance(record.args, tuple) else None
    if record.args and args is None:  # a mapping: no positions to split by
        return [("msg", record.getMessage())]
    args = args or ()
    fields: list[tuple[str, str]] = []
    words: list[str] = []
    used = 0
    try:
        for found in _TOKEN.finditer(template):
            token = found.group()
            if found.group(1):  # quoted in the template: its content is the value
                token = found.group(1) + re.sub(r"\\(.)", r"\1", found.group(2))
            wanted = _conversions(token)
            # logging leaves a message without args unformatted: so does this
            text = token % args[used : used + wanted] if args else token
            used += wanted
            field = _FIELD.fullmatch(text) if _FIELD.fullmatch(token) else None
            if field is None or words:
                words.append(text)
            else:
                fields.append((field.group(1), field.group(2)))
    except (TypeError, ValueError):
        return [("msg", record.getMessage())]
    if used != len(args):
        return [("msg", record.getMessage())]
    if words:
        if fields and fields[-1][1].endswith(":"):  # "window_s=60: the gate stops"
            fields[-1] = (fields[-1][0], fields[-1][1][:-1])
        fields.append(("msg", " ".join(words)))
    return fields


def _record_fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, str]:
    seconds = time.gmtime(record.created)
    fields = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
        "level": record.levelname,
        "logger": record.name,
    }
    for key, value in message_fields(record):
        name, n = key, 2
        while name in fields:  # every key once
            name, n = f"{key}_{n}", n + 1
        fields[name] = value
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    if record.stack_info:
        fields["stack"] = formatter.formatStack(record.stack_info)
    return fields


def logfmt_value(value: str) -> str:
    """`value` bare when it can be, else double-quoted with its specials escaped."""
    if _BARE.fullmatch(value):
        return value
    escaped = "".join(
        _ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or c == "\x7f" else c)
        for c in value
    )
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _record_fields(record, self)
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in fields.items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_record_fields(record, self), ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else LogfmtFormatter()


def setup_logging(level: str, log_format: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
