"""Unpadded base64url (RFC 4648 §5): how keys, signatures and tokens travel as text.

Decoding accepts only the one canonical text of some bytes: no padding, nothing outside
the alphabet, the unused trailing bits zero. A text that decodes to the same bytes in two
ways could be altered without a trace (docs/audit-format.md), so every reader of a
signed or keyed value refuses the other spellings.
"""

from __future__ import annotations

import base64


def encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode(text: str) -> bytes:
    """The bytes of canonical unpadded base64url `text`; ValueError for anything else."""
    if not isinstance(text, str):
        raise ValueError("base64url must be text")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:  # binascii.Error, or a str with characters outside ASCII
        raise ValueError("not base64url") from None
    if encode(data) != text:
        raise ValueError("not canonical, unpadded base64url")
    return data
