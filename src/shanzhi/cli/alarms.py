"""`shanzhi alarm ...`: alarms (list, acknowledge), the rules that raise them, silences."""

from __future__ import annotations

from pathlib import Path

import typer

from shanzhi.cli.output import Columns, Fmt, OutputOpt, emit, handle_errors
from shanzhi.client import Client, discover_token

alarm_app = typer.Typer(
    help="Alarms: rules on metrics and events, the network's denied flows, edges and spikes; ack, silence.",
    no_args_is_help=True,
)
rule_app = typer.Typer(help="Alarm rules: what raises an alarm.", no_args_is_help=True)
alarm_app.add_typer(rule_app, name="rule")
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (for the token).")

ALARM_COLS: Columns = [
    ("ID", lambda r: r["id"]),
    ("AT", lambda r: str(r["at"])[:19]),
    ("KIND", lambda r: r["kind"]),
    ("SEVERITY", lambda r: r["severity"]),
    ("STATE", lambda r: "resolved" if r.get("resolved_at") else ("silenced" if r.get("silenced") else "firing")),
    ("ACK", lambda r: r["acknowledged_by"] or ""),
    ("MESSAGE", lambda r: r["message"]),
]


def _condition(r: dict[str, object]) -> str:
    if r["event"]:
        return f"event {r['event']}"
    if r["absent"]:
        return f"{r['metric']} absent"
    return f"{r['metric']} > {r['above']}" if r["above"] is not None else f"{r['metric']} < {r['below']}"


RULE_COLS: Columns = [
    ("ID", lambda r: r["id"]),
    ("NAME", lambda r: r["name"]),
    ("VDC", lambda r: r["vdc"] or "(platform)"),
    ("WHEN", _condition),
    ("FOR", lambda r: f"{r['for']:g}s"),
    ("APP", lambda r: "/".join(x for x in (r["app"], r["component"]) if x) or "*"),
    ("SEVERITY", lambda r: r["severity"]),
    ("WEBHOOK", lambda r: r["webhook"] or ""),
]
SILENCE_COLS: Columns = [
    ("ID", lambda r: r["id"]),
    ("RULE", lambda r: r["rule"] or "*"),
    ("VDC", lambda r: r["vdc"] or "*"),
    ("APP", lambda r: r["app"] or "*"),
    ("UNTIL", lambda r: str(r["until"])[:19]),
    ("BY", lambda r: r["created_by"]),
    ("COMMENT", lambda r: r["comment"]),
]


@alarm_app.command("list")
def alarm_list(
    vdc: str | None = typer.Option(None, "--vdc", help="Only this VDC (and subtree)."),
    kind: str | None = typer.Option(None, "--kind", help="rule:NAME, cross-vdc-denied, new-edge or rate-spike."),
    open_only: bool = typer.Option(False, "--open", help="Only alarms nobody acknowledged."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Alarms you may see, oldest first: firing, resolved or silenced."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        emit(c.alarms(vdc, kind, open_only), output, ALARM_COLS)


@alarm_app.command("ack")
def alarm_ack(alarm_id: int, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Acknowledge an alarm: it stays, with who acknowledged it and when."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        emit(c.ack_alarm(alarm_id), output, ALARM_COLS)


@alarm_app.command("rules")
def alarm_rules(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """The alarm rules in your VDCs (and the platform's, for system administrators)."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        emit(c.alarm_rules(), output, RULE_COLS)


@rule_app.command("create")
def rule_create(
    name: str,
    vdc: str | None = typer.Option(None, "--vdc", help="Replicas (or events) in this VDC subtree; none: the platform."),
    metric: str | None = typer.Option(None, "--metric", help="cpu (cores), memory (bytes), rx, tx, read, write (B/s)."),
    above: float | None = typer.Option(None, "--above", help="In alarm above this."),
    below: float | None = typer.Option(None, "--below", help="In alarm below this."),
    absent: bool = typer.Option(False, "--absent", help="In alarm while a placed replica reports no sample."),
    hold: str = typer.Option("0s", "--for", help="How long the condition must last: 30s, 5m."),
    event: str | None = typer.Option(None, "--event", help="Alarm on each event of this reason (e.g. CloudDown)."),
    app: str | None = typer.Option(None, "--app", help="Only this app's replicas or events."),
    component: str | None = typer.Option(None, "--component", help="Only this component's replicas."),
    severity: str = typer.Option("warning", "--severity", help="info, warning or critical."),
    webhook: str | None = typer.Option(None, "--webhook", help="POST this rule's alarms here (else the server's)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Create an alarm rule: a metric above/below a threshold or absent for a while, or an event."""
    body = {
        "name": name,
        "vdc": vdc,
        "metric": metric,
        "above": above,
        "below": below,
        "absent": absent,
        "for": hold,
        "event": event,
        "app": app,
        "component": component,
        "severity": severity,
        "webhook": webhook,
    }
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        emit(c.add_alarm_rule(body), output, RULE_COLS)


@rule_app.command("delete")
def rule_delete(rule_id: int, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Delete an alarm rule (its alarms stay in the history)."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        emit(c.delete_alarm_rule(rule_id), output)


@alarm_app.command("silence")
def alarm_silence(
    rule: int | None = typer.Option(None, "--rule", help="Only this rule's alarms."),
    vdc: str | None = typer.Option(None, "--vdc", help="Only alarms in this VDC subtree (departments: required)."),
    app: str | None = typer.Option(None, "--app", help="Only this app's alarms."),
    duration: str = typer.Option("1h", "--for", help="How long: 30m, 4h, 7d (at most 30d)."),
    comment: str = typer.Option("", "--comment", "-m", help="Why (shown with the silence)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Record matching alarms without notifying anyone, for a while."""
    body = {"rule": rule, "vdc": vdc, "app": app, "for": duration, "comment": comment}
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        emit(c.add_alarm_silence(body), output, SILENCE_COLS)


@alarm_app.command("silences")
def alarm_silences(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Silences in force."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        emit(c.alarm_silences(), output, SILENCE_COLS)


@alarm_app.command("unsilence")
def alarm_unsilence(silence_id: int, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """End a silence now."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        emit(c.delete_alarm_silence(silence_id), output, SILENCE_COLS)
