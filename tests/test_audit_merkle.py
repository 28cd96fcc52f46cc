"""RFC 6962 Merkle trees: reference vectors, and property tests over every small size.

The reference values are the Certificate Transparency test vectors (RFC 6962 leaves
"", 00, 10, 2021, ...) as published with transparency-dev/merkle, used as data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.audit import merkle

CT_DATA = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = {
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
CT_CONSISTENCY = {
    (2, 8): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}
CT_LEAVES = [merkle.leaf_hash(d) for d in CT_DATA]

MAX = 200
LEAVES = [merkle.leaf_hash(b"entry %d" % i) for i in range(MAX)]
ROOTS = [merkle.root(LEAVES[:n]) for n in range(MAX + 1)]


def test_reference_roots_for_sizes_0_to_8() -> None:
    assert hashlib.sha256(b"").digest() == merkle.EMPTY_ROOT
    for n in range(len(CT_ROOTS)):
        assert merkle.root(CT_LEAVES[:n]).hex() == CT_ROOTS[n], n


def test_hashing_prefixes_by_hand() -> None:
    a, b = b"a", b"b"
    assert merkle.leaf_hash(a) == hashlib.sha256(b"\x00a").digest()
    la, lb = merkle.leaf_hash(a), merkle.leaf_hash(b)
    assert merkle.node_hash(la, lb) == hashlib.sha256(b"\x01" + la + lb).digest()
    # Three leaves: the split is at 2 (largest power of two below 3), not a balanced pad.
    lc = merkle.leaf_hash(b"c")
    assert merkle.root([la, lb, lc]) == merkle.node_hash(merkle.node_hash(la, lb), lc)


def test_reference_proofs() -> None:
    for (index, size), want in CT_INCLUSION.items():
        proof = merkle.inclusion_proof(CT_LEAVES[:size], index)
        assert [p.hex() for p in proof] == want
        root = bytes.fromhex(CT_ROOTS[size])
        assert merkle.verify_inclusion(CT_LEAVES[index], index, size, proof, root)
    for (old, new), want in CT_CONSISTENCY.items():
        proof = merkle.consistency_proof(CT_LEAVES[:new], old)
        assert [p.hex() for p in proof] == want
        old_root, new_root = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
        assert merkle.verify_consistency(old, new, old_root, new_root, proof)


def test_every_inclusion_and_consistency_proof_verifies_up_to_200() -> None:
    """Every (index, size) and (old, new) pair up to 200 leaves. Proof elements come from
    the ranges the proof functions name, each subtree hashed once; up to 64 leaves they
    are also compared with the proof functions themselves."""
    memo: dict[tuple[int, int], bytes] = {}

    def mth(lo: int, hi: int) -> bytes:
        if (lo, hi) not in memo:
            memo[(lo, hi)] = merkle.root(LEAVES[lo:hi])
        return memo[(lo, hi)]

    for n in range(1, MAX + 1):
        for i in range(n):
            proof = [mth(lo, hi) for lo, hi in merkle.inclusion_ranges(i, n)]
            if n <= 64:
                assert proof == merkle.inclusion_proof(LEAVES[:n], i)
            assert merkle.verify_inclusion(LEAVES[i], i, n, proof, ROOTS[n]), (i, n)
    for n in range(MAX + 1):
        for m in range(n + 1):
            proof = [mth(lo, hi) for lo, hi in merkle.consistency_ranges(m, n)]
            if n <= 64:
                assert proof == merkle.consistency_proof(LEAVES[:n], m)
            assert merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n], proof), (m, n)


def test_frontier_matches_root_and_round_trips() -> None:
    frontier = merkle.Frontier()
    assert frontier.root() == merkle.EMPTY_ROOT
    nodes: dict[tuple[int, int], bytes] = {}
    for n, leaf in enumerate(LEAVES, start=1):
        for level, index, h in frontier.append(leaf):
            nodes[(level, index)] = h
        assert frontier.size == n
        assert frontier.root() == ROOTS[n]
        again = merkle.Frontier.from_bytes(frontier.to_bytes())
        assert again.size == n and again.root() == ROOTS[n]
    # Every completed perfect subtree it reported is the MTH of those leaves.
    for (level, index), h in nodes.items():
        width = 1 << level
        assert h == merkle.root(LEAVES[index * width : (index + 1) * width])
    assert len(nodes) == sum(MAX >> level for level in range(8))
    with pytest.raises(ValueError):
        merkle.Frontier.from_bytes(frontier.to_bytes()[:-1])


def test_range_hash_from_stored_nodes_reads_few_leaves() -> None:
    frontier = merkle.Frontier()
    stored: dict[tuple[int, int], bytes] = {}
    for leaf in LEAVES:
        for level, index, h in frontier.append(leaf):
            if level >= 4:
                stored[(level, index)] = h
    reads: list[int] = []

    def leaf(i: int) -> bytes:
        reads.append(i)
        return LEAVES[i]

    def has(level: int, index: int) -> bool:
        return (level, index) in stored

    for index, size in [(0, 200), (137, 200), (199, 200), (40, 129), (63, 64)]:
        reads.clear()
        ranges = merkle.inclusion_ranges(index, size)
        proof = [
            merkle.range_hash(lo, hi, leaf, lambda lv, ix: stored.get((lv, ix)))
            for lo, hi in ranges
        ]
        assert proof == merkle.inclusion_proof(LEAVES[:size], index)
        needed = {
            i
            for lo, hi in ranges
            for a, b in merkle.leaves_needed(lo, hi, has)
            for i in range(a, b)
        }
        assert set(reads) == needed
        assert len(needed) < 40, (index, size, len(needed))
    for old, new in [(1, 200), (100, 200), (128, 200), (199, 200), (17, 33)]:
        ranges = merkle.consistency_ranges(old, new)
        proof = [
            merkle.range_hash(lo, hi, leaf, lambda lv, ix: stored.get((lv, ix)))
            for lo, hi in ranges
        ]
        assert proof == merkle.consistency_proof(LEAVES[:new], old)


def _flip(proof: list[bytes], which: int, bit: int) -> list[bytes]:
    out = list(proof)
    b = bytearray(out[which])
    b[bit // 8 % 32] ^= 1 << (bit % 8)
    out[which] = bytes(b)
    return out


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, MAX),
    data=st.data(),
)
def test_altered_inclusion_proofs_fail(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, size - 1))
    proof = merkle.inclusion_proof(LEAVES[:size], index)
    root = ROOTS[size]
    assert merkle.verify_inclusion(LEAVES[index], index, size, proof, root)
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        assert not merkle.verify_inclusion(
            LEAVES[index], index, size, _flip(proof, which, bit), root
        )
        assert not merkle.verify_inclusion(LEAVES[index], index, size, proof[:-1], root)
    assert not merkle.verify_inclusion(LEAVES[index], index, size, [*proof, LEAVES[0]], root)
    other = data.draw(st.integers(0, MAX - 1).filter(lambda j: j != index))
    assert not merkle.verify_inclusion(LEAVES[other], index, size, proof, root)
    if size > 1:
        assert not merkle.verify_inclusion(LEAVES[index], (index + 1) % size, size, proof, root)
    # Another size: the proof does not lead to that tree's root. (The size itself is
    # bound to a root by the signed checkpoint, not by the proof.)
    new_size = data.draw(st.integers(1, MAX).filter(lambda n: n != size and n > index))
    assert not merkle.verify_inclusion(LEAVES[index], index, new_size, proof, ROOTS[new_size])
    bit = data.draw(st.integers(0, 255))
    assert not merkle.verify_inclusion(LEAVES[index], index, size, proof, _flip([root], 0, bit)[0])


@settings(max_examples=300, deadline=None)
@given(new=st.integers(1, MAX), data=st.data())
def test_altered_consistency_proofs_fail(new: int, data: st.DataObject) -> None:
    old = data.draw(st.integers(1, new))
    proof = merkle.consistency_proof(LEAVES[:new], old)
    assert merkle.verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = _flip(proof, which, bit)
        assert not merkle.verify_consistency(old, new, ROOTS[old], ROOTS[new], bad)
        assert not merkle.verify_consistency(old, new, ROOTS[old], ROOTS[new], proof[:-1])
    assert not merkle.verify_consistency(old, new, ROOTS[old], ROOTS[new], [*proof, LEAVES[0]])
    bit = data.draw(st.integers(0, 255))
    assert not merkle.verify_consistency(
        old, new, _flip([ROOTS[old]], 0, bit)[0], ROOTS[new], proof
    )
    assert not merkle.verify_consistency(
        old, new, ROOTS[old], _flip([ROOTS[new]], 0, bit)[0], proof
    )
    # A tree that differs in one leaf anywhere below old_size is not an extension.
    j = data.draw(st.integers(0, old - 1))
    forged = list(LEAVES[:new])
    forged[j] = merkle.leaf_hash(b"forged")
    assert not merkle.verify_consistency(old, new, ROOTS[old], merkle.root(forged), proof)
    assert not merkle.verify_consistency(
        old, new, ROOTS[old], merkle.root(forged), merkle.consistency_proof(forged, old)
    )
    # Wrong sizes.
    other_old = data.draw(st.integers(1, new).filter(lambda m: m != old))
    assert not merkle.verify_consistency(other_old, new, ROOTS[old], ROOTS[new], proof)
    if new < MAX:
        assert not merkle.verify_consistency(old, new + 1, ROOTS[old], ROOTS[new + 1], proof)


def test_degenerate_cases() -> None:
    assert merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, ROOTS[5], [])
    assert not merkle.verify_consistency(0, 5, ROOTS[1], ROOTS[5], [])
    assert merkle.verify_consistency(7, 7, ROOTS[7], ROOTS[7], [])
    assert not merkle.verify_consistency(7, 7, ROOTS[7], ROOTS[8], [])
    assert not merkle.verify_consistency(8, 7, ROOTS[8], ROOTS[7], [])
    assert not merkle.verify_consistency(3, 7, ROOTS[3], ROOTS[7], [])
    assert not merkle.verify_inclusion(LEAVES[0], 0, 1, [LEAVES[1]], ROOTS[1])
    assert merkle.verify_inclusion(LEAVES[0], 0, 1, [], ROOTS[1])
    assert not merkle.verify_inclusion(LEAVES[0][:31], 0, 1, [], ROOTS[1])
    with pytest.raises(ValueError):
        merkle.inclusion_proof(LEAVES[:3], 3)
    with pytest.raises(ValueError):
        merkle.consistency_proof(LEAVES[:3], 4)


def test_all_paths_at_once_equal_one_by_one() -> None:
    for n in range(0, 70):
        assert merkle.inclusion_proofs(LEAVES[:n]) == [
            merkle.inclusion_proof(LEAVES[:n], i) for i in range(n)
        ]
    big = merkle.inclusion_proofs(LEAVES)
    for i in (0, 1, 127, 128, 150, 199):
        assert big[i] == merkle.inclusion_proof(LEAVES, i)


def test_stored_subtrees_are_aligned_perfect_and_cover_what_they_replace() -> None:
    for lo, hi in [(0, 200), (128, 200), (0, 64), (64, 128), (192, 200), (0, 1)]:
        nodes = merkle.stored_subtrees(lo, hi, 4)
        for level, index in nodes:
            width = 1 << level
            assert level >= 4 and lo <= index * width and (index + 1) * width <= hi
        covered = sum(1 << level for level, _ in nodes)
        leaves = merkle.leaves_needed(lo, hi, _member_of(set(nodes)))
        assert covered + sum(b - a for a, b in leaves) == hi - lo


def _member_of(stored: set[tuple[int, int]]) -> Callable[[int, int], bool]:
    return lambda level, index: (level, index) in stored
