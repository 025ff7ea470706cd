"""Secrets sealed at rest with a key in the data directory (Fernet from `cryptography`).

One key file per purpose (`mfa.key` for second-factor secrets, `credentials.key` for clouds'
credentials), 0600 and the server's alone: a copy of the database without the data directory
gives no one the secrets in it. Replicas of the server that share a database share these files.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from shanzhi.domain.errors import Conflict
from shanzhi.files import write_private


@dataclass(frozen=True)
class Vault:
    fernet: Fernet
    key_file: str = "mfa.key"

    @classmethod
    def for_data_dir(cls, data_dir: Path, key_file: str = "mfa.key") -> Vault:
        """The vault for `key_file` in the data directory, made on first use."""
        path = data_dir / key_file
        if not path.exists():  # two processes starting at once: the first key linked in wins
            tmp = data_dir / f".{key_file}.{os.getpid()}.{threading.get_ident()}"
            write_private(tmp, Fernet.generate_key().decode() + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            tmp.unlink()
        return cls(Fernet(path.read_text().strip().encode()), key_file)

    def seal(self, secret: str) -> str:
        return self.fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str, what: str = "this secret") -> str:
        try:
            return self.fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise Conflict(f"{what} cannot be read with this server's {self.key_file}") from None

    def seal_json(self, value: Any) -> str:
        return self.seal(json.dumps(value, sort_keys=True))

    def open_json(self, sealed: str, what: str = "this secret") -> Any:
        return json.loads(self.open(sealed, what))
