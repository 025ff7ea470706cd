"""Key files in a data directory: created once (mode 0600), read on every start."""

from __future__ import annotations

import os
from pathlib import Path

from shanzhi.ledger.note import ED25519, Signer


def load_or_create(path: Path, name: str, alg: int = ED25519) -> Signer:
    """The signer stored at `path`, or a new one for `name` written there first."""
    if path.exists():
        signer = Signer.decode(path.read_text())
        if signer.name != name:
            raise ValueError(f"{path} holds a key for {signer.name!r}, not {name!r}; move it away to start afresh")
        return signer
    signer = Signer.generate(name, alg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.encode() + "\n")
    os.replace(tmp, path)
    return signer
