"""The audit export: a campaign's whole log as JSON Lines (docs/audit-format.md).

One header line (format tag, campaign, public keys), then every entry in index order as the
base64 of its msgpack bytes exactly as stored, then each join batch's signature as recorded
at join time (a ``batch`` line per join entry that has one: docs/audit-format.md, "Batch
signatures"), then the signed checkpoints in size order (a checkpoint that witnesses
cosigned carries its signed note with their cosignatures as `note`). Entries are read from
segment files and Redis a chunk at a time (`AuditStore.entries`), so an export never holds
the log in memory.

The checkpoints are read *before* the entries: every checkpoint then covers entries the
export contains, and entries appended meanwhile are simply not sealed yet.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from gate.audit.cosignatures import Transparency
from gate.audit.format import EXPORT_FORMAT, entry_base64
from gate.audit.store import AuditStore

LINES_PER_CHUNK = 500


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def header_line(campaign: str, public_keys: dict[str, Any]) -> bytes:
    return _line(
        {"type": "header", "format": EXPORT_FORMAT, "campaign": campaign, "keys": public_keys}
    )


def entry_line(index: int, raw: bytes) -> bytes:
    return _line({"type": "entry", "i": index, "raw": entry_base64(raw)})


def batch_line(index: int, recorded: str) -> bytes | None:
    """The batch signature of join entry `index`, from its "kid:sig" record."""
    kid, sep, sig = recorded.partition(":")
    return _line({"type": "batch", "i": index, "kid": kid, "sig": sig}) if sep else None


def checkpoint_line(checkpoint: dict[str, Any], note: str | None = None) -> bytes:
    """A checkpoint line; `note`: its signed note with the witnesses' cosignatures, for a
    checkpoint that has some (docs/audit-format.md, "Checkpoint notes and witnesses")."""
    return _line({"type": "checkpoint", **checkpoint, **({"note": note} if note else {})})


async def export_chunks(
    store: AuditStore, public_keys: dict[str, Any], witnessing: Transparency | None = None
) -> AsyncGenerator[bytes, None]:
    """The export as byte chunks of at most LINES_PER_CHUNK lines each."""
    checkpoints = await store.checkpoints()
    notes: dict[int, str] = {}
    if witnessing is not None:
        notes = await witnessing.cosigned_notes(store.redis, store.campaign, checkpoints)
    yield header_line(store.campaign, public_keys)
    chunk: list[bytes] = []
    last = 0
    async for index, raw in store.entries():
        last = index
        chunk.append(entry_line(index, raw))
        if len(chunk) >= LINES_PER_CHUNK:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)
    # Read after the entries: every join entry exported so far that was signed has its
    # signature recorded (the join records it at once; the sealer before it seals).
    signatures = await store.batch_signatures()
    lines = [batch_line(index, signatures[index]) for index in sorted(signatures) if index <= last]
    for offset in range(0, len(lines), LINES_PER_CHUNK):
        yield b"".join(line for line in lines[offset : offset + LINES_PER_CHUNK] if line)
    if checkpoints:
        yield b"".join(checkpoint_line(cp, notes.get(cp["size"])) for cp in checkpoints)
