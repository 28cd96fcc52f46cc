"""The passes this process has issued, remembered so that an admitted customer's polls do
not each run pass.lua (issue 15: 2,000 polls of one ticket were 2,000 script calls).

pass.lua's answer for an admitted seq (its deadline and not_before) stays the same until
one of these happens, and each is something this process's campaign cache (gate/cache.py)
sees at its next refresh, or this process's Room tells at once (Room.on_change):
- a claim or a subscription (the campaign's `claims` / `subscriptions` counters),
- a revocation or a block (`rev`, and the revoked set the cache holds),
- the door at /gate/auth telling the customer to come back later (`door_n`),
- the campaign closed (its state, or its closing time passed: `closes_at_us`),
- the deadline reached (pass.lua then answers expired; the admission's deadline is moved
  only by pass.lua's own first call),
- a failover's reconciliation of the campaign (Gate wires `changed` to it).
A remembered pass is answered only when none of these moved since the version of the
cache read before the call that issued it; else pass.lua is asked again. The poll asks a
fresh cache first (I7), as before, so a hit knows what a call would have known then.
"""

from __future__ import annotations

from dataclasses import dataclass

from gate.cache import LiveCampaign
from gate.room import Room

# The passes one process remembers; past this, the memory is emptied (a full one is
# refilled by the next poll of each admitted ticket, one pass.lua call each).
REMEMBERED_MAX = 200_000
# Within this much of its deadline a pass is no longer answered from memory: pass.lua
# decides (expired or not) by Redis's clock, which this process knows to within ms.
DEADLINE_MARGIN_US = 1_000_000

Version = tuple[int, int, int, int, str, int]


def version_of(live: LiveCampaign) -> Version:
    """What must not have moved for a remembered answer to still be pass.lua's."""
    s = live.state
    return (s.rev, s.claims, s.subscriptions, s.door, s.state, s.closes_at_us)


@dataclass(slots=True)
class _Remembered:
    live: LiveCampaign
    version: Version
    epoch: int
    deadline_us: int
    not_before_us: int


class PassCache:
    def __init__(self, *, remembered_max: int = REMEMBERED_MAX) -> None:
        self.remembered_max = remembered_max
        self._passes: dict[tuple[str, int, bytes], _Remembered] = {}
        # Bumped by this process's own changes to a campaign (Room.on_change): a claim here
        # is seen by the next poll here at once, not only after the next refresh.
        self._epochs: dict[str, int] = {}
        self.hits = 0
        self.calls = 0

    def changed(self, campaign: str) -> None:
        self._epochs[campaign] = self._epochs.get(campaign, 0) + 1

    def __len__(self) -> int:
        return len(self._passes)

    async def status(
        self, room: Room, live: LiveCampaign, campaign: str, seq: int, digest: bytes, now_us: float
    ) -> tuple[str, int, int]:
        """pass.lua's answer for the seq (Room.pass_status): from memory when it still
        holds, else from Redis (and remembered when admitted)."""
        key = (campaign, seq, digest)
        epoch = self._epochs.get(campaign, 0)
        version = version_of(live)
        found = self._passes.get(key)
        if found is not None:
            if self._holds(found, live, version, epoch, seq, now_us):
                self.hits += 1
                not_before = found.not_before_us if found.not_before_us > now_us else 0
                return "admitted", found.deadline_us, not_before
            del self._passes[key]
        self.calls += 1
        state, value, not_before = await room.pass_status(campaign, seq, digest)
        if state == "admitted":
            if len(self._passes) >= self.remembered_max:
                self._passes.clear()
            # version and epoch as read before the call: anything that moved during it
            # makes the next poll ask again
            self._passes[key] = _Remembered(live, version, epoch, value, not_before)
        return state, value, not_before

    def _holds(
        self,
        found: _Remembered,
        live: LiveCampaign,
        version: Version,
        epoch: int,
        seq: int,
        now_us: float,
    ) -> bool:
        state = live.state
        return (
            found.live is live  # the same campaign, not one created again under its id
            and found.version == version
            and found.epoch == epoch
            and seq not in live.revoked
            and state.state != "closed"
            and now_us < state.closes_at_us
            and now_us + DEADLINE_MARGIN_US < found.deadline_us
        )
