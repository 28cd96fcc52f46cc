"""The Lua money helper against Python ints, on every Redis version, above 2^53 too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis as sync_redis
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.redis_server import RedisServer
from gate.room.scripts import read_lua

AMOUNTS = st.one_of(
    st.integers(min_value=0, max_value=10**30 - 1),
    st.integers(min_value=2**53 - 5, max_value=2**53 + 5),
    st.sampled_from([0, 1, 9_999_999, 10_000_000, 10**7 - 1, 10**14, 10**29]),
)
SMALL = st.integers(min_value=1, max_value=2**46 - 1)
HARNESS = (
    read_lua("lib/money.lua")
    + """
local op, a, b = ARGV[1], ARGV[2], ARGV[3]
if op == 'ok' then return money_ok(a) and 1 or 0 end
if op == 'cmp' then return money_cmp(a, b) end
if op == 'add' then return money_add(a, b) end
if op == 'sub' then return money_sub(a, b) end
if op == 'min' then return money_min(a, b) end
if op == 'mod' then return string.format('%d', money_mod(a, tonumber(b))) end
if op == 'div' then return money_div(a, tonumber(b)) end
if op == 'mul' then return money_mul(a, tonumber(b)) end
"""
)


@pytest.fixture(scope="module")
def lua(any_redis: RedisServer) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis(port=any_redis.port, decode_responses=True)
    yield client
    client.close()


def run(client: sync_redis.Redis, op: str, a: object, b: object = "") -> object:
    return client.eval(HARNESS, 0, op, str(a), str(b))


@settings(max_examples=150, deadline=None)
@given(a=AMOUNTS, b=AMOUNTS)
def test_add_sub_cmp_min(lua: sync_redis.Redis, a: int, b: int) -> None:
    assert run(lua, "add", a, b) == str(a + b)
    assert int(run(lua, "cmp", a, b)) == (a > b) - (a < b)
    assert run(lua, "min", a, b) == str(min(a, b))
    high, low = max(a, b), min(a, b)
    assert run(lua, "sub", high, low) == str(high - low)


@settings(max_examples=100, deadline=None)
@given(a=AMOUNTS, m=SMALL)
def test_mod_div(lua: sync_redis.Redis, a: int, m: int) -> None:
    assert run(lua, "mod", a, m) == str(a % m)
    assert run(lua, "div", a, m) == str(a // m)


@settings(max_examples=100, deadline=None)
@given(
    a=AMOUNTS, n=st.one_of(st.integers(min_value=0, max_value=10**8 - 1), st.sampled_from([0, 1]))
)
def test_mul(lua: sync_redis.Redis, a: int, n: int) -> None:
    """What the customers admitted before a claim may still take: max x their number."""
    assert run(lua, "mul", a, n) == str(a * n)


def test_sub_refuses_a_negative_result(lua: sync_redis.Redis) -> None:
    with pytest.raises(sync_redis.ResponseError, match="negative"):
        run(lua, "sub", 1, 2)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("0", 1),
        ("1", 1),
        ("10000000000", 1),
        ("9" * 30, 1),
        ("9" * 31, 0),
        ("01", 0),
        ("", 0),
        ("-1", 0),
        ("1.5", 0),
        ("1e9", 0),
        (" 1", 0),
        ("１", 0),
    ],
)
def test_validity(lua: sync_redis.Redis, text: str, ok: int) -> None:
    assert run(lua, "ok", text) == ok
