"""A small demo world: two sites with local clouds, district sim clouds, a VDC tree, apps."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.domain.quota import parse_quota
from shanzhi.domain.spec import parse_app
from shanzhi.ledger.entries import make_entry
from shanzhi.ledger.keys import load_or_create
from shanzhi.ledger.note import Signer
from shanzhi.ledger.service import Ledger
from shanzhi.services.approvals import add_rule
from shanzhi.services.apps import apply_app
from shanzhi.services.clouds import add_cloud
from shanzhi.services.identity import create_user, grant
from shanzhi.services.metering import set_rate
from shanzhi.services.vdcs import create_vdc
from shanzhi.store.tables import Cloud, Vdc

CLOUDS: list[tuple[str, str, str, str, dict[str, str], dict[str, str | int | float]]] = [
    # name, kind, site, region, tags, options
    (
        "city-a",
        "local",
        "gz-huangpu",
        "gz",
        {"level": "city", "grade": "3"},
        {"cpu": 4, "memory": "4Gi", "instances": 20},
    ),
    (
        "city-b",
        "local",
        "gz-nansha",
        "gz",
        {"level": "city", "grade": "3"},
        {"cpu": 4, "memory": "4Gi", "instances": 20},
    ),
    (
        "city-c",
        "local",
        "gz-baiyun",
        "gz",
        {"level": "city", "grade": "3"},
        {"cpu": 4, "memory": "4Gi", "instances": 20},
    ),
    ("tianhe", "sim", "gz-tianhe", "gz", {"level": "district"}, {"hosts": 40, "boot": 2}),
    ("yuexiu", "sim", "gz-yuexiu", "gz", {"level": "district"}, {"hosts": 40, "boot": 2}),
    ("public-east", "sim", "public-sh", "sh", {"level": "public"}, {"hosts": 100, "boot": 5}),
]

VDCS = [
    ("gz", "cpu=400,memory=1Ti,instances=2000"),
    ("gz/health", "cpu=32,memory=64Gi,instances=200"),
    ("gz/health/it", "cpu=8,memory=16Gi,instances=40"),
    ("gz/transport", "cpu=64,memory=128Gi,instances=400"),
    ("gz/tianhe", "cpu=64,memory=128Gi,instances=400"),
    ("gz/tianhe/civil-affairs", "cpu=32,memory=64Gi,instances=200"),
    # eight levels deep: a district's community service station (ManageOne stops at five)
    ("gz/tianhe/civil-affairs/social-aid", "cpu=16,memory=32Gi,instances=100"),
    ("gz/tianhe/civil-affairs/social-aid/elderly-care", "cpu=8,memory=16Gi,instances=50"),
    ("gz/tianhe/civil-affairs/social-aid/elderly-care/community", "cpu=4,memory=8Gi,instances=20"),
    ("gz/tianhe/civil-affairs/social-aid/elderly-care/community/linhe", "cpu=2,memory=4Gi,instances=10"),
    ("gz/tianhe/civil-affairs/social-aid/elderly-care/community/linhe/station-3", "cpu=1,memory=2Gi,instances=5"),
]
STRICT = ("gz/tianhe",)  # its children's quotas must add up to no more than its own

# Demo people (password DEMO_PASSWORD; never use it outside a demo): user, name, role, VDC
DEMO_PASSWORD = "shanzhi-demo-2026"
PEOPLE = [
    ("li.wei", "Li Wei (health IT lead)", "vdc-admin", "gz/health"),
    ("zhang.min", "Zhang Min (health developer)", "member", "gz/health"),
    ("wang.fang", "Wang Fang (health auditor-viewer)", "viewer", "gz/health"),
    ("chen.jie", "Chen Jie (transport developer)", "member", "gz/transport"),
    ("liu.yang", "Liu Yang (Tianhe civil affairs)", "vdc-admin", "gz/tianhe/civil-affairs"),
    (
        "zhao.lei",
        "Zhao Lei (Linhe station 3)",
        "member",
        "gz/tianhe/civil-affairs/social-aid/elderly-care/community/linhe/station-3",
    ),
]
RATES = {  # yuan per core-hour, GiB-hour of memory, GiB-hour of storage
    "city-a": ("0.12", "0.02", "0.0005"),
    "city-b": ("0.12", "0.02", "0.0005"),
    "city-c": ("0.12", "0.02", "0.0005"),
    "tianhe": ("0.08", "0.015", "0.0004"),
    "yuexiu": ("0.08", "0.015", "0.0004"),
    "public-east": ("0.20", "0.03", "0.0008"),
}

HELLO = {
    "apiVersion": "shanzhi.io/v1",
    "kind": "App",
    "metadata": {"name": "hello", "vdc": "gz/health"},
    "spec": {
        "components": [
            {
                "name": "web",
                "replicas": 4,
                "resources": {"cpu": 0.1, "memory": "64Mi"},
                "run": {"command": ["python3", "-m", "http.server", "${PORT}", "--bind", "127.0.0.1"]},
                "ports": [{"name": "http", "port": 8080}],
                "health": {"http": {"path": "/", "port": "http"}},
            }
        ],
        "placement": {"clouds": {"tags": {"level": "city"}}, "spread": {"over": "site", "minGroups": 2}},
    },
}

PERMITS = {
    "apiVersion": "shanzhi.io/v1",
    "kind": "App",
    "metadata": {"name": "permits", "vdc": "gz/transport"},
    "spec": {
        "components": [
            {"name": "api", "replicas": 6, "resources": {"cpu": 2, "memory": "4Gi"}, "image": "permits-api:1.4"},
            {"name": "db", "replicas": 2, "resources": {"cpu": 4, "memory": "16Gi"}, "image": "postgres:15"},
        ],
        "placement": {
            "clouds": {"tags": {"level": "district"}},
            "spread": {"over": "cloud", "minGroups": 2},
            "antiAffinity": {"over": "host"},
        },
    },
}


def seed_demo(s: Session) -> bool:
    """Create the demo world unless it is there already. Returns True if it created it."""
    if s.scalar(select(Cloud.id).limit(1)) is not None or s.scalar(select(Vdc.id).limit(1)) is not None:
        return False
    for name, kind, site, region, tags, options in CLOUDS:
        add_cloud(s, name, kind, site, region, tags, options)
    for path, quota in VDCS:
        create_vdc(s, path, parse_quota(quota), strict=path in STRICT)
    for doc in (HELLO, PERMITS):
        apply_app(s, parse_app(doc), "demo", "the demo world")
    for user, display, role, vdc in PEOPLE:
        create_user(s, user, DEMO_PASSWORD, display)
        grant(s, user, role, vdc, "demo")
    for cloud, (cpu, memory, storage) in RATES.items():
        set_rate(s, cloud, cpu, memory, storage, "CNY")
    # big or public-cloud applies wait for the department admin, then the platform
    add_rule(s, "gz", "big-or-public", {"cpuOver": "8", "sites": ["public-sh"]}, [["role:vdc-admin"], ["admin"]], 72)
    return True


VM_CLOUD: tuple[str, str, str, dict[str, str], dict[str, str | int | float]] = (
    "vm-huangpu",
    "gz-huangpu",
    "gz",
    {"level": "city", "runtime": "vm"},
    {"cpu": 2, "memory": "2Gi"},
)
RECORDS_DB = {
    "apiVersion": "shanzhi.io/v1",
    "kind": "App",
    "metadata": {"name": "records-db", "vdc": "gz/health"},
    "spec": {
        "components": [
            {
                "name": "db",
                "replicas": 1,
                "image": "tiny",
                "resources": {"cpu": 0.5, "memory": "192Mi"},
                "ports": [{"name": "http", "port": 8080}],
                "health": {"http": {"path": "/", "port": "http"}},
                "volumes": [{"name": "data", "size": "64Mi", "mountPath": "/data"}],
            }
        ],
        "placement": {"clouds": {"names": ["vm-huangpu"]}},
    },
}


def seed_vm_demo(s: Session) -> str | None:
    """A libvirt cloud and a small VM app with a volume, when this machine can run VMs.
    Returns None when they were added, else why not (said at start, never an error)."""
    from shanzhi.providers.libvirt.host import Hypervisor, HypervisorError, available
    from shanzhi.providers.libvirt.images import ImageError, ImageStore

    why = available()
    if why is not None:
        return why
    try:
        Hypervisor("qemu:///system").describe()
        ImageStore().build_tiny("tiny")
    except (HypervisorError, ImageError, OSError) as err:
        return str(err)
    name, site, region, tags, options = VM_CLOUD
    add_cloud(s, name, "libvirt", site, region, tags, options)
    apply_app(s, parse_app(RECORDS_DB), "demo", "the demo world")
    return None


def seed_ledger(ledger: Ledger, data_dir: Path) -> int:
    """A small verifiable chain in an empty ledger: a duty, the catalog entry it justifies,
    a sharing request, its approval and a data access, each signed by its department."""
    if ledger.log.size:
        return 0
    health = load_or_create(data_dir / "demo-gz-health.key", "gz.gov.cn/health")
    transport = load_or_create(data_dir / "demo-gz-transport.key", "gz.gov.cn/transport")
    for dept in (health, transport):
        ledger.register_key(dept.name, dept.verifier.encode(), "department")
    code = "440100-HEALTH-0001"
    chain: list[tuple[Signer, str, str, dict[str, object], str]] = [
        (
            health,
            "responsibility",
            "resp/clinic-licensing",
            {"code": "clinic-licensing", "title": "Licensing and inspection of clinics", "basis": "Regulation 12"},
            "",
        ),
        (
            health,
            "catalog",
            f"catalog/{code}",
            {
                "code": code,
                "version": 1,
                "name": "Licensed clinics",
                "provider": "gz/health",
                "items": [{"name": "licence_no"}, {"name": "address"}],
                "share_type": "conditional",
                "share_conditions": "for licensing and inspection only",
                "update_cycle": "daily",
            },
            "responsibility",
        ),
        (
            transport,
            "share-request",
            f"catalog/{code}",
            {"catalog": code, "requester": "gz/transport", "purpose": "ambulance route planning"},
            "catalog",
        ),
        (
            health,
            "share-approval",
            f"catalog/{code}",
            {"decision": "approved", "approver": "gz/health", "conditions": "monthly pull"},
            "request",
        ),
        (
            transport,
            "access",
            f"catalog/{code}",
            {"catalog": code, "consumer": "gz/transport", "records": 1842},
            "grant",
        ),
    ]
    previous: tuple[int, bytes] | None = None
    for signer, type_, subject, body, rel in chain:
        links = [(rel, previous[0], previous[1])] if previous and rel else []
        [previous] = ledger.submit([make_entry(signer, type_, subject, body, links)])
    return len(chain)
