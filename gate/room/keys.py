"""Every Redis key name fairgate uses, in one place.

All keys of one campaign carry the hash tag ``{campaign}`` so that each Lua script
touches a single Redis Cluster slot. Only the campaign registry lives outside a tag.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "fg"
REGISTRY = f"{PREFIX}:campaigns"
# In the registry's slot (a hash tag of its whole name): the durability mark INCR'd before
# a WAIT that must cover a registration (gate/room/durability.py), in a cluster.
REGISTRY_MARK = f"{{{REGISTRY}}}:mark"


@dataclass(frozen=True)
class CampaignKeys:
    campaign: str

    def _key(self, name: str) -> str:
        return f"{PREFIX}:{{{self.campaign}}}:{name}"

    @property
    def meta(self) -> str:
        """Hash: the spec, the live counters (seq, cursor, bucket) and the state."""
        return self._key("meta")

    @property
    def tickets(self) -> str:
        """Hash: customer digest (16 raw bytes) -> seq."""
        return self._key("tickets")

    @property
    def active(self) -> str:
        """Sorted set: admitted seq -> pass deadline (microseconds, Redis time)."""
        return self._key("active")

    @property
    def not_before(self) -> str:
        """Sorted set: admitted seq -> scheduled arrival (microseconds, Redis time), only
        while it is in the future (admit paces arrivals at the rate; issue 12)."""
        return self._key("nb")

    @property
    def arrived(self) -> str:
        """Sorted set: seq -> when its pass first got through /gate/auth (microseconds,
        Redis time; arrive.lua meters those arrivals, issue 12); kept for pass_ttl."""
        return self._key("arrived")

    @property
    def door(self) -> str:
        """Sorted set: seq -> when a customer told to wait at /gate/auth should come back
        (arrive.lua; a hint, the status answer's not_before); trimmed once past."""
        return self._key("door")

    @property
    def blocked(self) -> str:
        """Set: digests of blocked customers (they may not join)."""
        return self._key("blocked")

    @property
    def revoked(self) -> str:
        """Set: seqs whose pass is revoked (blocked customers' seqs included)."""
        return self._key("revoked")

    @property
    def passed(self) -> str:
        """Set: seqs that have been issued a pass (so `pass` is logged once)."""
        return self._key("passed")

    @property
    def audit(self) -> str:
        """List: msgpack audit entries, index gap-free (meta field audit_n)."""
        return self._key("audit")

    @property
    def reservations(self) -> str:
        """Hash: reservation id -> msgpack {seq, amount, state, expires_us, digest, asked}."""
        return self._key("res")

    @property
    def reservation_expiries(self) -> str:
        """Sorted set: held reservation id -> expires_us."""
        return self._key("resexp")

    @property
    def spent(self) -> str:
        """Hash: seq -> amount held + confirmed by that customer (decimal string)."""
        return self._key("spent")

    @property
    def holds(self) -> str:
        """Hash: seq -> id of the customer's held reservation (one at a time)."""
        return self._key("holds")

    @property
    def idempotency(self) -> str:
        """Hash: "seq:key" -> reservation id, so a retried claim gets the same answer."""
        return self._key("idem")

    @property
    def subscriptions(self) -> str:
        """Hash (ballot): seq -> msgpack {amount, digest}."""
        return self._key("subs")

    @property
    def allocations(self) -> str:
        """Hash (ballot): seq -> allocated amount, written at close."""
        return self._key("alloc")

    @property
    def prequeue(self) -> str:
        """Set: digests of customers who joined before opening (shuffled into seqs 1..P)."""
        return self._key("prequeue")

    @property
    def failover_marks(self) -> str:
        """Hash (after a failover): gate process token -> what it acknowledged,
        "seq,res_n,audit_n,sealed,old run id"; reconcile.lua reads and deletes it."""
        return self._key("fo_marks")

    @property
    def failover_restored(self) -> str:
        """Hash (after a failover that lost something): reservation id -> what became of a
        confirmation or release the new primary lacked (done again, or why not)."""
        return self._key("fo_restored")

    @property
    def failover_gone(self) -> str:
        """String (after a failover to a primary that lacked the whole campaign): the JSON
        report of what was acknowledged; the campaign is held and its id not free while it
        exists (reconcile.lua writes it, campaign_create.lua refuses the id)."""
        return self._key("fo_gone")

    @property
    def durable_mark(self) -> str:
        """Counter: INCR'd on the connection of an acknowledgement, right before its WAIT,
        so the WAIT covers every earlier write (gate/room/durability.py); nothing reads it."""
        return self._key("mark")

    # -- the adaptive rate (gate/controller.py, gate/health.py) ----------------------

    @property
    def controller(self) -> str:
        """String: the rate-controller lease, a random token with a TTL (SET NX PX)."""
        return self._key("controller")

    def health_window(self, window: int) -> str:
        """Hash, with a TTL: the core's answers on the callbacks in one controller window
        (window = Redis time // interval_s): n, errors, latency_sum_ms and a latency
        histogram (b<i>), summed over every gate process."""
        return self._key(f"health:{window}")

    # -- the audit log's sealing (gate/audit/) ----------------------------------------

    @property
    def sealer(self) -> str:
        """String: the sealer lease, a random token with a TTL (SET NX PX)."""
        return self._key("sealer")

    @property
    def sealer_fence(self) -> str:
        """String: fencing counter, INCR'd by each new lease holder."""
        return self._key("sealer_fence")

    @property
    def frontier(self) -> str:
        """Hash: size, frontier (Merkle right edge), fence of the last checkpoint."""
        return self._key("frontier")

    @property
    def checkpoints(self) -> str:
        """List: signed checkpoints (JSON), sizes strictly growing."""
        return self._key("checkpoints")

    @property
    def merkle_nodes(self) -> str:
        """Hash: "level:index" -> 32-byte hash of a complete subtree of the sealed log."""
        return self._key("mnodes")

    @property
    def receipt_signatures(self) -> str:
        """Hash: join entry index -> "kid:signature" over that batch's receipt root."""
        return self._key("rsig")

    @property
    def cosignatures(self) -> str:
        """Hash: "size:witness name" -> that witness's cosignature line (tlog-cosignature)
        of the checkpoint of that size (gate/audit/cosignatures.py)."""
        return self._key("cosigs")

    @property
    def published(self) -> str:
        """Sorted set: sizes of the checkpoints that witness_quorum witnesses cosigned."""
        return self._key("published")

    @property
    def join_entries(self) -> str:
        """Sorted set: join entry index (member) scored by the first seq it created."""
        return self._key("rjoin")
