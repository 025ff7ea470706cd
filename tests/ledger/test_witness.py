"""The witness protocol: cosign only what extends what it saw; refuse rollbacks and forks."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

from shanzhi.ledger.checkpoint import Checkpoint
from shanzhi.ledger.merkle import consistency_proof, leaf_hash, root_of
from shanzhi.ledger.note import COSIGNATURE_V1, Signer, sign, verify
from shanzhi.ledger.witness import WitnessState

LOG = Signer.generate("ledger.gz.example/log")
W = Signer.generate("witness.gz.example/health", COSIGNATURE_V1)


def tree(n: int, fork_at: int | None = None) -> list[bytes]:
    return [leaf_hash(f"e{i}{'-fork' if fork_at is not None and i >= fork_at else ''}".encode()) for i in range(n)]


def request(old: int, hashes: list[bytes], new: int, signer: Signer = LOG, origin: str = LOG.name) -> str:
    proof = consistency_proof(old, new, lambda a, b: root_of(hashes[a:b])) if 0 < old < new else []
    note = sign(Checkpoint(origin, new, root_of(hashes[:new])).body(), signer)
    return f"old {old}\n" + "".join(base64.b64encode(p).decode() + "\n" for p in proof) + "\n" + note


def witness(tmp_path: Path) -> WitnessState:
    return WitnessState(tmp_path / "w.db", W, {LOG.name: LOG.verifier})


def test_cosigns_a_growing_log_and_remembers_it_across_restarts(tmp_path: Path) -> None:
    w = witness(tmp_path)
    h = tree(20)
    a = w.add_checkpoint(request(0, h, 5))
    assert a.status == 200
    cp_note = sign(Checkpoint(LOG.name, 5, root_of(h[:5])).body(), LOG)
    _, signers = verify(cp_note + a.body, LOG.verifier, W.verifier)
    assert W.verifier in [v for v, _ in signers]
    assert w.add_checkpoint(request(5, h, 13)).status == 200
    again = witness(tmp_path)
    assert again.latest(LOG.name) == (13, root_of(h[:13]))
    assert again.add_checkpoint(request(13, h, 20)).status == 200


def test_wrong_old_size_gets_409_with_the_size_it_holds(tmp_path: Path) -> None:
    w = witness(tmp_path)
    h = tree(10)
    w.add_checkpoint(request(0, h, 6))
    a = w.add_checkpoint(request(0, h, 10))
    assert (a.status, a.body, a.content_type) == (409, "6\n", "text/x.tlog.size")


def test_a_rollback_is_refused(tmp_path: Path) -> None:
    w = witness(tmp_path)
    h = tree(10)
    w.add_checkpoint(request(0, h, 8))
    assert w.add_checkpoint(request(8, h, 5)).status == 400  # old > new
    assert w.latest(LOG.name) == (8, root_of(h[:8]))


def test_a_forked_tree_is_refused(tmp_path: Path) -> None:
    w = witness(tmp_path)
    honest = tree(10)
    w.add_checkpoint(request(0, honest, 8))
    forked = tree(12, fork_at=5)  # history rewritten from entry 5 on
    fake = request(8, forked, 12)
    a = w.add_checkpoint(fake)
    assert a.status == 422 and "consistency proof" in a.body
    same_size = w.add_checkpoint(request(8, forked, 8))
    assert same_size.status == 409 and "fork" in same_size.body
    assert w.latest(LOG.name) == (8, root_of(honest[:8]))


def test_unknown_log_and_bad_signature(tmp_path: Path) -> None:
    w = witness(tmp_path)
    h = tree(3)
    assert w.add_checkpoint(request(0, h, 3, origin="other.example/log")).status in (403, 404)
    stranger = Signer.generate(LOG.name)  # right name, wrong key
    assert w.add_checkpoint(request(0, h, 3, signer=stranger)).status == 403
    other = Signer.generate("other.example/log")
    assert w.add_checkpoint(request(0, h, 3, signer=other, origin=other.name)).status == 404
    assert w.add_checkpoint("garbage").status == 400


def test_concurrent_requests_never_roll_the_witness_back(tmp_path: Path) -> None:
    w = witness(tmp_path)
    h = tree(64)
    w.add_checkpoint(request(0, h, 1))
    results: list[int] = []

    def push(n: int) -> None:
        results.append(w.add_checkpoint(request(1, h, n)).status)

    threads = [threading.Thread(target=push, args=(n,)) for n in range(2, 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 1  # only one request could start from size 1
    size, root = w.latest(LOG.name) or (0, b"")
    assert size > 1 and root == root_of(h[:size])
