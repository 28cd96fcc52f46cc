--[[
  Every reply code a script returns, defined once. gate/room/replies.py mirrors this
  table (each code with the exception, HTTP status and message it becomes), and
  tests/test_lua_replies.py fails when the two differ or a script returns a code that
  is not here.
  A reply is a table whose first element is a status:
    OK        done; the script's result follows (its header says what)
    FROZEN    prequeue_assign froze the pre-queue just now and assigned nothing
    REFUSED   nothing done; what follows says why: a reason below, a state, or where
              things stand (a chunk position)
    negative  the call does not apply; nothing follows unless the header says so
              (TICKET_UNKNOWN: pass, claim and subscribe found no ticket in Redis for the
              signed (seq, digest) they were given, and granted nothing)
  A claim or subscribe refused, and a sealer write refused, name their reason after
  REFUSED; pass answers OK and the pass's state.
  Two scripts cannot refuse and return their result as it is: sealer_lease and
  receipt_locate.
]]
local OK = 1
local FROZEN = 2
local REFUSED = 0
local UNKNOWN_CAMPAIGN = -1
local CAMPAIGN_CLOSED = -2
local NOT_OPEN_YET = -3
local NO_PREQUEUE = -4
local UNKNOWN_RESERVATION = -5
local NOT_CLOSED = -6
local NOT_BALLOT = -7
local CAMPAIGN_EXISTS = -8
local NO_TICKET = -9
local BAD_STATE = -10
local TICKET_UNKNOWN = -11
local CAMPAIGN_LOST_IN_FAILOVER = -12
local SEED_NEEDED = -13
local CAMPAIGN_NOT_PUBLISHED = -14

-- Reasons of a refused claim or subscription (claim.lua, subscribe.lua).
local CLOSED = 'closed'
local WRONG_POLICY = 'wrong_policy'
local NOT_ADMITTED = 'not_admitted'
local BELOW_MINIMUM = 'below_minimum'
local BAD_STEP = 'bad_step'
local OVER_CUSTOMER_LIMIT = 'over_customer_limit'
local SOLD_OUT = 'sold_out'
local EARLIER_CLAIMS = 'earlier_claims'
local RESERVATION_PENDING = 'reservation_pending'
local IDEMPOTENCY_KEY_REUSED = 'idempotency_key_reused'
local ALREADY_SUBSCRIBED = 'already_subscribed'

-- Reasons of a refused sealer write (checkpoint_add.lua, audit_trim.lua).
local FENCED = 'fenced'
local MOVED = 'moved'
local NOT_GROWING = 'not_growing'
local UNSEALED = 'unsealed'
local BEYOND_LOG = 'beyond_log'

-- The states of a pass (pass.lua); CLOSED above is one too.
local ADMITTED = 'admitted'
local WAITING = 'waiting'
local EXPIRED = 'expired'
local CLAIMED = 'claimed'
local REVOKED = 'revoked'

-- What campaign_state.lua answers after BAD_STATE for a campaign a failover held and whose
-- log cannot continue (reconcile.lua).
local HELD = 'held'
