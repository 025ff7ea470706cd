"""Where Shanzhi keeps its state and how it is reached: data dir, database URL, address."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
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
    demo_vms: bool = True  # with demo: a libvirt cloud and a VM app, when this machine can run VMs
    controller: bool = True
    publisher: bool = True  # this process publishes ledger checkpoints and drains the audit outbox
    prepared: bool = False  # migrations, bootstrap and demo done already (API workers)
    workers: int = 1  # API processes; above 1 the controllers run in a process of their own
    threads: int = 4  # threads per API process for quick sync routes and lookups (see shanzhi.api.threads)
    interval: float = 1.0
    failover_grace: float = 3.0
    ledger: bool = True
    ledger_public: bool = True  # checkpoint, tiles, entries, proofs and keys readable without a token
    ledger_origin: str | None = None  # default: the public URL's host and path (see api.processes)
    witnesses: tuple[tuple[str, str], ...] = ()  # (url, verifier key)
    witness_quorum: int | None = None  # default: a majority of the witnesses
    audit_retention_days: int = 180  # the Cybersecurity Law asks for at least six months
    max_login_failures: int = 5
    lockout_minutes: float = 15.0
    session_hours: float = 12.0
    max_body_bytes: int = 4 * 2**20  # larger request bodies are refused (413) before they are read
    logins_per_minute: int = 10  # per client address; more answer 429
    failures_per_minute: int = 30  # failed requests per client address before it must wait (429)
    forwarded_allow_ips: tuple[str, ...] = ()  # proxies whose X-Forwarded-For is believed
    require_mfa: bool = False  # a second factor for everyone (the platform roles always need one)
    oidc_mfa_amr: tuple[str, ...] = ()  # single sign-on `amr` values that count as a second factor
    tls_cert: Path | None = None  # serve HTTPS with this certificate (PEM) and tls_key
    tls_key: Path | None = None
    token_max_days: int = 365  # every API token expires; the bootstrap tokens are renewed at start
    password_max_age_days: int = 90  # 0: passwords never expire
    session_idle_minutes: float = 30.0  # 0: sessions never end for idleness (MLPS asks that they do)
    public_url: str | None = None  # how browsers reach this server (default http://host:port)
    network_pool: str = "10.240.0.0/16"  # tenant networks: every VDC's subnet per site comes from here
    network_prefix: int = 24  # the size of those subnets
    alarm_webhook: str | None = None  # alarms are posted here as JSON (three tries)
    flow_retention_days: float = 7.0  # flow records older than this go (edges keep their totals)
    inventory_interval: float = 30.0  # seconds between full inventory syncs of a cloud
    metrics_interval: float = 15.0  # seconds between samples of every instance's use
    # seconds between full reconcile passes; between them the reconciler looks at what changed
    full_resync: float = 300.0
    # OpenID Connect login, on when an issuer is set (the client secret comes from the environment
    # or a file, never the command line: see `shanzhi serve --help`).
    oidc_issuer: str | None = None
    oidc_client_id: str = "shanzhi"
    oidc_client_secret: str = ""
    oidc_scopes: str = "openid profile email"
    oidc_username_claim: str = "preferred_username"
    oidc_groups_claim: str = "groups"
    oidc_auto_create: bool = False
    oidc_name: str = "single sign-on"

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
    def session_idle(self) -> timedelta | None:
        return timedelta(minutes=self.session_idle_minutes) if self.session_idle_minutes > 0 else None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return (self.public_url or f"{scheme}://{self.host}:{self.port}").rstrip("/")

    @property
    def token_file(self) -> Path:
        return self.data_dir / "admin.token"
