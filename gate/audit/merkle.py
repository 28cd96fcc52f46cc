"""RFC 6962 Merkle trees: roots, inclusion and consistency proofs, an incremental frontier,
and a whole tree held in memory for reading a log from its start (`LeafStore`).

The tree is the one of RFC 6962 §2.1: ``MTH({}) = SHA-256()``,
``MTH({d0}) = SHA-256(0x00 || d0)``, and for n > 1 the largest power of two k < n splits
the leaves into ``D[0:k]`` and ``D[k:n]``, ``MTH = SHA-256(0x01 || MTH(left) || MTH(right))``.
Proofs are those of §2.1.1 (audit path) and §2.1.2 (consistency); verification follows
the algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2, which check the same proofs.

Functions taking ``leaves`` take leaf *hashes* (``leaf_hash(entry_bytes)``), not raw data.

A proof is a list of subtree hashes; ``inclusion_ranges`` and ``consistency_ranges`` name
the leaf range ``[lo, hi)`` each element covers, so a caller holding only some stored
subtree hashes (see ``Frontier.append``) and a few leaves can build proofs without
reading the whole log (``range_hash``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH of the leaf hashes (RFC 6962 §2.1)."""
    if not leaves:
        return EMPTY_ROOT
    # Pairing level by level and promoting a lone last node unchanged builds exactly
    # the RFC 6962 tree (left subtrees are the largest powers of two).
    level = list(leaves)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form the audit path of leaf ``index`` (bottom first)."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} outside a tree of {size} leaves")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo = lo + k
    out.reverse()
    return out


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form PROOF(old_size, D[new_size]) (RFC 6962 §2.1.2)."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"bad sizes {old_size} -> {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    out: list[tuple[int, int]] = []
    m, lo, hi, complete = old_size, 0, new_size, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                out.append((lo, hi))
            break
        k = _split(n)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            m -= k
            lo += k
            complete = False
    out.reverse()
    return out


def _subtree_root(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    return root(leaves[lo:hi])


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    return [_subtree_root(leaves, lo, hi) for lo, hi in inclusion_ranges(index, len(leaves))]


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) where ``leaves`` are the n leaf hashes of the newer tree."""
    return [_subtree_root(leaves, lo, hi) for lo, hi in consistency_ranges(old_size, len(leaves))]


def inclusion_proofs(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every leaf's audit path at once, in O(n log n) (a batch receipt needs them all)."""
    proofs: list[list[bytes]] = [[] for _ in leaves]
    positions = list(range(len(leaves)))
    level = list(leaves)
    while len(level) > 1:
        for leaf, j in enumerate(positions):
            sibling = j ^ 1
            if sibling < len(level):
                proofs[leaf].append(level[sibling])
            positions[leaf] = j >> 1
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return proofs


def _well_formed(items: Sequence[bytes]) -> bool:
    return all(isinstance(p, bytes | bytearray) and len(p) == HASH_SIZE for p in items)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes
) -> bool:
    """True when ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree ``root_hash``."""
    if not 0 <= index < size or not _well_formed([leaf, root_hash, *proof]):
        return False
    fn, sn, r = index, size - 1, bytes(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True when the tree ``old_root`` of ``old_size`` leaves is a prefix of ``new_root``."""
    if not 0 <= old_size <= new_size or not _well_formed([old_root, new_root, *proof]):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = bytes(path[0])
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def range_hash(
    lo: int,
    hi: int,
    leaf: Callable[[int], bytes],
    node: Callable[[int, int], bytes | None] | None = None,
) -> bytes:
    """MTH of leaves ``[lo, hi)`` from ``leaf(i)`` and, where known, stored perfect
    subtrees ``node(level, index)`` (the subtree of 2**level leaves starting at
    ``index * 2**level``; None when not stored)."""
    n = hi - lo
    if n <= 0:
        raise ValueError("empty range")
    if n == 1:
        return leaf(lo)
    if node is not None and n & (n - 1) == 0 and lo % n == 0:
        stored = node(n.bit_length() - 1, lo // n)
        if stored is not None:
            return stored
    k = _split(n)
    return node_hash(range_hash(lo, lo + k, leaf, node), range_hash(lo + k, hi, leaf, node))


def stored_subtrees(lo: int, hi: int, min_level: int) -> list[tuple[int, int]]:
    """The largest perfect subtrees ``(level, index)`` of at least ``2**min_level`` leaves
    that ``range_hash(lo, hi, ...)`` can take from storage instead of recomputing."""
    out: list[tuple[int, int]] = []

    def walk(a: int, b: int) -> None:
        n = b - a
        if n & (n - 1) == 0 and a % n == 0 and n.bit_length() - 1 >= min_level:
            out.append((n.bit_length() - 1, a // n))
            return
        if n == 1:
            return
        k = _split(n)
        walk(a, a + k)
        walk(a + k, b)

    walk(lo, hi)
    return out


def leaves_needed(
    lo: int, hi: int, has_node: Callable[[int, int], bool] | None = None
) -> list[tuple[int, int]]:
    """Leaf ranges ``range_hash(lo, hi, ...)`` will read, given which nodes are stored."""
    out: list[tuple[int, int]] = []

    def walk(a: int, b: int) -> None:
        n = b - a
        if n == 1:
            out.append((a, b))
            return
        perfect = n & (n - 1) == 0 and a % n == 0
        if perfect and has_node is not None and has_node(n.bit_length() - 1, a // n):
            return
        k = _split(n)
        walk(a, a + k)
        walk(a + k, b)

    walk(lo, hi)
    merged: list[tuple[int, int]] = []
    for a, b in out:
        if merged and merged[-1][1] == a:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


class Frontier:
    """The right edge of a growing tree: one perfect-subtree hash per set bit of ``size``.

    Enough to append leaves and compute the root in O(log n) memory; a successor
    continues the same tree from ``from_bytes(to_bytes())``.
    """

    __slots__ = ("_hashes", "size")

    def __init__(self) -> None:
        self.size = 0
        # Perfect subtrees left to right, largest first (sizes = the set bits of size).
        self._hashes: list[bytes] = []

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append a leaf hash; return the perfect subtrees this completes, as
        ``(level, index, hash)`` (level 0 is the leaf itself)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        completed = [(0, self.size, bytes(leaf))]
        h = bytes(leaf)
        size = self.size
        level = 0
        while size & 1:
            h = node_hash(self._hashes.pop(), h)
            size >>= 1
            level += 1
            completed.append((level, ((self.size + 1) >> level) - 1, h))
        self._hashes.append(h)
        self.size += 1
        return completed

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        h = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            h = node_hash(left, h)
        return h

    def to_bytes(self) -> bytes:
        return self.size.to_bytes(8, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> Frontier:
        if len(data) < 8:
            raise ValueError("frontier too short")
        size = int.from_bytes(data[:8], "big")
        body = data[8:]
        if len(body) != HASH_SIZE * size.bit_count():
            raise ValueError("frontier length does not match its size")
        frontier = cls()
        frontier.size = size
        frontier._hashes = [body[i : i + HASH_SIZE] for i in range(0, len(body), HASH_SIZE)]
        return frontier

    def copy(self) -> Frontier:
        other = Frontier()
        other.size = self.size
        other._hashes = list(self._hashes)
        return other


# Perfect subtrees of at least 2**STORED_LEVEL leaves are kept by a LeafStore, so a root
# or a proof at any size reads at most 2**STORED_LEVEL leaf hashes per subtree.
STORED_LEVEL = 4


class LeafStore:
    """A whole tree in memory, for reading a log from the start (a verifier, a dispute):
    every leaf hash, plus the perfect subtrees of 2**STORED_LEVEL leaves and more, so the
    root, inclusion and consistency proofs at any earlier size cost O(log n) hashes."""

    def __init__(self) -> None:
        self.leaves = bytearray()
        self.frontier = Frontier()
        self.nodes: dict[tuple[int, int], bytes] = {}

    @property
    def size(self) -> int:
        return self.frontier.size

    def append(self, data: bytes) -> None:
        """Append an entry (its bytes, not its leaf hash)."""
        leaf = leaf_hash(data)
        self.leaves += leaf
        for level, index, digest in self.frontier.append(leaf):
            if level >= STORED_LEVEL:
                self.nodes[(level, index)] = digest

    def leaf(self, i: int) -> bytes:
        return bytes(self.leaves[HASH_SIZE * i : HASH_SIZE * (i + 1)])

    def node(self, level: int, index: int) -> bytes | None:
        return self.nodes.get((level, index))

    def root(self, size: int) -> bytes:
        if size == 0:
            return EMPTY_ROOT
        return range_hash(0, size, self.leaf, self.node)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of the first ``size`` leaves."""
        return [
            range_hash(lo, hi, self.leaf, self.node) for lo, hi in inclusion_ranges(index, size)
        ]

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        return [
            range_hash(lo, hi, self.leaf, self.node)
            for lo, hi in consistency_ranges(old_size, new_size)
        ]
