from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ec2.moto import Moto


@pytest.fixture(scope="session")
def _moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    m = Moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield m
    m.stop()


@pytest.fixture
def moto(_moto: Moto) -> Moto:
    _moto.reset()
    return _moto
