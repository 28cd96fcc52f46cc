"""`gate witness`: an independent party that keeps the gate's checkpoints honest.

A witness (a regulator, a consumer group, a second bank team) runs with its own Ed25519
key. Per campaign it remembers the last checkpoint it cosigned (``DIR/<campaign>.json``,
written atomically). Each round it fetches the gate's keys and latest checkpoint note,
checks the gate's signature, fetches the consistency proof from the size it holds, checks
it, cosigns (c2sp.org/tlog-cosignature) and hands the cosignature to the gate
(``POST /.well-known/fairgate/cosign/<campaign>``).

A fork is refused for good: a checkpoint of the size it holds with another root, or one
that no consistency proof connects to the one it holds. It writes the evidence, the two
heads the gate signed, to ``DIR/<campaign>.equivocation.json``, exits 3, and never
cosigns that campaign again (the file stays; an operator moves it away only after a
decision).

The checks themselves are `add_checkpoint`, which takes the body of a
c2sp.org/tlog-witness ``add-checkpoint`` request (``old N``, proof lines, a blank line,
the note) and answers as that protocol does, so the same code could serve it over HTTP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from gate import base64url
from gate.audit import merkle
from gate.audit.format import load_public_keys
from gate.audit.note import (
    ED25519_COSIGNATURE,
    Checkpoint,
    Note,
    NoteError,
    Signature,
    Verifier,
    b64,
    cosign,
    gate_verifiers,
    open_note,
    parse_checkpoint_text,
    parse_note,
    parse_proof_lines,
    proof_lines,
    unb64,
    valid_key_name,
)
from gate.campaign import valid_campaign_id
from gate.errors import GateError
from gate.signing import write_keys

EXIT_OK = 0
EXIT_FAILED = 1  # this round could not be completed (the gate away, a bad answer)
EXIT_EQUIVOCATION = 3  # a fork: refused, evidence written


# -- the witness's key ------------------------------------------------------------------


@dataclass(frozen=True)
class WitnessKey:
    name: str
    key: Ed25519PrivateKey

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, ED25519_COSIGNATURE, self.key.public_key())

    def document(self) -> dict[str, Any]:
        raw = self.key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return {
            "version": 1,
            "type": "fairgate-witness-key",
            "name": self.name,
            "private_key": base64url.encode(raw),
            "vkey": self.verifier.vkey(),
        }


def generate_key(name: str) -> WitnessKey:
    if not valid_key_name(name) or len(name) > 200:
        raise GateError(f"{name[:80]!r}: a witness name has no spaces and no '+'", code="usage")
    return WitnessKey(name, Ed25519PrivateKey.generate())


def load_key(path: Path) -> WitnessKey:
    try:
        document = json.loads(path.read_text())
        name = document["name"]
        key = Ed25519PrivateKey.from_private_bytes(base64url.decode(document["private_key"]))
    except OSError as exc:
        raise GateError(f"witness key {path}: {exc.strerror}", code="bad_key") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise GateError(f"witness key {path}: malformed ({exc})", code="bad_key") from None
    if not isinstance(name, str) or not valid_key_name(name):
        raise GateError(f"witness key {path}: bad name", code="bad_key")
    return WitnessKey(name, key)


def write_key(path: Path, key: WitnessKey) -> None:
    write_keys(path, key.document())  # mode 0600, written whole or not at all


# -- what the witness holds ---------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """The last checkpoint cosigned for a campaign, and the note the gate signed."""

    origin: str
    size: int
    root: bytes
    note: str
    # The gate's keys document the note was checked with: a fork found later may be
    # signed under another (a key swapped to blur the evidence); both go in the evidence.
    keys: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root": b64(self.root),
            "note": self.note,
            "keys": self.keys,
        }

    @classmethod
    def from_json(cls, data: Any) -> Held:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        size = data["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("size")
        keys = data.get("keys")
        return cls(
            str(data["origin"]),
            size,
            unb64(str(data["root"]), "root"),
            str(data["note"]),
            keys if isinstance(keys, dict) else None,
        )


def _write_json(path: Path, data: Any) -> None:
    """Temporary file, fsync, rename, fsync the directory: the old state or the new."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class State:
    """The witness's directory: ``<campaign>.json`` and, after a fork, the evidence."""

    def __init__(self, directory: Path):
        self.directory = directory

    def path(self, campaign: str) -> Path:
        return self.directory / f"{campaign}.json"

    def evidence_path(self, campaign: str) -> Path:
        return self.directory / f"{campaign}.equivocation.json"

    def load(self, campaign: str) -> Held | None:
        path = self.path(campaign)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise GateError(f"{path}: {exc.strerror}", code="bad_state") from None
        try:
            return Held.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError, NoteError) as exc:
            raise GateError(f"{path}: not a witness state file ({exc})", code="bad_state") from None

    @contextlib.contextmanager
    def locked(self, campaign: str) -> Iterator[None]:
        """One witness process at a time per campaign and directory: the check of the
        held size and the write of the new one must not interleave (c2sp.org/tlog-witness:
        two rounds racing could roll the held checkpoint back)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / f".{campaign}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GateAway(
                    f"another witness process holds {campaign} in this directory"
                ) from None
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def save(self, campaign: str, held: Held) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_json(self.path(campaign), held.to_json())

    def save_evidence(self, campaign: str, evidence: dict[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.evidence_path(campaign)
        _write_json(path, evidence)
        return path


# -- add-checkpoint (c2sp.org/tlog-witness) -------------------------------------------------


class Refused(Exception):
    """The witness does not cosign; `status` is tlog-witness's answer (400, 403, 404, 409,
    422); `fork` when the checkpoint contradicts the one held (an equivocation)."""

    def __init__(self, status: int, message: str, *, fork: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.fork = fork


def split_request(body: bytes) -> tuple[int, list[bytes], bytes]:
    """``old N\\n`` + proof lines + ``\\n`` + note: (old size, proof, note bytes)."""
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise Refused(400, "no blank line between the proof and the checkpoint")
    lines = head.decode("ascii", "replace").split("\n")
    first = lines[0]
    if not first.startswith("old ") or not first[4:].isdigit() or first[4:] != str(int(first[4:])):
        raise Refused(400, "the first line must be 'old <size>'")
    try:
        proof = parse_proof_lines("\n".join(lines[1:]) + ("\n" if len(lines) > 1 else ""))
    except NoteError as exc:
        raise Refused(400, str(exc)) from None
    return int(first[4:]), proof, note


def add_checkpoint(
    held: Held | None,
    body: bytes,
    *,
    origin: str,
    gate_keys: list[Verifier],
    key: WitnessKey,
    now: int,
) -> tuple[Held, Signature]:
    """Check a new checkpoint against the one held and cosign it; Refused otherwise.
    The caller persists the returned Held before it hands the cosignature out."""
    old, proof, note_bytes = split_request(body)
    try:
        note = parse_note(note_bytes)
        checkpoint = parse_checkpoint_text(note.text)
    except NoteError as exc:
        raise Refused(400, f"not a checkpoint note: {exc}") from None
    if checkpoint.origin != origin or (held is not None and held.origin != origin):
        raise Refused(404, f"unknown origin {checkpoint.origin[:100]!r}")
    try:
        opened = open_note(note, gate_keys)
    except NoteError as exc:
        raise Refused(403, f"the gate's signature: {exc}") from None
    if old > checkpoint.size:
        raise Refused(400, f"old size {old} is beyond the checkpoint's {checkpoint.size}")
    held_size = 0 if held is None else held.size
    if old != held_size:
        raise Refused(409, f"{held_size}\n")
    if held is not None and old == checkpoint.size:
        if checkpoint.root != held.root:
            raise Refused(409, "same size, another root", fork=True)
    elif held is not None:
        if not merkle.verify_consistency(old, checkpoint.size, held.root, checkpoint.root, proof):
            raise Refused(422, f"no consistency from {old} to {checkpoint.size}", fork=True)
    elif proof:
        raise Refused(422, "a proof from size 0 is empty")
    gate_only = Note(note.text, tuple(s for _, s in opened.verified))
    new = Held(origin, checkpoint.size, checkpoint.root, gate_only.render())
    return new, cosign(note.text, key.name, key.key, now)


# -- talking to the gate -----------------------------------------------------------------


class GateAway(Exception):
    """The gate could not be asked (connection refused, a timeout, a 5xx)."""


class GateRefused(GateAway):
    """The gate answered, with an HTTP error status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _get(url: str, timeout_s: float) -> bytes:
    return _request(urllib.request.Request(url, method="GET"), timeout_s)


