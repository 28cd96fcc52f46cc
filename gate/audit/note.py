"""Checkpoints as C2SP signed notes, and witness cosignatures (docs/audit-format.md).

A *signed note* (c2sp.org/signed-note) is UTF-8 text ending in a newline, a blank line,
then one or more signature lines ``— <key name> <base64(key ID || signature)>``. Its
text here is a *checkpoint* (c2sp.org/tlog-checkpoint): the origin line, the tree size
in decimal, the base64 root hash, then fairgate's one extension line ``time_ms <ms>``
(the time the JSON checkpoint signs, so a note and its JSON checkpoint say the same).

Two signature types are used, both Ed25519:

- the gate's own signature (type 0x01): over the note text, under the key name = the
  origin, key ID = ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``;
- a witness's cosignature (c2sp.org/tlog-cosignature, type 0x04): the signature is an
  8-byte big-endian POSIX time followed by an Ed25519 signature over
  ``"cosignature/v1\\ntime <t>\\n" + note text``, key ID =
  ``SHA-256(name || 0x0A || 0x04 || public key)[:4]``.

A witness key travels as a *vkey*: ``<name>+<hex key ID>+<base64(0x04 || public key)>``.

fairgate's tree is the RFC 6962 tree (gate/audit/merkle.py), so the note's root is
exactly what a C2SP consumer expects; the leaves are fairgate's audit entries.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gate.audit import merkle
from gate.audit.format import PublicKeys

EM_DASH = "\u2014"
SIGNATURE_PREFIX = EM_DASH + " "
ED25519_NOTE = 0x01  # a plain Ed25519 note signature (the gate's)
ED25519_COSIGNATURE = 0x04  # a timestamped witness cosignature (tlog-cosignature)
COSIGNATURE_HEADER = "cosignature/v1\n"
TIME_EXTENSION = "time_ms "
# c2sp.org/signed-note: accept at least 16; refuse a flood.
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 16384
MAX_PROOF_LINES = 63  # c2sp.org/tlog-witness: a consistency proof's most lines
MAX_TIMESTAMP = 2**63 - 1
_DECIMAL_RE = re.compile(r"^(0|[1-9][0-9]{0,18})$")


class NoteError(ValueError):
    """The text is not a well-formed note, checkpoint or vkey; the message says why."""


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    """Canonical standard base64 (with padding) only: one spelling per byte string."""
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        raise NoteError(f"{what} is not base64") from None
    if b64(data) != text:
        raise NoteError(f"{what} is not canonical base64")
    return data


def valid_key_name(name: str) -> bool:
    """Non-empty, no Unicode space, no plus (c2sp.org/signed-note)."""
    return (
        bool(name)
        and "+" not in name
        and not any(c.isspace() for c in name)
        and (name.isprintable())
    )


def key_id(name: str, signature_type: int, public_key: bytes) -> bytes:
    """``SHA-256(name || 0x0A || type || public key)[:4]``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([signature_type]) + public_key).digest()[:4]


# -- checkpoints (the note text) -----------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """The text of a checkpoint note."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @property
    def time_ms(self) -> int | None:
        for line in self.extensions:
            if line.startswith(TIME_EXTENSION):
                value = line[len(TIME_EXTENSION) :]
                if _DECIMAL_RE.fullmatch(value):
                    return int(value)
        return None


