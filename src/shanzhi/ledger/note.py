"""C2SP signed notes (Ed25519, type 0x01) and tlog-cosignature/v1 (timestamped Ed25519, 0x04).

    <text ending in a newline>
    <blank line>
    — <key name> base64(4-byte key ID || signature)

Keys are written as the Go `note` package does, so they can be shared with other tools:
verifier `<name>+<hex key ID>+<base64(type || public key)>`, signer
`PRIVATE+KEY+<name>+<hex key ID>+<base64(type || seed)>`.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
DASH = "\u2014"


class NoteError(ValueError):
    """A note or key is malformed, or no trusted signature verifies."""


def key_id(name: str, alg: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise NoteError(f"invalid key name {name!r}: non-empty, no spaces, no '+'")


@dataclass(frozen=True)
class Verifier:
    name: str
    alg: int
    public: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.alg, self.public)

    def encode(self) -> str:
        raw = base64.b64encode(bytes([self.alg]) + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{raw}"

    @classmethod
    def decode(cls, vkey: str) -> Verifier:
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError(f"malformed verifier key {vkey!r}")
        name, hexid, raw = parts
        _check_name(name)
        try:
            blob = base64.b64decode(raw, validate=True)
        except ValueError:
            raise NoteError(f"malformed verifier key {vkey!r}") from None
        if len(blob) != 33 or blob[0] not in (ED25519, COSIGNATURE_V1):
            raise NoteError(f"unsupported verifier key {vkey!r} (Ed25519 0x01 or 0x04 only)")
        v = cls(name, blob[0], blob[1:])
        if v.key_id.hex() != hexid.lower():
            raise NoteError(f"verifier key {vkey!r}: key ID does not match the key")
        return v

    def _key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public)


@dataclass(frozen=True)
class Signer:
    name: str
    alg: int
    seed: bytes

    @classmethod
    def generate(cls, name: str, alg: int = ED25519) -> Signer:
        _check_name(name)
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return cls(name, alg, seed)

    @property
    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def verifier(self) -> Verifier:
        public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return Verifier(self.name, self.alg, public)

    def encode(self) -> str:
        raw = base64.b64encode(bytes([self.alg]) + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{raw}"

    @classmethod
    def decode(cls, skey: str) -> Signer:
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("malformed signer key (expected PRIVATE+KEY+name+id+key)")
        blob = base64.b64decode(parts[4])
        if len(blob) != 33 or blob[0] not in (ED25519, COSIGNATURE_V1):
            raise NoteError("unsupported signer key (Ed25519 0x01 or 0x04 only)")
        s = cls(parts[2], blob[0], blob[1:])
        if s.verifier.key_id.hex() != parts[3].lower():
            raise NoteError("signer key: key ID does not match the key")
        return s

    def sign_line(self, text: str) -> str:
        """A `— name sig` line signing `text` (Ed25519 note signature)."""
        if self.alg != ED25519:
            raise NoteError("use cosign() with a cosignature key")
        sig = self._private.sign(text.encode())
        return f"{DASH} {self.name} {base64.b64encode(self.verifier.key_id + sig).decode()}\n"

    def cosign_line(self, text: str, timestamp: int | None = None) -> str:
        """A tlog-cosignature/v1 line over a checkpoint body `text`."""
        if self.alg != COSIGNATURE_V1:
            raise NoteError("cosignatures need a 0x04 (cosignature/v1) key")
        ts = int(time.time()) if timestamp is None else timestamp
        sig = self._private.sign(_cosigned_message(text, ts))
        blob = self.verifier.key_id + struct.pack(">Q", ts) + sig
        return f"{DASH} {self.name} {base64.b64encode(blob).decode()}\n"


def _cosigned_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()


@dataclass(frozen=True)
class SignatureLine:
    name: str
    key_id: bytes
    sig: bytes

    def encode(self) -> str:
        return f"{DASH} {self.name} {base64.b64encode(self.key_id + self.sig).decode()}\n"


@dataclass(frozen=True)
class Note:
    text: str
    signatures: tuple[SignatureLine, ...]

    def encode(self) -> str:
        return self.text + "\n" + "".join(s.encode() for s in self.signatures)


def sign(text: str, *signers: Signer) -> str:
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    return text + "\n" + "".join(s.sign_line(text) for s in signers)


def parse(note: str) -> Note:
    """Split a note into text and signature lines (no verification)."""
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise NoteError("note contains control characters")
    sep = note.rfind("\n\n")
    if sep < 0 or not note.endswith("\n"):
        raise NoteError("note has no blank line before its signatures")
    text, sig_block = note[: sep + 1], note[sep + 2 :]
    sigs = []
    for line in sig_block.splitlines():
        if not line.startswith(DASH + " "):
            raise NoteError(f"malformed signature line {line!r}")
        name, _, b64 = line[2:].rpartition(" ")
        try:
            blob = base64.b64decode(b64, validate=True)
        except ValueError:
            raise NoteError(f"malformed signature line {line!r}") from None
        if not name or len(blob) < 5:
            raise NoteError(f"malformed signature line {line!r}")
        sigs.append(SignatureLine(name, blob[:4], blob[4:]))
    if not sigs:
        raise NoteError("note has no signatures")
    return Note(text, tuple(sigs))


def _verify_one(v: Verifier, text: str, line: SignatureLine) -> int | None:
    """Verify one line; returns the cosignature timestamp (or -1 for a plain signature)."""
    try:
        if v.alg == ED25519:
            v._key().verify(line.sig, text.encode())
            return -1
        if len(line.sig) != 8 + 64:
            return None
        (ts,) = struct.unpack(">Q", line.sig[:8])
        v._key().verify(line.sig[8:], _cosigned_message(text, ts))
        return int(ts)
    except InvalidSignature:
        return None


def verify(note: str, *verifiers: Verifier) -> tuple[Note, list[tuple[Verifier, int]]]:
    """Verify a note. Returns it and the trusted keys that signed it (with cosignature times).

    Unknown keys are ignored; a known key whose signature fails rejects the note; at least
    one known key must have signed.
    """
    n = parse(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    good: list[tuple[Verifier, int]] = []
    for line in n.signatures:
        v = known.get((line.name, line.key_id))
        if v is None:
            continue
        ts = _verify_one(v, n.text, line)
        if ts is None:
            raise NoteError(f"signature by {v.name} does not verify")
        good.append((v, ts))
    if not good:
        raise NoteError("no signature from a trusted key")
    return n, good
