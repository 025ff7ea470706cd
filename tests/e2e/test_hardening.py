"""What the hardening review tried against a real server over real HTTP (uvicorn, not a test client)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Server, stop_everything, wait_for

pytestmark = pytest.mark.e2e


def _token(server: Server, name: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + (server.data_dir / name).read_text().strip()}


def _audit(server: Server, **params: Any) -> list[dict[str, Any]]:
    r = httpx.get(f"{server.url}/api/v1/audit", params=params, headers=_token(server, "audit.token"), timeout=10)
    assert r.status_code == 200, r.text
    return list(r.json())


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        stop_everything(s.data_dir, s)


def test_forwarded_headers_are_believed_only_from_named_proxies(tmp_path: Path, servers: list[Server]) -> None:
    forged = {"X-Forwarded-For": "203.0.113.66"}
    for name, extra, source in (
        ("plain", (), "127.0.0.1"),
        ("proxied", ("--forwarded-allow-ips", "127.0.0.1"), "203.0.113.66"),
    ):
        d = tmp_path / name
        d.mkdir()
        s = Server(d, None, *extra)
        servers.append(s)
        r = httpx.post(
            f"{s.url}/api/v1/vdcs", json={"path": f"xff-{name}"}, headers={**_token(s, "admin.token"), **forged}
        )
        assert r.status_code == 201, r.text
        (rec,) = [a for a in _audit(s) if a["path"] == "/api/v1/vdcs" and a["method"] == "POST"]
        assert rec["source"] == source, name


def test_acknowledged_audit_records_keep_their_ledger_copy_through_kill_9(tmp_path: Path, database_url: str) -> None:
    """The review's finding: after kill -9, acknowledged records had no ledger copy, ever."""
    import threading

    d = tmp_path / "data"
    d.mkdir()
    url = None if database_url.startswith("sqlite") else database_url
    server = Server(d, url)
    acknowledged: list[str] = []
    stop = threading.Event()

    def write(worker: int) -> None:
        with httpx.Client(base_url=server.url, headers=_token(server, "admin.token"), timeout=10) as c:
            for i in range(10_000):
                if stop.is_set():
                    return
                try:
                    r = c.post("/api/v1/vdcs", json={"path": f"crash-{worker}-{i}"})
                except httpx.HTTPError:
                    return
                if r.status_code == 201:
                    acknowledged.append(f"crash-{worker}-{i}")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(acknowledged) >= 60, 60, "60 acknowledged writes")
        server.kill()  # SIGKILL in the middle of the stream
    finally:
        stop.set()
        for t in threads:
            t.join()
    server = Server(d, url)
    try:

        def settled() -> dict[str, Any] | None:
            r = httpx.get(f"{server.url}/api/v1/audit/verify", headers=_token(server, "audit.token"), timeout=30)
            body = dict(r.json())
            return body if body["ledger_copies"]["pending"] == 0 else None

        report = wait_for(settled, 30, "the outbox drained after the restart")
        assert report["ok"], report["problem"]
        assert report["ledger_copies"]["missing"] == [] and report["ledger_copies"]["wrong"] == []
        records = _audit(server, limit=5000)
        ledgered = {r["id"] for r in records if r["ledger_index"] is not None}
        posts = [r for r in records if r["path"] == "/api/v1/vdcs" and r["method"] == "POST"]
        assert len(posts) >= len(acknowledged) and all(r["id"] in ledgered for r in posts)
    finally:
        stop_everything(d, server)


