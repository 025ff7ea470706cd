"""An etcd member's command line: the quorum of a DR topology, one member per centre.

Timing: etcd's defaults (heartbeat 100 ms, election 1 s), which keep a leader through the
machine's scheduling noise and elect a new one well inside Patroni's ttl.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ETCD = "/usr/bin/etcd"


@dataclass(frozen=True)
class EtcdMember:
    name: str
    address: str
    client_port: int
    peer_port: int

    @property
    def client_url(self) -> str:
        return f"http://{self.address}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.address}:{self.peer_port}"


def member_argv(member: EtcdMember, cluster: Sequence[EtcdMember], data_dir: str, token: str) -> list[str]:
    """How to start `member` of `cluster` (the same arguments on a restart: etcd ignores the
    initial-cluster settings once its data directory holds a member)."""
    return [
        ETCD,
        "--name", member.name,
        "--data-dir", data_dir,
        "--listen-client-urls", member.client_url,
        "--advertise-client-urls", member.client_url,
        "--listen-peer-urls", member.peer_url,
        "--initial-advertise-peer-urls", member.peer_url,
        "--initial-cluster", ",".join(f"{m.name}={m.peer_url}" for m in cluster),
        "--initial-cluster-state", "new",
        "--initial-cluster-token", token,
        "--auto-compaction-retention", "1",
        "--quota-backend-bytes", str(256 * 2**20),
        "--log-level", "warn",
    ]  # fmt: skip
