"""The evidence formats of docs/audit-format.md, read and written in one place.

An audit entry decodes to a dict whose field names are text and whose values are left
as msgpack gives them (strings, customer digests among them, as raw bytes). Every text
that carries signed or hashed bytes has one spelling only: a text that decodes to the
same bytes in two ways could be altered without a trace, so each reader here refuses
the other spellings (padded or non-canonical base64, upper-case hex).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gate import base64url
from gate.signing import SigningKeys

EXPORT_FORMAT = "fairgate-audit/1"
CHECKPOINT_PREFIX = "fairgate-checkpoint/v1\n"
HASH_HEX_DIGITS = 64  # a SHA-256 tree hash as hex

PublicKeys = Mapping[str, Ed25519PublicKey]


def is_int(value: Any) -> TypeGuard[int]:
    """An integer as JSON or msgpack carries it (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_hex(value: Any, size: int) -> bytes | None:
    """The `size` bytes of lower-case hex text, or None for any other value."""
    if not isinstance(value, str):
        return None
    try:
        data = bytes.fromhex(value)
    except ValueError:
        return None
    return data if len(data) == size and data.hex() == value else None


# -- entries -------------------------------------------------------------------------


class MalformedEntry(ValueError):
    """The bytes are not an audit entry: a msgpack map whose field names are strings."""


def text_of(value: Any) -> str:
    """A field of an entry or a Redis reply as text (bytes decoded; never raises on bytes
    that are not UTF-8: an export may hold anything)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def decode_entry(raw: bytes) -> dict[str, Any]:
    """The msgpack map of one entry: field names as text, strings left as bytes."""
    try:
        entry = msgpack.unpackb(raw, raw=True, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types for bad bytes
        raise MalformedEntry(f"not a msgpack entry ({exc.__class__.__name__})") from None
    if not isinstance(entry, dict):
        raise MalformedEntry("not a msgpack map")
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if not isinstance(key, bytes):
            raise MalformedEntry(f"field name {key!r} is not a string")
        out[key.decode("utf-8", "replace")] = value
    return out


def entry_base64(raw: bytes) -> str:
    """An entry's bytes as they travel in an export or a proof: standard base64."""
    return base64.b64encode(raw).decode("ascii")


def entry_from_base64(text: Any) -> bytes:
    """The bytes of `entry_base64` text; ValueError for any other spelling."""
    if not isinstance(text, str):
        raise ValueError("base64 must be text")
    raw = base64.b64decode(text, validate=True)
    if entry_base64(raw) != text:
        raise ValueError("not canonical base64")
    return raw


# -- keys and signatures -------------------------------------------------------------


def load_public_keys(document: Any) -> dict[str, Ed25519PublicKey]:
    """kid -> key from the JSON served at /.well-known/fairgate/keys (or an export header)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('the keys document must be {"keys": [...]}')
    out: dict[str, Ed25519PublicKey] = {}
    for item in document["keys"]:
        if not isinstance(item, Mapping):
            raise ValueError("each key must be an object")
        kid, public = item.get("kid"), item.get("public_key")
        if not isinstance(kid, str) or not isinstance(public, str):
            raise ValueError("each key needs kid and public_key")
        if item.get("alg", "Ed25519") != "Ed25519":
            continue
        try:
            out[kid] = Ed25519PublicKey.from_public_bytes(base64url.decode(public))
        except ValueError:
            raise ValueError(f"key {kid}: not an Ed25519 public key") from None
    if not out:
        raise ValueError("no Ed25519 key in the keys document")
    return out


def sign(keys: SigningKeys, message: bytes) -> tuple[str, str]:
    """(kid, base64url signature) with the current Ed25519 key."""
    kid = keys.ed25519_current
    return kid, base64url.encode(keys.ed25519_keys[kid].sign(message))


def signed_by(key: Ed25519PublicKey, message: bytes, signature: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def verify_signature(public_keys: PublicKeys, kid: Any, message: bytes, sig: Any) -> bool:
    """`sig` (base64url text) is the signature of `message` by the public key `kid`."""
    key = public_keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        return False
    try:
        signature = base64url.decode(sig)
    except ValueError:
        return False
    return signed_by(key, message, signature)


# -- checkpoints ---------------------------------------------------------------------


def checkpoint_message(campaign: str, size: int, root_hex: str, time_ms: int) -> bytes:
    """The bytes a checkpoint's signature is over."""
    return f"{CHECKPOINT_PREFIX}{campaign}\n{size}\n{root_hex}\n{time_ms}\n".encode()


@dataclass(frozen=True)
class CheckpointFields:
    """A checkpoint whose fields are well formed (its signature not yet checked)."""

    campaign: str
    size: int
    root: bytes
    time_ms: int
    kid: str
    signature: bytes

    def message(self) -> bytes:
        return checkpoint_message(self.campaign, self.size, self.root.hex(), self.time_ms)


def parse_checkpoint(data: Mapping[str, Any], campaign: str | None = None) -> CheckpointFields:
    """The fields of a checkpoint (for `campaign`, when given); ValueError names the first
    bad one."""
    name = data.get("campaign")
    size, root_hex, time_ms = data.get("size"), data.get("root"), data.get("time_ms")
    kid, sig = data.get("kid"), data.get("sig")
    if campaign is not None and name != campaign:
        raise ValueError(f"for campaign {name!r}, not {campaign!r}")
    if not isinstance(name, str):
        raise ValueError("campaign must be a string")
    if not is_int(size) or size < 0:
        raise ValueError("size must be a whole number")
    if not is_int(time_ms) or time_ms < 0:
        raise ValueError("time_ms must be a whole number")
    if not isinstance(root_hex, str) or len(root_hex) != HASH_HEX_DIGITS:
        raise ValueError("root must be 64 hex digits")
    try:
        root = bytes.fromhex(root_hex)
    except ValueError:
        raise ValueError("root must be 64 hex digits") from None
    if root_hex != root.hex():
        raise ValueError("root must be lower-case hex")
    if not isinstance(kid, str) or not isinstance(sig, str):
        raise ValueError("kid and sig are required")
    try:
        signature = base64url.decode(sig)
    except ValueError:
        raise ValueError("sig is not (canonical, unpadded) base64url") from None
    return CheckpointFields(name, size, root, time_ms, kid, signature)