def _request(request: urllib.request.Request, timeout_s: float) -> bytes:
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return bytes(response.read(1 << 20))
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode("utf-8", "replace").strip()
        raise GateRefused(
            f"{request.get_method()} {request.full_url}: {exc.code} {detail}", exc.code
        ) from None
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        raise GateAway(f"{request.get_method()} {request.full_url}: {exc}") from None


@dataclass
class Round:
    """One look at one campaign; `outcome` is what happened, for the log line."""

    campaign: str
    outcome: str
    size: int = 0
    detail: dict[str, Any] | None = None


class Witness:
    def __init__(
        self,
        key: WitnessKey,
        state: State,
        gate_url: str,
        *,
        pinned_keys: dict[str, Any] | None = None,
        timeout_s: float = 10.0,
    ):
        self.key = key
        self.state = state
        self.gate_url = gate_url.rstrip("/")
        self.pinned_keys = pinned_keys
        self.timeout_s = timeout_s

    def _url(self, path: str) -> str:
        return self.gate_url + "/.well-known/fairgate/" + path

    def _keys_document(self) -> dict[str, Any]:
        if self.pinned_keys is not None:
            return self.pinned_keys
        try:
            document = json.loads(_get(self._url("keys"), self.timeout_s))
        except ValueError:
            raise GateAway("the gate's keys document is not JSON") from None
        if not isinstance(document, dict):
            raise GateAway("the gate's keys document is not an object")
        return document

    def run_once(self, campaign: str) -> Round:
        """Fetch, check, cosign, hand in (one process at a time per campaign)."""
        with self.state.locked(campaign):
            return self._round(campaign)

    def _round(self, campaign: str) -> Round:
        if self.state.evidence_path(campaign).exists():
            return Round(
                campaign, "refused", detail={"evidence": str(self.state.evidence_path(campaign))}
            )
        held = self.state.load(campaign)
        keys_document = self._keys_document()
        try:
            public_keys = load_public_keys(keys_document)
        except ValueError as exc:
            raise GateAway(f"the gate's keys: {exc}") from None
        quoted = urllib.parse.quote(campaign, safe="")
        served = _get(self._url(f"checkpoint/{quoted}"), self.timeout_s)
        try:
            note = parse_note(served)
            checkpoint = parse_checkpoint_text(note.text)
        except NoteError as exc:
            raise GateAway(f"the served checkpoint is not a note: {exc}") from None
        origin = held.origin if held is not None else checkpoint.origin
        if held is None and not origin.endswith("/" + campaign):
            raise GateAway(f"the served origin {origin!r} is not for campaign {campaign}")
        gate_keys = gate_verifiers(origin, public_keys)
        try:
            opened = open_note(note, gate_keys)
        except NoteError as exc:
            raise GateAway(f"the served checkpoint does not verify: {exc}") from None
        gate_note = Note(note.text, tuple(s for _, s in opened.verified))
        old, proof = 0, []
        if held is not None:
            if checkpoint.size < held.size:
                return self._older(campaign, held, checkpoint, gate_note, keys_document)
            old = held.size
            if checkpoint.size > held.size:
                proof = self._proof(quoted, held.size, checkpoint.size)
        body = (
            f"old {old}\n".encode()
            + proof_lines(proof).encode()
            + b"\n"
            + gate_note.render().encode()
        )
        try:
            new, signature = add_checkpoint(
                held, body, origin=origin, gate_keys=gate_keys, key=self.key, now=int(time.time())
            )
        except Refused as refused:
            if refused.fork and held is not None:
                path = self._evidence(
                    campaign, refused.message, held, gate_note, proof, keys_document
                )
                return Round(campaign, "equivocation", checkpoint.size, {"evidence": str(path)})
            raise GateAway(f"not cosigned: {refused.status} {refused.message.strip()}") from None
        new = dataclasses.replace(new, keys=keys_document)
        self.state.save(campaign, new)  # before the cosignature leaves (tlog-witness)
        answer = self._hand_in(quoted, Note(gate_note.text, (*gate_note.signatures, signature)))
        return Round(campaign, "cosigned", new.size, answer)

    def _proof(self, quoted: str, old: int, new: int) -> list[bytes]:
        raw = _get(self._url(f"consistency/{quoted}?old={old}&new={new}"), self.timeout_s)
        try:
            return parse_proof_lines(raw.decode("ascii"))
        except (NoteError, UnicodeDecodeError) as exc:
            raise GateAway(f"the consistency proof is malformed: {exc}") from None

    def _older(
        self,
        campaign: str,
        held: Held,
        checkpoint: Checkpoint,
        gate_note: Note,
        keys_document: dict[str, Any],
    ) -> Round:
        """A checkpoint smaller than the one held: stale if the gate proves it a prefix
        of the held one (nothing to cosign); a fork if the proof fails; a rollback if the
        gate cannot give one (its log no longer reaches a size it signed)."""
        quoted = urllib.parse.quote(campaign, safe="")
        try:
            proof = self._proof(quoted, checkpoint.size, held.size)
        except GateRefused as refused:
            if not 400 <= refused.status < 500:
                raise
            reason = (
                f"rollback: the latest checkpoint ({checkpoint.size}) is smaller than the "
                f"held one ({held.size}), and the gate gives no consistency proof to it "
                f"({refused.status})"
            )
            proof = []
        else:
            if merkle.verify_consistency(
                checkpoint.size, held.size, checkpoint.root, held.root, proof
            ):
                return Round(campaign, "stale", checkpoint.size)
            reason = f"no consistency from {checkpoint.size} to the held {held.size}"
        path = self._evidence(campaign, reason, held, gate_note, proof, keys_document)
        return Round(campaign, "equivocation", checkpoint.size, {"evidence": str(path)})

    def _evidence(
        self,
        campaign: str,
        reason: str,
        held: Held,
        served: Note,
        proof: list[bytes],
        keys_document: dict[str, Any],
    ) -> Path:
        evidence = {
            "type": "equivocation",
            "campaign": campaign,
            "origin": held.origin,
            "reason": reason,
            "held": held.note,
            "served": served.render(),
            "proof": [b64(h) for h in proof],
            "keys": keys_document,
            "held_keys": held.keys,  # the document the held note was checked with
            "witness": self.key.verifier.vkey(),
            "detected_at": int(time.time()),
        }
        return self.state.save_evidence(campaign, evidence)

    def _hand_in(self, quoted: str, note: Note) -> dict[str, Any]:
        request = urllib.request.Request(
            self._url(f"cosign/{quoted}"),
            data=note.render().encode(),
            method="POST",
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )
        raw = _request(request, self.timeout_s)
        try:
            answer = json.loads(raw)
        except ValueError:
            raise GateAway("the gate's answer to the cosignature is not JSON") from None
        return answer if isinstance(answer, dict) else {"answer": answer}


