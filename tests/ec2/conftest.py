from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ec2.moto import Moto, moto_server


@pytest.fixture(scope="session")
def _moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    yield from moto_server(tmp_path_factory)


@pytest.fixture
def moto(_moto: Moto) -> Moto:
    _moto.reset()
    return _moto
