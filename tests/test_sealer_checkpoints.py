"""Checkpoints: signed per docs/audit-format.md, verified with public keys by kid, across
key rotation."""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gate.audit.checkpoints import make_checkpoint, verify_checkpoint
from gate.audit.format import checkpoint_message, load_public_keys
from gate.signing import SigningKeys, generate_keys_document, parse_keys
from tests.helpers import b64url, unb64url

ROOT = hashlib.sha256(b"some tree").digest()


def rotated(document: dict[str, Any]) -> dict[str, Any]:
    """The same key file with a new current Ed25519 key; the old one stays."""
    fresh = generate_keys_document()["ed25519"]
    ed = {"current": fresh["current"], "keys": {**document["ed25519"]["keys"], **fresh["keys"]}}
    return {**document, "ed25519": ed}


def test_the_signature_is_over_the_documented_message() -> None:
    keys = parse_keys(generate_keys_document(), "test")
    cp = make_checkpoint(keys, "deposit-5pct", 1234, ROOT, 1795426013748)
    assert cp == {
        "type": "checkpoint",
        "campaign": "deposit-5pct",
        "size": 1234,
        "root": ROOT.hex(),
        "time_ms": 1795426013748,
        "kid": keys.ed25519_current,
        "sig": cp["sig"],
    }
    message = f"fairgate-checkpoint/v1\ndeposit-5pct\n1234\n{ROOT.hex()}\n1795426013748\n"
    assert checkpoint_message("deposit-5pct", 1234, ROOT.hex(), 1795426013748) == message.encode()
    # Checked with nothing but the raw public key from the published document.
    published = keys.public_keys()["keys"][0]
    raw_public = unb64url(published["public_key"])
    Ed25519PublicKey.from_public_bytes(raw_public).verify(unb64url(cp["sig"]), message.encode())
    assert "=" not in cp["sig"] and len(unb64url(cp["sig"])) == 64


def test_any_altered_field_fails() -> None:
    keys = parse_keys(generate_keys_document(), "test")
    public_keys = load_public_keys(keys.public_keys())
    cp = make_checkpoint(keys, "c1", 10, ROOT, 1_700_000_000_000)
    assert verify_checkpoint(cp, public_keys)
    assert verify_checkpoint(cp, public_keys, "c1")
    assert not verify_checkpoint(cp, public_keys, "c2")
    sig = bytearray(unb64url(cp["sig"]))
    sig[5] ^= 1
    for change in [
        {"size": 11},
        {"size": "10"},
        {"size": True},
        {"time_ms": 1_700_000_000_001},
        {"campaign": "c2"},
        {"root": ROOT.hex().upper()},
        {"root": hashlib.sha256(b"other").hexdigest()},
        {"root": ROOT.hex()[:-2]},
        {"kid": "e00000000"},
        {"sig": b64url(bytes(sig))},
        {"sig": cp["sig"] + "="},
        {"type": "receipt"},
    ]:
        assert not verify_checkpoint({**cp, **change}, public_keys), change
    incomplete = dict(cp)
    del incomplete["root"]
    assert not verify_checkpoint(incomplete, public_keys)
    other = parse_keys(generate_keys_document(), "other")
    assert not verify_checkpoint(cp, load_public_keys(other.public_keys()))


def test_checkpoints_signed_before_a_rotation_keep_verifying() -> None:
    document = generate_keys_document()
    before = parse_keys(document, "before")
    after: SigningKeys = parse_keys(rotated(document), "after")
    assert after.ed25519_current != before.ed25519_current
    old = make_checkpoint(before, "c1", 5, ROOT, 1)
    new = make_checkpoint(after, "c1", 9, ROOT, 2)
    assert new["kid"] == after.ed25519_current and old["kid"] == before.ed25519_current
    published_after = load_public_keys(after.public_keys())
    assert verify_checkpoint(old, published_after)
    assert verify_checkpoint(new, published_after)
    # The old document does not know the new key; a document that dropped the old key
    # no longer vouches for the old checkpoints.
    assert not verify_checkpoint(new, load_public_keys(before.public_keys()))
    dropped = {"keys": [k for k in after.public_keys()["keys"] if k["current"]]}
    assert not verify_checkpoint(old, load_public_keys(dropped))
    # A signature cannot be moved to another kid.
    assert not verify_checkpoint({**old, "kid": new["kid"]}, published_after)