def read_equivocation(evidence: Any, public_keys: Any) -> tuple[Checkpoint, Checkpoint]:
    """The two heads of an equivocation file, each checked to carry the gate's signature
    (`public_keys`: kid -> key). For `gate audit verify` to name a fork: NoteError when
    either head does not verify, or when they are not in conflict (same size and root)."""
    from gate.audit.note import verify_checkpoint_note

    if not isinstance(evidence, dict) or evidence.get("type") != "equivocation":
        raise NoteError("not an equivocation file")
    campaign = evidence.get("campaign")
    held, _ = verify_checkpoint_note(str(evidence.get("held")), public_keys, campaign)
    served, _ = verify_checkpoint_note(str(evidence.get("served")), public_keys, campaign)
    if held.origin != served.origin:
        raise NoteError("the two heads are of different logs")
    if held.size == served.size and held.root == served.root:
        raise NoteError("the two heads agree")
    return held, served


# -- the command ------------------------------------------------------------------------------


def run(
    key_path: Path,
    state_dir: Path,
    gate_url: str,
    campaigns: list[str],
    *,
    once: bool,
    interval_s: float,
    keys_path: Path | None = None,
) -> int:
    """`gate witness run`: one JSON line per campaign and round on stdout."""
    for campaign in campaigns:
        if not valid_campaign_id(campaign):
            raise GateError(f"{campaign[:64]!r} is not a campaign id", code="usage")
    if not gate_url.startswith(("http://", "https://")):
        raise GateError("--gate must be an http(s) URL", code="usage")
    if interval_s <= 0:
        raise GateError("--interval must be positive", code="usage")
    key = load_key(key_path)
    pinned = None
    if keys_path is not None:
        try:
            pinned = json.loads(keys_path.read_text())
            load_public_keys(pinned)
        except OSError as exc:
            raise GateError(f"keys file {keys_path}: {exc.strerror}", code="bad_keys") from None
        except ValueError as exc:
            raise GateError(f"keys file {keys_path}: {exc}", code="bad_keys") from None
    witness = Witness(key, State(state_dir), gate_url, pinned_keys=pinned)
    while True:
        code = EXIT_OK
        for campaign in campaigns:
            try:
                result = witness.run_once(campaign)
            except GateAway as exc:
                _line({"campaign": campaign, "outcome": "failed", "error": str(exc)})
                code = max(code, EXIT_FAILED)
                continue
            _line(
                {"campaign": campaign, "outcome": result.outcome, "size": result.size}
                | (result.detail or {})
            )
            if result.outcome in ("equivocation", "refused"):
                print(
                    f"gate: error: equivocation: campaign {campaign}: the gate signed two "
                    f"heads that contradict each other; evidence in "
                    f"{witness.state.evidence_path(campaign)}; not cosigning again",
                    file=sys.stderr,
                )
                return EXIT_EQUIVOCATION
        if once:
            return code
        time.sleep(interval_s)


def _line(data: dict[str, Any]) -> None:
    print(json.dumps(data, separators=(",", ":"), ensure_ascii=False), flush=True)


__all__ = [
    "EXIT_EQUIVOCATION",
    "GateAway",
    "GateRefused",
    "Held",
    "Refused",
    "State",
    "Witness",
    "WitnessKey",
    "add_checkpoint",
    "generate_key",
    "load_key",
    "read_equivocation",
    "run",
    "write_key",
]
