"""The ballot allocation of an IPO-style subscription, computed from the data alone.

Everyone subscribes an amount during the window. At close the total is split, in lots of
`step`, into an equal part (every subscriber gets the same number of lots, capped at what
they asked for) and a pro-rata part (the rest, in proportion to what each still wants).
Lots that do not divide evenly go one at a time in the order of SHA-256(seed ‖ digest),
where the seed's hash was published when the campaign was created and the seed itself is
revealed at close. Anyone with the subscriptions and the seed gets the same result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Subscription:
    seq: int
    digest: bytes  # the customer digest (16 bytes)
    amount: int


def lottery_order(seed: bytes, subscriptions: Sequence[Subscription]) -> list[Subscription]:
    """The tie-break order: by SHA-256(seed ‖ digest), then seq (digests are unique)."""
    return sorted(subscriptions, key=lambda s: (hashlib.sha256(seed + s.digest).digest(), s.seq))


def allocate(
    total: int,
    step: int,
    subscriptions: Sequence[Subscription],
    seed: bytes,
    equal_share: tuple[int, int] = (1, 2),
) -> dict[int, int]:
    """Allocation per seq (amounts in the smallest unit); the sum never exceeds `total`.

    `equal_share` is the fraction (numerator, denominator) of the lots split equally.
    """
    if step < 1 or total < 0:
        raise ValueError("step must be >= 1 and total >= 0")
    numerator, denominator = equal_share
    if not 0 <= numerator <= denominator or denominator < 1:
        raise ValueError("equal_share must be a fraction between 0 and 1")
    if not subscriptions:
        return {}
    wanted = {s.seq: s.amount // step for s in subscriptions}
    if len(wanted) != len(subscriptions):
        raise ValueError("one subscription per seq")
    order = [s.seq for s in lottery_order(seed, subscriptions)]
    lots = {seq: 0 for seq in wanted}
    total_lots = total // step

    # Equal part: the same number of lots to everyone, capped by what they asked for.
    equal_lots = total_lots * numerator // denominator
    left = _spread_evenly(equal_lots, lots, wanted, order)

    # Pro-rata part: the rest, in proportion to what each subscriber still wants.
    pool = total_lots - equal_lots + left
    demand = {seq: wanted[seq] - lots[seq] for seq in order}
    total_demand = sum(demand.values())
    if total_demand <= pool:
        for seq in order:
            lots[seq] += demand[seq]
    elif total_demand > 0:
        given = 0
        for seq in order:
            share = pool * demand[seq] // total_demand
            lots[seq] += share
            given += share
        # The remainder, one lot each, in lottery order, to those who still want more.
        remainder = pool - given
        for seq in order:
            if remainder == 0:
                break
            if lots[seq] < wanted[seq]:
                lots[seq] += 1
                remainder -= 1
    return {seq: lots[seq] * step for seq in wanted}


def _spread_evenly(
    budget: int, lots: dict[int, int], wanted: dict[int, int], order: list[int]
) -> int:
    """Give `budget` lots as evenly as possible; returns the lots nobody could take."""
    hungry = [seq for seq in order if lots[seq] < wanted[seq]]
    while budget > 0 and hungry:
        each = budget // len(hungry)
        if each == 0:
            # Fewer lots than subscribers: one each, in lottery order.
            for seq in hungry[:budget]:
                lots[seq] += 1
            return 0
        for seq in hungry:
            take = min(each, wanted[seq] - lots[seq])
            lots[seq] += take
            budget -= take
        hungry = [seq for seq in hungry if lots[seq] < wanted[seq]]
    return budget
