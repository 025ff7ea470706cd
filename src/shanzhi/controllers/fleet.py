"""One provider object per cloud, kept for the life of the process.

Keeping the object matters for `local`: it holds the child process handles it must reap.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from shanzhi.providers import Provider, credentials, load_provider
from shanzhi.providers.credentials import CREDENTIALS_KEY
from shanzhi.sealing import Vault


class Fleet:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._providers: dict[str, tuple[str, str, Provider]] = {}
        self._lock = threading.Lock()
        self._vault: Vault | None = None  # opens clouds' sealed credentials (made on first use)

    def state_dir(self, cloud: str) -> Path:
        return self.data_dir / "clouds" / cloud

    def provider(self, name: str, kind: str, options: dict[str, Any]) -> Provider:
        key = repr(sorted(options.items()))
        with self._lock:
            cached = self._providers.get(name)
            if cached and cached[0] == kind and cached[1] == key:
                return cached[2]
            rest, creds = credentials.split(self.vault, name, options)
            p = load_provider(kind, name, rest, self.state_dir(name), creds)
            self._providers[name] = (kind, key, p)
            return p

    @property
    def vault(self) -> Vault:
        """Seals and opens clouds' credentials (`credentials.key` in the data directory)."""
        if self._vault is None:
            self._vault = Vault.for_data_dir(self.data_dir, CREDENTIALS_KEY)
        return self._vault

    def forget(self, name: str) -> None:
        with self._lock:
            self._providers.pop(name, None)

    def remove(self, name: str, kind: str, options: dict[str, Any]) -> None:
        """A deleted cloud: take down what it built on this machine, forget it, drop its state."""
        self.provider(name, kind, options).dismantle()
        self.forget(name)
        shutil.rmtree(self.state_dir(name), ignore_errors=True)
