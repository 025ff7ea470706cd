"""The console's speed in a real browser: first paint and the API calls behind each view.

A real `shanzhi serve --demo` on loopback and Debian's Chromium (headless, Playwright). For each
view it loads the page afresh (a new tab, the session cookie kept) and reads the browser's own
timings: first contentful paint of the page, the time until the view's content is on screen
(its heading and table or chart: the "first meaningful paint"), and each `/api/v1` call the
view made (the slowest and their sum). Side by side in the same run, the floor: a tab loading
`/healthz` (no script, no API call) and a bare `GET /healthz` from Python.

Worlds: the demo's data, then the same server with 1,000 more apps on a simulated cloud
(`--apps`). The issue's target: first meaningful paint <= 1 s on the demo data.

    python bench/console.py [--quick] [--apps 1000] [-o bench/results/console.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.e2e.harness import Server, stop_everything  # noqa: E402

DEMO_PASSWORD = "shanzhi-demo-2026"
# view -> what shows that its content is on screen
VIEWS = {
    "vdcs": "main table",
    "apps": "main table",
    "app/gz%2Fhealth/hello": "main table",  # detail, instances, events, metrics: four calls
    "deploy": "#name",
    "approvals": "main h1",
    "events": "main table",
    "tokens": "main table",
}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def measure(page: Any, url: str, ready: str) -> dict[str, float]:
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_selector(ready, state="attached")
    meaningful = (time.perf_counter() - started) * 1000
    timings = page.evaluate(
        """() => ({
          fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || 0,
          api: performance.getEntriesByType('resource').filter(e => e.name.includes('/api/v1/'))
                 .map(e => e.duration),
        })"""
    )
    api = timings["api"] or [0.0]
    return {"fcp_ms": timings["fcp"], "meaningful_ms": meaningful, "api_max_ms": max(api), "api_sum_ms": sum(api)}


def run_views(browser: Any, server_url: str, rounds: int) -> dict[str, dict[str, float]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(server_url + "/")
    page.fill("#user", "li.wei")
    page.fill("#password", DEMO_PASSWORD)
    page.click("form.login button[type=submit]")
    page.wait_for_selector("#logout", state="visible")
    page.close()
    out: dict[str, dict[str, float]] = {}
    floor = [("(floor: /healthz in a tab)", server_url + "/healthz", "body")]
    for name, url, ready in floor + [(v, f"{server_url}/#/{v}", r) for v, r in VIEWS.items()]:
        samples = []
        for _ in range(rounds):
            tab = context.new_page()  # a fresh load each time: scripts, whoami, the view's calls
            samples.append(measure(tab, url, ready))
            tab.close()
        out[name] = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    started = time.perf_counter()
    for _ in range(rounds):
        httpx.get(server_url + "/healthz")
    per_call = (time.perf_counter() - started) * 1000 / rounds
    out["(floor: GET /healthz, httpx)"] = {"fcp_ms": 0.0, "meaningful_ms": per_call}
    context.close()
    return out


def add_apps(server: Server, n: int) -> None:
    token = (server.data_dir / "admin.token").read_text().strip()
    with httpx.Client(base_url=f"{server.url}/api/v1", headers={"Authorization": f"Bearer {token}"}) as c:
        c.post(
            "/clouds",
            json={
                "name": "bench-sim",
                "kind": "sim",
                "site": "bench",
                "region": "gz",
                "tags": {"level": "bench"},
                "options": {"hosts": 200, "boot": 0},
            },
        )
        for vdc in ("gz", "gz/health"):  # room for them: the demo's quotas are a city's, not a benchmark's
            r = c.put(f"/vdcs/{vdc}/quota", json={"quota": {"cpu": "10000", "memory": "100Ti", "instances": 100000}})
            if r.status_code != 200:
                raise SystemExit(f"raising the quota of {vdc} failed: {r.status_code} {r.text}")
        for i in range(n):
            spec = {
                "apiVersion": "shanzhi.io/v1",
                "kind": "App",
                "metadata": {"name": f"bulk-{i:04d}", "vdc": "gz/health"},
                "spec": {
                    "components": [
                        {"name": "web", "replicas": 1, "image": "x", "resources": {"cpu": "10m", "memory": "16Mi"}}
                    ],
                    "placement": {"clouds": {"tags": {"level": "bench"}}},
                },
            }
            r = c.post("/apps", json=spec)
            if r.status_code not in (200, 201, 202):
                raise SystemExit(f"apply {i} failed: {r.status_code} {r.text}")
            if i % 200 == 199:
                print(f"  {i + 1}/{n} apps applied", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 loads per view (the 1,000 apps are added either way)")
    ap.add_argument("--apps", type=int, default=1000, help="apps added for the second world")
    ap.add_argument("-o", "--output", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    rounds = 3 if args.quick else 7
    extra = args.apps
    from playwright.sync_api import sync_playwright

    results: dict[str, Any] = {"rounds": rounds, "worlds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        server = Server(data, None, "--demo", "--metrics-interval", "5")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
                time.sleep(5)  # the demo's first passes
                print("the demo world ...", file=sys.stderr)
                results["worlds"]["demo"] = run_views(browser, server.url, rounds)
                print(f"adding {extra} apps ...", file=sys.stderr)
                add_apps(server, extra)
                results["worlds"][f"demo + {extra} apps"] = run_views(browser, server.url, rounds)
                browser.close()
        finally:
            stop_everything(data, server)
    table = Table(title=f"Console views in Chromium (median of {rounds} fresh loads)")
    for col in ("world", "view", "first paint ms", "content ms", "slowest call ms", "calls sum ms"):
        table.add_column(col, justify="right" if "ms" in col else "left")
    for world, views in results["worlds"].items():
        for view, m in views.items():
            table.add_row(
                world,
                view,
                f"{m['fcp_ms']:.0f}",
                f"{m['meaningful_ms']:.0f}",
                f"{m.get('api_max_ms', 0):.0f}",
                f"{m.get('api_sum_ms', 0):.0f}",
            )
    Console().print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
