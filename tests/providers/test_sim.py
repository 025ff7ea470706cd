import time
from pathlib import Path

import pytest

from shanzhi.domain.errors import CloudUnavailable, InvalidInput
from shanzhi.providers import InstanceRequest, load_provider
from shanzhi.providers.sim import SimProvider


def sim(tmp_path: Path, **opts: object) -> SimProvider:
    p = load_provider("sim", "dist", SimProvider.validate_options(opts), tmp_path / "dist")
    assert isinstance(p, SimProvider)
    return p


def req(name: str, host: str) -> InstanceRequest:
    return InstanceRequest(name=name, app="a", component="c", vdc="gz", host=host, cpu=1000, memory=2**30, image="x")


def test_hosts_and_boot_latency(tmp_path: Path) -> None:
    p = sim(tmp_path, hosts=3, cpu=8, memory="16Gi", boot=0.3)
    assert [h.name for h in p.hosts()] == ["dist-h0000", "dist-h0001", "dist-h0002"]
    assert p.hosts()[0].cpu == 8000
    assert p.create_instance(req("i1", "dist-h0001")).state == "starting"
    time.sleep(0.35)
    (obs,) = p.list_instances()
    assert (obs.name, obs.host, obs.state) == ("i1", "dist-h0001", "running")


def test_state_survives_a_new_provider_object(tmp_path: Path) -> None:
    sim(tmp_path, boot=0).create_instance(req("i1", "dist-h0000"))
    sim(tmp_path, boot=0).inject_failure("dist-h0002")
    again = sim(tmp_path, boot=0)
    assert [o.name for o in again.list_instances()] == ["i1"]
    assert [h.healthy for h in again.hosts()][:3] == [True, True, False]


def test_host_failure_fails_its_instances(tmp_path: Path) -> None:
    p = sim(tmp_path, boot=0)
    p.create_instance(req("i1", "dist-h0000"))
    p.create_instance(req("i2", "dist-h0001"))
    p.inject_failure("dist-h0000")
    states = {o.name: o.state for o in p.list_instances()}
    assert states == {"i1": "failed", "i2": "running"}
    with pytest.raises(CloudUnavailable):
        p.create_instance(req("i3", "dist-h0000"))
    p.recover("dist-h0000")
    assert {o.state for o in p.list_instances()} == {"running"}


def test_cloud_failure_makes_it_unreachable(tmp_path: Path) -> None:
    p = sim(tmp_path, boot=0)
    p.create_instance(req("i1", "dist-h0000"))
    p.inject_failure()
    assert not p.status().healthy
    assert not any(h.healthy for h in p.hosts())
    with pytest.raises(CloudUnavailable):
        p.list_instances()
    p.recover()
    assert [o.name for o in p.list_instances()] == ["i1"]


def test_create_is_idempotent_and_delete_too(tmp_path: Path) -> None:
    p = sim(tmp_path, boot=0)
    a = p.create_instance(req("i1", "dist-h0000"))
    b = p.create_instance(req("i1", "dist-h0000"))
    assert a == b
    p.delete_instance("i1")
    p.delete_instance("i1")
    assert p.list_instances() == []


def test_unknown_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no host 'nope'"):
        sim(tmp_path).create_instance(req("i1", "nope"))
    with pytest.raises(InvalidInput, match="no host 'nope'"):
        sim(tmp_path).inject_failure("nope")
