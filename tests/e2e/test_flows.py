"""Flow records and network alarms end to end: a real server with a netns cloud, traffic
between apps of two VDCs, and what `shanzhi flows` and `shanzhi alarms` then say."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shanzhi.providers.fabric.topology import Fabric
from shanzhi.providers.sandbox import server_id
from tests.e2e.harness import Cli, Server, free_port, stop_everything, wait_for
from tests.e2e.test_tenant_network import PORT, _addr, _running, _spec
from tests.network import probe
from tests.network.kernel import fresh_pool, skip_unless_netns

pytestmark = pytest.mark.e2e
BURST = 20_000


class Hook:
    """A webhook receiver on loopback: what the server posts."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alarms"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Server, Cli, Fabric, Hook]]:
    skip_unless_netns()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    hook = Hook()
    s = Server(data_dir, None, "--demo", "--network-pool", fresh_pool(), "--alarm-webhook", hook.url)
    cli = Cli(s)
    try:
        cli.ok(
            "cloud", "add", "t1", "--provider", "netns", "--site", "gz-huangpu", "--region", "gz", "--option", "hosts=2"
        )
        yield s, cli, Fabric(server_id(data_dir)), hook
    finally:
        stop_everything(data_dir, s)
        hook.close()


def _flows(cli: Cli, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = cli.json("flows", "--limit", "5000", *args)
    return rows


def test_flows_are_recorded_with_both_ends_and_drops_match_the_counters(
    world: tuple[Server, Cli, Fabric, Hook], tmp_path: Path
) -> None:
    _, cli, fabric, hook = world
    allow = {"allow": [{"from": {"vdc": "gz/transport", "app": "portal"}, "ports": ["http"]}]}
    for name, text in {
        "portal": _spec("portal", "gz/transport", 1, None, "t1"),
        "records": _spec("records", "gz/health", 1, allow, "t1"),
        "aid": _spec("aid", "gz/tianhe", 1, None, "t1"),
    }.items():
        (tmp_path / f"{name}.json").write_text(text)
        cli.ok("apply", "-f", str(tmp_path / f"{name}.json"))
    portal, records, aid = _running(cli, "portal", 1)[0], _running(cli, "records", 1)[0], _running(cli, "aid", 1)[0]
    ns = {i["app"]: fabric.instance(str(i["cloud"]), str(i["name"])) for i in (portal, records, aid)}
    wait_for(lambda: _collectors_up(cli), 60, "flow collection running")

    # 200 short connections portal -> records, allowed by records' rule
    assert probe(ns["portal"], [_addr(records)], PORT, 200, "tcp") == {"tcp": {"sent": 200, "answered": 200}}

    def accepted() -> list[dict[str, Any]]:
        return [
            f
            for f in _flows(cli, "--app", "records", "--verdict", "forwarded")
            if f["src_app"] == "portal" and f["proto"] == "tcp" and f["dst"] == _addr(records)
        ]

    rows = wait_for(lambda: (r := accepted()) and len(r) >= 200 and r, 60, "200 flows recorded")
    assert len(rows) == 200  # each connection once, though two hosts' conntrack saw it
    for f in rows:
        assert (f["src_vdc"], f["dst_vdc"], f["dst_app"]) == ("gz/transport", "gz/health", "records")
        assert f["src_instance"] == portal["name"] and f["dst_instance"] == records["name"]
        assert f["rule"] == "allow[0] gz/health/records" and f["dport"] == PORT

    def over() -> list[dict[str, Any]] | None:
        rows = accepted()
        return rows if all(f["ended_at"] for f in rows) else None

    ended = wait_for(over, 30, "the 200 connections ended")  # TIME_WAIT: over, though conntrack keeps it
    assert all(f["packets_out"] >= 3 and f["bytes_out"] > 0 and f["packets_in"] >= 2 for f in ended)

    # a long connection: its record grows while it lasts, and ends when it does
    held = threading.Thread(target=probe, args=(ns["portal"], [_addr(records)], PORT, 14, "hold"))
    held.start()

    def open_flow() -> dict[str, Any] | None:
        return next((f for f in accepted() if not f["ended_at"] and f["bytes_in"] > 0), None)

    first = wait_for(open_flow, 30, "the long connection recorded while open")
    later = wait_for(
        lambda: (
            (f := next((x for x in accepted() if x["id"] == first["id"]), None))
            and f["bytes_in"] > first["bytes_in"]
            and f
        ),
        30,
        "its counters growing",
    )
    assert later["updated_at"] > first["updated_at"] and later["ended_at"] is None
    held.join()
    closed = wait_for(
        lambda: next((x for x in accepted() if x["id"] == first["id"] and x["ended_at"]), None), 30, "its end"
    )
    assert closed["packets_in"] >= 20 and closed["bytes_in"] > later["bytes_in"]

    # a burst from another VDC: every dropped packet is in the records and in the rule's counter
    hosts = [fabric.host("t1", i) for i in range(2)]
    before = _drop_counters(hosts)
    probe(ns["aid"], [_addr(records)], PORT, BURST, "burst")
    counted = _drop_counters(hosts) - before

    def dropped() -> int:
        rows = _flows(cli, "--app", "aid", "--verdict", "dropped")
        return sum(f["packets_out"] for f in rows if f["proto"] == "udp" and f["sport"] != PORT)

    wait_for(lambda: dropped() >= BURST, 60, f"{BURST} dropped packets recorded")
    assert dropped() == BURST == counted
    denied = next(f for f in _flows(cli, "--app", "aid", "--verdict", "dropped") if f["proto"] == "udp")
    assert denied["rule"] == "cross-vdc gz/health" and denied["dst_app"] == "records" and denied["src_app"] == "aid"

    # alarms: the denied attempt and the new edge, each also posted to the webhook
    alarms = wait_for(
        lambda: {a["kind"]: a for a in cli.json("alarms")} if len(hook.posts) >= 2 else None, 30, "alarms"
    )
    assert "gz/tianhe/aid" in alarms["cross-vdc-denied"]["message"] and alarms["cross-vdc-denied"]["vdc"] == "gz/health"
    assert alarms["new-edge"]["message"] == "new traffic: gz/transport/portal -> gz/health/records (never seen before)"
    assert {p["kind"] for p in hook.posts} >= {"cross-vdc-denied", "new-edge"}
    acked = cli.json("alarm", "ack", str(alarms["cross-vdc-denied"]["id"]))
    assert acked["acknowledged_by"] == "admin"
    assert cli.run("alarm", "ack", "999999").returncode != 0


def _drop_counters(hosts: list[str]) -> int:
    """Packets counted by the policy's drop rules (those that log) on these hosts."""
    total = 0
    for ns in hosts:
        doc = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "shanzhi"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        items = json.loads(doc)["nftables"]
        logging = {
            e["counter"]
            for i in items
            if "rule" in i and any("log" in e for e in i["rule"]["expr"])
            for e in i["rule"]["expr"]
            if "counter" in e
        }
        total += sum(i["counter"]["packets"] for i in items if "counter" in i and i["counter"]["name"] in logging)
    return total


def _collectors_up(cli: Cli) -> bool:
    """The collectors have reported: management health checks show up as flows."""
    return bool(_flows(cli, "--verdict", "forwarded"))
