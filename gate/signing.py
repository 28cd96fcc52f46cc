"""Signing keys: HMAC keys for tickets and passes, the customer-digest key, Ed25519 keys.

Keys carry an id (``kid``) so they can rotate: new tokens use the current key, and
tokens signed by an older key still verify while that key stays in the file.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gate import base64url
from gate.errors import ConfigError


@dataclass(frozen=True)
class SigningKeys:
    hmac_keys: dict[str, bytes]
    hmac_current: str
    digest_key: bytes
    ed25519_keys: dict[str, Ed25519PrivateKey]
    ed25519_current: str

    def public_keys(self) -> dict[str, Any]:
        return {
            "keys": [
                {
                    "kid": kid,
                    "alg": "Ed25519",
                    "public_key": base64url.encode(
                        key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                    ),
                    "current": kid == self.ed25519_current,
                }
                for kid, key in sorted(self.ed25519_keys.items())
            ]
        }


def generate_keys_document() -> dict[str, Any]:
    hmac_kid = "h" + secrets.token_hex(4)
    ed_kid = "e" + secrets.token_hex(4)
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    ed_key = Ed25519PrivateKey.generate()
    raw = ed_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return {
        "version": 1,
        "hmac": {
            "current": hmac_kid,
            "keys": {hmac_kid: base64url.encode(secrets.token_bytes(32))},
        },
        "digest_key": base64url.encode(secrets.token_bytes(32)),
        "ed25519": {"current": ed_kid, "keys": {ed_kid: base64url.encode(raw)}},
    }


def write_keys(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(document, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk: no half-written file left behind
        raise
    os.replace(tmp, path)


def parse_keys(document: Any, source: str) -> SigningKeys:
    def fail(what: str) -> ConfigError:
        return ConfigError(f"signing_keys: {source}: {what}")

    if not isinstance(document, dict):
        raise fail("not a JSON object")
    try:
        hmac_part = document["hmac"]
        hmac_keys = {str(k): base64url.decode(v) for k, v in hmac_part["keys"].items()}
        hmac_current = str(hmac_part["current"])
        digest_key = base64url.decode(document["digest_key"])
        ed_part = document["ed25519"]
        ed_keys = {
            str(k): Ed25519PrivateKey.from_private_bytes(base64url.decode(v))
            for k, v in ed_part["keys"].items()
        }
        ed_current = str(ed_part["current"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise fail(f"malformed ({exc.__class__.__name__}: {exc})") from None
    if hmac_current not in hmac_keys or any(len(k) < 16 for k in hmac_keys.values()):
        raise fail("hmac.current must name a key of at least 16 bytes")
    if len(digest_key) < 16:
        raise fail("digest_key must be at least 16 bytes")
    if ed_current not in ed_keys:
        raise fail("ed25519.current must name a key")
    return SigningKeys(hmac_keys, hmac_current, digest_key, ed_keys, ed_current)


def load_or_create_keys(path: Path, *, create: bool) -> SigningKeys:
    """Load the key file; create it (mode 0600) when allowed and absent."""
    if not path.exists():
        if not create:
            raise ConfigError(f"signing_keys: {path} does not exist (run `gate keys generate`)")
        write_keys(path, generate_keys_document())
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"signing_keys: {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"signing_keys: {path}: not JSON ({exc})") from None
    return parse_keys(document, str(path))
