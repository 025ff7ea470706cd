"""A small demo world: two sites with local clouds, district sim clouds, a VDC tree, apps."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.domain.quota import parse_quota
from shanzhi.domain.spec import parse_app
from shanzhi.services.apps import apply_app
from shanzhi.services.clouds import add_cloud
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
    ("gz/tianhe/civil-affairs", ""),
]

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
        create_vdc(s, path, parse_quota(quota))
    for doc in (HELLO, PERMITS):
        apply_app(s, parse_app(doc))
    return True
