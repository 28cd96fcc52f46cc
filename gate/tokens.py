"""Signed tokens: the ticket token a waiting customer holds and the pass of an admitted one.

Wire form: ``<payload>.<mac>``, both base64url; the payload is a msgpack list
``[kind, kid, campaign, seq, digest, exp]`` and the MAC is HMAC-SHA256 under the key
named by ``kid``. A pass whose holder must wait for their paced arrival (issue 12) has a
seventh field, ``not_before`` (microseconds of Redis time); without it, 0: no wait. ``kind`` keeps a
ticket from being accepted as a pass and back.
A poll or an auth check verifies a token with no Redis round trip.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import msgpack

from gate import base64url
from gate.signing import SigningKeys

TICKET = "t"
PASS = "p"
# The ticket of a customer in a shuffled pre-queue: seq 0 until the shuffle at opening
# gives them one (the status answer then carries a TICKET with the seq).
PREQUEUE_TICKET = "q"
MAX_TOKEN_CHARS = 512


class TokenError(Exception):
    """The token is malformed, forged or signed by an unknown key."""


@dataclass(frozen=True)
class Token:
    kind: str
    kid: str
    campaign: str
    seq: int
    digest: bytes
    exp: int  # unix seconds; 0 = no expiry of its own (a ticket lives with its campaign)
    not_before: int = 0  # unix microseconds (Redis time) a pass is valid from; 0 = now


# Bounded per-process caches of work a poll or an auth check would otherwise redo on every
# request of the same customer: the customer digest (an HMAC) and a token's verification
# (base64 + msgpack + HMAC). Both are keyed on everything their answer depends on (the key
# bytes themselves included), so that a hit is the answer the full computation would give.
DIGEST_CACHE_SIZE = 16384
VERIFIED_CACHE_SIZE = 16384
_digests: dict[tuple[bytes, str, str], bytes] = {}


def customer_digest(
    keys: SigningKeys, campaign: str, customer_id: str, digest_kid: str | None = None
) -> bytes:
    """A keyed hash of the customer id, per campaign, 16 raw bytes: never the raw id.

    `digest_kid`: the digest key the campaign recorded at creation (its spec's
    `digest_key`); None for a campaign that recorded none (`SigningKeys.digest_key_for`)."""
    key = keys.digest_key_for(digest_kid)
    found = _digests.get((key, campaign, customer_id))
    if found is not None:
        return found
    message = campaign.encode() + b"\x00" + customer_id.encode()
    digest = hmac.digest(key, message, "sha256")[:16]  # one-shot: ~1.5 us less than hmac.new
    if len(_digests) >= DIGEST_CACHE_SIZE:
        # Full: emptied at once. Deleting the oldest entry one at a time would make each
        # next(iter(...)) scan the dict's deleted slots (~14 us a join at this size).
        _digests.clear()
    _digests[(key, campaign, customer_id)] = digest
    return digest


class TokenSigner:
    def __init__(self, keys: SigningKeys):
        self._keys = keys
        # token text -> (the key that verified it, the token): tokens that passed every
        # check of `verify`; the kind asked for is checked again on each use.
        self._verified: dict[str, tuple[bytes, Token]] = {}

    def sign(self, token: Token) -> str:
        return self._sign(
            token.kind,
            token.kid,
            token.campaign,
            token.seq,
            token.digest,
            token.exp,
            token.not_before,
        )

    def _sign(
        self,
        kind: str,
        kid: str,
        campaign: str,
        seq: int,
        digest: bytes,
        exp: int,
        not_before: int,
    ) -> str:
        key = self._keys.hmac_keys[kid]
        fields = [kind, kid, campaign, seq, digest, exp]
        if not_before > 0:  # only then: a pass without a wait keeps its old form
            fields.append(not_before)
        payload = msgpack.packb(fields)
        mac = hmac.digest(key, payload, "sha256")
        return f"{base64url.encode(payload)}.{base64url.encode(mac)}"

    def issue(
        self,
        kind: str,
        campaign: str,
        seq: int,
        digest: bytes,
        exp: int = 0,
        not_before: int = 0,
    ) -> str:
        # the fields signed directly: no Token built for a token only sent out (~0.8 us)
        return self._sign(kind, self._keys.hmac_current, campaign, seq, digest, exp, not_before)

    def verify(self, text: str, kind: str, *other_kinds: str) -> Token:
        """Check the MAC and the shape; the caller checks campaign, expiry and revocation.

        The token must be of `kind` (or one of `other_kinds`).
        """
        cached = self._verified.get(text)
        if cached is not None:
            key, token = cached
            # Only while the key that verified it is still the one loaded under its kid.
            if self._keys.hmac_keys.get(token.kid) is key:
                if token.kind != kind and token.kind not in other_kinds:
                    raise TokenError("wrong kind of token")
                return token
            del self._verified[text]
        key, token = self._verify(text)
        if token.kind != kind and token.kind not in other_kinds:
            raise TokenError("wrong kind of token")
        if (token.seq != 0 if token.kind == PREQUEUE_TICKET else token.seq < 1) or len(
            token.digest
        ) != 16:
            raise TokenError("malformed token")
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()  # full: start again (see customer_digest)
        self._verified[text] = (key, token)  # a token that passed every check
        return token

    def _verify(self, text: str) -> tuple[bytes, Token]:
        """The shape and the MAC; the key that verified the token, and the token."""
        if not text or len(text) > MAX_TOKEN_CHARS or text.count(".") != 1:
            raise TokenError("malformed token")
        payload_text, mac_text = text.split(".")
        try:
            payload = base64url.decode(payload_text)
            mac = base64url.decode(mac_text)
            fields = msgpack.unpackb(
                payload,
                raw=False,
                strict_map_key=True,
                max_bin_len=64,
                max_str_len=128,
                max_array_len=8,
            )
        except (
            ValueError,
            msgpack.ExtraData,
            msgpack.FormatError,
            msgpack.StackError,
            UnicodeDecodeError,
        ):
            raise TokenError("malformed token") from None
        if not isinstance(fields, list) or len(fields) not in (6, 7):
            raise TokenError("malformed token")
        token_kind, kid, campaign, seq, digest, exp = fields[:6]
        not_before = fields[6] if len(fields) == 7 else 0
        if (
            type(not_before) is not int
            or not_before < 0
            or (len(fields) == 7 and not (token_kind == PASS and not_before > 0))
        ):
            raise TokenError("malformed token")
        if not (
            isinstance(token_kind, str)
            and isinstance(kid, str)
            and isinstance(campaign, str)
            and type(seq) is int
            and isinstance(digest, bytes)
            and type(exp) is int
        ):
            raise TokenError("malformed token")
        key = self._keys.hmac_keys.get(kid)
        if key is None:
            raise TokenError("token signed by an unknown key")
        expected = hmac.digest(key, payload, "sha256")
        if not hmac.compare_digest(expected, mac):
            raise TokenError("bad token signature")
        return key, Token(token_kind, kid, campaign, seq, digest, exp, not_before)
