"""A typed client for the Shanzhi REST API (the CLI and console use nothing else).

Pass `transport=` (any httpx transport, e.g. `httpx.ASGITransport(app)`) to talk to an
in-process server in tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from shanzhi.config import DEFAULT_URL, default_data_dir


class ApiError(Exception):
    """The server answered with a problem document."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(str(problem.get("detail") or problem.get("title") or f"HTTP {status}"))


class Unreachable(Exception):
    pass


def discover_token(data_dir: Path | None = None) -> str | None:
    token = os.environ.get("SHANZHI_TOKEN")
    if token:
        return token.strip()
    path = (data_dir or default_data_dir()) / "admin.token"
    try:
        return path.read_text().strip()
    except OSError:
        return None


class Client:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("SHANZHI_URL") or DEFAULT_URL).rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as err:
            raise Unreachable(f"cannot reach Shanzhi at {self.url}: {err}") from None
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"title": r.reason_phrase, "detail": r.text[:500]}
            raise ApiError(r.status_code, body if isinstance(body, dict) else {"detail": str(body)})
        return r.json() if r.content else None

    # clouds
    def add_cloud(
        self, name: str, kind: str, site: str, region: str, tags: dict[str, str], options: dict[str, str]
    ) -> Any:
        body = {"name": name, "kind": kind, "site": site, "region": region, "tags": tags, "options": options}
        return self._call("POST", "/clouds", json=body)

    def list_clouds(self) -> Any:
        return self._call("GET", "/clouds")

    def get_cloud(self, name: str) -> Any:
        return self._call("GET", f"/clouds/{name}")

    def remove_cloud(self, name: str, drain: bool = False) -> Any:
        return self._call("DELETE", f"/clouds/{name}", params={"drain": drain})

    def fail_cloud(self, name: str, host: str | None = None) -> Any:
        return self._call("POST", f"/clouds/{name}/fail", json={"host": host})

    def recover_cloud(self, name: str, host: str | None = None) -> Any:
        return self._call("POST", f"/clouds/{name}/recover", json={"host": host})

    # vdcs
    def create_vdc(self, path: str, quota: dict[str, Any], parents: bool = False) -> Any:
        return self._call("POST", "/vdcs", json={"path": path, "quota": quota, "parents": parents})

    def list_vdcs(self) -> Any:
        return self._call("GET", "/vdcs")

    def get_vdc(self, path: str) -> Any:
        return self._call("GET", f"/vdcs/{path}")

    def set_quota(self, path: str, quota: dict[str, Any]) -> Any:
        return self._call("PUT", f"/vdcs/{path}/quota", json={"quota": quota})

    def delete_vdc(self, path: str) -> Any:
        return self._call("DELETE", f"/vdcs/{path}")

    # apps
    def apply(self, document: dict[str, Any]) -> Any:
        return self._call("POST", "/apps", json=document)

    def list_apps(self, vdc: str | None = None) -> Any:
        return self._call("GET", "/apps", params=_params(vdc=vdc))

    def get_app(self, name: str, vdc: str | None = None) -> Any:
        return self._call("GET", f"/apps/{name}", params=_params(vdc=vdc))

    def delete_app(self, name: str, vdc: str | None = None) -> Any:
        return self._call("DELETE", f"/apps/{name}", params=_params(vdc=vdc))

    # observe
    def list_instances(self, app: str | None = None, vdc: str | None = None, cloud: str | None = None) -> Any:
        return self._call("GET", "/instances", params=_params(app=app, vdc=vdc, cloud=cloud))

    def events(self, app: str | None = None, vdc: str | None = None, since: int = 0, limit: int = 200) -> Any:
        return self._call("GET", "/events", params=_params(app=app, vdc=vdc, since=since, limit=limit))

    def status(self) -> Any:
        return self._call("GET", "/status")

    # audit
    def audit_records(self, since: int = 0, limit: int = 200) -> Any:
        return self._call("GET", "/audit", params={"since": since, "limit": limit})

    def audit_verify(self) -> Any:
        return self._call("GET", "/audit/verify")

    # plans
    def propose_plan(self, kind: str, cloud: str | None, target: float | None, time_limit: float) -> Any:
        body = {"kind": kind, "cloud": cloud, "target_utilisation": target, "time_limit": time_limit}
        return self._call("POST", "/plans", json=body, timeout=time_limit + 60)

    def get_plan(self, plan_id: int) -> Any:
        return self._call("GET", f"/plans/{plan_id}")

    def apply_plan(self, plan_id: int) -> Any:
        return self._call("POST", f"/plans/{plan_id}/apply")

    # ledger
    def ledger_status(self) -> Any:
        return self._call("GET", "/ledger/status")

    def ledger_submit(self, entries: list[str]) -> Any:
        return self._call("POST", "/ledger/entries", json={"entries": entries})

    def ledger_entry(self, index: int) -> Any:
        return self._call("GET", f"/ledger/entries/{index}")

    def ledger_inclusion(self, index: int, size: int | None = None) -> Any:
        return self._call("GET", "/ledger/proof/inclusion", params=_params(index=index, size=size))

    def ledger_consistency(self, old: int, new: int | None = None) -> Any:
        return self._call("GET", "/ledger/proof/consistency", params=_params(old=old, new=new))

    def ledger_keys(self) -> Any:
        return self._call("GET", "/ledger/keys")

    def ledger_add_key(self, name: str, vkey: str, role: str) -> Any:
        return self._call("POST", "/ledger/keys", json={"name": name, "vkey": vkey, "role": role})

    def ledger_watch(self, start: int = 0) -> Iterator[dict[str, Any]]:
        """Entries from `start` on, as the server acknowledges them (server-sent events)."""
        try:
            with self._http.stream("GET", "/ledger/watch", params={"from": start}, timeout=None) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ApiError(r.status_code, r.json())
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        yield json.loads(line[6:])
        except httpx.TransportError as err:
            raise Unreachable(f"cannot reach Shanzhi at {self.url}: {err}") from None


def _params(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}
