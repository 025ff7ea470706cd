"""The web console in a real browser (Debian's Chromium, headless), against `shanzhi serve --demo`:
each role signs in (platform roles with their second factor) and does its work through the
pages. Each test asserts what the page shows against what the API says."""

from __future__ import annotations

import re
from typing import Any

import pyotp
import pytest

from tests.console.conftest import AXE, PASSWORD, Page, Site, next_code
from tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e


def rows(page: Any, selector: str = "main table tbody tr") -> list[list[str]]:
    return [[c.strip() for c in r.locator("td").all_inner_texts()] for r in page.locator(selector).all()]


def test_a_department_deploys_from_the_form_watches_it_run_and_scales_it(page: Page) -> None:
    page.login("li.wei")
    p = page.view("deploy", "#name")
    page.shot("deploy")
    # a bad value: the error lands on its field, and nothing is created
    p.fill("#name", "portal")
    p.select_option("#vdc", "gz/health")
    p.fill("#replicas", "-1")
    p.click("main form.card button[type=submit] >> nth=0")
    p.wait_for_selector("#replicas[aria-invalid=true]")
    assert "greater than or equal to 0" in p.inner_text("#replicas-error")
    assert page.site.admin.get("/apps/portal?vdc=gz/health").status_code == 404
    p.fill("#replicas", "2")
    p.fill("#tags", "level=city")  # the city's own clouds: no approval needed (the demo's rule: public ones)
    p.click("main form.card button[type=submit] >> nth=0")
    wait_for(lambda: p.evaluate("location.hash") == "#/app/gz%2Fhealth/portal", 30, p.inner_text("main"))
    wait_for(lambda: [r[1] for r in rows(p, "main table >> nth=0 >> tbody tr")] == ["running"] * 2, 60, "2 running")
    api = page.site.admin.get("/instances?app=portal&vdc=gz/health").json()
    assert sorted(r[0] for r in rows(p, "main table >> nth=0 >> tbody tr")) == sorted(i["name"] for i in api)
    # the metrics chart draws each replica's cpu and moves as samples arrive
    p.wait_for_selector("#metrics svg path[data-series]", state="attached", timeout=60_000)
    first = p.get_attribute("#metrics svg path[data-series] >> nth=0", "d")
    wait_for(lambda: p.get_attribute("#metrics svg path[data-series] >> nth=0", "d") != first, 60, "the chart to move")
    page.shot("app")
    # a replica's log, as its cloud keeps it
    p.locator("main table >> nth=0 >> tbody tr").first.locator("button", has_text="Log").click()
    p.wait_for_selector("#log:not([hidden])")
    assert "portal-web-" in p.inner_text("#log")
    # scale from the page
    p.fill("#replicas-web", "3")
    p.click("form[aria-label=Scale] button[type=submit]")
    wait_for(lambda: [r[1] for r in rows(p, "main table >> nth=0 >> tbody tr")] == ["running"] * 3, 60, "3 running")
    assert page.site.admin.get("/apps/portal?vdc=gz/health").json()["spec"]["spec"]["components"][0]["replicas"] == 3


