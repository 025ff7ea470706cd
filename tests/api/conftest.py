import copy
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shanzhi.api import create_app
from shanzhi.config import Settings
from shanzhi.services.demo import HELLO
from tests.oidc import CLIENT_ID, CLIENT_SECRET, OidcProvider, require_provider

LENIENT: dict[str, Any] = {"logins_per_minute": 10_000, "failures_per_minute": 10_000}


@pytest.fixture
def settings(database_url: str, data_dir: Path) -> Settings:
    """Every test client calls from one address: the per-address limits are raised here, and
    tested on their own with `strict_api`."""
    return Settings.build(data_dir, database_url, controller=False, **LENIENT)


@pytest.fixture
def strict_api(database_url: str, data_dir: Path) -> Iterator[TestClient]:
    """The application with the default per-address limits, authenticated as admin."""
    st = Settings.build(data_dir, database_url, controller=False)
    with TestClient(create_app(st)) as client:
        client.headers["Authorization"] = f"Bearer {st.token_file.read_text().strip()}"
        yield client


CALLBACK = "http://testserver/api/v1/auth/oidc/callback"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """A real OpenID Connect provider that sends browsers back to the in-process server."""
    require_provider()
    p = OidcProvider(tmp_path_factory.mktemp("oidc"))
    p.start([CALLBACK])
    yield p
    p.stop()


def with_sso(settings: Settings, provider: OidcProvider, **kw: Any) -> Settings:
    """`settings` with single sign-on through `provider`."""
    return replace(
        settings,
        public_url="http://testserver",
        oidc_issuer=provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        **kw,
    )


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    """The real application in-process (no controller), authenticated as admin."""
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {settings.token_file.read_text().strip()}"
        yield client


def hello(**changes: Any) -> dict[str, Any]:
    """The issue's example app (as the demo ships it), with component fields changed."""
    spec: dict[str, Any] = copy.deepcopy(HELLO)
    spec["spec"]["components"][0].update(changes)
    return spec


@pytest.fixture
def tokens(settings: Settings, api: TestClient) -> dict[str, str]:
    """The bootstrap administrators' tokens: admin (system), security, audit."""
    files = {"admin": "admin.token", "security": "security.token", "audit": "audit.token"}
    return {who: (settings.data_dir / f).read_text().strip() for who, f in files.items()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


PASSWORD = "correct-horse-battery-9"
PEOPLE = {
    # user: (role, vdc)
    "hadmin": ("vdc-admin", "gz/health"),
    "hmember": ("member", "gz/health"),
    "hviewer": ("viewer", "gz/health"),
    "itmember": ("member", "gz/health/it"),
    "tmember": ("member", "gz/transport"),
    "nobody": (None, None),
}


class Tenants:
    """A city with two departments and one client per person (each with their own token)."""

    def __init__(self, api: TestClient, tokens: dict[str, str]) -> None:
        self.api = api
        self.tokens = dict(tokens)
        self.clients: dict[str, TestClient] = {}

    def as_(self, who: str) -> TestClient:
        if who not in self.clients:
            c = TestClient(self.api.app, raise_server_exceptions=False)
            c.headers["Authorization"] = f"Bearer {self.tokens[who]}"
            self.clients[who] = c
        return self.clients[who]


@pytest.fixture
def tenants(api: TestClient, tokens: dict[str, str]) -> Tenants:
    t = Tenants(api, tokens)
    for name, site in (("city-a", "site-a"), ("city-b", "site-b")):
        r = api.post("/api/v1/clouds", json={"name": name, "kind": "sim", "site": site, "region": "gz"})
        assert r.status_code == 201, r.text
    for path, quota in (
        ("gz", {"cpu": "16", "instances": 100}),
        ("gz/health", {"cpu": "8"}),
        ("gz/health/it", {"cpu": "2"}),
        ("gz/transport", {"cpu": "4"}),
    ):
        assert api.post("/api/v1/vdcs", json={"path": path, "quota": quota}).status_code == 201
    sec = t.as_("security")
    for user, (role, vdc) in PEOPLE.items():
        assert sec.post("/api/v1/users", json={"name": user, "password": PASSWORD}).status_code == 201
        if role:
            r = sec.post("/api/v1/grants", json={"user": user, "role": role, "vdc": vdc})
            assert r.status_code == 201, r.text
        r = api.post("/api/v1/auth/login", json={"user": user, "password": PASSWORD}, headers={"Authorization": ""})
        assert r.status_code == 201, r.text
        t.tokens[user] = r.json()["token"]
    for vdc, name in (("gz/health", "records"), ("gz/transport", "buses")):
        r = api.post("/api/v1/apps", json=app_spec(name, vdc))
        assert r.status_code == 201, r.text
    return t


def app_spec(name: str, vdc: str, cpu: str = "100m", replicas: int = 1, **placement: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shanzhi.io/v1",
        "kind": "App",
        "metadata": {"name": name, "vdc": vdc},
        "spec": {
            "components": [{"name": "main", "replicas": replicas, "image": "x", "resources": {"cpu": cpu}}],
            "placement": placement,
        },
    }


def delivered(api: TestClient, timeout: float = 15) -> None:
    """Wait until every audit record's commitment is in the ledger (the outbox is drained)."""
    import time

    from sqlalchemy import func, select

    from shanzhi.store.tables import AuditOutbox

    deadline = time.monotonic() + timeout
    while True:
        with api.app.state.db.session() as s:  # type: ignore[attr-defined]
            if not s.scalar(select(func.count()).select_from(AuditOutbox)):
                return
        assert time.monotonic() < deadline, "the audit outbox was not drained"
        time.sleep(0.05)
