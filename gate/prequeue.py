"""The pre-queue shuffle, computed from the data alone.

Customers who join before a campaign opens get no seq by arrival: being early by a
millisecond must buy nothing. At opening the pre-queue seed committed at creation (its SHA-256 is
field `h` of the `admin-create` audit entry) is revealed, and the pre-queue takes seqs
1..P in ascending order of SHA-256(seed || digest). Digests are unique, so the order has no
ties; anyone with the revealed seed and the digests recomputes it (docs/audit-format.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def shuffle_key(seed: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(seed + digest).digest()


def prequeue_order(seed: bytes, digests: Iterable[bytes]) -> list[bytes]:
    """The digests in the order they take seqs 1, 2, 3, ..."""
    unique = set(digests)
    return sorted(unique, key=lambda digest: shuffle_key(seed, digest))


def prequeue_seqs(seed: bytes, digests: Iterable[bytes]) -> dict[bytes, int]:
    """digest -> seq for the whole pre-queue."""
    return {digest: i for i, digest in enumerate(prequeue_order(seed, digests), start=1)}
