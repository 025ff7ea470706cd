"""The autoscaler: each leader pass, components with `autoscale` get the replicas their load asks
for (`shanzhi.domain.autoscale.decide`), through the same apply as a person's: quota is
checked, an approval rule that matches holds the change. Every decision is an event saying why;
a change refused (quota) or held (approval) is one too, at most once per cooldown.

It lives here, not among the controllers, because it applies specs (a use case); the API layer
hands `run_once` to the controller manager to run in its leader loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from shanzhi.controllers.metrics import Latest, NewRound
from shanzhi.domain.autoscale import decide
from shanzhi.domain.errors import ShanzhiError
from shanzhi.domain.spec import AppSpec
from shanzhi.services import approvals
from shanzhi.services.apps import apply_app
from shanzhi.store import Database
from shanzhi.store.events import record_event
from shanzhi.store.tables import App, Instance, Vdc

log = logging.getLogger("shanzhi.autoscale")
AUTHOR = "autoscaler"


class Autoscaler:
    def __init__(
        self, db: Database, latest: Callable[[], dict[str, Latest]], rounds: Callable[[], int] | None = None
    ) -> None:
        self.db = db
        self.latest = latest
        self.fresh = NewRound(rounds)  # nothing to decide until new samples arrive
        self._last: dict[tuple[int, str], float] = {}  # (app id, component) -> when last changed or refused

    def run_once(self) -> int:
        """Decide for every autoscaled component (once per new round of samples); return how many
        changes were applied."""
        if not self.fresh():
            return 0
        with self.db.session() as s, s.begin():
            apps = [
                (a.id, a.generation, a.spec, path)
                for a, path in s.execute(select(App, Vdc.path).join(Vdc, Vdc.id == App.vdc_id).where(~App.deleting))
                if any(c.get("autoscale") for c in a.spec.get("spec", {}).get("components", []))
            ]
        applied = 0
        for app_id, generation, doc, path in apps:
            try:
                applied += self._app(app_id, generation, AppSpec.model_validate(doc), path)
            except ShanzhiError as err:
                log.warning("autoscaling app %s/%s: %s", path, doc.get("metadata", {}).get("name"), err)
        return applied

    def _app(self, app_id: int, generation: int, spec: AppSpec, path: str) -> int:
        latest = self.latest()
        with self.db.session() as s, s.begin():
            running: dict[str, list[str]] = {}
            for name, component in s.execute(
                select(Instance.name, Instance.component).where(Instance.app_id == app_id, Instance.state == "running")
            ):
                running.setdefault(component, []).append(name)
        now = time.monotonic()
        for comp in spec.spec.components:
            auto = comp.autoscale
            if auto is None:
                continue
            key = (app_id, comp.name)
            samples = [latest[n].point.get(auto.metric) for n in running.get(comp.name, []) if n in latest]
            values = [v for v in samples if v is not None]
            since = now - self._last[key] if key in self._last else None
            decision = decide(auto, comp.replicas, values, since)
            if decision is None:
                continue
            self._last[key] = now
            return self._scale(app_id, generation, spec, path, comp.name, decision.replicas, decision.why)
        return 0

    def _scale(
        self, app_id: int, generation: int, spec: AppSpec, path: str, component: str, replicas: int, why: str
    ) -> int:
        doc: dict[str, Any] = spec.to_json()
        for c in doc["spec"]["components"]:
            if c["name"] == component:
                c["replicas"] = replicas
        name = spec.metadata.name
        new = AppSpec.model_validate(doc)
        ev: dict[str, Any] = {"vdc": path, "app": name}
        try:
            with self.db.session() as s, s.begin():
                app = s.get(App, app_id)
                if app is None or app.generation != generation:
                    return 0  # changed meanwhile (a person applied): decide again next pass
                held = approvals.hold_if_needed(s, new, AUTHOR)
                if held is not None:
                    message = f"{component}: {why}; held for approval {held.id}"
                    record_event(s, "AutoscaleHeld", "app", name, message, **ev)
                    return 0
                apply_app(s, new, AUTHOR, f"autoscale {component}: {why}")
                record_event(s, "Autoscaled", "app", name, f"{component}: {why}", **ev)
        except ShanzhiError as err:  # over quota, say: nothing changed; said once per cooldown
            with self.db.session() as s, s.begin():
                message = f"{component}: {why}; refused: {err}"
                record_event(s, "AutoscaleRefused", "app", name, message, warning=True, **ev)
            log.info("autoscale %s/%s %s refused: %s", path, name, component, err)
            return 0
        log.info("autoscaled %s/%s %s: %s", path, name, component, why)
        return 1
