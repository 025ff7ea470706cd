from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.openstack.cloud import StandIn


@pytest.fixture(scope="session")
def _openstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    s = StandIn(tmp_path_factory.mktemp("openstack") / "standin.log")
    yield s
    s.stop()


@pytest.fixture
def openstack_cloud(_openstack: StandIn) -> StandIn:
    _openstack.post("/_standin/reset")
    return _openstack
