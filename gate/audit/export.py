"""The audit export: a campaign's whole log as JSON Lines (docs/audit-format.md).

One header line (format tag, campaign, public keys), then every entry in index order as
the base64 of its msgpack bytes exactly as stored, then the signed checkpoints in size
order (a checkpoint that witnesses cosigned carries its signed note with their
cosignatures as `note`). Entries are read from segment files and Redis a chunk at a time
(`AuditStore.entries`), so an export never holds the log in memory.

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
    async for index, raw in store.entries():
        chunk.append(entry_line(index, raw))
        if len(chunk) >= LINES_PER_CHUNK:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)
    if checkpoints:
        yield b"".join(checkpoint_line(cp, notes.get(cp["size"])) for cp in checkpoints)
