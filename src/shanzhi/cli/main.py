"""`shanzhi`: serve the platform, or talk to it (SHANZHI_URL, SHANZHI_TOKEN)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from shanzhi.cli import alarms, apps, dr, governance, identity, inventory, metrics, network, serve
from shanzhi.cli.audit import audit_app
from shanzhi.cli.credentials import read_credentials
from shanzhi.cli.images import image_app
from shanzhi.cli.ledger import ledger_app, witness_app
from shanzhi.cli.mfa import mfa_app
from shanzhi.cli.output import Columns, Fmt, OutputOpt, cpu, emit, emit_followed, err, handle_errors, mem, out
from shanzhi.cli.plans import plan_app
from shanzhi.client import Client, discover_token
from shanzhi.config import Settings

app = typer.Typer(
    help="Shanzhi (善治): many clouds, one cloud. Serve the platform or manage it through its API.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: words wrap whole, flags show no '<bool>'
)
cloud_app = typer.Typer(help="Register and inspect clouds (resource pools).", no_args_is_help=True)
vdc_app = typer.Typer(help="Virtual data centres: the organisation tree and its quotas.", no_args_is_help=True)
workloads_app = typer.Typer(help="Local workload processes (offline, no server needed).", no_args_is_help=True)
app.add_typer(cloud_app, name="cloud")
app.add_typer(image_app, name="image")
app.add_typer(vdc_app, name="vdc")
app.add_typer(apps.app_app, name="app")
app.add_typer(apps.instance_app, name="instance")
app.add_typer(apps.volume_app, name="volume")
app.add_typer(workloads_app, name="workloads")
app.add_typer(ledger_app, name="ledger")
app.add_typer(witness_app, name="witness")
app.add_typer(plan_app, name="plan")
app.add_typer(alarms.alarm_app, name="alarm")
app.add_typer(inventory.inventory_app, name="inventory")
app.command("adopt")(inventory.adopt)
apps.app_app.command("metrics")(metrics.app_metrics)
app.add_typer(dr.dr_app, name="dr")
app.add_typer(dr.site_app, name="site")
app.command("flows")(network.flows)
app.command("alarms", help="The same as 'alarm list'.")(alarms.alarm_list)
app.add_typer(audit_app, name="audit")
app.add_typer(identity.user_app, name="user")
app.add_typer(identity.token_app, name="token")
app.add_typer(identity.grant_app, name="grant")
app.add_typer(identity.sso_app, name="sso")
app.add_typer(mfa_app, name="mfa")
app.add_typer(governance.approval_app, name="approval")
app.add_typer(governance.rate_app, name="rate")
app.command()(serve.serve)
for _cmd in (apps.apply, apps.diff, identity.login, identity.logout, identity.whoami, identity.passwd, governance.bill):
    app.command()(_cmd)

DataDirOpt = typer.Option(None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (token, SQLite, workloads).")


def _version(value: bool) -> None:
    if value:
        from shanzhi import __version__

        out.print(f"shanzhi {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Shanzhi (善治): many clouds, one cloud. Serve the platform or manage it through its API."""


@app.command()
def completion(shell: str = typer.Argument(..., help="bash, zsh or fish")) -> None:
    """Print the shell completion script: `source <(shanzhi completion bash)`, or save it where
    your shell loads completions (zsh: a file `_shanzhi` on $fpath; fish: ~/.config/fish/completions)."""
    from typer.completion import get_completion_script  # type: ignore[attr-defined]  # re-exported, not listed

    if shell not in ("bash", "zsh", "fish"):
        err.print(f"[red]error[/]: no completion for {shell!r}; use bash, zsh or fish")
        raise typer.Exit(1)
    sys.stdout.write(get_completion_script(prog_name="shanzhi", complete_var="_SHANZHI_COMPLETE", shell=shell))


