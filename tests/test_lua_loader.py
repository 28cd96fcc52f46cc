"""The Lua loader: includes resolve recursively, each file once, cycles and missing files
are refused; every shipped script renders whole, and each file includes what it uses."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from gate.room.scripts import LuaSourceError, Scripts, read_lua, reader, render, script_names

REPO_LUA = Path(__file__).resolve().parent.parent / "lua"
# A definition at the top level of a rendered chunk: `local function f(` or `local a, b =`.
_DEFINITION_RE = re.compile(r"^local function (\w+)|^local ([\w, ]+?)\s*=", re.MULTILINE)
_INCLUDE_RE = re.compile(r"^--!include (\S+)\s*$", re.MULTILINE)


def tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def render_in(root: Path, name: str) -> str:
    return render(name, reader(root))


def test_nested_includes_resolve_before_the_includer(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "top.lua": "-- top\n--!include lib/outer.lua\nlocal top = outer()\n",
            "lib/outer.lua": "--!include lib/inner.lua\nlocal function outer() return 2 end\n",
            "lib/inner.lua": "local function inner() return 1 end\n",
        },
    )
    text = render_in(root, "top")
    assert "--!include" not in text
    inner = text.index("local function inner")
    outer = text.index("local function outer")
    top = text.index("local top")
    assert text.index("-- top") < inner < outer < top


def test_a_lib_needed_twice_appears_once_where_first_needed(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "top.lua": "--!include lib/a.lua\n--!include lib/b.lua\n--!include lib/base.lua\n",
            "lib/a.lua": "--!include lib/base.lua\nlocal function a() end\n",
            "lib/b.lua": "--!include lib/base.lua\nlocal function b() end\n",
            "lib/base.lua": "local function base() end\n",
        },
    )
    text = render_in(root, "top")
    assert text.count("local function base") == 1
    assert text.index("local function base") < text.index("local function a()")
    assert text.index("local function a()") < text.index("local function b()")


@pytest.mark.parametrize(
    ("files", "chain"),
    [
        (
            {
                "top.lua": "--!include lib/p.lua\n",
                "lib/p.lua": "--!include lib/q.lua\n",
                "lib/q.lua": "--!include lib/p.lua\n",
            },
            "top.lua -> lib/p.lua -> lib/q.lua -> lib/p.lua",
        ),
        (
            {"top.lua": "--!include lib/self.lua\n", "lib/self.lua": "--!include lib/self.lua\n"},
            "top.lua -> lib/self.lua -> lib/self.lua",
        ),
    ],
)
def test_an_include_cycle_is_refused_naming_the_chain(
    tmp_path: Path, files: dict[str, str], chain: str
) -> None:
    root = tree(tmp_path, files)
    with pytest.raises(LuaSourceError, match=f"include cycle: {re.escape(chain)}$"):
        render_in(root, "top")


def test_a_missing_include_is_refused_naming_the_chain(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {"top.lua": "--!include lib/there.lua\n", "lib/there.lua": "--!include lib/gone.lua\n"},
    )
    chain = "top.lua -> lib/there.lua -> lib/gone.lua"
    with pytest.raises(LuaSourceError, match=f"no such Lua file: {re.escape(chain)}$"):
        render_in(root, "top")


@pytest.mark.parametrize(
    "line",
    [
        "--!include lib/../secret.lua",
        "--!include common.lua",
        "--!include  lib/a.lua",
        "--!includes",
    ],
)
def test_a_malformed_include_line_is_refused(tmp_path: Path, line: str) -> None:
    root = tree(tmp_path, {"top.lua": f"{line}\n", "lib/a.lua": "", "common.lua": ""})
    with pytest.raises(LuaSourceError, match=r"bad include line in top\.lua"):
        render_in(root, "top")


def test_scripts_load_from_any_tree(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "one.lua": "--!include lib/x.lua\nreturn x()\n",
            "two.lua": "return 2\n",
            "lib/x.lua": "local function x() return 1 end\n",
        },
    )
    scripts = Scripts(root)
    assert scripts.names() == ["one", "two"]
    assert scripts["one"].source == "local function x() return 1 end\n\nreturn x()\n"


def test_the_scripts_are_the_top_level_files_of_the_lua_tree() -> None:
    files = sorted(path.stem for path in REPO_LUA.glob("*.lua"))
    assert list(script_names()) == files
    assert Scripts().names() == files
    assert len(files) >= 18


@pytest.mark.parametrize("name", script_names())
def test_every_shipped_script_renders_whole_with_each_definition_once(name: str) -> None:
    text = render(name)
    assert "--!include" not in text
    defined = Counter(
        word.strip()
        for match in _DEFINITION_RE.finditer(text)
        for word in (match.group(1) or match.group(2)).split(",")
    )
    assert [word for word, count in defined.items() if count > 1] == []


def _definitions(text: str) -> set[str]:
    return {
        word.strip()
        for match in _DEFINITION_RE.finditer(text)
        for word in (match.group(1) or match.group(2)).split(",")
    }


def _code_words(text: str) -> set[str]:
    """The identifiers a file's code uses: comments and string literals left out."""
    text = re.sub(r"--\[\[.*?\]\]", "", text, flags=re.DOTALL)
    text = re.sub(r"'[^'\n]*'|\"[^\"\n]*\"", '""', text)
    text = re.sub(r"--[^\n]*", "", text)
    return set(re.findall(r"\b\w+\b", text))


