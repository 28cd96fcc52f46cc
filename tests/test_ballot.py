"""The ballot allocation: bounded by the total, fair by construction, reproducible."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from gate.ballot import Subscription, allocate, lottery_order


def subs(amounts: list[int]) -> list[Subscription]:
    return [
        Subscription(i + 1, hashlib.sha256(str(i).encode()).digest()[:16], a)
        for i, a in enumerate(amounts)
    ]


@settings(max_examples=300, deadline=None)
@given(
    amounts=st.lists(st.integers(min_value=1, max_value=10**6), min_size=0, max_size=60),
    total=st.integers(min_value=0, max_value=10**7),
    step=st.integers(min_value=1, max_value=1000),
    seed=st.binary(min_size=32, max_size=32),
    equal=st.sampled_from([(0, 1), (1, 2), (1, 1), (1, 3)]),
)
def test_invariants(
    amounts: list[int], total: int, step: int, seed: bytes, equal: tuple[int, int]
) -> None:
    subscriptions = subs(amounts)
    result = allocate(total, step, subscriptions, seed, equal)
    assert sum(result.values()) <= total
    by_seq = {s.seq: s for s in subscriptions}
    total_lots, wanted = total // step, {s.seq: s.amount // step for s in subscriptions}
    for seq, amount in result.items():
        assert amount % step == 0
        assert 0 <= amount <= by_seq[seq].amount  # never more than asked
    # Nothing is left on the table while someone still wants more.
    if sum(wanted.values()) >= total_lots:
        assert sum(result.values()) == total_lots * step
    else:
        assert all(result[seq] == wanted[seq] * step for seq in wanted)
    # Deterministic: the same data and seed give the same answer, whatever the input order.
    assert allocate(total, step, list(reversed(subscriptions)), seed, equal) == result


def test_equal_part_is_equal_and_pro_rata_follows_demand() -> None:
    # 100 lots: 50 split equally among 5 (10 each), 50 pro rata to what is still wanted.
    result = allocate(100, 1, subs([10, 20, 30, 40, 1000]), b"s" * 32)
    assert result[1] == 10  # satisfied by the equal part alone
    assert all(amount >= 10 for amount in result.values())  # everyone got the equal part
    assert sum(result.values()) == 100
    # remaining demand 0/10/20/30/990 shares 50 lots: 0/0/0/1/47, the last 2 by lottery
    assert result[5] >= 10 + 47 and result[4] >= 10 + 1
    assert result[5] > result[4] >= result[3] >= result[2]


def test_fewer_lots_than_subscribers_goes_by_the_committed_lottery() -> None:
    subscriptions = subs([5] * 10)
    seed = b"k" * 32
    result = allocate(3, 1, subscriptions, seed, (1, 1))
    winners = {seq for seq, amount in result.items() if amount}
    assert winners == {s.seq for s in lottery_order(seed, subscriptions)[:3]}
    other = allocate(3, 1, subscriptions, b"j" * 32, (1, 1))
    assert sum(other.values()) == 3
