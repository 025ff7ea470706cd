"""C2SP tlog-checkpoint bodies: origin line, decimal tree size, base64 root hash, extensions."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from shanzhi.ledger.note import NoteError


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint needs origin, size and root lines, each ending in a newline")
        origin, size, root = lines[0], lines[1], lines[2]
        if not origin:
            raise NoteError("checkpoint origin is empty")
        if not size.isdigit() or (size != "0" and size.startswith("0")):
            raise NoteError(f"checkpoint size {size!r} is not a decimal without leading zeroes")
        try:
            raw = base64.b64decode(root, validate=True)
        except ValueError:
            raise NoteError("checkpoint root is not base64") from None
        if len(raw) != 32:
            raise NoteError("checkpoint root is not 32 bytes")
        return cls(origin, int(size), raw, tuple(lines[3:-1]))