def client(data_dir: Path | None = None) -> Client:
    return Client(token=discover_token(data_dir))


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    outp: dict[str, str] = {}
    for item in items or []:
        for part in item.split(","):
            k, sep, v = part.partition("=")
            if not sep or not k.strip():
                err.print(f"[red]error[/]: {what} {part!r} is not key=value")
                raise typer.Exit(1)
            outp[k.strip()] = v.strip()
    return outp


@app.command()
def status(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Show the server's version, database, whether its controller leads, and its share of the
    apps (servers on one PostgreSQL split them: `shards` of 64, `replicas` sharing)."""
    with handle_errors(), client(data_dir) as c:
        emit(c.status(), output)


# ----------------------------------------------------------------- clouds
CLOUD_COLS: Columns = [
    ("NAME", lambda r: r["name"]),
    ("KIND", lambda r: r["kind"]),
    ("SITE", lambda r: r["site"]),
    ("REGION", lambda r: r["region"]),
    (
        "HEALTH",
        lambda r: (
            r["health"]
            + (" (draining)" if r["draining"] else "")
            + (f" (fenced by plan {r['fenced_by_plan']})" if r.get("fenced_by_plan") else "")
        ),
    ),
    ("HOSTS", lambda r: f"{r['healthy_hosts']}/{r['hosts']}"),
    ("CPU", lambda r: f"{cpu(r['used']['cpu'])}/{cpu(r['capacity']['cpu'])}"),
    ("MEMORY", lambda r: f"{mem(r['used']['memory'])}/{mem(r['capacity']['memory'])}"),
    ("INSTANCES", lambda r: f"{r['used']['instances']}/{r['capacity']['instances']}"),
    ("TAGS", lambda r: ",".join(f"{k}={v}" for k, v in r["tags"].items())),
]


CredentialsFileOpt = typer.Option(
    None,
    "--credentials-file",
    help="File with the cloud's credentials (YAML/JSON mapping, or an AWS credentials file); - reads stdin.",
)
ProfileOpt = typer.Option("default", "--profile", help="Section to read from an AWS-style credentials file.")


@cloud_app.command("add")
def cloud_add(
    name: str,
    kind: str = typer.Option(
        ..., "--kind", "--provider", help="Provider kind: local, netns (root: tenant networks), libvirt or sim."
    ),
    site: str = typer.Option(..., "--site", help="Site (data centre) the cloud is in."),
    region: str = typer.Option(..., "--region", help="Region (for data residency)."),
    tag: list[str] = typer.Option(None, "--tag", help="k=v, repeatable (e.g. level=city)."),
    option: list[str] = typer.Option(None, "--option", help="Provider option k=v, repeatable (e.g. cpu=8)."),
    credentials_file: str | None = CredentialsFileOpt,
    profile: str = ProfileOpt,
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Register a cloud (an ec2 cloud's keys come from --credentials-file, never the command line)."""
    secrets = _credentials(credentials_file, profile) if credentials_file else None
    with handle_errors(), client(data_dir) as c:
        r = c.add_cloud(name, kind, site, region, _pairs(tag, "tag"), _pairs(option, "option"), secrets)
        emit(r, output, CLOUD_COLS)


@cloud_app.command("credentials")
def cloud_credentials(
    name: str,
    credentials_file: str = typer.Option(
        ..., "--credentials-file", help="YAML/JSON mapping or AWS credentials file with the new credentials; - = stdin."
    ),
    profile: str = ProfileOpt,
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Replace a cloud's credentials (sealed at rest; shown afterwards only by field name)."""
    secrets = _credentials(credentials_file, profile)
    with handle_errors(), client(data_dir) as c:
        emit(c.set_cloud_credentials(name, secrets), output, CLOUD_COLS)


def _credentials(path: str, profile: str) -> dict[str, str]:
    try:
        return read_credentials(path, profile)
    except (OSError, ValueError) as e:
        err.print(f"[red]error[/]: credentials: {e}")
        raise typer.Exit(1) from None


@cloud_app.command("list")
def cloud_list(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """List clouds with health and capacity."""
    with handle_errors(), client(data_dir) as c:
        emit(c.list_clouds(), output, CLOUD_COLS)


@cloud_app.command("get")
def cloud_get(name: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Show one cloud and its hosts."""
    with handle_errors(), client(data_dir) as c:
        r = c.get_cloud(name)
        if output is Fmt.json:
            emit(r, output)
            return
        emit(r, output, CLOUD_COLS)
        out.print(f"\nhealth: {r['health']} {r['health_message']}\noptions: {json.dumps(r['options'])}\n")
        emit(
            r["host_list"],
            output,
            [
                ("HOST", lambda h: h["name"]),
                ("HEALTHY", lambda h: "yes" if h["healthy"] else "NO"),
                ("CPU", lambda h: f"{cpu(h['used']['cpu'])}/{cpu(h['cpu'])}"),
                ("MEMORY", lambda h: f"{mem(h['used']['memory'])}/{mem(h['memory'])}"),
                ("INSTANCES", lambda h: f"{h['used']['instances']}/{h['max_instances']}"),
            ],
        )


@cloud_app.command("remove")
def cloud_remove(
    name: str,
    drain: bool = typer.Option(False, "--drain", help="Move its instances to other clouds first."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Remove a cloud (refused while it runs instances, unless --drain), with whatever it built
    on this machine (a netns cloud's namespaces and links)."""
    with handle_errors(), client(data_dir) as c:
        emit(c.remove_cloud(name, drain), output, [("NAME", lambda r: r["name"]), ("OUTCOME", lambda r: r["outcome"])])


cloud_app.command("delete", help="The same as 'cloud remove'.")(cloud_remove)


@cloud_app.command("fail")
def cloud_fail(
    name: str,
    host: str | None = typer.Option(None, "--host", help="Fail one host instead of the whole cloud."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Inject a failure (drills and tests): the cloud or host stops working."""
    with handle_errors(), client(data_dir) as c:
        emit(c.fail_cloud(name, host), output, [("NAME", lambda r: r["name"]), ("OUTCOME", lambda r: r["outcome"])])


@cloud_app.command("recover")
def cloud_recover(
    name: str,
    host: str | None = typer.Option(None, "--host", help="Recover one host."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Undo an injected failure."""
    with handle_errors(), client(data_dir) as c:
        emit(c.recover_cloud(name, host), output, [("NAME", lambda r: r["name"]), ("OUTCOME", lambda r: r["outcome"])])


# ------------------------------------------------------------------- vdcs
def tree(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """VDCs in tree order, each with `_tree`: its name drawn under its parent (├─ └─)."""
    paths = {r["path"] for r in rows}
    children: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r["path"]):
        parent = r["path"].rpartition("/")[0]
        while parent and parent not in paths:  # an ancestor the caller cannot see: hang it higher
            parent = parent.rpartition("/")[0]
        children.setdefault(parent, []).append(r)
    out: list[dict[str, Any]] = []

    def walk(parent: str, prefix: str) -> None:
        kids = children.get(parent, [])
        for i, r in enumerate(kids):
            last = i == len(kids) - 1
            name = r["path"] if not parent else r["path"][len(parent) + 1 :]
            out.append({**r, "_tree": prefix + ("└─ " if last else "├─ ") + name if parent else name})
            walk(r["path"], prefix + ("   " if last else "│  ") if parent else "")

    walk("", "")
    return out


VDC_COLS: Columns = [
    ("PATH", lambda r: r.get("_tree", r["path"])),
    ("APPS", lambda r: r["apps"]),
    ("CPU", lambda r: f"{cpu(r['usage']['cpu'])}/{cpu(r['quota']['cpu'])}"),
    ("MEMORY", lambda r: f"{mem(r['usage']['memory'])}/{mem(r['quota']['memory'])}"),
    (
        "INSTANCES",
        lambda r: (
            f"{r['usage']['instances']}/{r['quota']['instances'] if r['quota']['instances'] is not None else '-'}"
        ),
    ),
    ("STORAGE", lambda r: f"{mem(r['usage'].get('storage'))}/{mem(r['quota'].get('storage'))}"),
    ("STRICT", lambda r: "yes" if r.get("strict") else ""),
]


@vdc_app.command("create")
def vdc_create(
    path: str,
    quota: str | None = typer.Option(None, "--quota", help="e.g. cpu=2,memory=4Gi,instances=10"),
    parents: bool = typer.Option(False, "--parents", "-p", help="Create missing ancestors too."),
    strict: bool = typer.Option(False, "--strict", help="Children's quotas together may not exceed this one's."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Create a VDC (path like gz/health/it); its quota may not exceed its ancestors'."""
    with handle_errors(), client(data_dir) as c:
        q = dict(_pairs([quota] if quota else [], "quota"))
        emit(c.create_vdc(path, q, parents, strict), output, VDC_COLS)


@vdc_app.command("list")
def vdc_list(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """List VDCs as a tree, with usage (rolled up over each subtree) against quota."""
    with handle_errors(), client(data_dir) as c:
        rows = c.list_vdcs()
    emit(rows if output is Fmt.json else tree(rows), output, VDC_COLS)


@vdc_app.command("get")
def vdc_get(path: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Show one VDC."""
    with handle_errors(), client(data_dir) as c:
        emit(c.get_vdc(path), output, VDC_COLS)


@vdc_app.command("set-quota")
def vdc_set_quota(
    path: str,
    quota: str = typer.Argument("", help="e.g. cpu=16,memory=32Gi,storage=1Ti,instances=100"),
    strict: bool | None = typer.Option(
        None, "--strict/--no-strict", help="Turn strict mode on or off (children's quotas must fit in this one)."
    ),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Change a VDC's quota, e.g. `shanzhi vdc set-quota gz/health cpu=16,memory=32Gi`."""
    with handle_errors(), client(data_dir) as c:
        emit(c.set_quota(path, dict(_pairs([quota] if quota else [], "quota")), strict), output, VDC_COLS)


@vdc_app.command("delete")
def vdc_delete(path: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Delete an empty VDC."""
    with handle_errors(), client(data_dir) as c:
        emit(c.delete_vdc(path), output, [("PATH", lambda r: r["name"]), ("OUTCOME", lambda r: r["outcome"])])


# ----------------------------------------------------------------- events
EVENT_COLS: Columns = [
    ("TIME", lambda r: r["at"][11:19]),
    ("TYPE", lambda r: r["type"]),
    ("REASON", lambda r: r["reason"]),
    ("OBJECT", lambda r: f"{r['object_kind']}/{r['object_name']}"),
    ("MESSAGE", lambda r: r["message"]),
]


@app.command()
def events(
    app_name: str | None = typer.Option(None, "--app", help="Only this app's events."),
    vdc: str | None = typer.Option(None, "--vdc", help="Only this VDC (and subtree)."),
    limit: int = typer.Option(50, "--limit", help="How many of the latest events."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Show what happened, to what, and why. With -f and -o json, one JSON object per line
    (NDJSON) from the first event on, as `jq` and log shippers read streams."""
    with handle_errors(), client(data_dir) as c:
        rows = c.events(app_name, vdc, limit=limit)
        emit_followed(rows, lambda last: c.events(app_name, vdc, since=last), output, EVENT_COLS, follow)


# -------------------------------------------------------------- workloads
@workloads_app.command("stop-all")
def workloads_stop_all(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Stop every local workload process under the data directory, and the DR quorum's etcd
    members (stop the server first)."""
    from shanzhi.controllers.dr import stop_quorum
    from shanzhi.providers.local import stop_all_under

    d = Settings.build(data_dir).data_dir
    n = stop_all_under(d / "clouds") + stop_quorum(d)
    emit(
        {"data_dir": str(d), "stopped": n},
        output,
        [("DATA DIR", lambda r: r["data_dir"]), ("STOPPED", lambda r: r["stopped"])],
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
