"""One table of replies: every code a Lua script returns is defined once, in
lua/lib/replies.lua, and mirrored by `gate.room.replies.Reply` with its exception, HTTP
status and message.

The scripts are read as text: each header must document its KEYS, its ARGV and what it
returns, and every `return` of a script (outside its local functions) must be a table
that starts with a status from the table, name any code it carries by the table's name,
and match the codes its header says it returns. The checker is tried on bad samples too,
so that it is known to fail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgpack
import pytest

from gate.errors import GateError, ScriptError
from gate.room import JOIN_CLOSED, JOIN_NOT_OPEN, JOIN_OK, JOIN_UNKNOWN, Reply, Room
from gate.room.keys import CampaignKeys
from gate.room.scripts import read_lua, script_names

REPLIES_LIB = "lib/replies.lua"
# The scripts that cannot refuse: they return their result as it is, without a status.
PLAIN = {"sealer_lease", "receipt_locate"}

_CONSTANT_RE = re.compile(r"^local ([A-Z][A-Z0-9_]*) = (-?\d+|'[a-z_]+')$", re.MULTILINE)
_CODE_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_CAPS_WORD_RE = re.compile(r"\b[A-Z][A-Z0-9_]+\b")
_TOKEN_RE = re.compile(r"[A-Za-z_]\w*|\S")
_OPENERS = {"if", "do", "function", "repeat"}


def lua_table(text: str) -> dict[str, int | str]:
    """The constants of lua/lib/replies.lua: name -> value."""
    table: dict[str, int | str] = {}
    for name, value in _CONSTANT_RE.findall(text):
        assert name not in table, f"{name} defined twice"
        table[name] = value.strip("'") if value.startswith("'") else int(value)
    return table


def _masked(match: re.Match[str]) -> str:
    """A string literal with its content replaced by x, or a comment by blanks."""
    found = match.group(0)
    if found.startswith("--"):
        return re.sub(r"[^\n]", " ", found)
    return found[0] + "x" * (len(found) - 2) + found[-1]


def strip_strings(code: str) -> str:
    """`code` with every string literal's content replaced by x (same length)."""
    return re.sub(r"'[^'\n]*'|\"[^\"\n]*\"", _masked, code)


def strip_comments(code: str) -> str:
    """`code` with its comments blanked (same length, so offsets still hold)."""
    code = re.sub(r"--\[\[.*?\]\]", _masked, code, flags=re.DOTALL)
    out = list(code)
    for match in re.finditer(r"--[^\n]*", strip_strings(code)):
        out[match.start() : match.end()] = " " * (match.end() - match.start())
    return "".join(out)


def split_header(text: str) -> tuple[str, str]:
    """The leading `--[[ ... ]]` comment and the code after it."""
    if not text.startswith("--[[") or "]]" not in text:
        return "", text
    end = text.index("]]") + 2
    return text[:end], text[end:]


def table_elements(code: str, start: int) -> tuple[list[str], int]:
    """The top-level elements of the table constructor whose `{` is at code[start]."""
    masked = strip_strings(code)
    depth, elements, current = 0, [], start + 1
    for i in range(start, len(code)):
        char = masked[i]
        if char in "{([":
            depth += 1
        elif char in "})]":
            depth -= 1
            if depth == 0:
                elements.append(code[current:i].strip())
                return [e for e in elements if e], i + 1
        elif char == "," and depth == 1:
            elements.append(code[current:i].strip())
            current = i + 1
    raise ValueError("unbalanced table constructor")


def script_returns(code: str) -> list[tuple[int, str]]:
    """The offsets and text after each `return` of the script's own body (not of its
    local functions), up to the end of its line; `code` is comment-free."""
    masked = strip_strings(code)
    stack: list[str] = []
    skip_do = 0
    found: list[tuple[int, str]] = []
    for match in _TOKEN_RE.finditer(masked):
        word = match.group(0)
        if word in ("for", "while"):
            stack.append(word)
            skip_do += 1
        elif word == "do" and skip_do:
            skip_do -= 1
        elif word in _OPENERS:
            stack.append(word)
        elif word in ("end", "until"):
            stack.pop()
        elif word == "return" and "function" not in stack:
            line_end = code.find("\n", match.end())
            found.append((match.end(), code[match.end() : line_end if line_end >= 0 else None]))
    return found


