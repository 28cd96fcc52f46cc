"""Signed checkpoints: ``{type, campaign, size, root, time_ms, kid, sig}`` (docs/audit-format.md).

Signing uses the current Ed25519 key of the key file; verification needs only the
published public keys (``/.well-known/fairgate/keys``), looked up by ``kid``, so a
checkpoint signed before a key rotation keeps verifying while its key stays published.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gate.audit.merkle import HASH_SIZE
from gate.signing import SigningKeys

CHECKPOINT_PREFIX = "fairgate-checkpoint/v1\n"

PublicKeys = Mapping[str, Ed25519PublicKey]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    if not isinstance(text, str) or "=" in text:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def checkpoint_message(campaign: str, size: int, root_hex: str, time_ms: int) -> bytes:
    return f"{CHECKPOINT_PREFIX}{campaign}\n{size}\n{root_hex}\n{time_ms}\n".encode()


def sign(keys: SigningKeys, message: bytes) -> tuple[str, str]:
    """(kid, base64url signature) with the current Ed25519 key."""
    kid = keys.ed25519_current
    return kid, b64url(keys.ed25519_keys[kid].sign(message))


def public_keys_of(keys: SigningKeys) -> dict[str, Ed25519PublicKey]:
    return {kid: key.public_key() for kid, key in keys.ed25519_keys.items()}


def load_public_keys(document: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """Public keys by kid from the ``/.well-known/fairgate/keys`` document."""
    out: dict[str, Ed25519PublicKey] = {}
    for item in document.get("keys", []):
        if item.get("alg") != "Ed25519":
            continue
        out[str(item["kid"])] = Ed25519PublicKey.from_public_bytes(unb64url(item["public_key"]))
    return out


def verify_signature(public_keys: PublicKeys, kid: Any, message: bytes, sig: Any) -> bool:
    key = public_keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        return False
    try:
        key.verify(unb64url(sig), message)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


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


def _hex32(value: Any) -> bool:
    if not isinstance(value, str) or len(value) != 2 * HASH_SIZE or value != value.lower():
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def verify_checkpoint(
    checkpoint: Mapping[str, Any], public_keys: PublicKeys, campaign: str | None = None
) -> bool:
    """True when the checkpoint is well formed and signed by the key it names."""
    try:
        size, time_ms = checkpoint["size"], checkpoint["time_ms"]
        root_hex, name = checkpoint["root"], checkpoint["campaign"]
        if checkpoint.get("type") != "checkpoint" or not isinstance(name, str):
            return False
        if campaign is not None and name != campaign:
            return False
        for number in (size, time_ms):
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                return False
        if not _hex32(root_hex):
            return False
        message = checkpoint_message(name, size, root_hex, time_ms)
        return verify_signature(public_keys, checkpoint.get("kid"), message, checkpoint.get("sig"))
    except (KeyError, TypeError):
        return False
