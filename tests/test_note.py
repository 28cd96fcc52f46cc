"""Signed notes, checkpoint notes and tlog-cosignatures (gate/audit/note.py), and the
witness's add-checkpoint checks (gate/audit/witness.py), without a gate."""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gate.audit import merkle
from gate.audit.checkpoints import make_checkpoint
from gate.audit.format import load_public_keys
from gate.audit.note import (
    ED25519_COSIGNATURE,
    ED25519_NOTE,
    Checkpoint,
    Note,
    NoteError,
    Signature,
    Verifier,
    checkpoint_of,
    cosign,
    gate_verifiers,
    key_id,
    open_note,
    parse_checkpoint_text,
    parse_note,
    parse_vkey,
    sign_note,
    verify_checkpoint_note,
)
from gate.audit.witness import (
    GateAway,
    Held,
    Refused,
    State,
    add_checkpoint,
    generate_key,
    read_equivocation,
)
from gate.signing import generate_keys_document, parse_keys

# golang.org/x/mod/sumdb/note's documented example: another implementation's bytes.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_LINE = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqf"
    "qdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_the_go_reference_note_verifies_and_signs_byte_for_byte() -> None:
    verifier = parse_vkey(GO_VKEY)
    opened = open_note(parse_note(GO_TEXT + "\n" + GO_LINE), [verifier])
    assert [s.name for _, s in opened.verified] == ["PeterNeumann"]
    key = Ed25519PrivateKey.from_private_bytes(GO_SEED)
    assert sign_note(GO_TEXT, "PeterNeumann", key).line() == GO_LINE
    assert verifier.vkey() == GO_VKEY
    # A changed text fails under the known key: the whole note is refused.
    with pytest.raises(NoteError, match="does not verify"):
        open_note(parse_note(GO_TEXT.replace("answer", "Answer") + "\n" + GO_LINE), [verifier])


def leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [merkle.leaf_hash(salt + i.to_bytes(4, "big")) for i in range(n)]


def gate_keys() -> tuple[object, dict[str, object]]:
    keys = parse_keys(generate_keys_document(), "test")
    return keys, keys.public_keys()


def test_a_checkpoint_note_has_the_documented_bytes() -> None:
    keys, document = gate_keys()
    root = merkle.root(leaves(7))
    cp = make_checkpoint(keys, "deposit-5pct", 7, root, 1795426013748)  # type: ignore[arg-type]
    origin = "fairgate.bank.example/deposit-5pct"
    body = checkpoint_of(origin, cp)
    text = f"{origin}\n7\n{base64.b64encode(root).decode()}\ntime_ms 1795426013748\n"
    assert body.text() == text
    assert parse_checkpoint_text(text) == body and body.time_ms == 1795426013748
    private = keys.ed25519_keys[keys.ed25519_current]  # type: ignore[attr-defined]
    signature = sign_note(text, origin, private)
    raw_public = private.public_key().public_bytes_raw()
    assert signature.key_id == hashlib.sha256(origin.encode() + b"\n\x01" + raw_public).digest()[:4]
    rendered = Note(text, (signature,)).render()
    assert rendered.startswith(text + "\n— " + origin + " ")
    checkpoint, _ = verify_checkpoint_note(rendered, load_public_keys(document), "deposit-5pct")
    assert checkpoint == body
    with pytest.raises(NoteError, match="not for campaign"):
        verify_checkpoint_note(rendered, load_public_keys(document), "other")
    other = parse_keys(generate_keys_document(), "other").public_keys()
    with pytest.raises(NoteError, match="no signature from a known key"):
        verify_checkpoint_note(rendered, load_public_keys(other))


def test_a_cosignature_is_timestamped_and_covers_the_whole_text() -> None:
    text = Checkpoint("fairgate.local/c1", 5, merkle.root(leaves(5)), ("time_ms 1",)).text()
    key = Ed25519PrivateKey.generate()
    signature = cosign(text, "witness.example/w1", key, 1679315147)
    public = key.public_key()
    assert signature.key_id == key_id(
        "witness.example/w1", ED25519_COSIGNATURE, public.public_bytes_raw()
    )
    assert struct.unpack(">Q", signature.signature[:8])[0] == 1679315147
    message = b"cosignature/v1\ntime 1679315147\n" + text.encode()
    public.verify(signature.signature[8:], message)  # raises when wrong
    verifier = Verifier("witness.example/w1", ED25519_COSIGNATURE, public)
    assert verifier.verify(text, signature)
    again = parse_vkey(verifier.vkey())  # a vkey whose base64 holds a '+' too
    assert (again.name, again.key_id, again.vkey()) == (
        verifier.name,
        verifier.key_id,
        verifier.vkey(),
    )
    # Another time, another text, or the key read as a plain note key: no.
    later = Signature(
        signature.name, signature.key_id, struct.pack(">Q", 1679315148) + signature.signature[8:]
    )
    assert not verifier.verify(text, later)
    assert not verifier.verify(text.replace("\n5\n", "\n6\n"), signature)
    plain = Verifier("witness.example/w1", ED25519_NOTE, public)
    assert not plain.matches(signature)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "ends with a newline"),
        (b"a\nb\n", "blank line"),
        (b"a\n\n", "at least one signature"),
        (b"a\n\n- name AAAAAAA=\n", "em dash"),
        ("a\n\n— na+me AAAAAAA=\n".encode(), "no spaces"),
        ("a\n\n— name AAAAAAA\n".encode(), "base64"),
        ("a\n\n— name AAAA\n".encode(), "4-byte key ID"),
        ("a\x01\n\n— name AAAAAAA=\n".encode(), "control"),
        (b"\xff\n\n", "UTF-8"),
        (("a\n\n" + "— name AAAAAAA=\n" * 101).encode(), "at most 100"),
    ],
)
def test_malformed_notes_are_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(NoteError, match=why):
        parse_note(data)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("o\n5\n", "origin, a size and a root"),
        ("o\n05\n" + base64.b64encode(bytes(32)).decode() + "\n", "leading zeroes"),
        ("o\n5\n" + base64.b64encode(bytes(31)).decode() + "\n", "32 bytes"),
        ("o\n5\n" + base64.b64encode(bytes(32)).decode() + "\n\n", "extension line is empty"),
        ("\n5\n" + base64.b64encode(bytes(32)).decode() + "\n", "origin line is empty"),
    ],
)
def test_malformed_checkpoints_are_refused(text: str, why: str) -> None:
    with pytest.raises(NoteError, match=why):
        parse_checkpoint_text(text)