@dataclass
class Checked:
    returned: set[str]  # the table's names the script's replies use
    problems: list[str]


def check_script(name: str, text: str, table: dict[str, int | str]) -> Checked:
    """Everything wrong with one script's header and replies, against `table`."""
    problems: list[str] = []
    header, body = split_header(text)
    if not header:
        return Checked(set(), [f"{name}: no --[[ ]] header"])
    code = strip_comments(body)
    # KEYS and ARGV: the header lists every one the code uses, KEYS numbered from 1.
    keys_listed = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", header)}
    keys_used = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", code)}
    if keys_listed != set(range(1, len(keys_listed) + 1)):
        problems.append(f"{name}: header KEYS are not 1..n: {sorted(keys_listed)}")
    if keys_used - keys_listed:
        problems.append(f"{name}: KEYS {sorted(keys_used - keys_listed)} used, not in header")
    argv_listed = {int(n) for n in re.findall(r"ARGV\[(\d+)\]", header)}
    argv_from = [int(n) for n in re.findall(r"ARGV\[(\d+)\.\.", header)]
    for n in sorted({int(n) for n in re.findall(r"ARGV\[(\d+)\]", code)}):
        if n not in argv_listed and not any(n >= start for start in argv_from):
            problems.append(f"{name}: ARGV[{n}] used, not in header")
    if "Returns" not in header:
        problems.append(f"{name}: header does not say what it returns")
    documented = set(_CAPS_WORD_RE.findall(header[header.find("Returns") :])) - {"KEYS", "ARGV"}
    for word in sorted(documented - set(table)):
        problems.append(f"{name}: header names {word}, which is not in the table")

    plain = REPLIES_LIB not in re.findall(r"^--!include (\S+)", body, re.MULTILINE)
    returned: set[str] = set()
    for offset, rest in script_returns(code):
        rest = rest.strip()
        if rest.startswith("{"):
            elements, _ = table_elements(code, offset + code[offset:].index("{"))
        elif re.fullmatch(r"\w+", rest):
            init = re.search(rf"^local {rest} = \{{", code, re.MULTILINE)
            if init is None:
                problems.append(f"{name}: returns {rest}, not a table it builds")
                continue
            elements, _ = table_elements(code, init.end() - 1)
        else:
            problems.append(f"{name}: `return {rest}` is not a reply table")
            continue
        if plain:
            continue  # a plain script's result has no status; it carries no code either
        if not elements or not _CODE_NAME_RE.match(elements[0]):
            problems.append(f"{name}: reply {{{', '.join(elements)}}} has no status name first")
        for element in elements:
            if _CODE_NAME_RE.match(element):
                if element not in table:
                    problems.append(f"{name}: returns {element}, which is not in the table")
                returned.add(element)
            elif re.fullmatch(r"'[^']+'|\"[^\"]+\"", element):
                problems.append(f"{name}: returns the literal {element}; name it from the table")
    if plain:
        if name not in PLAIN:
            problems.append(f"{name}: does not include {REPLIES_LIB}")
    elif returned != documented:
        problems.append(
            f"{name}: returns {sorted(returned)} but its header says {sorted(documented)}"
        )
    return Checked(returned, problems)


LUA_TABLE = lua_table(read_lua(REPLIES_LIB))


def test_the_lua_table_and_the_python_enum_agree() -> None:
    assert {member.name: member.value for member in Reply} == LUA_TABLE
    assert len(set(LUA_TABLE.values())) == len(LUA_TABLE)  # no two names for one code


