"""Signed checkpoints: ``{type, campaign, size, root, time_ms, kid, sig}`` (docs/audit-format.md).

Signing uses the current Ed25519 key of the key file; verification needs only the
published public keys (``/.well-known/fairgate/keys``), looked up by ``kid``, so a
checkpoint signed before a key rotation keeps verifying while its key stays published.

`read_checkpoints` reads the checkpoints an auditor holds from elsewhere (`gate audit
verify --checkpoint FILE`), in every form they travel in; a new form is added there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gate.audit.format import PublicKeys, checkpoint_message, parse_checkpoint, sign, signed_by
from gate.signing import SigningKeys


def make_checkpoint(
    keys: SigningKeys, campaign: str, size: int, root: bytes, time_ms: int
) -> dict[str, Any]:
    root_hex = root.hex()
    kid, sig = sign(keys, checkpoint_message(campaign, size, root_hex, time_ms))
    return {
        "type": "checkpoint",
        "campaign": campaign,
        "size": size,
        "root": root_hex,
        "time_ms": time_ms,
        "kid": kid,
        "sig": sig,
    }


def verify_checkpoint(
    checkpoint: Any, public_keys: PublicKeys, campaign: str | None = None
) -> bool:
    """True when the checkpoint is well formed and signed by the key it names."""
    if not isinstance(checkpoint, Mapping) or checkpoint.get("type") != "checkpoint":
        return False
    try:
        fields = parse_checkpoint(checkpoint, campaign)
    except ValueError:
        return False
    key = public_keys.get(fields.kid)
    return key is not None and signed_by(key, fields.message(), fields.signature)


# A held checkpoint in signed-note form (docs/audit-format.md): verify checks it with
# gate.audit.note; its text has a blank line, then signature lines starting with an em dash.
NOTE = "note"
NOTE_SIGNATURES = "\n\n\u2014 "


def read_checkpoints(text: str) -> list[dict[str, Any]]:
    """The checkpoints in a file an auditor holds: one checkpoint object as served or
    exported, a JSON list of them, the admin API's ``{"checkpoints": [...]}``, or JSON
    Lines (one per line, as an export's checkpoint lines or a witness's log keep them), or
    a signed note (served at /.well-known/fairgate/checkpoint/{c}). Only the shape is
    checked here; `gate audit verify` checks each signature and root.
    ValueError says what is wrong."""
    if not text.strip():
        raise ValueError("it is empty")
    if NOTE_SIGNATURES in text and not text.lstrip().startswith(("{", "[")):
        # a signed note, as /.well-known/fairgate/checkpoint/{c} serves it
        return [{"type": NOTE, "text": text}]
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        document = None
        items: list[Any] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except (ValueError, RecursionError):
                raise ValueError(
                    f"line {number} is not JSON (a checkpoint, a list of them, or one a line)"
                ) from None
    else:
        if isinstance(document, list):
            items = document
        elif isinstance(document, Mapping) and isinstance(document.get("checkpoints"), list):
            items = document["checkpoints"]
        else:
            items = [document]
    if not items:
        raise ValueError("it holds no checkpoint")
    for number, item in enumerate(items, start=1):
        if not isinstance(item, Mapping) or item.get("type") != "checkpoint":
            raise ValueError(f'item {number} is not a checkpoint ({{"type": "checkpoint", ...}})')
    return [dict(item) for item in items]
