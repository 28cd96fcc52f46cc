"""The door to the core: a pass's first use at /gate/auth is metered in Redis (arrive.lua),
so the core sees at most rate + burst new customers in any 1-s window, late comers
included (issue 12). The schedule in each pass (not_before) says when to come; customers
who come later than that would otherwise arrive on top of those due then.

Each process remembers the passes it has let in, so a customer's later requests through
the proxy are checked without Redis, as before; a pass it has forgotten (or another
process let in) costs one Redis call that finds it already in and takes no slot.
"""

from __future__ import annotations

from gate.errors import NotYet, Unauthorized, Unavailable
from gate.room import Room
from gate.tokens import Token

# The passes one process remembers; past this, those expired go first, then the oldest.
REMEMBERED_MAX = 200_000


class Arrivals:
    def __init__(self, room: Room, *, remembered_max: int = REMEMBERED_MAX) -> None:
        self.room = room
        self.remembered_max = remembered_max
        self._in: dict[tuple[str, int], int] = {}  # (campaign, seq) -> pass expiry (s)
        self.metered = 0  # Redis calls made (first uses this process saw)
        self.held_back = 0  # customers told to wait

    async def enter(self, token: Token, now_s: float) -> None:
        """Let the pass's customer in, or raise: 401 pass_not_yet with the wait when the
        door's clock is not due yet, 401 unavailable when Redis does not answer (fail
        closed, as for a stale cache)."""
        key = (token.campaign, token.seq)
        if key in self._in:
            return
        self.metered += 1
        try:
            wait_ms = await self.room.arrive(token.campaign, token.seq)
        except Unavailable:
            raise Unauthorized(
                "the gate cannot check passes right now", code="unavailable"
            ) from None
        if wait_ms is None:
            raise Unauthorized("unknown campaign", code="unknown_campaign")
        if wait_ms > 0:
            self.held_back += 1
            raise NotYet(f"this pass is valid in {wait_ms} ms", retry_after_ms=wait_ms)
        self._remember(key, token.exp, now_s)

    def let_in(self, token: Token) -> bool:
        """Whether the door has let this pass's customer in already (enter() then has
        nothing to do): the pass checks that need no Redis call (gate/http/fast.py)."""
        return (token.campaign, token.seq) in self._in

    def _remember(self, key: tuple[str, int], exp: int, now_s: float) -> None:
        if len(self._in) >= self.remembered_max:
            self._in = {k: e for k, e in self._in.items() if e > now_s}
            if len(self._in) >= self.remembered_max:  # keep the newer half
                keep = list(self._in.items())[len(self._in) // 2 :]
                self._in = dict(keep)
        self._in[key] = exp
