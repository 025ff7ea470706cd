"""RFC 6962 / RFC 9162 Merkle tree hashing, proof construction and proof verification.

Hashing: leaf = SHA-256(0x00 || data), node = SHA-256(0x01 || left || right), empty tree =
SHA-256(""). Proofs are built from any function `mth(start, end)` returning the Merkle Tree
Hash of leaves [start, end), so the same code serves a list in memory and a tiled store.
Verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2 step by step.

Written here rather than taken from a package: the checks are a few dozen lines, they must
follow the RFC exactly (the shared transparency-dev vectors pin every edge case), and the
store needs proofs over tiles, which no Python package offers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


class ProofError(ValueError):
    """A proof does not verify; the message says which check failed."""


def leaf_hash(data: bytes) -> bytes:
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(hashes: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of a sequence of leaf hashes (RFC 6962 section 2.1)."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = _split(n)
    return node_hash(root_of(hashes[:k]), root_of(hashes[k:]))


def perfect_root(hashes: Sequence[bytes]) -> bytes:
    """Root of a power-of-two number of hashes, bottom-up without recursion."""
    level = list(hashes)
    while len(level) > 1:
        level = [_sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]


class CompactRange:
    """The right edge of a growing tree: one hash per set bit of its size.

    `append` costs O(1) amortised; `on_full` is told of every perfect subtree completed
    (its height, its index at that height, and its hash), which is how tiles get filled.
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise ValueError("a compact range has one hash per set bit of its size")
        self.size = size
        self.hashes = list(hashes)  # largest subtree first

    def append(self, h: bytes, on_full: Callable[[int, int, bytes], None] | None = None) -> None:
        self.hashes.append(h)
        height = 0
        index = self.size
        while (self.size >> height) & 1:
            right = self.hashes.pop()
            left = self.hashes.pop()
            self.hashes.append(_sha256(b"\x01" + left + right).digest())
            height += 1
            index >>= 1
            if on_full is not None:
                on_full(height, index, self.hashes[-1])
        self.size += 1

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = _sha256(b"\x01" + h + r).digest()
        return r


# ----------------------------------------------------------------- proofs
def inclusion_proof(index: int, size: int, mth: Callable[[int, int], bytes]) -> list[bytes]:
    """RFC 6962 PATH(index, D[0:size]) using `mth` for subtree hashes."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            proof.append(mth(start + k, end))
            end = start + k
        else:
            proof.append(mth(start, start + k))
            start += k
    proof.reverse()
    return proof


def consistency_proof(old: int, new: int, mth: Callable[[int, int], bytes]) -> list[bytes]:
    """RFC 6962 PROOF(old, D[0:new]) using `mth` for subtree hashes."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}")
    if old in (0, new):
        return []
    proof: list[bytes] = []
    start, end, complete = 0, new, True
    m = old
    while True:
        n = end - start
        if m == n:
            if not complete:
                proof.append(mth(start, end))
            break
        k = _split(n)
        if m <= k:
            proof.append(mth(start + k, end))
            end = start + k
        else:
            proof.append(mth(start, start + k))
            start += k
            m -= k
            complete = False
    proof.reverse()
    return proof


# ----------------------------------------------------------- verification
def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 section 2.1.3.2; raises ProofError naming the failed check."""
    if index >= size:
        raise ProofError(f"leaf index {index} is beyond tree size {size}")
    if len(leaf) != HASH_SIZE or len(root) != HASH_SIZE or any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("leaf, root and proof hashes must be 32 bytes")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError("proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = _sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than the tree is deep")
    if r != root:
        raise ProofError("computed root does not match the tree's root")


def verify_consistency(old: int, new: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes) -> None:
    """RFC 9162 section 2.1.4.2.

    A tree of size 0 has nothing to be consistent with: that is refused, as the shared
    vectors require (the witness protocol handles `old 0` before calling this).
    """
    if new < old:
        raise ProofError(f"new size {new} is smaller than old size {old}")
    if old == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if old == new:
        if proof:
            raise ProofError("sizes are equal but the proof is not empty")
        if old_root != new_root:
            raise ProofError("sizes are equal but the roots differ")
        return
    if len(old_root) != HASH_SIZE or len(new_root) != HASH_SIZE or any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("roots and proof hashes must be 32 bytes")
    if not proof:
        raise ProofError("empty consistency proof")
    path = list(proof)
    if old & (old - 1) == 0:  # old is a power of two: its root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = _sha256(b"\x01" + c + fr).digest()
            sr = _sha256(b"\x01" + c + sr).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than needed")
    if fr != old_root:
        raise ProofError("proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("proof does not lead to the new root")
