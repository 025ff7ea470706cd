"""The README's tour, run as written: every command of the two blocks under "Try it", in order,
against a fresh demo server, each checked for what its comment says. A command added to the
README without an expectation here fails the test, so the two cannot drift apart again."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shanzhi.services.demo import DEMO_PASSWORD
from tests.e2e.harness import ROOT, Server, stop_everything, wait_for
from tests.vm import missing

pytestmark = pytest.mark.e2e
README = ROOT / "README.md"
VMS = missing() is None  # the demo has a VM app only where VMs run (CI: always)

Check = Callable[[str], bool]


def has(*parts: str) -> Check:
    return lambda text: all(p in text for p in parts)


def rx(pattern: str) -> Check:
    return lambda text: re.search(pattern, text, re.MULTILINE) is not None


def both(*checks: Check) -> Check:
    return lambda text: all(c(text) for c in checks)


def lacks(*parts: str) -> Check:
    return lambda text: not any(p in text for p in parts)


# command (as in the README, comment removed) -> (exit status, what its output shows)
EXPECT: dict[str, tuple[int, Check]] = {
    "export SHANZHI_HOME=~/.local/share/shanzhi": (0, lambda _: True),  # the test sets its own
    ".venv/bin/shanzhi cloud list": (0, has("city-a", "city-b", "city-c", "tianhe", "yuexiu", "public-east")),
    ".venv/bin/shanzhi vdc list": (0, has("├─ health", "│  └─ it", "└─ station-3", "└─ transport")),
    ".venv/bin/shanzhi app get hello": (0, both(rx(r"hello\s+gz/health\s+Ready\s+web:4/4"), has("Placement"))),
    ".venv/bin/shanzhi instance list --app hello -o json": (
        0,
        lambda text: len(rows := json.loads(text)) == 4 and all(r["state"] == "running" for r in rows),
    ),
    "curl http://$(.venv/bin/shanzhi instance list --app hello -o json | python3 -c 'import json,sys; "
    'print(json.load(sys.stdin)[0]["endpoint"])\')/': (0, has("Directory listing")),
    ".venv/bin/shanzhi instance logs $(.venv/bin/shanzhi instance list --app hello -o json | python3 -c "
    "'import json,sys; print(json.load(sys.stdin)[0][\"name\"])')": (0, has('"GET / HTTP/1.1" 200')),
    ".venv/bin/shanzhi app get records-db": (
        0 if VMS else 1,  # without VMs: "app records-db does not exist"
        lambda t: ("records-db" in t and "vm-huangpu" in t) if VMS else "records-db does not exist" in t,
    ),
    ".venv/bin/shanzhi volume list": (0, lambda t: not VMS or "gz.health_records-db_db-0_data" in t),
    ".venv/bin/shanzhi cloud fail city-a": (0, has("city-a", "failed")),
    ".venv/bin/shanzhi events --app hello": (0, has("InstanceLost", "cloud city-a unreachable", "InstanceReady")),
    ".venv/bin/shanzhi cloud recover city-a": (0, has("recovered")),
    ".venv/bin/shanzhi app scale hello web 6": (0, has("app/hello (gz/health) configured: scale web 4 -> 6")),
    ".venv/bin/shanzhi app rollout history hello": (0, both(has("the demo world"), rx(r"2 \(current\).*scale web"))),
    ".venv/bin/shanzhi diff -f examples/permits.yaml": (
        1,
        has("-    strategy: least-allocated", "+    strategy: binpack", "api: roll: 6 replicas", "db: roll: 2"),
    ),
    ".venv/bin/shanzhi apply -f examples/permits.yaml --dry-run": (
        0,
        has("app/permits (gz/transport) would be held", "big-or-public: asks for 20 cpu, more than 8"),
    ),
    ".venv/bin/shanzhi ledger watch --count 5": (
        0,
        both(
            has("responsibility", "catalog", "share-request", "share-approval", "access", "grant→3"),
            lacks("commitment"),
        ),
    ),
    ".venv/bin/shanzhi ledger prove 3": (0, both(rx(r"^verified\s+True$"), has("pinned the key of log"))),
    ".venv/bin/shanzhi plan evacuate tianhe": (0, has("plan 1 (evacuate, proposed)", "tianhe is fenced")),
    ".venv/bin/shanzhi plan drop 1": (0, has("plan 1 (evacuate, dropped)")),
    ".venv/bin/shanzhi rate list; .venv/bin/shanzhi bill": (0, both(rx(r"tianhe\s+0.08"), rx(r"gz/health\s+city-"))),
    ".venv/bin/shanzhi login -u zhang.min": (0, has("as zhang.min")),
    ".venv/bin/shanzhi app list": (0, both(has("hello"), lacks("permits"))),
    ".venv/bin/shanzhi apply -f examples/imaging.yaml": (
        0,
        has("app/imaging (gz/health) held for approval 1", "nothing changed yet"),
    ),
    ".venv/bin/shanzhi login -u li.wei": (0, has("as li.wei")),
    '.venv/bin/shanzhi approval list; .venv/bin/shanzhi approval approve 1 -m "budget ok"': (
        0,
        both(rx(r"gz/health/imaging\s+apply\s+zhang.min\s+pending\s+2/2\s+admin"), has("approved by li.wei")),
    ),
    ".venv/bin/shanzhi logout": (0, has("Logged out", "admin.token")),
    ".venv/bin/shanzhi approval approve 1": (0, has("approved by admin", "applied: app imaging created")),
    ".venv/bin/shanzhi audit list --actor li.wei": (0, both(has("POST /api/v1/approvals/1/approve"), lacks("zhang"))),
}


def tour() -> list[str]:
    """The commands of the sh blocks under "## Try it", comments removed, in order."""
    text = README.read_text()
    section = text[text.index("## Try it") : text.index("\n## ", text.index("## Try it") + 1)]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        for line in block.splitlines():
            command = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if command:
                commands.append(command)
    return commands


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    data = tmp_path / "data"
    data.mkdir()
    server = Server(data, None, "--demo", demo_vms=True)  # as make run: with a VM when this machine can
    # where the README's commands run: `.venv/bin/shanzhi` is this interpreter's CLI, examples as shipped
    work = tmp_path / "clone"
    (work / ".venv" / "bin").mkdir(parents=True)
    shim = work / ".venv" / "bin" / "shanzhi"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m shanzhi "$@"\n')
    shim.chmod(0o755)
    (work / "examples").symlink_to(ROOT / "examples")
    try:
        yield server, work
    finally:
        stop_everything(data, server)


def test_the_readme_example_is_the_shipped_file() -> None:
    text = README.read_text()
    start = text.index("An app spec (this exact file is `examples/hello.yaml`):")
    block = text[text.index("```yaml\n", start) + 8 : text.index("```", text.index("```yaml\n", start) + 8)]
    assert block == (ROOT / "examples" / "hello.yaml").read_text()


def test_every_readme_command_has_an_expectation() -> None:
    assert tour() == list(EXPECT), "the README's tour and this test's EXPECT must list the same commands in order"


def test_the_readme_tour_runs_as_written(demo: tuple[Server, Path]) -> None:
    server, work = demo
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
    env |= {
        "SHANZHI_URL": server.url,
        "SHANZHI_HOME": str(server.data_dir),
        "SHANZHI_PASSWORD": DEMO_PASSWORD,  # what `login` asks for at a terminal
        "XDG_CONFIG_HOME": str(work / "config"),
        "COLUMNS": "200",
    }
    wait_for(lambda: _hello_ready(server, 4), 180, "the demo's hello app")
    for command in tour():
        if command.startswith("export "):
            continue
        r = subprocess.run(
            ["bash", "-c", command], check=False, cwd=work, env=env, capture_output=True, text=True, timeout=120
        )
        status, check = EXPECT[command]
        shown = r.stdout + r.stderr
        assert r.returncode == status, f"{command}\nexit {r.returncode}, wanted {status}:\n{shown}"
        assert check(r.stdout if "-o json" in command and "$(" not in command else shown), f"{command}:\n{shown}"
        if command.endswith("cloud fail city-a"):  # the next line shows the failover: let it happen
            wait_for(lambda: _hello_ready(server, 4, avoid="city-a"), 180, "hello to fail over")
        if command.endswith("app scale hello web 6"):
            wait_for(lambda: _hello_ready(server, 6), 180, "hello at 6 replicas")


def _hello_ready(server: Server, n: int, avoid: str = "") -> bool:
    token = (server.data_dir / "admin.token").read_text().strip()
    r = httpx.get(f"{server.url}/api/v1/apps/hello", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    if r.status_code != 200:
        return False
    app = r.json()
    running = [i for i in app["instances"] if i["state"] == "running" and i["cloud"] != avoid]
    return app["status"] == "Ready" and len(running) == n
