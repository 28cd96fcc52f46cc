"""Signing keys: HMAC keys for tickets and passes, Ed25519 keys, and (from a file of
their own) the customer-digest keys.

Keys carry an id (``kid``) so they can rotate: new tokens use the current key, and
tokens signed by an older key still verify while that key stays in the file.

The digest keys live apart from the signing keys (issue 13): whoever holds the digest
key can reverse every digest of a small id space (10^8 mobile numbers in minutes), and
the signing key file travels to more places than that should. A campaign records at
creation the id of the digest key its digests use (spec ``digest_key``), so a new
current key changes new campaigns only. A key file of before, with ``digest_key`` in
it, still loads: its key is the digest key ``legacy`` (with a logged warning), used by
campaigns that recorded none.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gate import base64url
from gate.errors import ConfigError, GateError

log = logging.getLogger("gate.signing")
# The id of the digest key read from a signing key file that holds one (the form of
# before issue 13); a campaign that recorded no digest key uses it.
LEGACY_DIGEST_KID = "legacy"
_KID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def valid_kid(kid: object) -> bool:
    return isinstance(kid, str) and 0 < len(kid) <= 32 and set(kid) <= _KID_CHARS


@dataclass(frozen=True)
class SigningKeys:
    hmac_keys: dict[str, bytes]
    hmac_current: str
    ed25519_keys: dict[str, Ed25519PrivateKey]
    ed25519_current: str
    # kid -> key; empty when only a signing key file was loaded (no digests then)
    digest_keys: dict[str, bytes]
    digest_current: str

    def digest_key_for(self, kid: str | None) -> bytes:
        """The digest key of a campaign that recorded `kid` at creation; None (recorded
        none: created before digest keys had ids) is the legacy key, else the current."""
        if kid is None:
            kid = (
                LEGACY_DIGEST_KID if LEGACY_DIGEST_KID in self.digest_keys else self.digest_current
            )
        key = self.digest_keys.get(kid)
        if key is None:
            raise GateError(
                f"digest key {kid!r} is not loaded (digest_keys): customers of this campaign "
                "cannot be recognised",
                code="digest_key_missing",
                status=503,
            )
        return key

    @property
    def digest_key(self) -> bytes:
        """The key of campaigns that recorded none (see digest_key_for)."""
        return self.digest_key_for(None)

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


def generate_keys_document(*, digest_key: bool = False) -> dict[str, Any]:
    """A new signing key file. `digest_key`: with a digest key inside too, the form of
    before issue 13 (tests of the backward-compatible path; never written by `gate`)."""
    hmac_kid = "h" + secrets.token_hex(4)
    ed_kid = "e" + secrets.token_hex(4)
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    ed_key = Ed25519PrivateKey.generate()
    raw = ed_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    document: dict[str, Any] = {
        "version": 1,
        "hmac": {
            "current": hmac_kid,
            "keys": {hmac_kid: base64url.encode(secrets.token_bytes(32))},
        },
        "ed25519": {"current": ed_kid, "keys": {ed_kid: base64url.encode(raw)}},
    }
    if digest_key:
        document["digest_key"] = base64url.encode(secrets.token_bytes(32))
    return document


def generate_digest_document(previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """A digest key file with one new key, current; `previous` (a digest key file's
    document) keeps its keys, for the campaigns created under them (rotation)."""
    kid = "d" + secrets.token_hex(4)
    keys = dict(previous["keys"]) if previous is not None else {}
    keys[kid] = base64url.encode(secrets.token_bytes(32))
    return {"version": 1, "current": kid, "keys": keys}


def edge_keys_document(keys: SigningKeys) -> dict[str, Any]:
    """The key file of a proxy that checks passes itself (`gate keys edge`; docs/proxy.md):
    every HMAC key a pass may be signed with and every digest key a campaign may use, by
    kid. No Ed25519 key: a proxy signs nothing the public verifies."""
    return {
        "version": 1,
        "kind": "fairgate-edge-keys",
        "pass_keys": {kid: base64url.encode(key) for kid, key in sorted(keys.hmac_keys.items())},
        "digest_keys": {
            kid: base64url.encode(key) for kid, key in sorted(keys.digest_keys.items())
        },
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
        legacy = document.get("digest_key")
        digest_keys = {} if legacy is None else {LEGACY_DIGEST_KID: base64url.decode(legacy)}
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
    if any(len(k) < 16 for k in digest_keys.values()):
        raise fail("digest_key must be at least 16 bytes")
    if ed_current not in ed_keys:
        raise fail("ed25519.current must name a key")
    return SigningKeys(hmac_keys, hmac_current, ed_keys, ed_current, digest_keys, LEGACY_DIGEST_KID)


def parse_digest_keys(document: Any, source: str) -> tuple[dict[str, bytes], str]:
    """A digest key file: ``{"version": 1, "current": kid, "keys": {kid: base64url}}``."""

    def fail(what: str) -> ConfigError:
        return ConfigError(f"digest_keys: {source}: {what}")

    if not isinstance(document, dict):
        raise fail("not a JSON object")
    try:
        keys = {str(k): base64url.decode(v) for k, v in document["keys"].items()}
        current = document["current"]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise fail(f"malformed ({exc.__class__.__name__}: {exc})") from None
    if not all(valid_kid(kid) for kid in keys) or LEGACY_DIGEST_KID in keys:
        raise fail(f"key ids: 1 to 32 of [A-Za-z0-9_-], not {LEGACY_DIGEST_KID!r}")
    if current not in keys or any(len(k) < 16 for k in keys.values()):
        raise fail("current must name a key of at least 16 bytes")
    return keys, current


def _read_json(path: Path, setting: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{setting}: {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{setting}: {path}: not JSON ({exc})") from None


def load_or_create_keys(
    path: Path,
    *,
    create: bool,
    digest_path: Path | None = None,
    create_digest: bool = False,
    digest_required: bool = False,
) -> SigningKeys:
    """Load the signing key file, and the digest key file `digest_path`; create either
    (mode 0600) when allowed (`create`, `create_digest`) and absent. A digest key file
    that was configured (`digest_required`) must exist; one that was not may be absent
    only when the signing key file holds the digest key.

    A signing key file that holds a digest key (the form of before) keeps working: with
    no digest key file, its key is the only one (and a new one is not created: that
    would change the digests of new campaigns under a running deployment's feet); with
    one, it stays loaded as ``legacy`` for the campaigns that recorded no digest key.
    Either way the warning says to move it out.
    """
    if not path.exists():
        if not create:
            raise ConfigError(f"signing_keys: {path} does not exist (run `gate keys generate`)")
        write_keys(path, generate_keys_document())
    keys = parse_keys(_read_json(path, "signing_keys"), str(path))
    legacy = keys.digest_keys
    if legacy:
        log.warning(
            "event=digest_key_in_signing_file path=%s: the signing key file holds a digest "
            "key; whoever reads it can reverse customer digests. Write a digest key file "
            "(`gate keys generate-digest`), set digest_keys, and remove digest_key from %s "
            "once no campaign created before uses it",
            path,
            path,
        )
    if digest_path is None:
        return keys
    if not digest_path.exists():
        if digest_required:
            raise ConfigError(
                f"digest_keys: {digest_path} does not exist (run `gate keys generate-digest`)"
            )
        if legacy:
            return keys
        if not create_digest:
            # Signing keys provisioned by hand (signing_keys set): a digest key made up
            # here would differ from the one of every other gate process or host.
            raise ConfigError(
                f"digest_keys: not set, and neither {path} nor {digest_path} holds a digest "
                "key: write one (`gate keys generate-digest --out F`) and set digest_keys "
                "to it, the same file for every gate process"
            )
        write_keys(digest_path, generate_digest_document())
    digest_keys, current = parse_digest_keys(
        _read_json(digest_path, "digest_keys"), str(digest_path)
    )
    return dataclasses.replace(keys, digest_keys={**legacy, **digest_keys}, digest_current=current)
