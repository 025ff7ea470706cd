"""Tenant networks: the pure policy compiler and address plans (no root), the netns fabric with
real packets (root)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PROBE = Path(__file__).with_name("probe.py")

#: a workload answering TCP (HTTP 200) and UDP (echo) on $PORT, on every address of its namespace
ECHO = (
    "import os,socket,threading,http.server\n"
    "p=int(os.environ['PORT'])\n"
    "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.bind(('0.0.0.0',p))\n"
    "def echo():\n"
    "    while True:\n"
    "        d,a=u.recvfrom(2048);u.sendto(d,a)\n"
    "threading.Thread(target=echo,daemon=True).start()\n"
    "http.server.ThreadingHTTPServer.request_queue_size=4096\n"  # probes connect 200 at a time
    "http.server.SimpleHTTPRequestHandler.protocol_version='HTTP/1.1'\n"  # keep-alive: long flows
    "http.server.ThreadingHTTPServer(('0.0.0.0',p),http.server.SimpleHTTPRequestHandler).serve_forever()\n"
)


def probe(ns: str, targets: list[str], port: int, count: int, *kinds: str) -> dict[str, Any]:
    """Run probe.py inside namespace `ns`; {kind: {sent, answered}}."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, str(PROBE), ",".join(targets), str(port), str(count), *kinds],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result