@pytest.mark.parametrize("member", list(Reply), ids=lambda m: m.name)
def test_every_code_has_an_exception_a_status_and_a_message(member: Reply) -> None:
    assert member.message.strip()
    assert 200 <= member.status < 600
    if member.error_class is None:
        assert member.status == 200
    else:
        assert issubclass(member.error_class, GateError)
        assert member.error_class.status == member.status
        error = member.error(
            campaign="c1",
            reservation="r1",
            detail="5",
            action="pause",
            state="closed",
            window_s=60,
            opens_at="2030-01-01T00:00:00Z",
        )
        assert isinstance(error, member.error_class)
        assert (error.code, error.status) == (member.name.lower(), member.status)


def test_the_join_statuses_are_the_table_s() -> None:
    assert (
        Reply.OK.value,
        Reply.UNKNOWN_CAMPAIGN.value,
        Reply.CAMPAIGN_CLOSED.value,
        Reply.NOT_OPEN_YET.value,
    ) == (JOIN_OK, JOIN_UNKNOWN, JOIN_CLOSED, JOIN_NOT_OPEN)


def test_a_code_outside_the_table_is_a_script_error() -> None:
    assert Reply.of(b"sold_out") is Reply.SOLD_OUT
    assert Reply.of(-5) is Reply.UNKNOWN_RESERVATION
    with pytest.raises(ScriptError):
        Reply.of(-99)
    with pytest.raises(ScriptError):
        Reply.of(b"sold_outt")
    with pytest.raises(ScriptError, match="unexpected reply OK"):
        Reply.OK.expect(Reply.REFUSED)
    with pytest.raises(GateError, match="no campaign c9") as caught:
        Reply.UNKNOWN_CAMPAIGN.expect(Reply.OK, campaign="c9")
    assert caught.value.status == 404


@pytest.mark.parametrize("name", script_names())
def test_every_script_documents_and_returns_only_codes_of_the_table(name: str) -> None:
    checked = check_script(name, read_lua(f"{name}.lua"), LUA_TABLE)
    assert checked.problems == []
    if name not in PLAIN:
        assert "OK" in checked.returned


def test_only_the_plain_scripts_leave_the_table_out_and_the_table_names_them() -> None:
    header, _ = split_header(read_lua(REPLIES_LIB))
    for name in PLAIN:
        assert name in script_names() and name in header
        assert REPLIES_LIB not in read_lua(f"{name}.lua")


def test_every_code_is_returned_by_some_script() -> None:
    used: set[str] = set()
    for name in script_names():
        used |= check_script(name, read_lua(f"{name}.lua"), LUA_TABLE).returned
    assert set(LUA_TABLE) - used == set()


GOOD = """--[[
  A sample.
  KEYS[1] meta hash
  ARGV[1] seq   ARGV[2..] more
  Returns {OK, seq}, {REFUSED, SOLD_OUT, left}, or {UNKNOWN_CAMPAIGN}.
]]
--!include lib/replies.lua
local function helper(x)
  if x then return 'anything' end
  return {-7}
end
local seq = tonumber(ARGV[1])
for i = 2, #ARGV do seq = seq + 1 end
if rcall('EXISTS', KEYS[1]) == 0 then return {UNKNOWN_CAMPAIGN} end
if seq > 10 then
  return {REFUSED, SOLD_OUT, ''}
end
local reply = {OK, seq}
return reply
"""


