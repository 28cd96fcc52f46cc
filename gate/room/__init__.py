"""The Redis face of fairgate: key names (`keys`), the Lua loader (`scripts`), and `Room`,
one method per atomic operation plus the reads."""

from gate.room.calls import (
    JOIN_CLOSED,
    JOIN_NOT_OPEN,
    JOIN_OK,
    JOIN_UNKNOWN,
    PREQUEUED,
    AdmitResult,
    CampaignState,
    ClaimResult,
    JoinResult,
    ReservationOutcome,
    Room,
    decode_entry,
)

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
    "ReservationOutcome",
    "Room",
    "decode_entry",
]
