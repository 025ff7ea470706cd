"""Key files in a data directory: created once (mode 0600), read on every start."""

from __future__ import annotations

from pathlib import Path

from shanzhi.files import write_private
from shanzhi.ledger.note import ED25519, Signer


def load_or_create(path: Path, name: str, alg: int = ED25519) -> Signer:
    """The signer stored at `path`, or a new one for `name` written there first."""
    if path.exists():
        signer = Signer.decode(path.read_text())
        if signer.name != name:
            raise ValueError(f"{path} holds a key for {signer.name!r}, not {name!r}; move it away to start afresh")
        return signer
    signer = Signer.generate(name, alg)
    write_private(path, signer.encode() + "\n")
    return signer


def stored_name(path: Path) -> str | None:
    """The name of the key stored at `path` (a log keeps its origin for good), or None."""
    return Signer.decode(path.read_text()).name if path.exists() else None
