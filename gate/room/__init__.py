"""The Redis face of fairgate: `Room`, one method per Lua script (`calls`), the reads
(`reads`) and the multi-step flows (`flows`); the one table of replies (`replies`), the
decoded results (`results`), key names (`keys`) and the Lua loader (`scripts`)."""

from gate.room.flows import Flows
from gate.room.replies import Reply
from gate.room.results import (
    JOIN_CLOSED,
    JOIN_NOT_OPEN,
    JOIN_OK,
    JOIN_UNKNOWN,
    PREQUEUED,
    AdmitResult,
    CampaignState,
    ClaimResult,
    JoinResult,
    PrequeueStep,
    ReservationOutcome,
)


class Room(Flows):
    """The script calls, the reads and the flows of one Redis, for every campaign."""


__all__ = [
    "JOIN_CLOSED",
    "JOIN_NOT_OPEN",
    "JOIN_OK",
    "JOIN_UNKNOWN",
    "PREQUEUED",
    "AdmitResult",
    "CampaignState",
    "ClaimResult",
    "JoinResult",
    "PrequeueStep",
    "Reply",
    "ReservationOutcome",
    "Room",
]