def test_the_checker_passes_a_good_sample() -> None:
    checked = check_script("good", GOOD, LUA_TABLE)
    assert checked.problems == []
    assert checked.returned == {"OK", "REFUSED", "SOLD_OUT", "UNKNOWN_CAMPAIGN"}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("{UNKNOWN_CAMPAIGN} end", "{-2} end"), "has no status name first"),
        (("{UNKNOWN_CAMPAIGN} end", "{NO_SUCH_CODE} end"), "NO_SUCH_CODE, which is not in"),
        (("{REFUSED, SOLD_OUT, ''}", "{REFUSED, 'sold_outt', ''}"), "the literal 'sold_outt'"),
        (("{REFUSED, SOLD_OUT, ''}", "{REFUSED, NOT_ADMITTED, ''}"), "but its header says"),
        (("local reply = {OK, seq}", "local reply = {1, seq}"), "has no status name first"),
        (("return reply", "return seq"), "returns seq, not a table it builds"),
        (("return reply", "return"), "is not a reply table"),
        (("or {UNKNOWN_CAMPAIGN}.", "or {UNKNOWN_CAMPAIGN}, {BAD_CODE}."), "header names BAD_CODE"),
        (("  KEYS[1] meta hash\n", ""), "KEYS [1] used, not in header"),
        (("ARGV[1] seq   ARGV[2..] more", "ARGV[2..] more"), "ARGV[1] used, not in header"),
        (("--!include lib/replies.lua\n", ""), "does not include lib/replies.lua"),
        (("--[[\n  A sample.", "--[=[\n  A sample."), "no --[[ ]] header"),
    ],
)
def test_the_checker_fails_a_bad_sample(change: tuple[str, str], problem: str) -> None:
    old, new = change
    assert GOOD.count(old) == 1
    checked = check_script("bad", GOOD.replace(old, new), LUA_TABLE)
    assert any(problem in found for found in checked.problems), checked.problems


# -- campaign_create takes one msgpack map, checked whole before the first write --------


def _fields() -> dict[str, object]:
    return {
        "id": "mp",
        "actor": "ops",
        "spec": "{}",
        "opens_at_us": 1_000_000,
        "closes_at_us": 2_000_000,
        "prequeue_from_us": 1_000_000,
        "pass_ttl_us": 60_000_000,
        "res_ttl_us": 60_000_000,
        "burst": 5,
        "max_active": 10,
        "rate": "5.0",
        "overbook": "1.0",
        "policy": "first_come",
        "unit": "item",
        "q_total": "100",
        "q_min": "1",
        "q_max": "5",
        "q_step": "1",
        "partial": False,
        "seed_kid": "h1",
        "seed_nonce": "e" * 32,
        "seed_hash": "b" * 64,
        "pq_shuffle": False,
        "pq_seed_hash": "d" * 64,
    }


async def _create(room: Room, fields: dict[str, object]) -> object:
    k = CampaignKeys("mp")
    return await room.scripts.call(
        room.redis, "campaign_create", [k.meta, k.audit, k.failover_gone], [msgpack.packb(fields)]
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rate": 5.0}, "bad argument: rate"),
        ({"partial": "0"}, "bad argument: partial"),
        ({"pq_seed_hash": "d" * 63}, "bad argument: pq_seed_hash"),
        ({"q_total": "01"}, "quota amount"),
        ({"closes_at_us": 1_000_000}, "window"),
        ({"surprise": 1}, "unknown field surprise"),
        ({"burst": None}, "burst"),
    ],
)
async def test_campaign_create_refuses_a_bad_field_before_writing(
    room: Room, change: dict[str, object], message: str
) -> None:
    fields = {**_fields(), **change}
    fields = {key: value for key, value in fields.items() if value is not None}
    with pytest.raises(Exception, match=re.escape(message)):
        await _create(room, fields)
    k = CampaignKeys("mp")
    assert await room.redis.exists(k.meta, k.audit) == 0


async def test_campaign_create_stores_the_map_field_by_field(room: Room) -> None:
    reply = await _create(room, _fields())
    assert isinstance(reply, list) and Reply.of(reply[0]) is Reply.OK
    meta = await room.meta("mp")
    assert meta is not None
    assert (meta["rate"], meta["partial"], meta["pq_shuffle"], meta["res_ttl_us"]) == (
        "5.0",
        "0",
        "0",
        "60000000",
    )
    again = await _create(room, _fields())
    assert isinstance(again, list) and Reply.of(again[0]) is Reply.CAMPAIGN_EXISTS