def test_a_department_deploys_from_a_yaml_document_with_every_mistake_named(page: Page) -> None:
    page.login("li.wei")
    p = page.view("deploy", "#document")
    written = p.input_value("#document")
    assert written.startswith("apiVersion: shanzhi.io/v1")  # a template to start from
    doc = written.replace("name: web-portal", "name: records").replace("vdc: gz", "vdc: gz/health")
    # two mistakes: both are named with their paths, nothing is created
    wrong = doc.replace("replicas: 2", "replica: 2").replace("port: 8080", "port: 99999")
    p.fill("#document", wrong)
    p.click("main form.card button[type=submit] >> nth=1")
    said = wait_for(lambda: p.inner_text("#document-error"), 30, "the problems")
    assert "spec.components[0].replica" in said and "spec.components[0].ports[0].port" in said, said
    p.fill("#document", doc.replace("metadata:", "metadata: [oops"))
    p.click("main form.card button[type=submit] >> nth=1")
    wait_for(lambda: "YAML" in p.inner_text("#document-error"), 30, "the YAML problem")
    assert page.site.admin.get("/apps/records?vdc=gz/health").status_code == 404
    # written right, with the placement the city's rule needs no approval for
    p.fill("#document", doc + "  placement: {clouds: {tags: {level: city}}}\n")
    p.click("main form.card button[type=submit] >> nth=1")
    wait_for(lambda: p.evaluate("location.hash") == "#/app/gz%2Fhealth/records", 30, p.inner_text("main"))
    spec = page.site.admin.get("/apps/records?vdc=gz/health").json()["spec"]["spec"]
    assert spec["components"][0]["replicas"] == 2 and spec["placement"]["clouds"]["tags"] == {"level": "city"}


def test_a_held_deploy_is_approved_in_the_console(browser: Any, page: Page, site: Site) -> None:
    """A member's deploy that may land on a public cloud waits for approval (the demo's rule: the
    VDC admin, then the platform admin); the VDC admin approves it from the approvals page."""
    page.login("zhang.min")
    p = page.view("deploy", "#name")
    p.fill("#name", "intake")
    p.select_option("#vdc", "gz/health")
    p.fill("#replicas", "1")
    p.click("main form.card button[type=submit] >> nth=0")
    wait_for(lambda: p.evaluate("location.hash") == "#/approvals", 30, p.inner_text("main"))
    p.wait_for_selector("main table")
    [held] = [r for r in site.admin.get("/approvals?status=pending").json() if r["app"] == "intake"]
    assert any(r[0] == str(held["id"]) and r[6] == "pending" for r in rows(p))
    [why] = [r[7] for r in rows(p) if r[0] == str(held["id"])]
    assert why == "; ".join(x["why"] for x in held["reasons"]) and "public-sh" in why  # the rule's reason, in words
    assert site.admin.get("/apps/intake?vdc=gz/health").status_code == 404  # held: nothing applied yet
    boss = Page(browser, site)
    try:
        boss.login("li.wei")
        q = boss.view("approvals", "main table")
        q.locator("main tbody tr", has_text="intake").locator("button", has_text="Approve").click()
        wait_for(lambda: site.admin.get(f"/approvals/{held['id']}").json()["stage"] == 1, 10, "stage 1 approved")
        boss.shot("approvals")
    finally:
        boss.close()
    assert site.admin.post(f"/approvals/{held['id']}/approve", json={"comment": "ok"}).status_code == 200
    wait_for(lambda: site.admin.get("/apps/intake?vdc=gz/health").status_code == 200, 30, "the app applied")


def test_views_follow_roles_and_the_api_decides_what_shows(page: Page) -> None:
    page.login("chen.jie")  # a member of gz/transport
    links = page.page.locator("#nav a").all_inner_texts()
    assert "Apps" in links and "Users" not in links and "Overview" not in links and "Audit trail" not in links
    apps = {r[0] for r in rows(page.view("apps", "main table"))}
    api = {a["name"] for a in page.site.admin.get("/apps?vdc=gz/transport").json()}
    assert apps == api and "hello" not in apps  # gz/health's app is not theirs to see
    p = page.view("users", "main .error")
    assert "may not" in p.inner_text("main .error")  # the page asks; the API refuses
    page.view("vdcs", "main table")
    assert {r[0].strip() for r in rows(page.page)} == {"gz/transport"}
    page.shot("vdcs-member")


