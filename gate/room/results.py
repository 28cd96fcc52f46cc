"""What the Room's calls and reads give back: plain frozen dataclasses, decoded."""

from __future__ import annotations

from dataclasses import dataclass

from gate.room.replies import Reply

# JoinResult.status: the join script's status code (a Reply value).
JOIN_OK = int(Reply.OK.value)
JOIN_UNKNOWN = int(Reply.UNKNOWN_CAMPAIGN.value)
JOIN_CLOSED = int(Reply.CAMPAIGN_CLOSED.value)
JOIN_NOT_OPEN = int(Reply.NOT_OPEN_YET.value)
# A ticket's seq in JoinResult when the customer is in a shuffled pre-queue: their seq
# (in 1..P) comes when the pre-queue is shuffled at opening (Room.assign_prequeue).
PREQUEUED = -1


@dataclass(frozen=True)
class JoinResult:
    status: int
    now_us: int
    tickets: list[tuple[int, bool]]  # (seq, created); seq 0 = blocked, PREQUEUED (-1)
    entry: int = 0  # index of the batch's `join` audit entry (0 when nobody was created)


@dataclass(frozen=True)
class AdmitResult:
    admitted: int
    cursor: int
    active: int
    expired: int
    state: str


@dataclass(frozen=True)
class ClaimResult:
    """A reservation, or a refusal with its code (sold_out, over_customer_limit, ...)."""

    ok: bool
    code: str = ""
    detail: str = ""
    reservation: str = ""
    amount: int = 0
    expires_us: int = 0
    replayed: bool = False
    # a subscription: its audit entry and time, for the customer's signed receipt (0: none)
    entry: int = 0
    t_us: int = 0

    @property
    def refusal(self) -> Reply:
        """The refusal's reason as a table entry (its status and message)."""
        return Reply.of(self.code)


@dataclass(frozen=True)
class ReservationOutcome:
    ok: bool
    state: str
    seq: int
    amount: int
    # How long the reservation was held, claim to this call (Redis time); None for a
    # repeat or a refusal. The core's latency for the adaptive rate (gate/health.py).
    held_us: int | None = None


@dataclass(frozen=True)
class PrequeueStep:
    """One prequeue_assign call: OK, FROZEN or REFUSED and where the pre-queue stands,
    or the code that says why nothing applies (and zeros)."""

    status: Reply
    position: int  # how many pre-queue customers have their seq
    total: int
    state: str  # pq_state: "assigning" or "done"


@dataclass(frozen=True)
class CampaignState:
    """What every process caches about a campaign, refreshed every few ms."""

    state: str
    seq: int
    cursor: int
    rev: int
    opens_at_us: int
    closes_at_us: int
    prequeue_from_us: int
    rate: float
    admitted: int
    policy: str = "first_come"
    remaining: int = 1  # quota neither held nor confirmed
    minimum: int = 1
    prequeue_shuffle: bool = False  # joins before opening are shuffled at opening
    prequeue_state: str = ""  # "" collecting, "assigning" (frozen), "done"
    # Counters that move whenever an admitted customer's pass.lua answer may change
    # (gate/pass_cache.py): claims, subscriptions, the door's waits (rev covers revoke/block).
    claims: int = 0
    subscriptions: int = 0
    door: int = 0

    @property
    def prequeue_pending(self) -> bool:
        """The pre-queue's seqs are not all given out yet (admission waits for them)."""
        return self.prequeue_shuffle and self.prequeue_state != "done"

    @property
    def soldout(self) -> bool:
        """Nobody more can be served: what is left is below the per-customer minimum."""
        return self.policy == "first_come" and self.remaining < self.minimum
