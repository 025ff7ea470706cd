"""`shanzhi apply|diff`, `shanzhi app ...`, `shanzhi instance ...`: business systems and their replicas."""

from __future__ import annotations

import copy
import difflib
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.markup import escape

from shanzhi.cli.output import Columns, Fmt, OutputOpt, emit, err, handle_errors, mem, out
from shanzhi.client import ApiError, Client, discover_token
from shanzhi.domain.spec import MAX_DOCUMENT_BYTES, load_yaml_documents

app_app = typer.Typer(
    help="Business systems (apps): list, inspect, scale, restart, roll back, delete.", no_args_is_help=True
)
rollout_app = typer.Typer(help="An app's stored generations: history and undo.", no_args_is_help=True)
instance_app = typer.Typer(help="Running replicas: list, inspect, read their output.", no_args_is_help=True)
app_app.add_typer(rollout_app, name="rollout")
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (token, SQLite, workloads).")
VdcOpt = typer.Option(None, "--vdc", help="VDC of the app, if its name is not unique.")


def client(data_dir: Path | None = None) -> Client:
    return Client(token=discover_token(data_dir))


APP_COLS: Columns = [
    ("NAME", lambda r: r["name"]),
    ("VDC", lambda r: r["vdc"]),
    ("STATUS", lambda r: r["status"]),
    ("READY", lambda r: " ".join(f"{c['name']}:{c['ready']}/{c['desired']}" for c in r["components"])),
    ("GEN", lambda r: r["generation"]),
]
INSTANCE_COLS: Columns = [
    ("NAME", lambda r: r["name"]),
    ("APP", lambda r: r["app"]),
    ("COMPONENT", lambda r: r["component"]),
    ("CLOUD", lambda r: r["cloud"] or "-"),
    ("SITE", lambda r: r["site"] or "-"),
    ("HOST", lambda r: r["host"] or "-"),
    ("STATE", lambda r: r["state"]),
    ("ENDPOINT", lambda r: r["endpoint"] or "-"),
    ("RESTARTS", lambda r: r["restarts"]),
]


def _load_documents(path: str) -> list[dict[str, Any]]:
    try:
        if path == "-":
            text = sys.stdin.read(MAX_DOCUMENT_BYTES + 1)
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_DOCUMENT_BYTES + 1)  # never more than the limit into memory
    except OSError as e:
        err.print(f"[red]error[/]: cannot read {path}: {e.strerror}")
        raise typer.Exit(1) from None
    except UnicodeDecodeError as e:
        err.print(f"[red]error[/]: {path} is not UTF-8 text: {e}")
        raise typer.Exit(1) from None
    try:
        docs = [d for d in load_yaml_documents(text) if d is not None]
    except ValueError as e:
        err.print(f"[red]error[/]: {path}: {e}")
        raise typer.Exit(1) from None
    if not docs:
        err.print(f"[red]error[/]: {path} holds no document")
        raise typer.Exit(1)
    for d in docs:
        if not isinstance(d, dict):
            err.print(f"[red]error[/]: {path}: each document must be a mapping (an App spec)")
            raise typer.Exit(1)
    return docs


