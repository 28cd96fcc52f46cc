"""Load the Lua scripts shipped in the package, call them by SHA, reload on NOSCRIPT.

A script is a top-level file of the `gate.lua` package (the repository's `lua/`), one per
atomic operation, named after it; shared helpers live in `lib/`. A file states what it
needs with lines ``--!include lib/NAME.lua`` (paths relative to the package root), a lib
as well as a script. The loader splices each needed file in at its include line, resolved
recursively: a file appears once per script, where it is first needed, before the text of
the file that needs it; an include cycle, a missing file or a malformed include line is
refused with the chain of files that led to it.

A script may also take another script whole as a local function: ``--!function NAME
FILE.lua`` puts FILE's includes at that line and the rest of FILE inside ``local function
NAME(KEYS, ARGV) ... end`` (its `return`s return from the function). So a script that does
several of another's operations in one call (claim_batch.lua: claims) runs that very text,
never a copy.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

INCLUDE_PREFIX = "--!include"
_INCLUDE_RE = re.compile(r"--!include (lib/[a-z0-9_]+\.lua)\s*")
FUNCTION_PREFIX = "--!function"
_FUNCTION_RE = re.compile(r"--!function ([a-z_][a-z0-9_]*) ([a-z0-9_]+\.lua)\s*")

ScriptArg = str | bytes | int | float
Read = Callable[[str], str]
"""Reads a file of the Lua tree by its path relative to the root, e.g. ``lib/money.lua``."""


class LuaSourceError(RuntimeError):
    """A script cannot be rendered: an include is missing, malformed or part of a cycle."""


def lua_root() -> Traversable:
    """The shipped Lua tree: the repository's `lua/` in an editable install."""
    return importlib.resources.files("gate.lua")


def reader(root: Traversable) -> Read:
    """A `Read` over the tree at `root` (the shipped one, or a test's directory)."""

    def read(relative: str) -> str:
        return root.joinpath(*relative.split("/")).read_text(encoding="utf-8")

    return read


def read_lua(relative: str) -> str:
    """One shipped file as written, includes not resolved."""
    return reader(lua_root())(relative)


def script_names(root: Traversable | None = None) -> tuple[str, ...]:
    """Every script: the top-level `*.lua` files of the tree, without the suffix, sorted."""
    tree = lua_root() if root is None else root
    return tuple(
        sorted(
            entry.name.removesuffix(".lua")
            for entry in tree.iterdir()
            if entry.is_file() and entry.name.endswith(".lua")
        )
    )


def render(name: str, read: Read = read_lua) -> str:
    """The full text of script `name` with its includes spliced in, each file once."""
    return _expand(f"{name}.lua", read, chain=(), done=set())


def _expand(path: str, read: Read, chain: tuple[str, ...], done: set[str]) -> str:
    trail = " -> ".join((*chain, path))
    if path in chain:
        raise LuaSourceError(f"include cycle: {trail}")
    if path in done:
        return ""
    done.add(path)
    try:
        text = read(path)
    except FileNotFoundError:
        raise LuaSourceError(f"no such Lua file: {trail}") from None
    parts: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith(FUNCTION_PREFIX):
            parts.append(_as_function(line, read, (*chain, path), done))
            continue
        if not line.startswith(INCLUDE_PREFIX):
            parts.append(line)
            continue
        match = _INCLUDE_RE.fullmatch(line)
        if match is None:
            raise LuaSourceError(
                f"bad include line in {trail}: {line.rstrip()!r} (want '--!include lib/NAME.lua')"
            )
        # The included text takes the line's place and the line's own end stays: a file
        # already included leaves a blank line.
        parts.append(_expand(match.group(1), read, (*chain, path), done))
        parts.append(line[len(line.rstrip("\r\n")) :])
    return "".join(parts)


