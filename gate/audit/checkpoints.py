"""Signed checkpoints: ``{type, campaign, size, root, time_ms, kid, sig}`` (docs/audit-format.md).

Signing uses the current Ed25519 key of the key file; verification needs only the
published public keys (``/.well-known/fairgate/keys``), looked up by ``kid``, so a
checkpoint signed before a key rotation keeps verifying while its key stays published.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gate.audit.format import PublicKeys, checkpoint_message, parse_checkpoint, sign, signed_by
from gate.signing import SigningKeys


def make_checkpoint(
    keys: SigningKeys, campaign: str, size: int, root: bytes, time_ms: int
) -> dict[str, Any]:
    root_hex = root.hex()
    kid, sig = sign(keys, checkpoint_message(campaign, size, root_hex, time_ms))
    return {
        "type": "checkpoint",
        "campaign": campaign,
        "size": size,
        "root": root_hex,
        "time_ms": time_ms,
        "kid": kid,
        "sig": sig,
    }


def verify_checkpoint(
    checkpoint: Any, public_keys: PublicKeys, campaign: str | None = None
) -> bool:
    """True when the checkpoint is well formed and signed by the key it names."""
    if not isinstance(checkpoint, Mapping) or checkpoint.get("type") != "checkpoint":
        return False
    try:
        fields = parse_checkpoint(checkpoint, campaign)
    except ValueError:
        return False
    key = public_keys.get(fields.kid)
    return key is not None and signed_by(key, fields.message(), fields.signature)