def test_strangers_big_bodies_are_refused_before_they_are_read(tmp_path: Path, servers: list[Server]) -> None:
    """The review: four concurrent unauthenticated 50 MB bodies took the server from 225 to 681 MiB."""
    import threading

    import psutil

    d = tmp_path / "data"
    d.mkdir()
    s = Server(d, None)
    servers.append(s)
    proc = psutil.Process(s.proc.pid)
    before = proc.memory_info().rss
    answers: list[int | str] = []

    def send() -> None:
        def body() -> Any:
            for _ in range(50):
                yield b"x" * 2**20

        try:
            r = httpx.post(
                f"{s.url}/api/v1/apps", content=body(), headers={"content-type": "application/json"}, timeout=60
            )
            answers.append(r.status_code)
        except httpx.HTTPError as err:  # the server answered and closed while we were still sending
            answers.append(type(err).__name__)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grown = (proc.memory_info().rss - before) / 2**20
    assert all(a == 401 or isinstance(a, str) for a in answers), answers
    assert grown < 40, f"the server grew by {grown:.0f} MiB"
    # an administrator's oversized body is refused too, by its declared length and when chunked
    admin = _token(s, "admin.token")
    r = httpx.post(f"{s.url}/api/v1/apps", content=b"x" * (5 * 2**20), headers=admin, timeout=60)
    assert r.status_code == 413


