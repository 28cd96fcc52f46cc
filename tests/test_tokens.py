"""Signed tickets and passes: round trip, key rotation, kind confusion, tampering."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any

import msgpack
import pytest

from gate.errors import ConfigError
from gate.signing import (
    SigningKeys,
    generate_keys_document,
    load_or_create_keys,
    parse_keys,
    write_keys,
)
from gate.tokens import PASS, TICKET, Token, TokenError, TokenSigner, customer_digest
from tests.helpers import b64url, unb64url


@pytest.fixture
def document() -> dict[str, Any]:
    return generate_keys_document(digest_key=True)  # the digest key inside (legacy form)


@pytest.fixture
def keys(document: dict[str, Any]) -> SigningKeys:
    return parse_keys(document, "test")


def rotated(document: dict[str, Any], *, keep_old: bool) -> dict[str, Any]:
    """A new current HMAC key; the old one stays (or not) so old tokens verify (or not)."""
    new = copy.deepcopy(document)
    kid = "h-new-" + secrets.token_hex(2)
    new["hmac"]["keys"][kid] = b64url(secrets.token_bytes(32))
    if not keep_old:
        del new["hmac"]["keys"][document["hmac"]["current"]]
    new["hmac"]["current"] = kid
    return new


def test_round_trip(keys: SigningKeys) -> None:
    signer = TokenSigner(keys)
    digest = customer_digest(keys, "c1", "alice")
    assert len(digest) == 16
    ticket = signer.issue(TICKET, "c1", 42, digest)
    token = signer.verify(ticket, TICKET)
    assert token == Token(TICKET, keys.hmac_current, "c1", 42, digest, 0)
    pass_token = signer.issue(PASS, "c1", 42, digest, exp=1_900_000_000)
    assert signer.verify(pass_token, PASS).exp == 1_900_000_000
    assert pass_token != ticket
    # URL- and cookie-safe, and short
    for text in (ticket, pass_token):
        assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
        assert len(text) < 200


def test_customer_digest_is_keyed_and_per_campaign(keys: SigningKeys) -> None:
    other = parse_keys(generate_keys_document(digest_key=True), "other")
    alice = customer_digest(keys, "c1", "alice")
    assert alice == customer_digest(keys, "c1", "alice")
    assert alice != customer_digest(keys, "c2", "alice")
    assert alice != customer_digest(keys, "c1", "alicf")
    assert alice != customer_digest(other, "c1", "alice")
    # the separator keeps ("c1", "0alice") and ("c10", "alice") apart
    assert customer_digest(keys, "c1", "0alice") != customer_digest(keys, "c10", "alice")
    assert b"alice" not in alice


def test_key_rotation(document: dict[str, Any]) -> None:
    old_keys = parse_keys(document, "old")
    digest = customer_digest(old_keys, "c1", "alice")
    old_ticket = TokenSigner(old_keys).issue(TICKET, "c1", 7, digest)

    both = TokenSigner(parse_keys(rotated(document, keep_old=True), "both"))
    assert both.verify(old_ticket, TICKET).kid == document["hmac"]["current"]
    new_ticket = both.issue(TICKET, "c1", 7, digest)
    assert both.verify(new_ticket, TICKET).kid != document["hmac"]["current"]
    # the old gate does not know the new key
    with pytest.raises(TokenError, match="unknown key"):
        TokenSigner(old_keys).verify(new_ticket, TICKET)

    only_new = TokenSigner(parse_keys(rotated(document, keep_old=False), "new"))
    with pytest.raises(TokenError, match="unknown key"):
        only_new.verify(old_ticket, TICKET)


def test_same_kid_other_secret_is_a_bad_signature(document: dict[str, Any]) -> None:
    keys = parse_keys(document, "a")
    forged_doc = copy.deepcopy(document)
    forged_doc["hmac"]["keys"][document["hmac"]["current"]] = b64url(secrets.token_bytes(32))
    forger = TokenSigner(parse_keys(forged_doc, "forger"))
    forged = forger.issue(TICKET, "c1", 1, customer_digest(keys, "c1", "alice"))
    with pytest.raises(TokenError, match="bad token signature"):
        TokenSigner(keys).verify(forged, TICKET)


def test_kind_confusion_rejected(keys: SigningKeys) -> None:
    signer = TokenSigner(keys)
    digest = customer_digest(keys, "c1", "alice")
    with pytest.raises(TokenError, match="wrong kind"):
        signer.verify(signer.issue(TICKET, "c1", 1, digest), PASS)
    with pytest.raises(TokenError, match="wrong kind"):
        signer.verify(signer.issue(PASS, "c1", 1, digest, exp=2_000_000_000), TICKET)
    with pytest.raises(TokenError, match="wrong kind"):
        signer.verify(signer.issue("x", "c1", 1, digest), TICKET)


def test_tampering_any_byte_is_rejected(keys: SigningKeys) -> None:
    signer = TokenSigner(keys)
    digest = customer_digest(keys, "c1", "alice")
    text = signer.issue(PASS, "c1", 123456, digest, exp=2_000_000_000)
    payload_text, mac_text = text.split(".")
    payload, mac = unb64url(payload_text), unb64url(mac_text)
    tried = 0
    for part, raw in (("payload", payload), ("mac", mac)):
        for index in range(len(raw)):
            for bit in (0x01, 0x80):
                changed = bytearray(raw)
                changed[index] ^= bit
                if part == "payload":
                    forged = f"{b64url(bytes(changed))}.{mac_text}"
                else:
                    forged = f"{payload_text}.{b64url(bytes(changed))}"
                with pytest.raises(TokenError):
                    signer.verify(forged, PASS)
                tried += 1
    assert tried == 2 * (len(payload) + len(mac))
    # every character of the wire text, swapped for another base64url character
    alphabet = "AQgw"
    for index, char in enumerate(text):
        if char == ".":
            continue
        for replacement in alphabet:
            if replacement == char:
                continue
            forged = text[:index] + replacement + text[index + 1 :]
            try:
                token = signer.verify(forged, PASS)
            except TokenError:
                continue
            # only the unused low bits of the last base64 character may change silently
            assert token == signer.verify(text, PASS), (index, replacement)
            assert index in (len(payload_text) - 1, len(text) - 1)
    assert signer.verify(text, PASS).seq == 123456


@pytest.mark.parametrize(
    "text",
    ["", ".", "..", "a.b.c", "x" * 600, "!!!.###", "é.é", "AAAA.", ".AAAA", "\x00.\x00"],
)
def test_malformed_text(keys: SigningKeys, text: str) -> None:
    with pytest.raises(TokenError):
        TokenSigner(keys).verify(text, TICKET)


def _signed(keys: SigningKeys, fields: Any) -> str:
    """A payload of any shape, correctly signed: only the shape can make it fail."""
    payload = msgpack.packb(fields)
    mac = hmac.new(keys.hmac_keys[keys.hmac_current], payload, hashlib.sha256).digest()
    return f"{b64url(payload)}.{b64url(mac)}"


@pytest.mark.parametrize(
    "fields",
    [
        [TICKET, None, "c1", 1, b"d" * 16, 0],  # kid replaced below
        [TICKET, "K", "c1", 0, b"d" * 16, 0],  # seq 0
        [TICKET, "K", "c1", -1, b"d" * 16, 0],
        [TICKET, "K", "c1", True, b"d" * 16, 0],  # a bool is not a seq
        [TICKET, "K", "c1", 1, b"d" * 15, 0],  # short digest
        [TICKET, "K", "c1", 1, "d" * 16, 0],  # digest as text
        [TICKET, "K", "c1", 1, b"d" * 16, 1.5],
        [TICKET, "K", "c1", 1, b"d" * 16],  # too short
        [TICKET, "K", "c1", 1, b"d" * 16, 0, "extra"],
        {"kind": TICKET},
    ],
)
def test_well_signed_but_malformed_payload(keys: SigningKeys, fields: Any) -> None:
    if isinstance(fields, list):
        fields = [keys.hmac_current if f == "K" else f for f in fields]
        if fields[1] is None:
            fields[1] = 5
    text = _signed(keys, fields)
    with pytest.raises(TokenError):
        TokenSigner(keys).verify(text, TICKET)


def test_well_formed_control(keys: SigningKeys) -> None:
    """The shapes above fail for the reason named, not because _signed is wrong."""
    text = _signed(keys, [TICKET, keys.hmac_current, "c1", 1, b"d" * 16, 0])
    assert TokenSigner(keys).verify(text, TICKET).seq == 1


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keys.json"
    digests = tmp_path / "sub" / "digest-keys.json"
    created = load_or_create_keys(path, create=True, digest_path=digests, create_digest=True)
    assert path.stat().st_mode & 0o777 == 0o600 and digests.stat().st_mode & 0o777 == 0o600
    again = load_or_create_keys(path, create=False, digest_path=digests)
    assert again.hmac_keys == created.hmac_keys and again.digest_key == created.digest_key
    with pytest.raises(ConfigError, match="digest_keys"):  # configured, so required
        load_or_create_keys(path, create=False, digest_path=tmp_path / "absent-digest.json")
    with pytest.raises(ConfigError, match="signing_keys"):
        load_or_create_keys(tmp_path / "absent.json", create=False)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"signing_keys.*not JSON"):
        load_or_create_keys(bad, create=False)
    document = generate_keys_document()
    document["hmac"]["keys"][document["hmac"]["current"]] = b64url(b"short")
    write_keys(bad, document)
    with pytest.raises(ConfigError, match="16 bytes"):
        load_or_create_keys(bad, create=False)
    document = generate_keys_document()
    del document["ed25519"]
    bad.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="malformed"):
        load_or_create_keys(bad, create=False)
    bad.write_text(json.dumps({"version": 1, "current": "k1", "keys": {"k1": b64url(b"short")}}))
    with pytest.raises(ConfigError, match=r"digest_keys.*16 bytes"):
        load_or_create_keys(path, create=False, digest_path=bad)


def test_pass_not_before_is_signed_and_optional(keys: SigningKeys) -> None:
    """Issue 12: a paced pass carries not_before as a 7th field; a pass without a wait
    keeps the 6-field form (a gate of before reads it), and the 7th field is a pass's
    only, a positive int, under the MAC like the rest."""
    signer = TokenSigner(keys)
    digest = b"d" * 16
    plain = signer.issue(PASS, "c1", 3, digest, exp=100)
    assert len(msgpack.unpackb(unb64url(plain.split(".")[0]))) == 6
    assert signer.verify(plain, PASS).not_before == 0
    paced = signer.issue(PASS, "c1", 3, digest, exp=100, not_before=1_700_000_000_123_456)
    assert len(msgpack.unpackb(unb64url(paced.split(".")[0]))) == 7
    assert signer.verify(paced, PASS).not_before == 1_700_000_000_123_456
    k = keys.hmac_current
    for fields in (
        [TICKET, k, "c1", 3, digest, 0, 5],  # a ticket has no not_before
        [PASS, k, "c1", 3, digest, 100, 0],  # written only when positive
        [PASS, k, "c1", 3, digest, 100, -5],
        [PASS, k, "c1", 3, digest, 100, "5"],
    ):
        with pytest.raises(TokenError):
            signer.verify(_signed(keys, fields), PASS, TICKET)
    # an earlier not_before under the same MAC: any changed byte breaks the signature
    payload, mac = paced.split(".")
    forged = msgpack.packb([PASS, k, "c1", 3, digest, 100, 1])
    with pytest.raises(TokenError):
        signer.verify(f"{b64url(forged)}.{mac}", PASS)
    assert payload != b64url(forged)
