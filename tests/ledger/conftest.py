from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shanzhi.ledger.entries import make_entry
from shanzhi.ledger.note import COSIGNATURE_V1, Signer
from shanzhi.ledger.service import Ledger, Witness
from shanzhi.ledger.witness import WitnessState, transport
from shanzhi.store import Database

LOG_KEY = Signer.generate("ledger.gz.example/directory")
PLATFORM = Signer.generate("shanzhi.gz.example/platform")
DEPT = Signer.generate("gz.gov.cn/health")
WITNESSES = [Signer.generate(f"witness.gz.example/{d}", COSIGNATURE_V1) for d in ("health", "transport", "finance")]


@pytest.fixture
def ledger(db: Database, tmp_path: Path) -> Iterator[Ledger]:
    """A ledger with three in-process witnesses (real witness logic) and a quorum of 2."""
    states = {
        f"http://w{i}.test": WitnessState(tmp_path / f"w{i}.db", w, {LOG_KEY.name: LOG_KEY.verifier})
        for i, w in enumerate(WITNESSES)
    }
    http = httpx.Client(transport=transport(states))
    led = Ledger(
        db,
        LOG_KEY,
        platform=PLATFORM,
        witnesses=[Witness(url, w.verifier) for url, w in zip(states, WITNESSES, strict=True)],
        quorum=2,
        http=http,
    )
    led.register_key(DEPT.name, DEPT.verifier.encode(), "department")
    yield led
    led.stop()


def access(i: int) -> bytes:
    return make_entry(
        DEPT, "access", f"catalog/c{i % 7}", {"catalog": f"c{i % 7}", "consumer": "gz/transport", "records": i}
    )
