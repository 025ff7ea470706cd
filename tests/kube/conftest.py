from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kube.cluster import StandIn


@pytest.fixture(scope="session")
def _cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    s = StandIn(tmp_path_factory.mktemp("kube") / "standin.log", "--metrics")
    yield s
    s.stop()


@pytest.fixture
def cluster(_cluster: StandIn) -> StandIn:
    _cluster.reset()
    return _cluster
