"""A campaign's seeds, derived from a secret that lives with the signing key (issue 13).

Two seeds decide what nobody may choose: the pre-queue's shuffle (revealed at opening)
and a ballot's tie-break (revealed at close). Their SHA-256 commitments are published in
the campaign's `admin-create` entry, which a signed (and, with witnesses, cosigned)
checkpoint covers before anyone may join. The seeds themselves are never written to
Redis before their reveal: someone with Redis access and no key can neither read them
in advance (and place friends) nor swap them (the gate derives them again at the reveal
and ignores what Redis says).

    seed = HMAC-SHA256(hmac key `kid`, "fairgate-seed/v1" LF purpose LF campaign LF nonce)

`kid` is the signing key file's current HMAC key at creation and `nonce` 16 random bytes
(hex); both are stored in the campaign's meta (`seed_kid`, `seed_nonce`): a campaign
created again under the same id gets new seeds. The key must stay in the key file until
the campaign's seeds are revealed (as it must for the tickets it signed).

A Room built without keys (a library user's, or a test's) derives from a secret of its
process: its campaigns must open and close in the process that created them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from gate.errors import GateError
from gate.signing import SigningKeys

LABEL = b"fairgate-seed/v1"
BALLOT = "ballot"
PREQUEUE = "prequeue"
PURPOSES = (BALLOT, PREQUEUE)
# The meta field each purpose's commitment sits in.
COMMITMENT_FIELD = {BALLOT: "seed_hash", PREQUEUE: "pq_seed_hash"}


@dataclass(frozen=True)
class Seeds:
    secrets: Mapping[str, bytes]  # kid -> key
    current: str

    @classmethod
    def from_keys(cls, keys: SigningKeys) -> Seeds:
        return cls(dict(keys.hmac_keys), keys.hmac_current)

    @classmethod
    def of_this_process(cls) -> Seeds:
        return _PROCESS

    def new_ref(self) -> tuple[str, str]:
        """The (kid, nonce) a new campaign records."""
        return self.current, secrets.token_hex(16)

    def derive(self, campaign: str, kid: str, nonce: str, purpose: str) -> bytes:
        if purpose not in PURPOSES:
            raise ValueError(f"no seed for {purpose!r}")
        key = self.secrets.get(kid)
        if key is None:
            raise GateError(
                f"campaign {campaign}'s seeds come from key {kid!r}, which is not in the "
                "signing key file any more: they cannot be revealed (put the key back)",
                code="seed_key_missing",
                status=503,
            )
        message = b"\n".join((LABEL, purpose.encode(), campaign.encode(), nonce.encode()))
        return hmac.new(key, message, hashlib.sha256).digest()


_PROCESS = Seeds({"process": secrets.token_bytes(32)}, "process")
