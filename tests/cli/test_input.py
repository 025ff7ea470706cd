"""The CLI refuses hostile input files before it sends anything (no server needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.domain.test_spec import LAUGHS


def shanzhi(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
    env |= {"SHANZHI_URL": "http://127.0.0.1:9", "SHANZHI_HOME": str(home), "SHANZHI_TOKEN": "szt_x"}
    return subprocess.run(
        [sys.executable, "-m", "shanzhi", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_apply_refuses_a_billion_laughs_and_oversized_files(tmp_path: Path) -> None:
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text(LAUGHS)
    r = shanzhi("apply", "-f", str(laughs), home=tmp_path)
    assert r.returncode == 1 and "billion laughs" in r.stderr
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (5 * 2**20))
    r = shanzhi("apply", "-f", str(big), home=tmp_path)
    assert r.returncode == 1 and "allowed" in r.stderr