def test_the_operator_signs_in_with_a_second_factor_and_sees_the_topology(page: Page, site: Site) -> None:
    site.person("ops.admin", "system-admin")
    page.login("ops.admin", PASSWORD, otp=site.code("ops.admin"))
    p = page.view("overview", "main svg")
    clouds = site.admin.get("/clouds").json()
    names = {r[0] for r in rows(p)}
    assert names == {c["name"] for c in clouds}
    topology = p.text_content("main svg") or ""
    assert all(c["site"] in topology for c in clouds)
    page.shot("overview")
    # an alarm rule fires; the operator acknowledges one alarm and silences the rule from the page
    rule = {"name": "hello-memory", "vdc": "gz/health", "metric": "memory", "above": 1, "app": "hello"}
    assert site.admin.post("/alarm-rules", json=rule).status_code == 201
    p = page.view("alarms", "main h1")
    wait_for(lambda: len(p.locator("main table >> nth=0 >> tbody tr", has_text="firing").all()) == 4, 60, "4 alarms")
    p.locator("main table >> nth=0 >> tbody tr", has_text="hello-memory").first.locator("button").click()
    wait_for(lambda: any(a["acknowledged_by"] == "ops.admin" for a in site.admin.get("/alarms").json()), 10, "ack")
    p.locator("main table >> nth=1 >> tbody tr", has_text="hello-memory").locator("button").click()
    wait_for(lambda: len(site.admin.get("/alarm-silences").json()) == 1, 10, "a silence")
    page.shot("alarms")
    page.view("events", "main table")
    page.shot("events")
    # a plan proposed from the page, reviewed, dropped: nothing moved, the cloud takes placements again
    p = page.view("plans", "#kind")
    p.select_option("#kind", "evacuate")
    p.select_option("#cloud", "yuexiu")
    p.click("main form button[type=submit]")
    wait_for(lambda: "(proposed)" in (p.text_content("main h2") or ""), 60, "a proposed plan")
    plan_id = int(p.evaluate("location.hash").rsplit("/", 1)[1])
    moves = site.admin.get(f"/plans/{plan_id}").json()["moves"]
    sources = {f"{m['from']['cloud']}/{m['from']['host']}" for m in moves}
    assert len(rows(p)) == len(moves) > 0 and {r[1] for r in rows(p)} == sources
    page.shot("plan")
    p.click("text=Drop")
    wait_for(lambda: site.admin.get(f"/plans/{plan_id}").json()["status"] == "dropped", 10, "dropped")


def test_a_new_administrator_enrols_the_second_factor_in_the_console(page: Page, site: Site) -> None:
    """A platform role and no second factor yet: the session may only enrol one, from the page."""
    for path, body in (
        ("/users", {"name": "ops.new", "password": PASSWORD}),
        ("/grants", {"user": "ops.new", "role": "system-admin"}),
    ):
        assert site.security.post(path, json=body).status_code == 201
    p = page.page
    p.fill("#user", "ops.new")
    p.fill("#password", PASSWORD)
    p.click("form.login button[type=submit]")
    p.wait_for_selector("#mfa-secret")
    assert (p.get_attribute("form.login img", "src") or "").startswith("data:image/svg+xml")
    secret = p.inner_text("#mfa-secret")
    page.shot("mfa-enrol")
    p.fill("#code", pyotp.TOTP(secret).now())
    p.click("form.login button[type=submit]")
    p.wait_for_selector("#recovery")
    assert len(p.inner_text("#recovery").split()) >= 8  # recovery codes, shown this once
    assert site.security.get("/users/ops.new").json()["mfa"] is True
    p.click("text=Sign in again, with a code")
    page.login("ops.new", PASSWORD, otp=next_code(secret))
    assert "Overview" in p.locator("#nav a").all_inner_texts()


def test_a_wrong_second_factor_is_refused_and_nothing_opens(page: Page, site: Site) -> None:
    site.person("ops.second", "system-admin")
    p = page.page
    p.fill("#user", "ops.second")
    p.fill("#password", PASSWORD)
    p.click("form.login button[type=submit]")
    p.wait_for_selector("#otp", state="visible")
    p.fill("#otp", "000000")
    p.click("form.login button[type=submit]")
    wait_for(lambda: p.inner_text("form.login .error"), 10, "the refusal shown")  # (the CSP forbids eval)
    assert "second-factor code" in p.inner_text("form.login .error")
    assert p.is_hidden("#logout")
    assert page.context.cookies() == [] or all(c["name"] != "shanzhi_session" for c in page.context.cookies())