def test_an_auditor_enrols_a_second_factor_and_logs_in_with_it_through_the_cli(
    tmp_path: Path, servers: list[Server]
) -> None:
    import re
    import subprocess
    import sys
    import time

    import pyotp

    from tests.e2e.harness import Cli

    d = tmp_path / "data"
    d.mkdir()
    s = Server(d, None)
    servers.append(s)
    cli = Cli(s)
    sec = {"SHANZHI_TOKEN": (d / "security.token").read_text().strip()}
    assert cli.run("user", "create", "auditor2", "--password", "Second-factor-2026", env=sec).returncode == 0
    assert cli.run("grant", "add", "auditor2", "audit-admin", env=sec).returncode == 0
    pw = {"SHANZHI_PASSWORD": "Second-factor-2026"}
    first = cli.run("login", "-u", "auditor2", env=pw)
    assert first.returncode == 0 and "shanzhi mfa enroll" in first.stderr
    assert cli.run("audit", "list").returncode == 1  # this session may only enrol
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
    env |= {"SHANZHI_URL": s.url, "SHANZHI_HOME": str(d), "XDG_CONFIG_HOME": str(d.parent / "config")}
    enrol = subprocess.Popen(
        [sys.executable, "-m", "shanzhi", "mfa", "enroll"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert enrol.stderr is not None and enrol.stdin is not None
    secret = None
    for line in enrol.stderr:
        m = re.search(r"Secret \(if you cannot scan\): ([A-Z2-7]+)", line)
        if m:
            secret = m.group(1)
            break
    assert secret, "the enrolment printed no secret"
    totp = pyotp.TOTP(secret)
    out, _ = enrol.communicate(totp.now() + "\n", timeout=60)
    assert enrol.returncode == 0 and "Recovery codes" in out
    recovery = re.findall(r"^  ([0-9a-f]{6}-[0-9a-f]{6})$", out, re.M)
    assert len(recovery) == 10
    bad = cli.run("login", "-u", "auditor2", env=pw)  # no code given, none at a terminal: refused
    assert bad.returncode == 1 and "second factor" in bad.stderr
    good = cli.run("login", "-u", "auditor2", env=pw | {"SHANZHI_OTP": totp.at(time.time() + 30)})
    assert good.returncode == 0 and "needs a second factor" not in good.stderr
    assert cli.run("audit", "list").returncode == 0
    assert cli.run("login", "-u", "auditor2", "--otp", recovery[0], env=pw).returncode == 0


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_with_hsts_and_security_headers_everywhere(tmp_path: Path, servers: list[Server]) -> None:
    cert, key = _self_signed(tmp_path)
    d = tmp_path / "data"
    d.mkdir()
    s = Server(d, None, "--tls-cert", str(cert), "--tls-key", str(key))
    servers.append(s)
    assert s.url.startswith("https://")
    trust = ssl.create_default_context(cafile=str(cert))
    r = httpx.get(f"{s.url}/api/v1/status", headers=_token(s, "admin.token"), verify=trust, timeout=10)
    assert r.status_code == 200
    assert r.headers["strict-transport-security"].startswith("max-age=31536000")
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"
    refused = httpx.get(f"{s.url}/api/v1/status", verify=trust, timeout=10)  # errors carry them too
    assert refused.status_code == 401 and refused.headers["x-frame-options"] == "DENY"
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets nowhere
        httpx.get(s.url.replace("https://", "http://") + "/healthz", timeout=5).raise_for_status()
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    plain = Server(plain_dir, None)
    servers.append(plain)
    r = httpx.get(f"{plain.url}/healthz", timeout=5)
    assert r.headers["x-content-type-options"] == "nosniff" and "strict-transport-security" not in r.headers
    bad = subprocess_serve(tmp_path, "--tls-cert", str(cert))  # a certificate without its key is refused
    assert bad.returncode == 1 and "go together" in bad.stderr


def subprocess_serve(tmp_path: Path, *args: str) -> Any:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
    return subprocess.run(
        [sys.executable, "-m", "shanzhi", "serve", "--data-dir", str(tmp_path / "never"), *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_workers_serve_while_the_controllers_run_in_their_own_process(tmp_path: Path, servers: list[Server]) -> None:
    import psutil

    d = tmp_path / "data"
    d.mkdir()
    s = Server(d, None, "--workers", "2")
    servers.append(s)
    h = _token(s, "admin.token")
    kids = psutil.Process(s.proc.pid).children(recursive=True)
    names = [" ".join(k.cmdline()) for k in kids]
    assert sum("spawn_main" in n or "multiprocessing" in n for n in names) >= 3, names  # 2 workers + controllers
    r = httpx.post(
        f"{s.url}/api/v1/clouds", json={"name": "sim", "kind": "sim", "site": "a", "region": "gz"}, headers=h
    )
    assert r.status_code == 201, r.text
    assert httpx.post(f"{s.url}/api/v1/vdcs", json={"path": "gz"}, headers=h).status_code == 201
    app = {
        "apiVersion": "shanzhi.io/v1", "kind": "App", "metadata": {"name": "w", "vdc": "gz"},
        "spec": {"components": [{"name": "c", "replicas": 3, "image": "x"}]},
    }  # fmt: skip
    assert httpx.post(f"{s.url}/api/v1/apps", json=app, headers=h).status_code == 201

    def running() -> bool:
        got = httpx.get(f"{s.url}/api/v1/instances", params={"app": "w"}, headers=h, timeout=10).json()
        return len(got) == 3 and all(i["state"] == "running" for i in got)

    wait_for(running, 60, "the controllers' process to place and start the replicas")
    # many requests spread over both workers all authenticate and see the same store
    seen = {httpx.get(f"{s.url}/api/v1/apps/w", headers=h, timeout=10).json()["status"] for _ in range(20)}
    assert seen == {"Ready"}, seen
    assert s.terminate() == 0
    assert wait_for(lambda: not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kids), 30, "exit")


def test_events_follow_as_json_is_one_object_per_line_from_the_first(tmp_path: Path, servers: list[Server]) -> None:
    import json
    import subprocess
    import sys

    d = tmp_path / "data"
    d.mkdir()
    s = Server(d, None)
    servers.append(s)
    h = _token(s, "admin.token")
    httpx.post(f"{s.url}/api/v1/clouds", json={"name": "a", "kind": "sim", "site": "a", "region": "gz"}, headers=h)
    wait_for(lambda: httpx.get(f"{s.url}/api/v1/events", headers=h).json(), 30, "a first event")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
    env |= {"SHANZHI_URL": s.url, "SHANZHI_HOME": str(d)}
    follow = subprocess.Popen(
        [sys.executable, "-m", "shanzhi", "events", "-f", "-o", "json"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert follow.stdout is not None
        first = json.loads(follow.stdout.readline())  # the backlog: already one object per line
        assert isinstance(first, dict) and first["reason"] == "CloudAdded"
        httpx.post(f"{s.url}/api/v1/clouds", json={"name": "b", "kind": "sim", "site": "b", "region": "gz"}, headers=h)
        later = json.loads(follow.stdout.readline())  # then the new ones as they come
        assert isinstance(later, dict) and later["id"] > first["id"] and later["reason"].startswith("Cloud")
    finally:
        follow.kill()
        follow.wait()
        if follow.stdout is not None:
            follow.stdout.close()