def signed(origin: str, size: int, root: bytes, key: Ed25519PrivateKey) -> str:
    text = Checkpoint(origin, size, root, ("time_ms 1",)).text()
    return Note(text, (sign_note(text, origin, key),)).render()


def request(old: int, proof: list[bytes], note: str) -> bytes:
    lines = "".join(base64.b64encode(h).decode() + "\n" for h in proof)
    return f"old {old}\n{lines}\n{note}".encode()


def test_add_checkpoint_cosigns_consistent_growth_and_refuses_forks() -> None:
    origin = "fairgate.local/c1"
    gate_key = Ed25519PrivateKey.generate()
    gate = [Verifier(origin, ED25519_NOTE, gate_key.public_key())]
    witness = generate_key("witness.test/w1")
    log = leaves(20)
    first = signed(origin, 8, merkle.root(log[:8]), gate_key)
    held, signature = add_checkpoint(
        None, request(0, [], first), origin=origin, gate_keys=gate, key=witness, now=100
    )
    assert held.size == 8 and witness.verifier.verify(parse_note(first).text, signature)

    second = signed(origin, 20, merkle.root(log), gate_key)
    proof = merkle.consistency_proof(log, 8)
    held2, _ = add_checkpoint(
        held, request(8, proof, second), origin=origin, gate_keys=gate, key=witness, now=101
    )
    assert held2.size == 20

    def refused(held_: Held | None, body: bytes) -> Refused:
        with pytest.raises(Refused) as info:
            add_checkpoint(held_, body, origin=origin, gate_keys=gate, key=witness, now=102)
        return info.value

    forked = leaves(20, b"fork")
    fork_same_size = signed(origin, 20, merkle.root(forked), gate_key)
    fork = refused(held2, request(20, [], fork_same_size))
    assert (fork.status, fork.fork) == (409, True)
    fork_growth = signed(origin, 20, merkle.root(forked), gate_key)
    bad = refused(held, request(8, merkle.consistency_proof(forked, 8), fork_growth))
    assert (bad.status, bad.fork) == (422, True)
    assert refused(held2, request(8, proof, second)).status == 409  # old is not what it holds
    assert refused(held, request(9, proof, second)).status == 409
    assert refused(held, request(21, [], second)).status == 400  # old beyond the new size
    assert refused(None, request(30, [], second)).status == 400
    stranger = Ed25519PrivateKey.generate()
    assert (
        refused(held, request(8, proof, signed(origin, 20, merkle.root(log), stranger))).status
        == 403
    )
    other_log = signed("fairgate.local/c2", 20, merkle.root(log), gate_key)
    assert refused(held, request(8, proof, other_log)).status == 404
    assert refused(held, b"old 8\n").status == 400
    assert refused(held, b"old 08\n\n" + second.encode()).status == 400
    assert refused(held, b"old 8\nnot-base64\n\n" + second.encode()).status == 400
    assert not fork.fork or fork.message


def test_an_equivocation_file_reads_back_as_two_signed_heads() -> None:
    keys, document = gate_keys()
    public = load_public_keys(document)
    origin = "fairgate.local/c1"
    private = keys.ed25519_keys[keys.ed25519_current]  # type: ignore[attr-defined]
    a = signed(origin, 5, merkle.root(leaves(5)), private)
    b = signed(origin, 5, merkle.root(leaves(5, b"x")), private)
    evidence = {"type": "equivocation", "campaign": "c1", "held": a, "served": b}
    held, served = read_equivocation(evidence, public)
    assert held.size == served.size and held.root != served.root
    with pytest.raises(NoteError, match="agree"):
        read_equivocation({**evidence, "served": a}, public)
    forged = signed(origin, 5, merkle.root(leaves(5, b"y")), Ed25519PrivateKey.generate())
    with pytest.raises(NoteError):
        read_equivocation({**evidence, "served": forged}, public)
    assert gate_verifiers(origin, public)[0].name == origin


def test_one_witness_process_at_a_time_per_campaign(tmp_path: Path) -> None:
    """Checking the held size and writing the new one must not interleave between two
    processes (tlog-witness's rollback race): the second one's round fails instead."""
    state, other = State(tmp_path), State(tmp_path)
    with state.locked("c1"):
        with pytest.raises(GateAway, match="another witness process"), other.locked("c1"):
            pass
        with other.locked("c2"):  # another campaign is not held up
            pass
    with other.locked("c1"):  # released
        pass