def parse_checkpoint_text(text: str) -> Checkpoint:
    """The checkpoint a note's text holds; NoteError names what is wrong."""
    if not text.endswith("\n"):
        raise NoteError("the checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("a checkpoint has an origin, a size and a root hash line")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise NoteError("the origin line is empty")
    if not _DECIMAL_RE.fullmatch(size_text):
        raise NoteError("the size line must be a decimal number without leading zeroes")
    root = unb64(root_text, "the root hash")
    if len(root) != merkle.HASH_SIZE:
        raise NoteError("the root hash must be 32 bytes")
    if any(not line for line in extensions):
        raise NoteError("an extension line is empty")
    return Checkpoint(origin, int(size_text), root, tuple(extensions))


# -- signed notes --------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """One signature line: the key's name, its 4-byte ID, and what follows the ID."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{SIGNATURE_PREFIX}{self.name} {b64(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    text: str
    signatures: tuple[Signature, ...]

    def render(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def parse_signature_line(line: str) -> Signature:
    """A line (without its newline) ``— name base64``."""
    if not line.startswith(SIGNATURE_PREFIX):
        raise NoteError("a signature line starts with an em dash (U+2014) and a space")
    name, sep, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not sep or not valid_key_name(name):
        raise NoteError("a signature line needs a key name (no spaces, no '+') and a signature")
    raw = unb64(encoded, "a signature")
    if len(raw) < 5:
        raise NoteError("a signature is a 4-byte key ID and at least one byte")
    return Signature(name, raw[:4], raw[4:])


def parse_note(data: bytes | str) -> Note:
    """A signed note, checked for form only (no signature is verified here)."""
    if isinstance(data, bytes):
        if len(data) > MAX_NOTE_BYTES:
            raise NoteError(f"a note is at most {MAX_NOTE_BYTES} bytes")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("a note must be UTF-8") from None
    if len(data.encode()) > MAX_NOTE_BYTES:
        raise NoteError(f"a note is at most {MAX_NOTE_BYTES} bytes")
    if any(ord(c) < 0x20 and c != "\n" for c in data) or "\x7f" in data:
        raise NoteError("a note may hold no control character but newline")
    if not data.endswith("\n"):
        raise NoteError("a note ends with a newline")
    split = data.rfind("\n\n")
    if split < 0:
        raise NoteError("a note's text and signatures are separated by a blank line")
    text, block = data[: split + 1], data[split + 2 :]
    lines = block[:-1].split("\n") if block else []
    if not lines:
        raise NoteError("a note has at least one signature line")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"a note carries at most {MAX_SIGNATURES} signatures")
    return Note(text, tuple(parse_signature_line(line) for line in lines))


def sign_note(text: str, name: str, key: Ed25519PrivateKey) -> Signature:
    """The gate's (type 0x01) signature of a note text."""
    return Signature(
        name, key_id(name, ED25519_NOTE, public_bytes(key.public_key())), key.sign(text.encode())
    )


def cosignature_message(text: str, timestamp: int) -> bytes:
    return f"{COSIGNATURE_HEADER}time {timestamp}\n{text}".encode()


def cosign(text: str, name: str, key: Ed25519PrivateKey, timestamp: int) -> Signature:
    """A witness's tlog-cosignature/v1 (type 0x04) of a checkpoint text."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError("a cosignature's time is 0 .. 2^63-1")
    signed = key.sign(cosignature_message(text, timestamp))
    return Signature(
        name,
        key_id(name, ED25519_COSIGNATURE, public_bytes(key.public_key())),
        struct.pack(">Q", timestamp) + signed,
    )


@dataclass(frozen=True)
class Verifier:
    """A known key: its name, type and public key (its ID follows from them)."""

    name: str
    signature_type: int
    public_key: Ed25519PublicKey

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.signature_type, public_bytes(self.public_key))

    def matches(self, signature: Signature) -> bool:
        return signature.name == self.name and signature.key_id == self.key_id

    def verify(self, text: str, signature: Signature) -> bool:
        message, raw = text.encode(), signature.signature
        if self.signature_type == ED25519_COSIGNATURE:
            if len(raw) != 8 + 64:
                return False
            (timestamp,) = struct.unpack(">Q", raw[:8])
            if timestamp > MAX_TIMESTAMP:
                return False
            message, raw = cosignature_message(text, timestamp), raw[8:]
        elif len(raw) != 64:
            return False
        try:
            self.public_key.verify(raw, message)
        except InvalidSignature:
            return False
        return True

    def vkey(self) -> str:
        material = bytes([self.signature_type]) + public_bytes(self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{b64(material)}"


def cosignature_time(signature: Signature) -> int:
    """The POSIX time a (well-formed) cosignature carries."""
    return int(struct.unpack(">Q", signature.signature[:8])[0])


def parse_vkey(text: str) -> Verifier:
    """``name+hex key ID+base64(type || public key)``, for types 0x01 and 0x04."""
    parts = text.split("+", 2)  # the base64 key may hold '+' itself
    if len(parts) != 3:
        raise NoteError(f"{text[:80]!r} is not a vkey (name+keyid+base64 key)")
    name, hex_id, encoded = parts
    if not valid_key_name(name) or not re.fullmatch(r"[0-9a-f]{8}", hex_id):
        raise NoteError(f"{text[:80]!r} is not a vkey (name+keyid+base64 key)")
    material = unb64(encoded, "the vkey's key")
    if len(material) != 33 or material[0] not in (ED25519_NOTE, ED25519_COSIGNATURE):
        raise NoteError("a vkey holds a type byte (0x01 or 0x04) and a 32-byte Ed25519 key")
    verifier = Verifier(name, material[0], Ed25519PublicKey.from_public_bytes(material[1:]))
    if verifier.key_id.hex() != hex_id:
        raise NoteError(f"vkey {name}: the key ID does not match the key")
    return verifier


def gate_verifiers(origin: str, public_keys: PublicKeys) -> list[Verifier]:
    """The gate's published keys (kid -> key, `format.load_public_keys`) as note
    verifiers for `origin`: every key, so notes signed before a rotation still open."""
    return [Verifier(origin, ED25519_NOTE, key) for key in public_keys.values()]


@dataclass(frozen=True)
class Opened:
    """A note whose signatures by known keys were checked: those that verified."""

    note: Note
    verified: tuple[tuple[Verifier, Signature], ...]

    def by(self, signature_type: int) -> list[tuple[Verifier, Signature]]:
        return [(v, s) for v, s in self.verified if v.signature_type == signature_type]


def open_note(note: Note, verifiers: Iterable[Verifier]) -> Opened:
    """Check every signature from a known key (name and key ID both match), as
    c2sp.org/signed-note says: one from a known key that fails rejects the note, lines
    from unknown keys are ignored, and a note with no verified signature is rejected."""
    known = list(verifiers)
    verified: list[tuple[Verifier, Signature]] = []
    for signature in note.signatures:
        for verifier in known:
            if verifier.matches(signature):
                if not verifier.verify(note.text, signature):
                    raise NoteError(f"the signature of {signature.name} does not verify")
                verified.append((verifier, signature))
                break
    if not verified:
        raise NoteError("no signature from a known key")
    return Opened(note, tuple(verified))


# -- fairgate's checkpoints as notes ----------------------------------------------------


def origin_for(prefix: str, campaign: str) -> str:
    return f"{prefix}/{campaign}"


def checkpoint_of(origin: str, checkpoint: Mapping[str, Any]) -> Checkpoint:
    """The note text of a signed JSON checkpoint (checkpoints.py): same size, root, time."""
    return Checkpoint(
        origin,
        int(checkpoint["size"]),
        bytes.fromhex(str(checkpoint["root"])),
        (f"{TIME_EXTENSION}{int(checkpoint['time_ms'])}",),
    )


def verify_checkpoint_note(
    data: bytes | str, public_keys: PublicKeys, campaign: str | None = None
) -> tuple[Checkpoint, Opened]:
    """A checkpoint note signed by one of the gate's keys (`public_keys`: kid -> key, as
    `format.load_public_keys` reads the keys document) under its origin's name;
    `campaign`, when given, must be the origin's last path part. For an auditor's
    verifier (gate audit verify --checkpoint) and the witness: NoteError says why not."""
    note = parse_note(data)
    checkpoint = parse_checkpoint_text(note.text)
    if campaign is not None and not checkpoint.origin.endswith("/" + campaign):
        raise NoteError(f"the note's origin {checkpoint.origin!r} is not for campaign {campaign}")
    opened = open_note(note, gate_verifiers(checkpoint.origin, public_keys))
    return checkpoint, opened


def proof_lines(proof: Sequence[bytes]) -> str:
    return "".join(b64(h) + "\n" for h in proof)


def parse_proof_lines(text: str) -> list[bytes]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_PROOF_LINES:
        raise NoteError(f"a consistency proof has at most {MAX_PROOF_LINES} lines")
    out = []
    for line in lines:
        value = unb64(line, "a proof line")
        if len(value) != merkle.HASH_SIZE:
            raise NoteError("a proof line is a 32-byte hash")
        out.append(value)
    return out
