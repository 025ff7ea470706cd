"""The leader key as Debian's Patroni refreshes it, against a real etcd, with and without the
compare-and-set that members run with (`shanzhi.dr.patroni.CAS_PATCH`).

The scene the partition cycles found: an old primary's lease expired while it was cut off (its
key went with it) and another member took the key; the old one, its view of the cluster still
the one from before, refreshes its leader key. Without the patch Patroni 3.0.2 takes the key back
(two primaries); with it the refresh fails and the key stays with the new leader."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shanzhi.dr.etcd import EtcdMember, member_argv
from shanzhi.dr.patroni import CAS_PATCH
from tests.dr.bare import free_port, missing, wait

SCENE = """
import json, sys
from patroni.dcs.etcd3 import Etcd3

def dcs(name):
    return Etcd3({"hosts": [sys.argv[1]], "scope": sys.argv[2], "name": name, "namespace": "/t/", "ttl": 20,
                  "loop_wait": 1, "retry_timeout": 5})

a, b = dcs("a"), dcs("b")
a.get_cluster()
assert a.attempt_to_acquire_leader()
stale = a.get_cluster()  # a's view: a leads
a._client.call_rpc("/lease/revoke", {"ID": a._lease})  # its lease gone, as past the ttl: the key goes too
b.get_cluster()
assert b.attempt_to_acquire_leader()
kept = a._update_leader()
key = b._client.range(b.leader_path)["kvs"][0]
print(json.dumps({"stale_leader": stale.leader.name, "refreshed": bool(kept),
                  "leader": __import__("base64").b64decode(key["value"]).decode()}))
"""


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[str]:
    why = missing()
    if why is not None:
        pytest.skip(why)
    m = EtcdMember("e0", "127.0.5.9", free_port("127.0.5.9"), free_port("127.0.5.9"))
    proc = subprocess.Popen(member_argv(m, [m], str(tmp_path / "etcd"), "cas"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        host = f"{m.address}:{m.client_port}"
        wait(lambda: httpx.get(f"http://{host}/health", timeout=2).json()["health"] == "true", 30, "etcd")
        yield host
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp_path / "etcd", ignore_errors=True)


def _scene(host: str, scope: str, patch: str) -> dict[str, object]:
    done = subprocess.run(["/usr/bin/python3", "-c", patch + SCENE, host, scope], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_an_old_leader_with_a_stale_view_does_not_take_the_key_back(etcd: str) -> None:
    patched = _scene(etcd, "patched", CAS_PATCH)
    assert patched == {"stale_leader": "a", "refreshed": False, "leader": "b"}
    # and the reason the members run with it: Debian's Patroni alone takes the key back
    bare = _scene(etcd, "bare", "")
    assert bare["stale_leader"] == "a" and bare["leader"] == "a" and bare["refreshed"] is True