def test_the_security_administrator_locks_a_user(page: Page, site: Site) -> None:
    site.person("sec.admin", "security-admin")
    page.login("sec.admin", PASSWORD, otp=site.code("sec.admin"))
    p = page.view("users", "main table")
    row = p.locator("main tbody tr", has_text="wang.fang")
    row.locator("button").click()
    wait_for(lambda: site.security.get("/users/wang.fang").json()["locked"], 10, "wang.fang locked")
    page.shot("users")
    p.locator("main tbody tr", has_text="wang.fang").locator("button", has_text="Unlock").click()
    wait_for(lambda: not site.security.get("/users/wang.fang").json()["locked"], 10, "wang.fang unlocked")
    page.view("grants", "main table")
    page.shot("grants")
    # single sign-on group maps: added from the page (a bad VDC refused on the page), removed
    p = page.view("sso", "#sso-group")
    p.fill("#sso-group", "health-ops")
    p.select_option("#sso-role", "member")
    p.fill("#sso-vdc", "gz/nowhere")
    p.click("form[aria-label='Add the map'] button[type=submit]")
    wait_for(lambda: "gz/nowhere" in p.inner_text("#sso-error"), 10, "the refusal")
    assert site.security.get("/oidc-group-maps").json() == []
    p.fill("#sso-vdc", "gz/health")
    p.click("form[aria-label='Add the map'] button[type=submit]")
    p.wait_for_selector("main tbody tr >> text=health-ops")
    [m] = site.security.get("/oidc-group-maps").json()
    assert (m["group"], m["role"], m["vdc"]) == ("health-ops", "member", "gz/health")
    page.shot("sso")
    p.locator("main tbody tr", has_text="health-ops").locator("button", has_text="Remove").click()
    wait_for(lambda: site.security.get("/oidc-group-maps").json() == [], 10, "the map removed")


def test_the_auditor_verifies_the_trail_and_checks_a_ledger_proof_in_the_browser(page: Page, site: Site) -> None:
    site.person("aud.admin", "audit-admin")
    page.login("aud.admin", PASSWORD, otp=site.code("aud.admin"))
    p = page.view("audit", "main table")
    p.click("text=Verify the chain")
    p.wait_for_selector("#verify-result.verified")
    assert site.audit.get("/audit/verify").json()["ok"]
    page.shot("audit")
    # filtered by the server: the rows shown are exactly what the API gives for the same filter
    p.fill("#audit-path", "/api/v1/auth")
    p.select_option("#audit-outcome", "success")
    p.click("form[aria-label=Filter] button[type=submit]")
    expected = [str(r["id"]) for r in site.audit.get("/audit?path=/api/v1/auth&outcome=success&limit=100").json()]
    # rows without cells (the table while it is drawn again) are skipped, not an IndexError
    wait_for(lambda: [r[0] for r in rows(p) if r][: len(expected)] == expected, 10, p.inner_text("main"))
    assert expected and all(r[3].split()[1].startswith("/api/v1/auth") for r in rows(p))
    p = page.view("ledger", "#index")
    wait_for(lambda: site.admin.get("/ledger/status").json()["checkpoint"], 30, "a checkpoint")
    p.fill("#index", "0")
    p.click("text=Check inclusion in the browser")
    p.wait_for_selector("#proof-result.verified, #proof-result.error")
    assert "Included" in p.inner_text("#proof-result"), p.inner_text("#proof-result")
    page.shot("ledger")
    # an entry altered on its way to the browser no longer leads to the signed root
    p.route(re.compile(r".*/ledger/entries/\d+$"), lambda route: route.fulfill(json={"index": 0, "entry": "forged"}))
    p.click("text=Check inclusion in the browser")
    p.wait_for_selector("#proof-result.error")
    assert "NOT included" in p.inner_text("#proof-result")


