"""`shanzhi ledger ...` and `shanzhi witness serve`: submit, prove, watch, verify, witness."""

from __future__ import annotations

import base64
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from shanzhi.cli.output import Fmt, OutputOpt, emit, err, handle_errors, out
from shanzhi.client import Client, discover_token

ledger_app = typer.Typer(help="The directory ledger: a verifiable, witnessed log.", no_args_is_help=True)
witness_app = typer.Typer(help="Run a witness that cosigns the ledger's checkpoints.", no_args_is_help=True)
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (for the token).")


def _client(data_dir: Path | None, fallback: str = "admin.token") -> Client:
    return Client(token=discover_token(data_dir, fallback=fallback))


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error[/]: {message}")
    return typer.Exit(1)


@ledger_app.command("status")
def status(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Size, root, log key, witnesses and the latest checkpoint."""
    with handle_errors(), _client(data_dir) as c:
        s = c.ledger_status()
    if output is Fmt.json:
        emit(s, output)
        return
    out.print(f"origin   {s['origin']}\nlog key  {s['log_key']}\nsize     {s['size']}\nroot     {s['root']}")
    out.print(f"witnesses {len(s['witnesses'])} (quorum {s['quorum']})")
    out.print("\n" + (s["checkpoint"] or "(no checkpoint yet)"))


@ledger_app.command("keygen")
def keygen(
    name: str,
    file: Path = typer.Option(..., "--file", "-f", help="Where to write the private key (mode 0600)."),
    cosigner: bool = typer.Option(False, "--cosigner", help="A witness cosignature key (type 0x04)."),
    output: Fmt = OutputOpt,
) -> None:
    """Make a key pair (offline). Prints the public verifier key to register."""
    from shanzhi.ledger.keys import load_or_create
    from shanzhi.ledger.note import COSIGNATURE_V1, ED25519, NoteError

    if file.exists():
        raise _fail(f"{file} exists; refusing to overwrite a key")
    try:
        signer = load_or_create(file, name, COSIGNATURE_V1 if cosigner else ED25519)
    except NoteError as e:
        raise _fail(str(e)) from None
    emit({"name": name, "vkey": signer.verifier.encode(), "file": str(file)}, output)


@ledger_app.command("add-key")
def add_key(
    name: str,
    vkey: str,
    role: str = typer.Option("department", "--role", help="department (may submit entries) or witness."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Register a department's public key, so the ledger accepts its signed entries (security
    administrators; on the server's machine the data dir's security.token is used)."""
    with handle_errors(), _client(data_dir, "security.token") as c:
        emit(c.ledger_add_key(name, vkey, role), output)


@ledger_app.command("submit")
def submit(
    key: Path = typer.Option(..., "--key", help="The submitting department's private key file."),
    type_: str = typer.Option(..., "--type", help="responsibility, catalog, share-request, share-approval, access."),
    subject: str = typer.Option(..., "--subject", help="What the entry concerns, e.g. catalog/440100-0001."),
    body: str = typer.Option(..., "--body", help="The entry's fields as JSON, or @FILE."),
    link: list[str] = typer.Option(None, "--link", help="rel=INDEX: an earlier entry this one concerns."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Sign an entry with the department's key and append it; prints its index and leaf hash."""
    from shanzhi.ledger.entries import EntryError, make_entry
    from shanzhi.ledger.note import NoteError, Signer

    try:
        signer = Signer.decode(key.read_text())
        fields = json.loads(Path(body[1:]).read_text() if body.startswith("@") else body)
    except (OSError, ValueError, NoteError) as e:
        raise _fail(f"cannot read the key or body: {e}") from None
    with handle_errors(), _client(data_dir) as c:
        links = []
        for item in link or []:
            rel, sep, idx = item.partition("=")
            if not sep or not idx.isdigit():
                raise _fail(f"--link {item!r} is not rel=INDEX")
            got = c.ledger_entry(int(idx))
            links.append((rel, int(idx), base64.b64decode(got["leaf"])))
        try:
            entry = make_entry(signer, type_, subject, fields, links)
        except EntryError as e:
            raise _fail(str(e)) from None
        [res] = c.ledger_submit([entry.decode()])
    emit(res, output, [("INDEX", lambda r: r["index"]), ("LEAF", lambda r: r["leaf"])])


@ledger_app.command("entry")
def entry(index: int, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Show one entry."""
    with handle_errors(), _client(data_dir) as c:
        e = c.ledger_entry(index)
    if output is Fmt.json:
        emit(e, output)
    else:
        out.print(f"index {e['index']}  leaf {e['leaf']}\n{e['entry']}")


@ledger_app.command("prove")
def prove(
    index: int,
    log_key: str | None = typer.Option(
        None, "--log-key", help="The log's verifier key; default: the one pinned on first use (known_logs.json)."
    ),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Prove that entry INDEX is in the log: the latest checkpoint is checked against the log's
    pinned key, then the inclusion proof against that checkpoint's root, here, not by the server."""
    from shanzhi.client import known_logs
    from shanzhi.ledger.checkpoint import Checkpoint
    from shanzhi.ledger.merkle import ProofError, verify_inclusion
    from shanzhi.ledger.note import NoteError, Verifier, verify

    with handle_errors(), _client(data_dir) as c:
        note = c.ledger_checkpoint()
        origin = note.split("\n", 1)[0]
        pinned = known_logs.load().get(origin)
        given = log_key or pinned
        if given is None:  # trust on first use, and say so
            given = c.ledger_status()["log_key"]
            path = known_logs.pin(origin, given)
            err.print(f"[yellow]pinned[/] the key of log {escape(origin)} on first use: {given} (in {path})")
        try:
            key = Verifier.decode(given)
            cp = Checkpoint.parse(verify(note, key)[0].text)
        except (NoteError, ValueError) as e:
            current = c.ledger_status()["log_key"]
            changed = pinned is not None and current != pinned and log_key is None
            why = (
                f"the log's key CHANGED: pinned {pinned}, the server now uses {current}; if the operator "
                f"really replaced it, remove {origin!r} from {known_logs.known_logs_file()}"
                if changed
                else f"the checkpoint does not verify with key {given}: {e}"
            )
            raise _fail(why) from None
        if index >= cp.size:
            raise _fail(f"entry {index} is not in the latest checkpoint (size {cp.size}); try again shortly")
        p = c.ledger_inclusion(index, cp.size)
    try:
        verify_inclusion(
            base64.b64decode(p["leaf"]), index, cp.size, [base64.b64decode(x) for x in p["proof"]], cp.root
        )
    except ProofError as e:
        raise _fail(f"the proof does NOT verify against the signed checkpoint: {e}") from None
    result = {
        "index": index,
        "leaf": p["leaf"],
        "origin": cp.origin,
        "tree_size": cp.size,
        "root": base64.b64encode(cp.root).decode(),
        "log_key": key.encode(),
        "proof_hashes": len(p["proof"]),
        "verified": True,
    }
    if output is Fmt.json:
        emit(result, output)
        return
    for k, v in result.items():
        out.print(f"{k.replace('_', ' '):<13} {escape(str(v))}")


@ledger_app.command("consistency")
def consistency(
    old: int,
    new: int | None = typer.Argument(None),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Fetch a consistency proof between two tree sizes and verify it here."""
    from shanzhi.ledger.merkle import ProofError, verify_consistency

    with handle_errors(), _client(data_dir) as c:
        p = c.ledger_consistency(old, new)
    try:
        verify_consistency(
            p["old"],
            p["new"],
            [base64.b64decode(x) for x in p["proof"]],
            base64.b64decode(p["old_root"]),
            base64.b64decode(p["new_root"]),
        )
    except ProofError as e:
        raise _fail(f"the proof does NOT verify: {e}") from None
    p["verified"] = True
    emit(p, output)


@ledger_app.command("watch")
def watch(
    start: int = typer.Option(0, "--from", help="First entry index to show."),
    count: int | None = typer.Option(None, "--count", help="Stop after this many entries."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Print every entry as it is acknowledged (Ctrl-C to stop)."""
    seen = 0
    with handle_errors(), _client(data_dir) as c:
        for e in c.ledger_watch(start):
            if output is Fmt.json:
                sys.stdout.write(json.dumps(e) + "\n")
                sys.stdout.flush()
            else:
                if seen == 0:
                    out.print(f"[bold]{'INDEX':>6}  {'TYPE':<14}  {'SUBJECT':<28}  {'DEPARTMENT':<20}  LINKS[/]")
                index, kind, subject, dept, links = _columns(e)
                out.print(escape(f"{index:>6}  {kind:<14}  {subject:<28}  {dept:<20}  {links}"))
            seen += 1
            if count is not None and seen >= count:
                return


def _columns(e: dict[str, Any]) -> tuple[int, str, str, str, str]:
    """An entry as a row: index, type, subject, submitting department, links (rel→index)."""
    try:
        env = json.loads(e["entry"].split("\n", 1)[0])
    except ValueError:
        return int(e["index"]), "?", "(not an entry)", "", ""
    links = ", ".join(f"{ln['rel']}→{ln['index']}" for ln in env.get("links", [])) or "-"
    return int(e["index"]), str(env.get("type", "?")), str(env.get("subject", "")), str(env.get("submitter", "")), links


@ledger_app.command("verify")
def verify(
    database_url: str | None = typer.Option(None, "--database-url", help="Verify the log in this database."),
    directory: Path | None = typer.Option(None, "--dir", help="Or verify an export directory."),
    log_key: str = typer.Option(..., "--log-key", help="The log's verifier key (see 'ledger status')."),
    witness_key: list[str] = typer.Option(None, "--witness-key", help="A witness verifier key, repeatable."),
    quorum: int = typer.Option(0, "--quorum", help="Cosignatures each checkpoint needs."),
    signatures: bool = typer.Option(False, "--signatures", help="Also check every entry's department signature."),
    output: Fmt = OutputOpt,
) -> None:
    """Recompute the tree from the stored entries and check every tile, checkpoint and signature.

    Runs without the server. Exits 1 and names the first entry, tile or checkpoint that
    does not match.
    """
    from shanzhi.ledger.note import NoteError, Verifier
    from shanzhi.ledger.verify import DatabaseSource, DirectorySource, Source, verify_log
    from shanzhi.store import open_database

    if (database_url is None) == (directory is None):
        raise _fail("give exactly one of --database-url or --dir")
    try:
        lk = Verifier.decode(log_key)
        wks = [Verifier.decode(k) for k in witness_key or []]
    except NoteError as e:
        raise _fail(str(e)) from None
    source: Source
    dept = None
    db = None
    if database_url:
        db = open_database(database_url)
        source = DatabaseSource(db)
        if signatures:
            from sqlalchemy import text

            with db.reader.connect() as conn:
                rows = conn.execute(text("SELECT vkey FROM ledger_keys WHERE role = 'department'")).all()
            dept = {v.name: v for v in (Verifier.decode(r[0]) for r in rows)}
    else:
        assert directory is not None
        source = DirectorySource(directory)
    started = time.monotonic()
    with err.status("verifying the ledger"):
        report = verify_log(source, lk, wks, quorum, department_keys=dept)
    seconds = time.monotonic() - started
    if db is not None:
        db.dispose()
    result = {
        "ok": report.ok,
        "size": report.size,
        "entries_checked": report.entries_checked,
        "checkpoints_checked": report.checkpoints_checked,
        "signatures_checked": report.signatures_checked,
        "seconds": round(seconds, 3),
        "problem": report.problem,
        "notes": report.notes,
    }
    if output is Fmt.json:
        emit(result, output)
    elif report.ok:
        out.print(
            f"OK: {report.entries_checked} entries, {report.checkpoints_checked} checkpoints"
            f"{f', {report.signatures_checked} entry signatures' if signatures else ''} verified in {seconds:.1f}s"
        )
    if not report.ok:
        raise _fail(f"verification FAILED: {report.problem}")


@ledger_app.command("export")
def export_cmd(
    directory: Path,
    database_url: str = typer.Option(..., "--database-url", help="The database holding the log."),
    output: Fmt = OutputOpt,
) -> None:
    """Write the log as static tlog-tiles files (offline), for mirrors and offline verification."""
    from shanzhi.ledger.verify import export
    from shanzhi.store import open_database

    db = open_database(database_url)
    size = export(db, directory)
    db.dispose()
    emit({"directory": str(directory), "size": size}, output)


@witness_app.command("serve")
def witness_serve(
    log: list[str] = typer.Option(..., "--log", help="ORIGIN=VKEY of a log to witness, repeatable."),
    name: str = typer.Option(..., "--name", help="The witness's key name, e.g. witness.gz.gov.cn/health."),
    data_dir: Path = typer.Option(..., "--data-dir", help="Where the witness keeps its key and state."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8710, "--port"),
) -> None:
    """Cosign checkpoints that extend what this witness saw; refuse rollbacks and forks."""
    import uvicorn

    from shanzhi.ledger.keys import load_or_create
    from shanzhi.ledger.note import COSIGNATURE_V1, NoteError, Verifier
    from shanzhi.ledger.witness import WitnessState
    from shanzhi.ledger.witness_app import witness_app

    logs: dict[str, Verifier] = {}
    for item in log:
        origin, sep, vkey = item.partition("=")
        try:
            logs[origin] = Verifier.decode(vkey)
        except NoteError as e:
            raise _fail(f"--log {item!r}: {e}") from None
        if not sep or logs[origin].name != origin:
            raise _fail(f"--log {item!r}: the key's name must be the log origin")
    signer = load_or_create(data_dir / "witness.key", name, COSIGNATURE_V1)
    state = WitnessState(data_dir / "witness.db", signer, logs)
    err.print(f"witness {name} on http://{host}:{port}  key {signer.verifier.encode()}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(witness_app(state), host=host, port=port, log_level="warning")
