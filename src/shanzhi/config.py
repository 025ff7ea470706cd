"""Where Shanzhi keeps its state and how it is reached: data dir, database URL, address."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8700"


def default_data_dir() -> Path:
    env = os.environ.get("SHANZHI_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "shanzhi"


@dataclass
class Settings:
    data_dir: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8700
    demo: bool = False
    controller: bool = True
    interval: float = 1.0
    failover_grace: float = 3.0
    ledger: bool = True
    ledger_origin: str = "shanzhi.local/ledger"
    witnesses: tuple[tuple[str, str], ...] = ()  # (url, verifier key)
    witness_quorum: int | None = None  # default: a majority of the witnesses
    audit_retention_days: int = 180  # the Cybersecurity Law asks for at least six months
    max_login_failures: int = 5
    lockout_minutes: float = 15.0
    session_hours: float = 12.0

    @classmethod
    def build(
        cls,
        data_dir: Path | None = None,
        database_url: str | None = None,
        **kw: object,
    ) -> Settings:
        d = (data_dir or default_data_dir()).expanduser().resolve()
        url = database_url or os.environ.get("SHANZHI_DATABASE_URL") or f"sqlite+pysqlite:///{d / 'shanzhi.db'}"
        return cls(data_dir=d, database_url=url, **kw)  # type: ignore[arg-type]

    @property
    def token_file(self) -> Path:
        return self.data_dir / "admin.token"
