"""The directory ledger: a verifiable, witnessed log of catalog changes, approvals and accesses.

An append-only Merkle log (RFC 6962/9162 hashing) kept in the platform's database as C2SP
tlog-tiles, with signed checkpoints (C2SP tlog-checkpoint over signed-note, Ed25519),
inclusion and consistency proofs, department witnesses (C2SP tlog-witness, cosignature/v1)
and a verifier that needs nothing but the stored data and the public keys.
"""
