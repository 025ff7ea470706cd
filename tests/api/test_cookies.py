"""A browser's session: the token in an HttpOnly cookie, changes only with the CSRF token."""

from __future__ import annotations

from fastapi import Response
from fastapi.testclient import TestClient

from shanzhi.api import cookies
from tests.api.conftest import PASSWORD, Tenants


def browser(tenants: Tenants) -> TestClient:
    return TestClient(tenants.api.app, raise_server_exceptions=False)


def test_a_cookie_session_reads_and_changes_only_with_its_csrf_token(tenants: Tenants) -> None:
    b = browser(tenants)
    r = b.post("/api/v1/auth/login", json={"user": "hadmin", "password": PASSWORD, "cookie": True})
    assert r.status_code == 201, r.text
    body = r.json()
    assert "token" not in body and body["user"] == "hadmin"  # the secret never reaches a script
    set_cookie = r.headers.get_list("set-cookie")
    session = next(c for c in set_cookie if c.startswith(cookies.SESSION + "="))
    assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/" in session
    assert "Secure" not in session  # plain HTTP here; under TLS it is Secure (below)
    csrf = next(c for c in set_cookie if c.startswith(cookies.CSRF + "="))
    assert "HttpOnly" not in csrf and body["csrf"] in csrf
    assert b.get("/api/v1/auth/whoami").json()["user"] == "hadmin"
    before = tenants.api.get("/api/v1/vdcs").json()
    for headers, why in (({}, "missing x-csrf-token"), ({"X-CSRF-Token": "0" * 40}, "wrong x-csrf-token")):
        r = b.post("/api/v1/vdcs", json={"path": "gz/health/lab", "quota": {}}, headers=headers)
        assert r.status_code == 403 and why in r.json()["detail"], r.text
    assert tenants.api.get("/api/v1/vdcs").json() == before  # refused: nothing changed
    r = b.post("/api/v1/vdcs", json={"path": "gz/health/lab", "quota": {}}, headers={"X-CSRF-Token": body["csrf"]})
    assert r.status_code == 201, r.text
    # another user's CSRF token is no good for this session
    other = browser(tenants)
    theirs = other.post("/api/v1/auth/login", json={"user": "hviewer", "password": PASSWORD, "cookie": True}).json()
    r = b.post("/api/v1/vdcs", json={"path": "gz/health/lab2", "quota": {}}, headers={"X-CSRF-Token": theirs["csrf"]})
    assert r.status_code == 403
    # logging out ends the session and clears both cookies
    r = b.post("/api/v1/auth/logout", headers={"X-CSRF-Token": body["csrf"]})
    assert r.status_code == 200
    assert all("Max-Age=0" in c or "expires=" in c.lower() for c in r.headers.get_list("set-cookie"))
    stale = TestClient(tenants.api.app, cookies={cookies.SESSION: session.split(";")[0].split("=", 1)[1]})
    assert stale.get("/api/v1/auth/whoami").status_code == 401


def test_a_bearer_token_needs_no_csrf_token_and_a_wrong_cookie_is_refused(tenants: Tenants) -> None:
    r = tenants.as_("hadmin").post("/api/v1/vdcs", json={"path": "gz/health/ops", "quota": {}})
    assert r.status_code == 201  # a script with a token is not a browser riding on a cookie
    forged = TestClient(tenants.api.app, cookies={cookies.SESSION: "szs_forged"})
    assert forged.get("/api/v1/auth/whoami").status_code == 401


def test_cookies_are_secure_under_tls() -> None:
    response = Response()
    csrf = cookies.set_session(response, "szs_secret", secure=True)
    assert csrf == cookies.csrf_for("szs_secret") != cookies.csrf_for("szs_other")
    assert all("Secure" in c for c in response.headers.getlist("set-cookie"))
