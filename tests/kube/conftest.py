from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kube.cluster import StandIn, standin


@pytest.fixture(scope="session")
def _cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    yield from standin(tmp_path_factory)


@pytest.fixture
def cluster(_cluster: StandIn) -> StandIn:
    _cluster.reset()
    return _cluster
