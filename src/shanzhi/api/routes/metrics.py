"""/metrics for Prometheus, an app's metrics for people, and targets for a Prometheus server."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select

from shanzhi.api.auth import principal
from shanzhi.api.deps import Runtime, runtime
from shanzhi.domain.metrics import SERIES, UNITS
from shanzhi.domain.rbac import Principal
from shanzhi.services import metrics as svc
from shanzhi.services.apps import find_app
from shanzhi.store.tables import App, Instance, Vdc, utcnow

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
def exposition(request: Request) -> Response:
    """Everything in Prometheus's text format: instances, clouds, the control plane."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/apps/{name}/metrics")
def app_metrics(
    name: str,
    vdc: str | None = Query(None),
    since: str = Query("1h", max_length=16, description="how far back: 15m, 6h, 7d (up to 90d)"),
    instance: str | None = Query(None, max_length=128),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> dict[str, Any]:
    """An app's use per replica: stored points (by the minute up to a day back, by the hour up
    to 90 days) and each running replica's latest sample."""
    with rt.db.session() as s, s.begin():
        app = find_app(s, name, vdc, p.scope("app.read"))
        out = svc.series(s, app_id=app.id, since=since, now=utcnow(), instance=instance)
        out |= {"app": app.name, "vdc": app.vdc.path, "units": UNITS}
    latest = rt.controller.metrics.latest if rt.controller is not None else {}
    out["latest"] = [
        {"instance": v.labels.instance, "component": v.labels.component, "at": v.at}
        | {k: v.point.get(k) for k in SERIES}
        | ({"custom": dict(v.point.custom)} if v.point.custom else {})
        for v in list(latest.values())
        if v.labels.app_id == app.id and instance in (None, v.labels.instance)
    ]
    return out


@router.get("/prometheus/targets")
def prometheus_targets(request: Request, rt: Runtime = Depends(runtime)) -> list[dict[str, Any]]:
    """HTTP service discovery for a Prometheus server: this server (scrape /api/v1/metrics with a
    token) and every running replica that exports its own metrics (its component's `metrics`:
    the address and path it was given, labelled with its app, VDC, component)."""
    me = request.url.netloc
    out: list[dict[str, Any]] = [
        {"targets": [me], "labels": {"job": "shanzhi", "__metrics_path__": "/api/v1/metrics"}},
    ]
    with rt.db.session() as s, s.begin():
        rows = s.execute(
            select(Instance.name, Instance.metrics_url, Instance.component, App.name, Vdc.path)
            .join(App, App.id == Instance.app_id)
            .join(Vdc, Vdc.id == App.vdc_id)
            .where(Instance.state == "running", Instance.metrics_url.is_not(None))
            .order_by(Instance.name)
        ).all()
    for inst, url, component, app, vdc in rows:
        where = urlsplit(url)
        labels = {"job": "workloads", "instance": inst, "app": app, "vdc": vdc, "component": component}
        out.append({"targets": [where.netloc], "labels": labels | {"__metrics_path__": where.path}})
    return out
