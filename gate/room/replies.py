"""The one table of the Lua scripts' replies, mirrored from lua/lib/replies.lua.

Each code has one meaning in every script, and here the exception it becomes, its HTTP
status and its message: `Room` decodes every reply through this table, and the HTTP
layer answers a refusal with what the table says. A reply that is not in the table is a
`ScriptError` (a script and this table disagree). The error code a client sees is the
member's name in lower case.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from gate.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GateError,
    NotFound,
    NotPublished,
    ScriptError,
)

ErrorClass = type[GateError]


class Reply(Enum):
    """A status (first element of a reply), a refusal's reason, or a pass's state."""

    _value_: int | str
    error_class: ErrorClass | None  # None: not an error (the call did what it says)
    status: int
    message: str  # a str.format template; the fields come from the caller

    def __new__(
        cls, value: int | str, error: ErrorClass | None, status: int, message: str
    ) -> Reply:
        member = object.__new__(cls)
        member._value_ = value
        member.error_class = error
        member.status = status
        member.message = message
        return member

    # -- statuses ---------------------------------------------------------------------
    OK = 1, None, 200, "done"
    FROZEN = 2, None, 200, "the pre-queue is frozen; its seqs are given out next"
    REFUSED = 0, Conflict, 409, "refused: {detail}"
    UNKNOWN_CAMPAIGN = -1, NotFound, 404, "no campaign {campaign}"
    CAMPAIGN_CLOSED = -2, Conflict, 409, "campaign {campaign} is closed"
    NOT_OPEN_YET = -3, Conflict, 409, "the queue opens {window_s}s before {opens_at}"
    NO_PREQUEUE = -4, Conflict, 409, "campaign {campaign} does not shuffle a pre-queue"
    UNKNOWN_RESERVATION = -5, NotFound, 404, "no reservation {reservation}"
    NOT_CLOSED = -6, Conflict, 409, "campaign {campaign} is not closed yet"
    NOT_BALLOT = -7, Conflict, 409, "campaign {campaign} is not a ballot"
    CAMPAIGN_EXISTS = -8, Conflict, 409, "campaign {campaign} already exists"
    NO_TICKET = -9, NotFound, 404, "that customer has no ticket in this campaign"
    BAD_STATE = -10, Conflict, 409, "cannot {action} campaign {campaign}: it is {state}"
    TICKET_UNKNOWN = (
        -11,
        Conflict,
        409,
        "this ticket is not on record (Redis lost it, e.g. in a failover): join again",
    )
    CAMPAIGN_LOST_IN_FAILOVER = (
        -12,
        Conflict,
        409,
        "a Redis failover lost campaign {campaign} whole after it had given out seqs: "
        "its id is not free (the same seqs would go to other customers); create the "
        "campaign under another id, or restore Redis from a copy that holds it",
    )
    # Not an error a client sees: the script needs the seed Redis does not hold (its
    # caller, the Room, gives it and calls again).
    SEED_NEEDED = -13, ScriptError, 500, "the script needs campaign {campaign}'s seed"
    CAMPAIGN_NOT_PUBLISHED = (
        -14,
        NotPublished,
        503,
        "campaign {campaign} is not published yet: the checkpoint that commits to its rules "
        "and seeds is being signed and witnessed; keep trying",
    )

    # -- reasons of a refused claim or subscription -----------------------------------
    CLOSED = "closed", Conflict, 409, "the campaign is closed"
    WRONG_POLICY = "wrong_policy", Conflict, 409, "this campaign's policy is {detail}"
    NOT_ADMITTED = (
        "not_admitted",
        Forbidden,
        403,
        "this pass no longer admits a claim (expired, used or revoked)",
    )
    BELOW_MINIMUM = "below_minimum", BadRequest, 400, "the amount is below the minimum of {detail}"
    BAD_STEP = "bad_step", BadRequest, 400, "the amount must be a multiple of {detail}"
    OVER_CUSTOMER_LIMIT = (
        "over_customer_limit",
        Conflict,
        409,
        "over this customer's limit: at most {detail} more",
    )
    SOLD_OUT = "sold_out", Conflict, 409, "sold out: {detail} left"
    EARLIER_CLAIMS = (
        "earlier_claims",
        Conflict,
        409,
        "customers admitted before you have not claimed yet ({detail} is free now): "
        "ask again in a moment",
    )
    RESERVATION_PENDING = (
        "reservation_pending",
        Conflict,
        409,
        "a reservation ({detail}) is waiting for the core system",
    )
    IDEMPOTENCY_KEY_REUSED = (
        "idempotency_key_reused",
        Conflict,
        409,
        "this idempotency key was used for another amount ({detail})",
    )
    ALREADY_SUBSCRIBED = "already_subscribed", Conflict, 409, "already subscribed for {detail}"

    # -- reasons of a refused sealer write --------------------------------------------
    FENCED = "fenced", Conflict, 409, "a newer sealer holds the lease"
    MOVED = "moved", Conflict, 409, "the sealed state is not where the sealer started"
    NOT_GROWING = "not_growing", Conflict, 409, "the new size does not grow the sealed log"
    UNSEALED = "unsealed", Conflict, 409, "entries past the sealed size cannot be trimmed"
    BEYOND_LOG = "beyond_log", Conflict, 409, "the new size is past the end of the log"

    # -- the states of a pass (CLOSED above is one too) -------------------------------
    ADMITTED = "admitted", None, 200, "admitted until {detail}"
    WAITING = "waiting", None, 200, "waiting: the cursor is at {detail}"
    EXPIRED = "expired", None, 200, "the admission expired"
    CLAIMED = "claimed", None, 200, "claimed {detail}"
    REVOKED = "revoked", Forbidden, 403, "this customer's admission was revoked"

    # -- a campaign held after a failover, its log unable to continue (BAD_STATE's state) --
    HELD = "held", Conflict, 409, "campaign {campaign} is held after a Redis failover"

    @property
    def code(self) -> str:
        """The error code a client sees."""
        return self.name.lower()

    @classmethod
    def of(cls, value: Any) -> Reply:
        """The member a reply element stands for (Redis gives Lua strings as bytes)."""
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        member = _BY_VALUE.get(value)
        if member is None:
            raise ScriptError(f"a script answered {value!r}, which is not a reply code")
        return member

    def error(self, **fields: object) -> GateError:
        """This code as the exception a client gets; `fields` fill in the message."""
        raised = self.error_class or GateError
        return raised(self.message.format(**fields), code=self.code, status=self.status)

    def expect(self, *wanted: Reply, **fields: object) -> Reply:
        """This code when it is one of `wanted`; else its error is raised (a ScriptError
        for a code that is not an error, since the script answered out of turn)."""
        if self in wanted:
            return self
        if self.error_class is None:
            raise ScriptError(f"unexpected reply {self.name}")
        raise self.error(**fields)


_BY_VALUE: dict[int | str, Reply] = {member.value: member for member in Reply}


def status_of(reply: Any) -> Reply:
    """The status a script's reply starts with."""
    if not isinstance(reply, list) or not reply:
        raise ScriptError(f"a script answered {reply!r}, not a reply table")
    return Reply.of(reply[0])


def text(value: bytes | str) -> str:
    """A string element of a reply (Redis gives Lua strings as bytes)."""
    return value.decode() if isinstance(value, bytes) else value