def test_chinese_when_the_browser_prefers_it_and_switchable(browser: Any, site: Site) -> None:
    zh = Page(browser, site, locale="zh-CN")
    try:
        zh.page.wait_for_selector("form.login h1")
        assert zh.page.inner_text("form.login h1") == "登录善治"
        assert zh.page.get_attribute("html", "lang") == "zh-CN"
        zh.login("li.wei")
        assert "业务系统" in zh.page.locator("#nav a").all_inner_texts()
        zh.shot("zh-vdcs")
        zh.page.click("#lang")
        wait_for(lambda: zh.page.get_attribute("html", "lang") == "en", 10, "English")
        assert "Apps" in zh.page.locator("#nav a").all_inner_texts()
    finally:
        zh.close()


def test_no_serious_accessibility_violations(browser: Any, site: Site) -> None:
    """axe-core (from npm, injected into the page: the test lifts the page's CSP for it) on the
    sign-in page and every view of a department."""
    script = AXE.read_text()
    page = Page(browser, site, bypass_csp=True)
    found: dict[str, list[str]] = {}

    def check(name: str) -> None:
        page.page.add_script_tag(content=script)
        result = page.page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        bad = [f"{v['id']}: {v['help']}" for v in result["violations"] if v["impact"] in ("serious", "critical")]
        if bad:
            found[name] = bad

    page.page.wait_for_selector("form.login")
    check("login")
    page.login("li.wei")
    for view in ("vdcs", "apps", "deploy", "approvals", "events", "tokens"):
        page.view(view)
        check(view)
    page.close()
    assert found == {}


def test_a_protected_apps_page_shows_its_recovery_plans_and_refuses_what_cannot_be_done(page: Page, site: Site) -> None:
    """Last in this module: it gives the demo's sites DR roles, which stay."""
    roles = {"gz-huangpu": "production", "gz-nansha": "same-city", "gz-tianhe": "remote"}
    for name, role in roles.items():
        r = site.admin.put(f"/sites/{name}/dr-role", json={"role": role})
        assert r.status_code == 200, r.text
    component = {"name": "web", "replicas": 2, "resources": {"cpu": "0.05", "memory": "32Mi"},
                 "run": {"command": ["python3", "-c", "import time; time.sleep(100000)"]}}  # fmt: skip
    doc = {
        "apiVersion": "shanzhi.io/v1", "kind": "App", "metadata": {"name": "ledger", "vdc": "gz/health"},
        "spec": {"dr": {"tier": "two-sites-three-centres", "stateless": "active-active"}, "components": [component],
                 "placement": {"clouds": {"tags": {"level": "city"}}}},
    }  # fmt: skip
    r = site.admin.post("/apps", json=doc)
    assert r.status_code == 201, r.text
    page.login("li.wei")
    p = page.view("app/gz%2Fhealth/ledger", "#dr")
    plans = site.admin.get("/apps/ledger/dr/plans?vdc=gz/health").json()["plans"]
    shown = p.locator("#dr details.plan").evaluate_all("ds => ds.map((d) => d.dataset.kind)")
    assert shown == list(plans) == ["failover"]  # stateless only: nothing to switch over, activate or test
    failover = p.text_content("#dr details.plan[data-kind=failover]") or ""
    assert "web already run in gz-nansha; production's replicas are replaced there" in failover
    assert "never run" in failover and "promoted" not in failover
    assert "No managed database members yet." in p.inner_text("#dr")
    page.shot("app-dr")
    # asking to activate the remote centre: the API's refusal, shown as it says it, nothing held
    p.click("#dr-activate")
    wait_for(lambda: "has no managed database" in (p.text_content("#dr-error") or ""), 10, "the refusal shown")
    assert [a for a in site.admin.get("/approvals").json() if a["action"] == "activate-remote"] == []
