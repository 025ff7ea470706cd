"""Tenancy benchmark: what identities, authorization, VDC scoping and fail-closed audit cost,
side by side with the baselines in one run (SQLite, in-process API):

- login/s against raw argon2id hashing (the physical limit: a login is one verification);
- GET /healthz (no auth, the floor) vs an authorized GET /status (token lookup, grants, rule);
- GET /apps: system admin (all 400 apps) vs a member scoped to one of 40 VDCs;
- POST /apps: each apply with its audit record in the same transaction, vs the same apply
  through the service with no HTTP, no authorization and no audit.

    python bench/tenancy.py [--quick] [-o results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from rich.console import Console
from rich.table import Table

from shanzhi.api import create_app
from shanzhi.config import Settings
from shanzhi.domain.spec import parse_app
from shanzhi.services.apps import apply_app

PASSWORD = "bench-password-1"


def spec(name: str, vdc: str) -> dict[str, Any]:
    return {
        "apiVersion": "shanzhi.io/v1",
        "kind": "App",
        "metadata": {"name": name, "vdc": vdc},
        "spec": {"components": [{"name": "c", "image": "x", "resources": {"cpu": "10m", "memory": "1Mi"}}]},
    }


def timed(n: int, fn: Any) -> float:
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-o", "--output", default="bench/results/tenancy.json")
    args = ap.parse_args()
    n = 200 if args.quick else 1000
    tmp = Path(tempfile.mkdtemp(prefix="shanzhi-bench-tenancy-"))
    settings = Settings.build(tmp, None, controller=False, ledger=False)
    results: dict[str, float] = {}
    with TestClient(create_app(settings)) as api:
        admin = {"Authorization": f"Bearer {(tmp / 'admin.token').read_text().strip()}"}
        sec = {"Authorization": f"Bearer {(tmp / 'security.token').read_text().strip()}"}
        api.post("/api/v1/vdcs", json={"path": "city"}, headers=admin)
        for d in range(40):
            api.post("/api/v1/vdcs", json={"path": f"city/d{d}"}, headers=admin)
            for a in range(10):
                api.post("/api/v1/apps", json=spec(f"a{a}", f"city/d{d}"), headers=admin)
        api.post("/api/v1/users", json={"name": "member", "password": PASSWORD}, headers=sec)
        api.post("/api/v1/grants", json={"user": "member", "role": "member", "vdc": "city/d7"}, headers=sec)

        logins = max(10, n // 20)
        hasher = PasswordHasher()
        stored = hasher.hash(PASSWORD)
        results["argon2id verify/s (raw)"] = timed(logins, lambda _: hasher.verify(stored, PASSWORD))
        results["login/s (API)"] = timed(
            logins, lambda _: api.post("/api/v1/auth/login", json={"user": "member", "password": PASSWORD})
        )
        session = api.post("/api/v1/auth/login", json={"user": "member", "password": PASSWORD}).json()
        member = {"Authorization": f"Bearer {session['token']}"}

        results["GET /healthz/s (no auth)"] = timed(n, lambda _: api.get("/healthz"))
        results["GET /status/s (authorized)"] = timed(n, lambda _: api.get("/api/v1/status", headers=member))
        results["GET /apps/s, system admin (400 apps)"] = timed(
            n // 5, lambda _: api.get("/api/v1/apps", headers=admin)
        )
        results["GET /apps/s, member of 1 of 40 VDCs (10 apps)"] = timed(
            n // 5, lambda _: api.get("/api/v1/apps", headers=member)
        )
        results["POST /apps/s, authorized + audited in-transaction"] = timed(
            n // 2, lambda i: api.post("/api/v1/apps", json=spec(f"m{i}", "city/d7"), headers=member)
        )
        db = api.app.state.db

        def raw(i: int) -> None:
            with db.session() as s, s.begin():
                apply_app(s, parse_app(spec(f"r{i}", "city/d8")))

        results["apply_app/s, service only (no HTTP, authz, audit)"] = timed(n // 2, raw)
    table = Table(title="tenancy: authorization and audit overhead (SQLite, in-process)")
    table.add_column("measure")
    table.add_column("per second", justify="right")
    for k, v in results.items():
        table.add_row(k, f"{v:,.0f}")
    Console(width=160).print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(
        json.dumps({"benchmark": "tenancy", "quick": args.quick, "results": results}, indent=2)
    )
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
