"""Signed notes and cosignatures, including the Go reference implementation's example key."""

from __future__ import annotations

import pytest

from shanzhi.ledger.checkpoint import Checkpoint
from shanzhi.ledger.note import COSIGNATURE_V1, NoteError, Signer, Verifier, parse, sign, verify

# golang.org/x/mod/sumdb/note's documented example
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"


def test_interoperates_with_the_go_reference_implementation() -> None:
    signer = Signer.decode(GO_SKEY)
    assert signer.verifier.encode() == GO_VKEY
    assert sign(GO_TEXT, signer) == GO_TEXT + "\n" + GO_SIG  # Ed25519 is deterministic
    note, signers = verify(GO_TEXT + "\n" + GO_SIG, Verifier.decode(GO_VKEY))
    assert note.text == GO_TEXT and signers[0][0].name == "PeterNeumann"


def test_tampering_and_unknown_keys() -> None:
    v = Verifier.decode(GO_VKEY)
    with pytest.raises(NoteError, match="does not verify"):
        verify(GO_TEXT.replace("problem", "issue", 1) + "\n" + GO_SIG, v)
    other = Signer.generate("someone.example/else")
    with pytest.raises(NoteError, match="no signature from a trusted key"):
        verify(GO_TEXT + "\n" + GO_SIG, other.verifier)
    both = sign(GO_TEXT, Signer.decode(GO_SKEY), other)
    assert {s.name for s, _ in verify(both, v, other.verifier)[1]} == {"PeterNeumann", "someone.example/else"}


@pytest.mark.parametrize(
    "bad",
    [
        GO_VKEY.replace("c74f20a3", "c74f20a4"),  # wrong key id
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        GO_VKEY[:-4],
    ],
)
def test_malformed_verifier_keys_are_refused(bad: str) -> None:
    with pytest.raises(NoteError):
        Verifier.decode(bad)


@pytest.mark.parametrize(
    "bad", ["no blank line\n— a b\n", "text\n\nnot a signature\n", "text\n\n— name !!!\n", "x\x01\n\n— a AAAAAAA=\n"]
)
def test_malformed_notes_are_refused(bad: str) -> None:
    with pytest.raises(NoteError):
        parse(bad)


def test_cosignature_v1_round_trip_and_timestamp() -> None:
    log = Signer.generate("example.com/log")
    witness = Signer.generate("witness.example/w1", COSIGNATURE_V1)
    body = Checkpoint("example.com/log", 7, bytes(32)).body()
    note = sign(body, log) + witness.cosign_line(body, timestamp=1_700_000_000)
    _, signers = verify(note, log.verifier, witness.verifier)
    assert {v.name: ts for v, ts in signers} == {"example.com/log": -1, "witness.example/w1": 1_700_000_000}
    # a cosignature does not verify as a plain note signature of the same key bytes
    with pytest.raises(NoteError):
        witness.sign_line(body)
    forged = Verifier(witness.verifier.name, witness.verifier.alg, log.verifier.public)
    with pytest.raises(NoteError):
        verify(note, forged)


def test_checkpoint_format() -> None:
    cp = Checkpoint("shanzhi.example/ledger", 20852163, bytes(range(32)), ("ext line",))
    assert cp.body() == "shanzhi.example/ledger\n20852163\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\next line\n"
    assert Checkpoint.parse(cp.body()) == cp
    for bad in ("o\n01\nAA==\n", "o\n1\nAAAA\n", "\n1\n" + "A" * 43 + "=\n", "o\n1\n"):
        with pytest.raises(NoteError):
            Checkpoint.parse(bad)
