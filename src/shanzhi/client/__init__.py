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
from shanzhi.files import write_private


class ApiError(Exception):
    """The server answered with a problem document."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(str(problem.get("detail") or problem.get("title") or f"HTTP {status}"))


class Unreachable(Exception):
    pass


def credentials_file() -> Path:
    """Where `shanzhi login` keeps session tokens, one per server URL (mode 0600)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "shanzhi" / "credentials.json"


def server_url(url: str | None = None) -> str:
    return (url or os.environ.get("SHANZHI_URL") or DEFAULT_URL).rstrip("/")


def load_credentials() -> dict[str, str]:
    try:
        data = json.loads(credentials_file().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def save_credentials(url: str, token: str | None) -> Path:
    """Remember (or with None, forget) the token for `url`."""
    creds = load_credentials()
    if token is None:
        creds.pop(url, None)
    else:
        creds[url] = token
    path = credentials_file()
    write_private(path, json.dumps(creds, indent=2))
    return path


def discover_token(data_dir: Path | None = None, fallback: str = "admin.token", url: str | None = None) -> str | None:
    """The token to use: $SHANZHI_TOKEN, else the one `shanzhi login` saved for this server,
    else the bootstrap token file `fallback` in the data dir (on the server's own machine)."""
    token = os.environ.get("SHANZHI_TOKEN")
    if token:
        return token.strip()
    saved = load_credentials().get(server_url(url))
    if saved:
        return saved
    path = (data_dir or default_data_dir()) / fallback
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
        self.url = server_url(url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, kw_text: bool = False, **kw: Any) -> Any:
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
        if kw_text:
            return r.text
        return r.json() if r.content else None

    # clouds
    def add_cloud(
        self,
        name: str,
        kind: str,
        site: str,
        region: str,
        tags: dict[str, str],
        options: dict[str, str],
        credentials: dict[str, str] | None = None,
    ) -> Any:
        body: dict[str, Any] = {"name": name, "kind": kind, "site": site, "region": region, "tags": tags}
        body["options"] = options
        if credentials is not None:
            body["credentials"] = credentials
        return self._call("POST", "/clouds", json=body)

    def inventory(self, cloud: str | None, kind: str | None, unmanaged: bool, after: int = 0, limit: int = 200) -> Any:
        params: dict[str, Any] = {"after": after, "limit": limit, "unmanaged": unmanaged}
        params |= {k: v for k, v in (("cloud", cloud), ("kind", kind)) if v is not None}
        return self._call("GET", "/inventory", params=params)

    def inventory_syncs(self) -> Any:
        return self._call("GET", "/inventory/syncs")

    def inventory_sync(self, cloud: str | None) -> Any:
        return self._call("POST", "/inventory/sync", json={"cloud": cloud})

    def adopt(self, cloud: str, ids: list[str], vdc: str, app: str, component: str, dry_run: bool) -> Any:
        body = {"cloud": cloud, "ids": ids, "vdc": vdc, "app": app, "component": component, "dry_run": dry_run}
        return self._call("POST", "/adopt", json=body)

    def set_cloud_credentials(self, name: str, credentials: dict[str, str]) -> Any:
        return self._call("PUT", f"/clouds/{name}/credentials", json={"credentials": credentials})

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

    # volumes
    def list_volumes(self, app: str | None = None, vdc: str | None = None) -> Any:
        return self._call("GET", "/volumes", params=_params(app=app, vdc=vdc))

    def get_volume(self, key: str) -> Any:
        return self._call("GET", f"/volumes/{key}")

    def delete_volume(self, key: str, cloud: str | None = None) -> Any:
        return self._call("DELETE", f"/volumes/{key}", params=_params(cloud=cloud))

    def snapshot_volume(self, key: str, name: str, cloud: str | None = None, restore: bool = False) -> Any:
        path = f"/volumes/{key}/restore" if restore else f"/volumes/{key}/snapshots"
        return self._call("POST", path, json={"name": name, "cloud": cloud}, timeout=300)

    def volume_snapshots(self, key: str, cloud: str | None = None) -> Any:
        return self._call("GET", f"/volumes/{key}/snapshots", params=_params(cloud=cloud))

    # images
    def list_images(self) -> Any:
        return self._call("GET", "/images")

    def get_image(self, name: str) -> Any:
        return self._call("GET", f"/images/{name}")

    def build_image(self, name: str, kind: str = "tiny") -> Any:
        return self._call("POST", "/images", json={"name": name, "kind": kind}, timeout=300)

    def import_image(self, name: str, path: str, sha256: str | None = None) -> Any:
        return self._call("POST", "/images/import", json={"name": name, "path": path, "sha256": sha256}, timeout=600)

    def delete_image(self, name: str) -> Any:
        return self._call("DELETE", f"/images/{name}")

    # vdcs
    def create_vdc(self, path: str, quota: dict[str, Any], parents: bool = False, strict: bool = False) -> Any:
        return self._call("POST", "/vdcs", json={"path": path, "quota": quota, "parents": parents, "strict": strict})

    def list_vdcs(self) -> Any:
        return self._call("GET", "/vdcs")

    def get_vdc(self, path: str) -> Any:
        return self._call("GET", f"/vdcs/{path}")

    def set_quota(self, path: str, quota: dict[str, Any], strict: bool | None = None) -> Any:
        return self._call("PUT", f"/vdcs/{path}/quota", json={"quota": quota, "strict": strict})

    def delete_vdc(self, path: str) -> Any:
        return self._call("DELETE", f"/vdcs/{path}")

    # apps
    def apply(self, document: dict[str, Any], cause: str | None = None) -> Any:
        return self._call("POST", "/apps", json=document, params=_params(cause=cause))

    def dry_run(self, document: dict[str, Any]) -> Any:
        return self._call("POST", "/apps/dry-run", json=document)

    def revisions(self, name: str, vdc: str | None = None) -> Any:
        return self._call("GET", f"/apps/{name}/revisions", params=_params(vdc=vdc))

    def list_apps(self, vdc: str | None = None) -> Any:
        return self._call("GET", "/apps", params=_params(vdc=vdc))

    def get_app(self, name: str, vdc: str | None = None) -> Any:
        return self._call("GET", f"/apps/{name}", params=_params(vdc=vdc))

    def delete_app(self, name: str, vdc: str | None = None) -> Any:
        return self._call("DELETE", f"/apps/{name}", params=_params(vdc=vdc))

    # observe
    def list_instances(self, app: str | None = None, vdc: str | None = None, cloud: str | None = None) -> Any:
        return self._call("GET", "/instances", params=_params(app=app, vdc=vdc, cloud=cloud))

    def get_instance(self, name: str) -> Any:
        return self._call("GET", f"/instances/{name}")

    def app_metrics(self, name: str, vdc: str | None, since: str, instance: str | None) -> Any:
        params = {"since": since} | {k: v for k, v in (("vdc", vdc), ("instance", instance)) if v is not None}
        return self._call("GET", f"/apps/{name}/metrics", params=params)

    def instance_logs(self, name: str, tail: int) -> Any:
        return self._call("GET", f"/instances/{name}/logs", params={"tail": tail})

    def events(self, app: str | None = None, vdc: str | None = None, since: int = 0, limit: int = 200) -> Any:
        return self._call("GET", "/events", params=_params(app=app, vdc=vdc, since=since, limit=limit))

    def status(self) -> Any:
        return self._call("GET", "/status")

    # network
    def flows(
        self,
        app: str | None = None,
        vdc: str | None = None,
        verdict: str | None = None,
        since: str | None = None,
        after: int = 0,
        limit: int = 200,
    ) -> Any:
        params = _params(app=app, vdc=vdc, verdict=verdict, since=since, after=after, limit=limit)
        return self._call("GET", "/flows", params=params)

    def flow_hours(self, app: str | None = None, vdc: str | None = None, since: str = "1d") -> Any:
        return self._call("GET", "/flows/hourly", params=_params(app=app, vdc=vdc, since=since))

    def dr_topology(self) -> Any:
        return self._call("GET", "/dr/topology")

    def set_site_role(self, site: str, role: str | None) -> Any:
        return self._call("PUT", f"/sites/{site}/dr-role", json={"role": role})

    def app_dr(self, app: str, vdc: str | None = None, reveal: bool = False) -> Any:
        tail = "/dr/credentials" if reveal else "/dr"
        return self._call("GET", f"/apps/{app}{tail}", params=_params(vdc=vdc))

    def dr_plans(self, app: str, vdc: str | None = None) -> Any:
        return self._call("GET", f"/apps/{app}/dr/plans", params=_params(vdc=vdc))

    def dr_operation(self, app: str, op: str, vdc: str | None = None, **body: Any) -> Any:
        """switchover, failback or reprotect."""
        payload = {k: v for k, v in body.items() if v is not None}
        return self._call("POST", f"/apps/{app}/dr/{op}", params=_params(vdc=vdc), json=payload)

    def dr_backups(self, app: str, vdc: str | None = None, component: str | None = None) -> Any:
        return self._call("GET", f"/apps/{app}/dr/backups", params=_params(vdc=vdc, component=component))

    def dr_long(self, app: str, op: str, vdc: str | None = None, **body: Any) -> Any:
        """backups (take one), restore or cleanup: they answer when done (up to an hour)."""
        payload = {k: v for k, v in body.items() if v is not None}
        return self._call("POST", f"/apps/{app}/dr/{op}", params=_params(vdc=vdc), json=payload, timeout=3700)

    def dr_reports(self, app: str | None = None, vdc: str | None = None) -> Any:
        return self._call("GET", "/dr/reports", params=_params(app=app, vdc=vdc))

    def alarms(self, vdc: str | None = None, kind: str | None = None, open_only: bool = False, after: int = 0) -> Any:
        params = _params(vdc=vdc, kind=kind, after=after, **({"open": "true"} if open_only else {}))
        return self._call("GET", "/alarms", params=params)

    def ack_alarm(self, alarm_id: int) -> Any:
        return self._call("POST", f"/alarms/{alarm_id}/ack")

    def alarm_rules(self) -> Any:
        return self._call("GET", "/alarm-rules")

    def add_alarm_rule(self, body: dict[str, Any]) -> Any:
        return self._call("POST", "/alarm-rules", json={k: v for k, v in body.items() if v is not None})

    def delete_alarm_rule(self, rule_id: int) -> Any:
        return self._call("DELETE", f"/alarm-rules/{rule_id}")

    def alarm_silences(self) -> Any:
        return self._call("GET", "/alarm-silences")

    def add_alarm_silence(self, body: dict[str, Any]) -> Any:
        return self._call("POST", "/alarm-silences", json={k: v for k, v in body.items() if v is not None})

    def delete_alarm_silence(self, silence_id: int) -> Any:
        return self._call("DELETE", f"/alarm-silences/{silence_id}")

    # audit
    def audit_records(self, since: int = 0, limit: int = 200, actor: str | None = None) -> Any:
        return self._call("GET", "/audit", params=_params(since=since, limit=limit, actor=actor))

    def audit_prune(self, before: str | None = None) -> Any:
        return self._call("POST", "/audit/prune", json={"before": before})

    # identity
    def login(self, user: str, password: str, new_password: str | None = None, otp: str | None = None) -> Any:
        body = {"user": user, "password": password, "new_password": new_password, "otp": otp}
        return self._call("POST", "/auth/login", json=body)

    def mfa_enroll(self) -> Any:
        return self._call("POST", "/auth/mfa/enroll")

    def mfa_confirm(self, code: str) -> Any:
        return self._call("POST", "/auth/mfa/confirm", json={"code": code})

    def mfa_disable(self, code: str) -> Any:
        return self._call("POST", "/auth/mfa/disable", json={"code": code})

    def reset_mfa(self, name: str) -> Any:
        return self._call("DELETE", f"/users/{name}/mfa")

    def logout(self) -> Any:
        return self._call("POST", "/auth/logout")

    def unlink_oidc(self, name: str) -> Any:
        return self._call("DELETE", f"/users/{name}/oidc")

    def group_maps(self) -> Any:
        return self._call("GET", "/oidc-group-maps")

    def add_group_map(self, group: str, role: str, vdc: str | None) -> Any:
        return self._call("POST", "/oidc-group-maps", json={"group": group, "role": role, "vdc": vdc})

    def remove_group_map(self, map_id: int) -> Any:
        return self._call("DELETE", f"/oidc-group-maps/{map_id}")

    def oidc_info(self) -> Any:
        return self._call("GET", "/auth/oidc")

    def oidc_start(self, challenge: str, return_to: str | None) -> Any:
        return self._call("POST", "/auth/oidc/start", json={"challenge": challenge, "return_to": return_to})

    def oidc_exchange(self, code: str, verifier: str, otp: str | None = None) -> Any:
        return self._call("POST", "/auth/oidc/exchange", json={"code": code, "verifier": verifier, "otp": otp})

    def whoami(self) -> Any:
        return self._call("GET", "/auth/whoami")

    def change_password(self, password: str, old_password: str | None) -> Any:
        return self._call("PUT", "/auth/password", json={"password": password, "old_password": old_password})

    def list_tokens(self, user: str | None = None, all_users: bool = False) -> Any:
        return self._call("GET", "/tokens", params=_params(user=user, all=all_users or None))

    def create_token(self, name: str, expires_in_days: float) -> Any:
        return self._call("POST", "/tokens", json={"name": name, "expires_in_days": expires_in_days})

    def revoke_token(self, token_id: int) -> Any:
        return self._call("DELETE", f"/tokens/{token_id}")

    def list_users(self) -> Any:
        return self._call("GET", "/users")

    def get_user(self, name: str) -> Any:
        return self._call("GET", f"/users/{name}")

    def create_user(self, name: str, password: str | None, display_name: str = "") -> Any:
        return self._call("POST", "/users", json={"name": name, "password": password, "display_name": display_name})

    def delete_user(self, name: str) -> Any:
        return self._call("DELETE", f"/users/{name}")

    def reset_password(self, name: str, password: str) -> Any:
        return self._call("PUT", f"/users/{name}/password", json={"password": password})

    def lock_user(self, name: str, locked: bool) -> Any:
        return self._call("POST", f"/users/{name}/{'lock' if locked else 'unlock'}")

    def list_grants(self, user: str | None = None) -> Any:
        return self._call("GET", "/grants", params=_params(user=user))

    def grant(self, user: str, role: str, vdc: str | None) -> Any:
        return self._call("POST", "/grants", json={"user": user, "role": role, "vdc": vdc})

    def revoke_grant(self, grant_id: int) -> Any:
        return self._call("DELETE", f"/grants/{grant_id}")

    # approvals
    def list_approvals(self, status: str | None = None) -> Any:
        return self._call("GET", "/approvals", params=_params(status=status))

    def get_approval(self, request_id: int) -> Any:
        return self._call("GET", f"/approvals/{request_id}")

    def decide(self, request_id: int, approve: bool, comment: str = "") -> Any:
        verb = "approve" if approve else "reject"
        return self._call("POST", f"/approvals/{request_id}/{verb}", json={"comment": comment})

    def comment(self, request_id: int, text: str) -> Any:
        return self._call("POST", f"/approvals/{request_id}/comment", json={"text": text})

    def list_rules(self) -> Any:
        return self._call("GET", "/approval-rules")

    def add_rule(
        self, vdc: str, name: str, conditions: dict[str, Any], stages: list[list[str]], expire_hours: int = 72
    ) -> Any:
        body = {"vdc": vdc, "name": name, "conditions": conditions, "stages": stages, "expire_hours": expire_hours}
        return self._call("POST", "/approval-rules", json=body)

    def delete_rule(self, rule_id: int) -> Any:
        return self._call("DELETE", f"/approval-rules/{rule_id}")

    # metering
    def list_rates(self) -> Any:
        return self._call("GET", "/rates")

    def set_rate(self, cloud: str, cpu: str, memory: str, storage: str, currency: str = "CNY") -> Any:
        body = {"cpu": cpu, "memory": memory, "storage": storage, "currency": currency}
        return self._call("PUT", f"/rates/{cloud}", json=body)

    def usage(self, start: str, end: str, vdc: str | None = None, limit: int = 1000) -> Any:
        return self._call("GET", "/usage", params=_params(**{"from": start, "to": end}, vdc=vdc, limit=limit))

    def bill(self, start: str, end: str, vdc: str | None = None) -> Any:
        return self._call("GET", "/bill", params=_params(**{"from": start, "to": end}, vdc=vdc))

    def audit_verify(self) -> Any:
        return self._call("GET", "/audit/verify")

    # plans
    def propose_plan(self, kind: str, cloud: str | None, target: float | None, time_limit: float) -> Any:
        body = {"kind": kind, "cloud": cloud, "target_utilisation": target, "time_limit": time_limit}
        return self._call("POST", "/plans", json=body, timeout=time_limit + 60)

    def get_plan(self, plan_id: int) -> Any:
        return self._call("GET", f"/plans/{plan_id}")

    def move(self, instance: str, cloud: str) -> Any:
        return self._call("POST", "/plans/moves", json={"instance": instance, "cloud": cloud})

    def drop_plan(self, plan_id: int) -> Any:
        return self._call("DELETE", f"/plans/{plan_id}")

    def apply_plan(self, plan_id: int) -> Any:
        return self._call("POST", f"/plans/{plan_id}/apply")

    # ledger
    def ledger_status(self) -> Any:
        return self._call("GET", "/ledger/status")

    def ledger_submit(self, entries: list[str]) -> Any:
        return self._call("POST", "/ledger/entries", json={"entries": entries})

    def ledger_entry(self, index: int) -> Any:
        return self._call("GET", f"/ledger/entries/{index}")

    def ledger_checkpoint(self) -> str:
        """The latest signed checkpoint (a C2SP signed note, as text)."""
        return str(self._call("GET", "/ledger/checkpoint", kw_text=True))

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