def _as_function(line: str, read: Read, chain: tuple[str, ...], done: set[str]) -> str:
    """A `--!function NAME FILE.lua` line: FILE's includes, then FILE's other lines as the
    body of `local function NAME(KEYS, ARGV)`."""
    trail = " -> ".join(chain)
    match = _FUNCTION_RE.fullmatch(line)
    if match is None:
        raise LuaSourceError(
            f"bad function line in {trail}: {line.rstrip()!r} (want '--!function NAME FILE.lua')"
        )
    name, path = match.groups()
    if path in chain:
        raise LuaSourceError(f"include cycle: {trail} -> {path}")
    try:
        text = read(path)
    except FileNotFoundError:
        raise LuaSourceError(f"no such Lua file: {trail} -> {path}") from None
    head: list[str] = []
    body: list[str] = []
    for part in text.splitlines(keepends=True):
        if part.startswith(FUNCTION_PREFIX):
            raise LuaSourceError(f"a function of a function: {trail} -> {path}")
        if part.startswith(INCLUDE_PREFIX):
            include = _INCLUDE_RE.fullmatch(part)
            if include is None:
                raise LuaSourceError(f"bad include line in {trail} -> {path}: {part.rstrip()!r}")
            head.append(_expand(include.group(1), read, (*chain, path), done))
            head.append("\n")
        else:
            body.append(part)
    if body and not body[-1].endswith("\n"):
        body.append("\n")
    return "".join([*head, f"local function {name}(KEYS, ARGV)\n", *body, "end\n"])


# Scripts an operator must be able to run while Redis is at its maxmemory under
# noeviction (pause, resume, close), so that a campaign can be stopped even then. Redis 7
# lets a script declare that with a shebang flag; Redis 6.2 has no script flags (a shebang
# is a Lua syntax error there) and refuses a script's first write that may grow memory, so
# there the script itself first makes a write that is never refused (see
# lua/campaign_state.lua), after which Redis lets it finish.
ALLOW_OOM = frozenset({"campaign_state"})
ALLOW_OOM_FLAG = "#!lua flags=allow-oom\n"


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str


class Scripts:
    """The registry of fairgate's scripts; `call` never lets the caller see NOSCRIPT.

    `root` is the Lua tree to load (the shipped one unless a test gives another)."""

    def __init__(self, root: Traversable | None = None) -> None:
        tree = lua_root() if root is None else root
        read = reader(tree)
        self._scripts: dict[str, Script] = {}
        self._flagged: dict[str, Script] = {}
        # Told each call's name and duration (the Redis call latency metric), when set.
        self.observe: Callable[[str, float], None] | None = None
        for name in script_names(tree):
            source = render(name, read)
            self._scripts[name] = _script(name, source)
            if name in ALLOW_OOM:
                self._flagged[name] = _script(name, ALLOW_OOM_FLAG + source)

    def __getitem__(self, name: str) -> Script:
        return self._scripts[name]

    def names(self) -> list[str]:
        return list(self._scripts)

    async def load_all(self, redis: Redis) -> None:
        if self._flagged and await _has_script_flags(redis):
            self._scripts.update(self._flagged)
            self._flagged = {}
        for script in self._scripts.values():
            sha = await redis.script_load(script.source)
            if sha != script.sha:
                raise RuntimeError(f"script {script.name}: Redis computed another SHA")

    async def call(
        self, redis: Redis, name: str, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> Any:
        script = self._scripts[name]
        started = time.perf_counter()
        try:
            return await redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # After a restart or a failover the script cache is empty: load and retry once.
            await redis.script_load(script.source)
            return await redis.evalsha(script.sha, len(keys), *keys, *args)
        finally:
            if self.observe is not None:
                self.observe(name, time.perf_counter() - started)


def _script(name: str, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


async def _has_script_flags(redis: Redis) -> bool:
    """Redis 7 or later (script shebang flags)."""
    try:
        version = str((await redis.info("server")).get("redis_version", "0"))
    except ResponseError:  # INFO renamed or not permitted: assume no flags
        return False
    major = version.split(".")[0]
    return major.isdigit() and int(major) >= 7