def _lua_files() -> list[str]:
    return sorted(
        str(path.relative_to(REPO_LUA))
        for path in [*REPO_LUA.glob("*.lua"), *REPO_LUA.glob("lib/*.lua")]
    )


@pytest.mark.parametrize("relative", _lua_files())
def test_each_file_includes_exactly_the_libs_it_uses(relative: str) -> None:
    """A file states its own needs: it includes a lib when, and only when, its own code
    uses a name the lib defines (what the lib itself needs, the lib includes)."""
    libs = {
        f"lib/{path.name}": _definitions(path.read_text()) for path in REPO_LUA.glob("lib/*.lua")
    }
    text = read_lua(relative)
    used = _code_words(text) - _definitions(text)
    needed = {lib for lib, names in libs.items() if lib != relative and used & names}
    assert set(_INCLUDE_RE.findall(text)) == needed
    assert len(_INCLUDE_RE.findall(text)) == len(needed)


def test_a_script_taken_whole_as_a_function(tmp_path: Path) -> None:
    """`--!function NAME FILE.lua`: FILE's includes at that line (each file once), the rest
    of FILE as the body of `local function NAME(KEYS, ARGV)`."""
    root = tree(
        tmp_path,
        {
            "one.lua": (
                "--[[ one ]]\n--!include lib/base.lua\nlocal x = base(ARGV[1])\nreturn {x}\n"
            ),
            "many.lua": (
                "--!include lib/base.lua\n--!function one_of one.lua\nreturn one_of(KEYS, ARGV)\n"
            ),
            "bad.lua": "--!function One one.lua\n",
            "loop.lua": "--!function f loop2.lua\n",
            "loop2.lua": "--!function g loop.lua\n",
            "gone.lua": "--!function f nothing.lua\n",
            "lib/base.lua": "local function base(v) return v end\n",
        },
    )
    text = render_in(root, "many")
    assert text.count("local function base") == 1
    start = text.index("local function one_of(KEYS, ARGV)\n")
    assert text.index("local function base") < start
    assert text[start:].startswith(
        "local function one_of(KEYS, ARGV)\n--[[ one ]]\nlocal x = base(ARGV[1])\nreturn {x}\nend\n"
    )
    with pytest.raises(LuaSourceError, match="bad function line"):
        render_in(root, "bad")
    with pytest.raises(LuaSourceError, match="function of a function"):
        render_in(root, "loop")
    with pytest.raises(LuaSourceError, match="no such Lua file"):
        render_in(root, "gone")


def test_claim_batch_runs_claim_lua_s_own_text() -> None:
    claim = [
        line for line in read_lua("claim.lua").splitlines(keepends=True) if "--!include" not in line
    ]
    text = render("claim_batch")
    start = text.index("local function claim_one(KEYS, ARGV)\n") + len(
        "local function claim_one(KEYS, ARGV)\n"
    )
    assert text[start:].startswith("".join(claim) + "end\n")
