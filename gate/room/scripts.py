"""Load the Lua scripts shipped in the package, call them by SHA, reload on NOSCRIPT.

Each script may include shared helpers with a line ``--!include lib/NAME.lua``; the
loader splices them in, so a helper is written once and every script gets the same text.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

_INCLUDE_RE = re.compile(r"^--!include (lib/[a-z_]+\.lua)\s*$", re.MULTILINE)
SCRIPT_NAMES = (
    "campaign_create",
    "campaign_update",
    "campaign_state",
    "join",
    "admit",
    "pass",
    "block",
    "revoke",
    "claim",
    "subscribe",
    "confirm",
    "release",
    "ballot_store",
    "prequeue_assign",
    "sealer_lease",
    "checkpoint_add",
    "audit_trim",
    "receipt_locate",
)

ScriptArg = str | bytes | int | float


def read_lua(relative: str) -> str:
    return (importlib.resources.files("gate.lua") / relative).read_text(encoding="utf-8")


def render(name: str) -> str:
    """The full text of a script with its includes spliced in."""

    def splice(match: re.Match[str]) -> str:
        return read_lua(match.group(1))

    return _INCLUDE_RE.sub(splice, read_lua(f"{name}.lua"))


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str


class Scripts:
    """The registry of fairgate's scripts; `call` never lets the caller see NOSCRIPT."""

    def __init__(self) -> None:
        self._scripts: dict[str, Script] = {}
        for name in SCRIPT_NAMES:
            source = render(name)
            sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
            self._scripts[name] = Script(name, source, sha)

    def __getitem__(self, name: str) -> Script:
        return self._scripts[name]

    def names(self) -> list[str]:
        return list(self._scripts)

    async def load_all(self, redis: Redis) -> None:
        for script in self._scripts.values():
            sha = await redis.script_load(script.source)
            if sha != script.sha:
                raise RuntimeError(f"script {script.name}: Redis computed another SHA")

    async def call(
        self, redis: Redis, name: str, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> Any:
        script = self._scripts[name]
        try:
            return await redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # After a restart or a failover the script cache is empty: load and retry once.
            await redis.script_load(script.source)
            return await redis.evalsha(script.sha, len(keys), *keys, *args)