def _wait_ready(c: Client, name: str, vdc: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    unschedulable = 0
    with err.status(f"waiting for {name} to be ready") as st:
        while True:
            a = c.get_app(name, vdc)
            ready = " ".join(f"{x['name']} {x['ready']}/{x['desired']}" for x in a["components"])
            st.update(f"{name}: {a['status']} ({ready})")
            if a["status"] == "Ready":
                return dict(a)
            # seen twice in a row: the scheduler has had its pass and found no room
            unschedulable = unschedulable + 1 if a["status"] == "Unschedulable" else 0
            if unschedulable >= 2:
                why = next((i["placement"] for i in a.get("instances") or [] if i["state"] == "pending"), "")
                why = why.removeprefix("unschedulable: ")
                err.print(
                    f"[red]error[/]: {name} is unschedulable: {why}; nothing will start until that changes "
                    f"(see 'shanzhi app get {name}')"
                )
                raise typer.Exit(1)
            if time.monotonic() > deadline:
                err.print(
                    f"[red]error[/]: {name} not ready after {timeout:.0f}s: {a['status']} ({ready}); "
                    f"see 'shanzhi app get {name}'"
                )
                raise typer.Exit(1)
            time.sleep(0.5)


def _warn(r: dict[str, Any]) -> None:
    for w in r.get("warnings") or []:
        err.print(f"[yellow]warning[/]: {w}")


def apply(
    file: str = typer.Option(..., "-f", "--file", help="App spec file (YAML or JSON; '-' for stdin)."),
    wait: bool = typer.Option(
        False, "--wait", help="Wait until every replica is running (exit 3 if the change is held for approval)."
    ),
    timeout: float = typer.Option(120, "--timeout", help="Seconds to wait with --wait."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check quota and approval rules and show what would change; change nothing."
    ),
    cause: str | None = typer.Option(None, "--cause", help="Why: kept with the revision (rollout history)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Create or update apps from a spec. Re-applying an unchanged spec changes nothing."""
    docs = _load_documents(file)
    if dry_run:
        with handle_errors(), client(data_dir) as c:
            previews = [c.dry_run(doc) for doc in docs]
        if output is Fmt.json:
            emit(previews if len(previews) > 1 else previews[0], output)
        for p in previews if output is Fmt.table else []:
            _show_preview(p, "would be ")
        return
    results = []
    with handle_errors(), client(data_dir) as c:
        for doc in docs:
            r = c.apply(doc, cause)
            results.append(r)
            _warn(r)
            if output is Fmt.table and r["outcome"] == "held":
                _print_held(r["approval"])
            elif output is Fmt.table:
                out.print(f"app/{r['app']['name']} ({r['app']['vdc']}) {r['outcome']}")
        if wait:
            for r in results:
                if r["outcome"] == "held":
                    continue
                r["app"] = _wait_ready(c, r["app"]["name"], r["app"]["vdc"], timeout)
                if output is Fmt.table:
                    out.print(f"app/{r['app']['name']} ready")
    if output is Fmt.json:
        emit(results if len(results) > 1 else results[0], output)
    held = [r for r in results if r["outcome"] == "held"]
    if wait and held:  # asked to wait for something that is not going to happen by itself
        ids = ", ".join(str(r["approval"]["id"]) for r in held)
        err.print(
            f"[yellow]held for approval ({ids}): nothing to wait for until it is approved; "
            f"see 'shanzhi approval get {held[0]['approval']['id']}'[/]"
        )
        raise typer.Exit(3)


def _show_preview(p: dict[str, Any], prefix: str = "") -> None:
    meta = p["spec"]["metadata"]
    outcome = {"create": "created", "configure": "configured", "unchanged": "unchanged", "held": "held"}[p["outcome"]]
    out.print(f"app/{meta['name']} ({meta['vdc']}) {prefix if p['outcome'] != 'unchanged' else ''}{outcome}")
    for h in p["held_by"]:
        out.print(f"  held for approval by rule {h['rule']}: {h['why']}")
    for r in p["rolls"]:
        out.print(f"  {r['component']}: {r['action']}: {r['detail']}")
    for w in p["warnings"]:
        err.print(f"[yellow]warning[/]: {w}")


def diff(
    file: str = typer.Option(..., "-f", "--file", help="App spec file (YAML or JSON; '-' for stdin)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Show how a spec differs from what is stored, and the replicas that would roll. Exits 1
    when there are differences, 0 when none (as `diff` and `kubectl diff` do)."""
    docs = _load_documents(file)
    with handle_errors(), client(data_dir) as c:
        previews = [c.dry_run(doc) for doc in docs]
    if output is Fmt.json:
        emit(previews if len(previews) > 1 else previews[0], output)
    else:
        for p in previews:
            meta = p["spec"]["metadata"]
            old = yaml.safe_dump(p["stored"], sort_keys=False).splitlines() if p["stored"] else []
            new = yaml.safe_dump(p["spec"], sort_keys=False).splitlines()
            name = f"app/{meta['name']} ({meta['vdc']})"
            for line in difflib.unified_diff(old, new, f"{name} stored", f"{name} {file}", lineterm=""):
                colour = "green" if line.startswith("+") else "red" if line.startswith("-") else "cyan"
                out.print(f"[{colour}]{escape(line)}[/]" if line[:1] in "+-@" else escape(line))
            if p["outcome"] == "unchanged":
                out.print(f"{name}: no differences")
            if p["outcome"] != "unchanged":
                _show_preview(p, "would be ")
    if any(p["outcome"] != "unchanged" for p in previews):
        raise typer.Exit(1)


@app_app.command("list")
def app_list(
    vdc: str | None = typer.Option(None, "--vdc", help="Only this VDC and its subtree."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """List apps and their readiness."""
    with handle_errors(), client(data_dir) as c:
        emit(c.list_apps(vdc), output, APP_COLS)


@app_app.command("get")
def app_get(
    name: str,
    vdc: str | None = typer.Option(None, "--vdc", help="VDC of the app, if its name is not unique."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Show an app, where each replica runs and why (or why it could not be placed)."""
    with handle_errors(), client(data_dir) as c:
        a = c.get_app(name, vdc)
    if output is Fmt.json:
        emit(a, output)
        return
    emit(a, output, APP_COLS)
    out.print()
    emit(a["instances"], output, INSTANCE_COLS)
    out.print("\n[bold]Placement[/] (why each replica is where it is)")
    for i in a["instances"]:
        out.print(f"  {i['name']}: {i['placement']}")
        out.print(f"      now {i['state']}: {i['reason']}")
        for cloud, why in (i.get("explain") or {}).get("excluded", {}).items():
            out.print(f"      {cloud}: excluded: {why}")


def _print_held(a: dict[str, Any]) -> None:
    why = "; ".join(f"{x['rule']}: {x['why']}" for x in a["reasons"])
    out.print(
        f"{a['action']} of app/{a['app']} ({a['vdc']}) held for approval {a['id']} ({why}); nothing changed yet. "
        f"Approvers of stage 1: {', '.join(a['stages'][0]['approvers'])}; "
        f"see 'shanzhi approval get {a['id']}'"
    )


@app_app.command("delete")
def app_delete(
    name: str,
    vdc: str | None = typer.Option(None, "--vdc", help="VDC of the app, if its name is not unique."),
    wait: bool = typer.Option(False, "--wait", help="Wait until every replica is gone."),
    timeout: float = typer.Option(120, "--timeout", help="Seconds to wait with --wait."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Delete an app: its replicas are stopped, then the app is removed. Where an approval rule
    covers deletes, the delete is held for approval instead and nothing changes yet."""
    with handle_errors(), client(data_dir) as c:
        r = c.delete_app(name, vdc)
        a = r["app"]
        if r["outcome"] == "held" and output is Fmt.table:
            _print_held(r["approval"])
            return
        if r["outcome"] == "held":
            emit(r, output)
            return
        if wait:
            deadline = time.monotonic() + timeout
            with err.status(f"deleting {name}"):
                while time.monotonic() < deadline:
                    try:
                        c.get_app(name, a["vdc"])
                    except ApiError as e:
                        if e.status == 404:
                            break
                        raise
                    time.sleep(0.5)
                else:
                    err.print(f"[red]error[/]: {name} still being deleted after {timeout:.0f}s")
                    raise typer.Exit(1)
        emit(r if output is Fmt.json else a, output, APP_COLS)


@instance_app.command("list")
def instance_list(
    app_name: str | None = typer.Option(None, "--app", help="Only this app's replicas."),
    vdc: str | None = typer.Option(None, "--vdc", help="Only this VDC (and subtree)."),
    cloud: str | None = typer.Option(None, "--cloud", help="Only replicas on this cloud."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """List replicas: where each runs, its state and endpoint."""
    with handle_errors(), client(data_dir) as c:
        emit(c.list_instances(app_name, vdc, cloud), output, INSTANCE_COLS)


# ------------------------------------------------------- changes by command
def _stored_spec(c: Client, name: str, vdc: str | None) -> dict[str, Any]:
    a = c.get_app(name, vdc)
    return copy.deepcopy(a["spec"])


def _component(spec: dict[str, Any], name: str | None) -> list[dict[str, Any]]:
    comps: list[dict[str, Any]] = spec["spec"]["components"]
    if name is None:
        return comps
    found = [x for x in comps if x["name"] == name]
    if not found:
        known = ", ".join(x["name"] for x in comps)
        err.print(f"[red]error[/]: app {spec['metadata']['name']} has no component {name!r} (it has: {known})")
        raise typer.Exit(1)
    return found


def _apply_changed(c: Client, spec: dict[str, Any], cause: str, output: Fmt) -> None:
    r = c.apply(spec, cause)
    if output is Fmt.json:
        emit(r, output)
    elif r["outcome"] == "held":
        _print_held(r["approval"])
    else:
        out.print(f"app/{r['app']['name']} ({r['app']['vdc']}) {r['outcome']}: {cause}")


@app_app.command("scale")
def app_scale(
    name: str,
    component: str,
    replicas: int = typer.Argument(..., min=0, help="How many replicas the component should run."),
    vdc: str | None = VdcOpt,
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Set a component's replicas (checked against quota and approval rules like an apply)."""
    with handle_errors(), client(data_dir) as c:
        spec = _stored_spec(c, name, vdc)
        (comp,) = _component(spec, component)
        was = comp.get("replicas", 1)
        comp["replicas"] = replicas
        _apply_changed(c, spec, f"scale {component} {was} -> {replicas}", output)


@app_app.command("move")
def app_move(
    instance: str,
    to: str = typer.Option(..., "--to", help="The cloud to move the replica to."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Move one replica to another cloud. With volumes it is a cold migration: stopped, its disks
    copied, started there; the downtime is in the Migrated event (shanzhi events)."""
    with handle_errors(), client(data_dir) as c:
        p = c.move(instance, to)
    if output is Fmt.json:
        emit(p, output)
        return
    m = p["moves"][0]
    out.print(
        f"{instance}: moving {m['from']['cloud']}/{m['from']['host']} -> {m['to']['cloud']}/{m['to']['host']} "
        f"(plan {p['id']}); follow with 'shanzhi events -f'"
    )


@app_app.command("restart")
def app_restart(
    name: str,
    component: str | None = typer.Option(None, "--component", help="Only this component (default: all)."),
    vdc: str | None = VdcOpt,
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Replace every replica one by one (a rolling restart): a new `restartedAt` is a new generation."""
    with handle_errors(), client(data_dir) as c:
        spec = _stored_spec(c, name, vdc)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for comp in _component(spec, component):
            comp["restartedAt"] = now
        _apply_changed(c, spec, f"restart {component or 'all components'}", output)


@rollout_app.command("history")
def rollout_history(
    name: str, vdc: str | None = VdcOpt, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt
) -> None:
    """The app's generations, oldest first: when, by whom, why."""
    with handle_errors(), client(data_dir) as c:
        revs = c.revisions(name, vdc)
    emit(
        revs,
        output,
        [
            ("GENERATION", lambda r: f"{r['generation']}{' (current)' if r['current'] else ''}"),
            ("CREATED", lambda r: str(r["created_at"])[:19].replace("T", " ")),
            ("AUTHOR", lambda r: r["author"] or "-"),
            ("CAUSE", lambda r: r["cause"] or "-"),
        ],
    )


@rollout_app.command("undo")
def rollout_undo(
    name: str,
    to_generation: int | None = typer.Option(
        None, "--to-generation", help="The generation to go back to (default: the one before the current)."
    ),
    vdc: str | None = VdcOpt,
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Apply an earlier generation's spec again (as a new generation, checked like any apply)."""
    with handle_errors(), client(data_dir) as c:
        revs = c.revisions(name, vdc)
        current = next((r for r in revs if r["current"]), revs[-1])
        if to_generation is None:
            earlier = [r for r in revs if r["generation"] < current["generation"]]
            if not earlier:
                err.print(f"[red]error[/]: app {name} has no generation before {current['generation']} to go back to")
                raise typer.Exit(1)
            target = earlier[-1]
        else:
            found = [r for r in revs if r["generation"] == to_generation]
            if not found:
                have = ", ".join(str(r["generation"]) for r in revs)
                err.print(f"[red]error[/]: app {name} has no generation {to_generation} (it has: {have})")
                raise typer.Exit(1)
            target = found[0]
        _apply_changed(c, target["spec"], f"rollback to generation {target['generation']}", output)


@instance_app.command("get")
def instance_get(name: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """One replica: where it runs, its state and why, and why it was placed there."""
    with handle_errors(), client(data_dir) as c:
        i = c.get_instance(name)
    emit(i, output, INSTANCE_COLS)
    if output is Fmt.table:
        out.print(f"\nplacement: {escape(i['placement'])}\nnow {i['state']}: {escape(i['reason'])}")
        for cloud, why in (i.get("explain") or {}).get("excluded", {}).items():
            out.print(f"  {cloud}: excluded: {escape(why)}")
        for key, value in (i.get("provider") or {}).items():
            shown = "; ".join(f"{d['device']} {d['file']} ({d['format']})" for d in value) if key == "disks" else value
            out.print(f"{key.replace('_', ' ')}: {escape(str(shown))}")


@instance_app.command("logs")
def instance_logs(
    name: str,
    tail: int = typer.Option(64 * 1024, "--tail", min=1, max=4 * 2**20, help="At most this many bytes from the end."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new output."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """A replica's output (a process's stdout and stderr) as its cloud keeps it."""
    with handle_errors(), client(data_dir) as c:
        r = c.instance_logs(name, tail)
        if output is Fmt.json and not follow:
            emit(r, output)
            return
        sys.stdout.write(r["text"])
        sys.stdout.flush()
        size = r["size"]
        while follow:
            time.sleep(1)
            r = c.instance_logs(name, 4 * 2**20)
            if r["size"] > size:
                new = r["text"].encode()[-(r["size"] - size) :]
                sys.stdout.write(new.decode(errors="replace"))
                sys.stdout.flush()
            size = r["size"]


# ----------------------------------------------------------------- volumes
volume_app = typer.Typer(help="Volumes: the disks that follow replicas' ordinals.", no_args_is_help=True)
VOLUME_COLS: Columns = [
    ("KEY", lambda r: r["key"]),
    ("APP", lambda r: f"{r['app']}/{r['component']}-{r['ordinal']}"),
    ("VOLUME", lambda r: r["name"]),
    ("CLOUD", lambda r: r["cloud"]),
    ("SIZE", lambda r: mem(r["size"])),
    ("MOUNT", lambda r: r["mount_path"]),
    ("STATE", lambda r: r["state"] + (f" ({r['instance']})" if r["instance"] else "")),
    ("RECLAIM", lambda r: r["reclaim"]),
]


@volume_app.command("list")
def volume_list(
    app_name: str | None = typer.Option(None, "--app", help="Only this app's volumes."),
    vdc: str | None = typer.Option(None, "--vdc", help="Only this VDC (and subtree)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Volumes with the replica (ordinal) they follow, where their disk is, and whether in use."""
    with handle_errors(), client(data_dir) as c:
        emit(c.list_volumes(app_name, vdc), output, VOLUME_COLS)


@volume_app.command("get")
def volume_get(key: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """One volume, on every cloud its ordinal has a disk on."""
    with handle_errors(), client(data_dir) as c:
        emit(c.get_volume(key), output, VOLUME_COLS)


@volume_app.command("delete")
def volume_delete(
    key: str,
    cloud: str | None = typer.Option(None, "--cloud", help="Only its disk on this cloud."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Delete a volume no replica uses (kept by `reclaimPolicy: retain`, or left by a scale-down)."""
    with handle_errors(), client(data_dir) as c:
        emit(c.delete_volume(key, cloud), output, VOLUME_COLS)


@volume_app.command("snapshot")
def volume_snapshot(
    key: str,
    name: str,
    cloud: str | None = typer.Option(None, "--cloud", help="The cloud of its disk, if it has several."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Snapshot a volume's disk; the replica using it stops meanwhile (a consistent disk)."""
    with handle_errors(), client(data_dir) as c, err.status(f"snapshotting {key}"):
        r = c.snapshot_volume(key, name, cloud)
    _show_snapshot(r, output)


@volume_app.command("restore")
def volume_restore(
    key: str,
    name: str,
    cloud: str | None = typer.Option(None, "--cloud", help="The cloud of its disk, if it has several."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Put a volume's disk back to a snapshot; the replica using it stops meanwhile."""
    with handle_errors(), client(data_dir) as c, err.status(f"restoring {key} to {name}"):
        r = c.snapshot_volume(key, name, cloud, restore=True)
    _show_snapshot(r, output)


@volume_app.command("snapshots")
def volume_snapshots(
    key: str,
    cloud: str | None = typer.Option(None, "--cloud", help="The cloud of its disk, if it has several."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """A volume's snapshots."""
    with handle_errors(), client(data_dir) as c:
        emit(
            c.volume_snapshots(key, cloud), output, [("NAME", lambda r: r["name"]), ("TAKEN", lambda r: r["taken_at"])]
        )


def _show_snapshot(r: dict[str, Any], output: Fmt) -> None:
    if output is Fmt.json:
        emit(r, output)
        return
    who = f"{r['instance']} was down {r['downtime_seconds']:.1f}s" if r["instance"] else "no replica was using it"
    out.print(f"volume {r['key']} on {r['cloud']}: snapshot {r['snapshot']} {r['outcome']}; {who}")
