"""The network controller: keeps every tenant-network cloud's hosts enforcing the policy that
the VDCs, apps, `spec.network` and instance addresses call for.

Each pass compiles the ruleset when its inputs changed (an app's generation, an instance's
address) and applies it to every tenant-network cloud whose copy differs, in one transaction
per host. A cloud is also re-applied every REFRESH seconds, which restores a host rebuilt after
a reboot. A new instance is governed from its first packet: until its address is in the sets it
can only answer health checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass

from sqlalchemy import select

from shanzhi.controllers.fleet import Fleet
from shanzhi.domain.errors import ShanzhiError
from shanzhi.domain.spec import parse_app
from shanzhi.network.addressing import management_address
from shanzhi.network.policy import AppNet, Endpoint, Ruleset, compile_ruleset
from shanzhi.providers import Provider
from shanzhi.store import Database
from shanzhi.store.tables import App, Cloud, Instance, Vdc

log = logging.getLogger("shanzhi.network")
REFRESH = 30.0


@dataclass(frozen=True)
class _Applied:
    digest: str
    at: float


class NetworkController:
    def __init__(self, db: Database, fleet: Fleet, pool: str) -> None:
        self.db = db
        self.fleet = fleet
        self.pool = pool
        self.ruleset: Ruleset | None = None
        self.endpoints: dict[str, Endpoint] = {}  # address -> endpoint
        self.homes: dict[str, str] = {}  # address -> the host namespace its instance is on
        self._inputs = ""
        self._digest = ""
        self._applied: dict[str, _Applied] = {}

    def tenant_clouds(self, *, healthy: bool = False) -> list[tuple[str, Provider]]:
        """The clouds on the tenant fabric (with `healthy`, those the reconciler last found up)."""
        with self.db.session() as s:
            rows = [(c.name, c.kind, dict(c.options), c.health) for c in s.scalars(select(Cloud))]
        out = []
        for name, kind, options, health in rows:
            p = self.fleet.provider(name, kind, options)
            if p.tenant_network and (health == "healthy" or not healthy):
                out.append((name, p))
        return out

    def _compile(self, clouds: list[tuple[str, Provider]]) -> None:
        """Recompile when an app's generation or an instance's address changed. A pass reads only
        those columns; the specs are read when something did change."""
        links = dict(clouds)
        with self.db.session() as s:
            generations = select(Vdc.path, App.name, App.generation).join(Vdc, App.vdc_id == Vdc.id)
            apps = sorted(tuple(r) for r in s.execute(generations))
            q = (
                select(Instance.address, Vdc.path, App.name, Instance.name, Cloud.name, Instance.host)
                .join(App, Instance.app_id == App.id)
                .join(Vdc, App.vdc_id == Vdc.id)
                .join(Cloud, Instance.cloud_id == Cloud.id)
                .where(Instance.address.is_not(None), Cloud.name.in_(links))
            )
            rows = sorted((str(a), v, n, i, c, h or "") for a, v, n, i, c, h in s.execute(q).tuples())
            inputs = json.dumps([apps, rows])
            if inputs == self._inputs and self.ruleset is not None:
                return
            specs = [(a.vdc.path, a.name, a.spec) for a in s.scalars(select(App))]
        endpoints = []
        homes = {}
        for address, vdc, app, instance, cloud, host in rows:
            provider = links[cloud]
            endpoints.append(Endpoint(address, vdc, app, instance, provider.link_name(instance)))
            homes[address] = provider.host_namespace(host)
        nets = []
        for vdc, name, spec in specs:
            try:
                body = parse_app(spec).spec
            except ShanzhiError:
                continue  # a stored spec always parses; one that does not is left ungoverned
            nets.append(AppNet(vdc, name, body.network, body.port_table()))
        self.ruleset = compile_ruleset(endpoints, nets, management_address(self.pool))
        self.endpoints = {e.address: e for e in endpoints}
        self.homes = homes
        self._digest = hashlib.sha256(json.dumps(self.ruleset.commands, sort_keys=True).encode()).hexdigest()
        self._inputs = inputs

    def run_once(self) -> None:
        clouds = self.tenant_clouds()
        if not clouds:
            return
        self._compile(clouds)
        assert self.ruleset is not None
        now = time.monotonic()
        for name, p in clouds:
            done = self._applied.get(name)
            if done and done.digest == self._digest and now - done.at < REFRESH:
                continue
            try:
                p.apply_policy(self.ruleset.commands)
            except (ShanzhiError, OSError, sqlite3.Error) as err:
                log.warning("could not apply the network policy to cloud %s: %s", name, err)
                continue
            if done is None or done.digest != self._digest:
                log.info(
                    "network policy applied to cloud %s: %d rules, %d instances",
                    name,
                    len(self.ruleset.rules),
                    len(self.endpoints),
                )
            self._applied[name] = _Applied(self._digest, now)
        for gone in set(self._applied) - {n for n, _ in clouds}:
            del self._applied[gone]
