"""RFC 6962 reference tree and the transparency-dev proof vectors (tests/ledger/data/merkle, see its NOTICE)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from shanzhi.ledger.merkle import (
    CompactRange,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parent / "data" / "merkle"

TREE = json.loads((VECTORS / "rfc6962-tree.json").read_text())
LEAVES = [bytes.fromhex(h) for h in TREE["leaf_inputs_hex"]]
ROOTS = [bytes.fromhex(h) for h in TREE["root_hashes_hex_by_size"]]


def b64(s: str | None) -> bytes:
    return base64.b64decode(s) if s else b""


def vector_files(kind: str) -> list[Path]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    assert files, f"no {kind} vectors found under {VECTORS}"
    return files


def test_reference_roots_for_every_prefix() -> None:
    hashes = [leaf_hash(x) for x in LEAVES]
    for n in range(len(LEAVES) + 1):
        assert root_of(hashes[:n]) == ROOTS[n], n
        cr = CompactRange()
        for h in hashes[:n]:
            cr.append(h)
        assert cr.root() == ROOTS[n], n


@pytest.mark.parametrize("path", vector_files("inclusion"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_inclusion_vectors(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [b64(p) for p in v.get("proof") or []]
    args = (b64(v["leafHash"]), v["leafIdx"], v["treeSize"], proof, b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", vector_files("consistency"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_consistency_vectors(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [b64(p) for p in v.get("proof") or []]
    args = (v["size1"], v["size2"], proof, b64(v["root1"]), b64(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_our_proofs_match_the_happy_path_vectors() -> None:
    hashes = [leaf_hash(x) for x in LEAVES]

    def mth(a: int, b: int) -> bytes:
        return root_of(hashes[a:b])

    checked = 0
    for path in vector_files("inclusion"):
        v = json.loads(path.read_text())
        if not v["wantErr"] and v["treeSize"] <= len(LEAVES):
            assert inclusion_proof(v["leafIdx"], v["treeSize"], mth) == [b64(p) for p in v["proof"] or []]
            checked += 1
    for path in vector_files("consistency"):
        v = json.loads(path.read_text())
        if not v["wantErr"] and 0 < v["size1"] < v["size2"] <= len(LEAVES):
            assert consistency_proof(v["size1"], v["size2"], mth) == [b64(p) for p in v["proof"] or []]
            checked += 1
    assert checked >= 5
