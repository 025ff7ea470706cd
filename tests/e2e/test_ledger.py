"""End to end: a server with three real witness processes, driven through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy

from tests.e2e.harness import Cli, Server, free_port, stop_everything, wait_for

pytestmark = pytest.mark.e2e
ORIGIN = "ledger.gz.example/directory"


class WitnessProc:
    def __init__(self, data_dir: Path, name: str, log_vkey: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shanzhi",
                "witness",
                "serve",
                "--log",
                f"{ORIGIN}={log_vkey}",
                "--name",
                name,
                "--data-dir",
                str(data_dir),
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.vkey = wait_for(self._status, 30, f"witness {name}")["key"]

    def _status(self) -> dict[str, str] | None:
        try:
            return dict(httpx.get(f"{self.url}/status", timeout=1).json())
        except httpx.HTTPError:
            return None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[tuple[Server, list[WitnessProc], Cli, str, str | None]]:
    data = tmp_path / "data"
    data.mkdir()
    # the log key must exist before the witnesses are told about it: make it the way the server will
    from shanzhi.ledger.keys import load_or_create

    log_key = load_or_create(data / "ledger.key", ORIGIN).verifier.encode()
    witnesses = [
        WitnessProc(tmp_path / f"w{i}", f"witness.gz.example/{d}", log_key)
        for i, d in enumerate(("health", "transport", "finance"))
    ]
    args = ["--ledger-origin", ORIGIN, "--witness-quorum", "2"]
    for w in witnesses:
        args += ["--witness", f"{w.url}={w.vkey}"]
    url = None if database_url.startswith("sqlite") else database_url
    server = Server(data, url, *args)
    db_url = url or f"sqlite+pysqlite:///{data / 'shanzhi.db'}"
    try:
        yield server, witnesses, Cli(server), log_key, db_url
    finally:
        for w in witnesses:
            if w.proc.poll() is None:
                w.stop()
        stop_everything(data, server)


def test_departments_submit_link_prove_watch_and_anyone_verifies(world: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    server, witnesses, cli, log_key, db_url = world
    key = tmp_path / "health.key"
    made = cli.json("ledger", "keygen", "gz.gov.cn/health", "--file", str(key))
    cli.ok("ledger", "add-key", "gz.gov.cn/health", made["vkey"])

    engine = sqlalchemy.create_engine(db_url, poolclass=sqlalchemy.pool.NullPool)  # asking the server is audited

    def settle() -> int:
        """Wait until every audit record's commitment is in the ledger; the ledger's size."""

        def drained() -> bool:
            with engine.connect() as c:
                return not c.execute(sqlalchemy.text("SELECT count(*) FROM audit_outbox")).scalar()

        wait_for(drained, 20, "audit commitments")
        return int(cli.json("ledger", "status")["size"])

    assert settle() == 1  # the key registration's audit commitment
    # a live subscriber sees every entry
    seen: list[dict[str, object]] = []
    watcher = subprocess.Popen(
        [sys.executable, "-m", "shanzhi", "ledger", "watch", "--count", "6", "-o", "json"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "SHANZHI_URL": server.url, "SHANZHI_HOME": str(server.data_dir)},
    )

    def read() -> None:
        assert watcher.stdout is not None
        seen.extend(json.loads(line) for line in watcher.stdout)

    reader = threading.Thread(target=read)
    reader.start()
    r = cli.json(
        "ledger",
        "submit",
        "--key",
        str(key),
        "--type",
        "responsibility",
        "--subject",
        "resp/clinics",
        "--body",
        '{"code": "clinics", "title": "Licensing of clinics", "basis": "Regulation 12"}',
    )
    assert r["index"] == 1 and settle() == 3  # the submission, then its audit commitment
    catalog = {
        "code": "440100-HEALTH-0001",
        "version": 1,
        "name": "Licensed clinics",
        "provider": "gz/health",
        "share_type": "conditional",
        "share_conditions": "inspection only",
        "update_cycle": "daily",
    }
    c = cli.json(
        "ledger",
        "submit",
        "--key",
        str(key),
        "--type",
        "catalog",
        "--subject",
        "catalog/440100-HEALTH-0001",
        "--body",
        json.dumps(catalog),
        "--link",
        f"responsibility={r['index']}",
    )
    assert c["index"] == 3 and settle() == 5
    cli.ok("vdc", "create", "gz")  # a platform action: its audit record is committed to the ledger too
    assert settle() == 6
    reader.join(timeout=30)
    watcher.wait(timeout=10)
    assert watcher.stdout is not None
    watcher.stdout.close()
    # each request's audit commitment follows what it did: key, submission, submission, VDC
    assert [e["index"] for e in seen] == [0, 1, 2, 3, 4, 5]
    kinds = [json.loads(str(e["entry"]).split("\n\n")[0])["type"] for e in seen]
    assert kinds == ["audit", "responsibility", "audit", "catalog", "audit", "audit"]

    # a cosigned checkpoint appears within a second or so
    def checkpoint_at(size: int) -> dict[str, str] | None:
        s = cli.json("ledger", "status")
        return s if s["checkpoint"] and s["checkpoint"].split("\n")[1] == str(size) else None

    status = wait_for(lambda: checkpoint_at(6), 20, "checkpoint")
    assert status["checkpoint"].count("\u2014 witness.gz.example/") >= 2
    first = cli.run("ledger", "prove", "1", "-o", "json")
    assert first.returncode == 0 and "pinned the key of log" in first.stderr  # trust on first use, said
    proof = json.loads(first.stdout)
    assert proof["verified"] and proof["tree_size"] == 6 and proof["log_key"] == status["log_key"]
    again = cli.run("ledger", "prove", "1")
    assert again.returncode == 0 and "pinned" not in again.stderr and "verified" in again.stdout
    # a checkpoint signed by another key than the pinned one is refused, naming the change
    known = server.data_dir.parent / "config" / "shanzhi" / "known_logs.json"
    logs = json.loads(known.read_text())
    origin = proof["origin"]
    other = cli.json("ledger", "keygen", origin, "--file", str(tmp_path / "impostor.key"))["vkey"]
    known.write_text(json.dumps({**logs, origin: other}))
    changed = cli.run("ledger", "prove", "1")
    assert changed.returncode == 1 and "CHANGED" in changed.stderr and str(known) in changed.stderr
    wrong = cli.run("ledger", "prove", "1", "--log-key", other)
    assert wrong.returncode == 1 and "does not verify" in wrong.stderr
    assert cli.json("ledger", "consistency", "1", "6")["verified"]
    # a bad submission is refused, naming the problem, and changes nothing
    bad = cli.run(
        "ledger", "submit", "--key", str(key), "--type", "catalog", "--subject", "x", "--body", '{"code": "x"}'
    )
    assert bad.returncode == 1 and "version" in bad.stderr
    stranger = tmp_path / "stranger.key"
    cli.json("ledger", "keygen", "gz.gov.cn/stranger", "--file", str(stranger))
    refused = cli.run(
        "ledger",
        "submit",
        "--key",
        str(stranger),
        "--type",
        "access",
        "--subject",
        "c",
        "--body",
        '{"catalog": "c", "consumer": "x", "records": 1}',
    )
    assert refused.returncode == 1 and "no registered key" in refused.stderr
    assert settle() == 7  # the refusal's audit commitment, nothing of the refused entry
    admin = {"Authorization": "Bearer " + (server.data_dir / "admin.token").read_text().strip()}
    assert '"type":"audit"' in httpx.get(f"{server.url}/api/v1/ledger/entries/6", headers=admin).json()["entry"]
    # one witness down: 2 of 3 still make a quorum
    witnesses[0].stop()
    cli.ok("vdc", "create", "sz")
    assert settle() == 8
    wait_for(lambda: cli.json("ledger", "status")["checkpoint"].split("\n")[1] == "8", 30, "checkpoint with 2 of 3")
    # anyone verifies, without the server, from the database and from an export
    wkeys = [a for w in witnesses for a in ("--witness-key", w.vkey)]
    v = cli.json(
        "ledger", "verify", "--database-url", db_url, "--log-key", log_key, *wkeys, "--quorum", "2", "--signatures"
    )
    assert v["ok"] and v["entries_checked"] == 8 and v["signatures_checked"] == 8
    out = tmp_path / "export"
    cli.json("ledger", "export", str(out), "--database-url", db_url)
    assert cli.json("ledger", "verify", "--dir", str(out), "--log-key", log_key, *wkeys, "--quorum", "2")["ok"]
    # the tlog-tiles read API serves the same bytes
    token = (server.data_dir / "admin.token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    tile = httpx.get(f"{server.url}/api/v1/ledger/tile/0/000.p/8", headers=auth)
    assert tile.status_code == 200 and tile.content == (out / "tile/0/000.p/8").read_bytes()
    older = httpx.get(f"{server.url}/api/v1/ledger/tile/0/000.p/6", headers=auth)  # an earlier checkpoint's tile
    assert older.content == tile.content[: 6 * 32]
    assert httpx.get(f"{server.url}/api/v1/ledger/tile/0/000", headers=auth).status_code == 404  # not full yet
    # public (serve --ledger-public, the default): anyone fetches tiles with a plain GET
    assert httpx.get(f"{server.url}/api/v1/ledger/tile/0/000.p/4").content == tile.content[: 4 * 32]
    # tampering is caught and named. Stop the server first: any audited request appends to the
    # ledger, and an append rewrites the partial bundle being tampered with.
    if db_url and db_url.startswith("sqlite"):
        import sqlite3

        server.kill()

        path = db_url.split("///", 1)[1]
        with sqlite3.connect(path) as conn:
            data = bytearray(conn.execute("SELECT data FROM ledger_bundles WHERE idx = 0").fetchone()[0])
            data[40] ^= 1
            conn.execute("UPDATE ledger_bundles SET data = ? WHERE idx = 0", (bytes(data),))
        failed = cli.run("ledger", "verify", "--database-url", db_url, "--log-key", log_key)
        assert failed.returncode == 1 and "entry 0 does not match its leaf hash" in failed.stderr
