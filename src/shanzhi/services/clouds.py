"""Registering, inspecting, draining and failure-injecting clouds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shanzhi.controllers import Fleet
from shanzhi.domain.errors import Conflict, InvalidInput, NotFound
from shanzhi.domain.spec import NAME_RE
from shanzhi.providers import credentials, provider_class
from shanzhi.sealing import Vault
from shanzhi.store.events import record_event
from shanzhi.store.tables import Cloud, DrEtcdMember, Instance, Site


def _check_name(value: str, what: str) -> None:
    if not re.match(NAME_RE, value):
        raise InvalidInput(f"invalid {what} {value!r}: use lowercase letters, digits and '-' (at most 63)", field=what)


def add_cloud(
    s: Session,
    name: str,
    kind: str,
    site: str,
    region: str,
    tags: Mapping[str, str],
    options: Mapping[str, str | int | float],
    secrets: Mapping[str, Any] | None = None,
    vault: Vault | None = None,
) -> Cloud:
    _check_name(name, "name")
    _check_name(site, "site")
    _check_name(region, "region")
    cls = provider_class(kind)
    if "site" in cls.options:  # a fabric cloud routes through its site's router
        options = {**options, "site": site}
    if credentials.OPTION in options:
        raise InvalidInput("credentials go in the request's 'credentials', not among its options", field="options")
    opts = cls.validate_options(options)
    if secrets is not None:
        assert vault is not None
        opts[credentials.OPTION] = credentials.seal(vault, credentials.check(kind, cls.credential_fields, secrets))
    if s.scalar(select(Cloud.id).where(Cloud.name == name)) is not None:
        raise Conflict(f"cloud {name} already exists", field="name")
    site_row = s.scalar(select(Site).where(Site.name == site))
    if site_row is None:
        site_row = Site(name=site)
        s.add(site_row)
    cloud = Cloud(name=name, kind=kind, site=site_row, region=region, tags=dict(tags), options=opts)
    s.add(cloud)
    s.flush()
    record_event(s, "CloudAdded", "cloud", name, f"{kind} cloud {name} added in site {site}, region {region}")
    return cloud


def set_credentials(s: Session, name: str, secrets: Mapping[str, Any], vault: Vault) -> Cloud:
    """Replace a cloud's credentials (the fleet builds its provider anew with them)."""
    cloud = get_cloud(s, name)
    cls = provider_class(cloud.kind)
    sealed = credentials.seal(vault, credentials.check(cloud.kind, cls.credential_fields, secrets))
    cloud.options = {**cloud.options, credentials.OPTION: sealed}
    record_event(
        s, "CloudCredentials", "cloud", name, f"credentials of cloud {name} replaced ({', '.join(sealed['fields'])})"
    )
    return cloud


def get_cloud(s: Session, name: str) -> Cloud:
    c = s.scalar(select(Cloud).where(Cloud.name == name))
    if c is None:
        raise NotFound(f"cloud {name} does not exist; see 'shanzhi cloud list'", field="name")
    return c


def list_clouds(s: Session) -> list[Cloud]:
    return list(s.scalars(select(Cloud).order_by(Cloud.name)))


def usage(s: Session) -> dict[int, tuple[int, int, int]]:
    """Per cloud id: cpu, memory, instance count of its live instances."""
    rows = s.execute(
        select(Instance.cloud_id, func.sum(Instance.cpu), func.sum(Instance.memory), func.count())
        .where(Instance.cloud_id.is_not(None), Instance.state != "lost")
        .group_by(Instance.cloud_id)
    )
    return {cid: (int(c or 0), int(m or 0), int(n)) for cid, c, m, n in rows if cid is not None}


def remove_cloud(s: Session, name: str, *, drain: bool = False) -> str:
    """Remove an empty cloud now; with `drain`, move its instances away first."""
    cloud = get_cloud(s, name)
    quorum = sorted(s.scalars(select(DrEtcdMember.name).where(DrEtcdMember.cloud_id == cloud.id)))
    if quorum:
        raise Conflict(
            f"cloud {name} runs the DR quorum's etcd member {', '.join(quorum)}; a quorum's membership is fixed "
            "once formed, so this cloud cannot be removed (see `dr topology`)",
            field="name",
        )
    n = s.scalar(select(func.count()).select_from(Instance).where(Instance.cloud_id == cloud.id)) or 0
    if n and not drain:
        raise Conflict(
            f"cloud {name} still runs {n} instances; pass --drain to move them to other clouds "
            "and remove the cloud when it is empty",
            field="name",
        )
    if n:
        cloud.draining = True
        record_event(s, "CloudDraining", "cloud", name, f"draining {n} instances off cloud {name}")
        return "draining"
    s.delete(cloud)
    record_event(s, "CloudRemoved", "cloud", name, f"cloud {name} removed")
    return "removed"


def inject_failure(s: Session, fleet: Fleet, name: str, host: str | None, *, recover: bool) -> None:
    cloud = get_cloud(s, name)
    p = fleet.provider(cloud.name, cloud.kind, dict(cloud.options))
    if recover:
        p.recover(host)
    else:
        p.inject_failure(host)
    target = f"host {host} of cloud {name}" if host else f"cloud {name}"
    record_event(
        s,
        "FailureRecovered" if recover else "FailureInjected",
        "cloud",
        name,
        f"{target} {'recovered' if recover else 'failed by operator (failure injection)'}",
        warning=not recover,
    )
