"""`shanzhi serve`: the API server and the controller, with the options a deployment sets."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import typer

from shanzhi.cli.output import err
from shanzhi.config import Settings
from shanzhi.domain.errors import InvalidInput
from shanzhi.network.addressing import parse_pool

DataDirOpt = typer.Option(None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (token, SQLite, workloads).")


def serve(
    data_dir: Path | None = DataDirOpt,
    database_url: str | None = typer.Option(
        None,
        "--database-url",
        envvar="SHANZHI_DATABASE_URL",
        help="postgresql+psycopg://... (default: SQLite in data dir)",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8700, "--port", help="Port to listen on."),
    demo: bool = typer.Option(False, "--demo", help="Create the demo world on first start."),
    demo_vms: bool = typer.Option(
        True,
        "--demo-vms/--no-demo-vms",
        help="With --demo: add a libvirt VM cloud and a VM app with a volume when this machine can run VMs "
        "(root, libvirtd, QEMU; said at start when it cannot).",
    ),
    interval: float = typer.Option(1.0, "--interval", help="Seconds between reconcile passes."),
    workers: int = typer.Option(
        1, "--workers", min=1, max=64, help="API processes (above 1, the controllers get a process of their own)."
    ),
    threads: int = typer.Option(
        4,
        "--threads",
        min=1,
        max=256,
        help="Threads per API process for the quick routes (reads, applies; operations that take seconds "
        "have a pool of their own). More let more wait on the database at once, and contend for the "
        "interpreter: on two cores, 4 answered twice as many reads as 40.",
    ),
    failover_grace: float = typer.Option(3.0, "--failover-grace", help="Seconds a cloud may be down before failover."),
    network_pool: str = typer.Option(
        "10.240.0.0/16",
        "--network-pool",
        envvar="SHANZHI_NETWORK_POOL",
        help="Tenant networks (netns clouds): the IPv4 range every VDC's subnet per site comes from; it is "
        "routed on this machine, so pick one no real network uses.",
    ),
    network_prefix: int = typer.Option(24, "--network-prefix", min=8, max=29, help="The size of each VDC's subnet."),
    alarm_webhook: str | None = typer.Option(
        None, "--alarm-webhook", help="POST every alarm here as JSON (three tries with backoff)."
    ),
    flow_retention_days: float = typer.Option(
        7.0, "--flow-retention-days", min=0.01, help="Keep flow records this long (app-to-app edges keep totals)."
    ),
    inventory_interval: float = typer.Option(
        30.0, "--inventory-interval", min=1.0, help="Seconds between inventory syncs of each cloud."
    ),
    metrics_interval: float = typer.Option(
        15.0, "--metrics-interval", min=1.0, help="Seconds between samples of every instance's cpu, memory, I/O."
    ),
    full_resync: float = typer.Option(
        300.0,
        "--full-resync",
        min=0.0,
        help="Seconds between full reconcile passes, which look at every app. Between them a pass looks "
        "only at what changed: apps written through the API (heard by LISTEN/NOTIFY on PostgreSQL), apps "
        "not yet settled, replicas whose cloud or health check reports something new (0: every pass is full).",
    ),
    ledger_origin: str | None = typer.Option(
        None,
        "--ledger-origin",
        help="The ledger's name (origin). Default: the public URL without its scheme, plus /api/v1/ledger "
        "(e.g. 127.0.0.1:8700/api/v1/ledger); a log keeps the origin it started with.",
    ),
    witness: list[str] = typer.Option(None, "--witness", help="URL=VKEY of a witness, repeatable."),
    witness_quorum: int | None = typer.Option(
        None, "--witness-quorum", help="Cosignatures needed (default: majority)."
    ),
    ledger_public: bool = typer.Option(
        True,
        "--ledger-public/--no-ledger-public",
        help="Let anyone read the ledger's checkpoint, tiles, entries, proofs and keys without a token "
        "(C2SP tlog-tiles clients fetch them with plain GETs; audit entries there are only commitments).",
    ),
    audit_retention_days: int = typer.Option(
        180, "--audit-retention-days", min=1, help="Keep audit records this long (the law asks for at least 180)."
    ),
    max_login_failures: int = typer.Option(5, "--max-login-failures", min=1, help="Wrong passwords before lock-out."),
    lockout_minutes: float = typer.Option(15, "--lockout-minutes", min=0.1, help="How long a lock-out lasts."),
    session_hours: float = typer.Option(12, "--session-hours", min=0.1, help="How long a login session lasts."),
    forwarded_allow_ips: list[str] = typer.Option(
        None,
        "--forwarded-allow-ips",
        help="A reverse proxy's address whose X-Forwarded-For is believed (repeatable; default: none).",
    ),
    max_body_mib: float = typer.Option(
        4, "--max-body-mib", min=0.01, help="Largest request body accepted (413 above)."
    ),
    logins_per_minute: int = typer.Option(
        10, "--logins-per-minute", min=1, help="Logins per client address (429 above)."
    ),
    failures_per_minute: int = typer.Option(
        30, "--failures-per-minute", min=1, help="Failed requests per client address before it must wait (429)."
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Serve HTTPS with this certificate chain (PEM)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="The certificate's private key (PEM)."),
    require_mfa: bool = typer.Option(
        False, "--require-mfa", help="Everyone needs a second factor (the platform roles always do)."
    ),
    oidc_mfa_amr: str = typer.Option(
        "", "--oidc-mfa-amr", help="Single sign-on amr values that count as a second factor, e.g. mfa,otp,hwk."
    ),
    token_max_days: int = typer.Option(
        365, "--token-max-days", min=1, help="Longest life of an API token (every token expires)."
    ),
    password_max_age_days: int = typer.Option(
        90, "--password-max-age-days", min=0, help="Passwords expire after this many days (0: never)."
    ),
    session_idle_minutes: float = typer.Option(
        30, "--session-idle-minutes", min=0, help="A login session unused this long ends (0: never)."
    ),
    public_url: str | None = typer.Option(
        None, "--public-url", help="How browsers reach this server (default http://HOST:PORT); for single sign-on."
    ),
    oidc_issuer: str | None = typer.Option(
        None, "--oidc-issuer", envvar="SHANZHI_OIDC_ISSUER", help="Turn on single sign-on through this OIDC issuer."
    ),
    oidc_client_id: str = typer.Option("shanzhi", "--oidc-client-id", help="Shanzhi's client id at the provider."),
    oidc_client_secret_file: Path | None = typer.Option(
        None,
        "--oidc-client-secret-file",
        help="File holding the client secret (or set $SHANZHI_OIDC_CLIENT_SECRET; never on the command line).",
    ),
    oidc_username_claim: str = typer.Option(
        "preferred_username", "--oidc-username-claim", help="The claim that names the Shanzhi user."
    ),
    oidc_groups_claim: str = typer.Option(
        "groups", "--oidc-groups-claim", help="The claim listing the user's groups (see 'shanzhi sso map')."
    ),
    oidc_auto_create: bool = typer.Option(
        False, "--oidc-auto-create", help="Create unknown users on first login (with no roles) instead of refusing."
    ),
) -> None:
    """Run the API server and the controller. SIGTERM stops Shanzhi, never the workloads."""
    from shanzhi.api.server import serve as run
    from shanzhi.providers.sandbox import is_root

    os.umask(0o077)  # everything the server writes (database, WAL, keys, logs) is its own

    witnesses = []
    for item in witness or []:
        url, sep, vkey = item.partition("=")
        if not sep:
            err.print(f"[red]error[/]: --witness {item!r} is not URL=VKEY")
            raise typer.Exit(1)
        witnesses.append((url, vkey))
    secret = _oidc_secret(oidc_issuer, oidc_client_secret_file) if oidc_issuer else ""
    if (tls_cert is None) != (tls_key is None):
        err.print("[red]error[/]: --tls-cert and --tls-key go together")
        raise typer.Exit(1)
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            err.print(f"[red]error[/]: {path} is not a readable file")
            raise typer.Exit(1)
    if audit_retention_days < 180:
        err.print(
            f"[yellow]warning[/]: audit records kept {audit_retention_days} days, less than the six months "
            "the Cybersecurity Law (art. 21) asks for"
        )
    try:
        parse_pool(network_pool, network_prefix)
    except InvalidInput as bad:
        err.print(f"[red]error[/]: {bad.detail}")
        raise typer.Exit(2) from None
    settings = Settings.build(
        data_dir,
        database_url,
        audit_retention_days=audit_retention_days,
        max_login_failures=max_login_failures,
        lockout_minutes=lockout_minutes,
        session_hours=session_hours,
        token_max_days=token_max_days,
        require_mfa=require_mfa,
        tls_cert=tls_cert,
        tls_key=tls_key,
        oidc_mfa_amr=tuple(a.strip() for a in oidc_mfa_amr.split(",") if a.strip()),
        max_body_bytes=int(max_body_mib * 2**20),
        logins_per_minute=logins_per_minute,
        failures_per_minute=failures_per_minute,
        forwarded_allow_ips=tuple(forwarded_allow_ips or ()),
        session_idle_minutes=session_idle_minutes,
        password_max_age_days=password_max_age_days,
        public_url=public_url,
        oidc_issuer=oidc_issuer,
        oidc_client_id=oidc_client_id,
        oidc_client_secret=secret,
        oidc_username_claim=oidc_username_claim,
        oidc_groups_claim=oidc_groups_claim,
        oidc_auto_create=oidc_auto_create,
        host=host,
        port=port,
        demo=demo,
        demo_vms=demo_vms,
        interval=interval,
        workers=workers,
        threads=threads,
        failover_grace=failover_grace,
        network_pool=network_pool,
        network_prefix=network_prefix,
        alarm_webhook=alarm_webhook,
        flow_retention_days=flow_retention_days,
        inventory_interval=inventory_interval,
        metrics_interval=metrics_interval,
        full_resync=full_resync,
        ledger_origin=ledger_origin,
        witnesses=tuple(witnesses),
        witness_quorum=witness_quorum,
        ledger_public=ledger_public,
    )
    url = settings.base_url
    err.print(f"Shanzhi on {url}  data dir {settings.data_dir}  token in {settings.token_file}")
    if demo:
        from shanzhi.services.demo import DEMO_PASSWORD  # here: the CLI's other commands need none of the server

        cli = _command()
        err.print(
            "Try (in another terminal):\n"
            f"  export SHANZHI_URL={url} SHANZHI_HOME={settings.data_dir}\n"
            f"  {cli} cloud list\n  {cli} vdc list\n  {cli} app get hello\n"
            f"  {cli} instance list --app hello      # then curl an endpoint\n"
            f"  {cli} cloud fail city-a              # lose a site: hello fails over to city-b and city-c\n"
            f"  {cli} events --app hello\n"
            f"  {cli} app get records-db           # a VM with a volume, where this machine runs VMs\n"
            f"  Console: {url}/  (demo users li.wei, zhang.min, chen.jie; password {DEMO_PASSWORD})\n"
            f"  API docs: {url}/api/v1/docs",
            soft_wrap=True,
        )
        if not is_root():
            err.print(
                "[yellow]warning[/]: not running as root, so workloads run as your own user: demo tenants are "
                "NOT isolated from the platform (its tokens and keys). See 'Security model' in the README."
            )
    run(settings)


def _command() -> str:
    """How to run the CLI from another terminal: this very program when it is not on PATH."""
    me = Path(sys.argv[0])
    if me.name == "shanzhi" and me.exists() and shutil.which("shanzhi") != str(me.resolve()):
        here = Path.cwd()
        return str(me.relative_to(here)) if me.is_relative_to(here) else str(me)
    return "shanzhi"


def _oidc_secret(issuer: str, secret_file: Path | None) -> str:
    """Check the single sign-on options; the client secret (from the file, else the environment)."""
    u = urlsplit(issuer)
    if not (u.scheme == "https" or (u.scheme == "http" and u.hostname in ("127.0.0.1", "localhost", "::1"))):
        err.print(f"[red]error[/]: --oidc-issuer {issuer} must be an https URL (plain http only on loopback)")
        raise typer.Exit(1)
    secret = os.environ.get("SHANZHI_OIDC_CLIENT_SECRET", "")
    if secret_file is not None:
        try:
            secret = secret_file.read_text().strip()
        except OSError as e:
            err.print(f"[red]error[/]: cannot read --oidc-client-secret-file: {e}")
            raise typer.Exit(1) from None
    if not secret:
        err.print(
            "[red]error[/]: --oidc-issuer needs the client secret: --oidc-client-secret-file "
            "or $SHANZHI_OIDC_CLIENT_SECRET"
        )
        raise typer.Exit(1)
    return secret
