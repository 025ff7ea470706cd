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


def test_version_and_shell_completion(tmp_path: Path) -> None:
    from shanzhi import __version__

    r = shanzhi("--version", home=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"shanzhi {__version__}"
    for shell, marker in (("bash", "complete -o default -F _shanzhi_completion shanzhi"), ("zsh", "#compdef shanzhi"),
                          ("fish", "complete --command shanzhi")):  # fmt: skip
        r = shanzhi("completion", shell, home=tmp_path)
        assert r.returncode == 0 and marker in r.stdout, (shell, r.stdout[:200])
    assert shanzhi("completion", "tcsh", home=tmp_path).returncode == 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
    env |= {"COMP_WORDS": "shanzhi cloud ", "COMP_CWORD": "2", "_SHANZHI_COMPLETE": "complete_bash"}
    script = str(Path(sys.executable).parent / "shanzhi")  # the installed command, as a shell runs it
    done = subprocess.run([script], capture_output=True, text=True, env=env, check=False)
    assert {"add", "list", "get"} <= set(done.stdout.split())


def test_help_is_plain_text_without_type_noise(tmp_path: Path) -> None:
    for args in (
        ("--help",),
        ("login", "--help"),
        ("apply", "--help"),
        ("serve", "--help"),
        ("cloud", "add", "--help"),
    ):
        r = shanzhi(*args, home=tmp_path)
        assert r.returncode == 0 and r.stdout.startswith("Usage: "), args
        assert "<bool>" not in r.stdout and "╭" not in r.stdout, args
    assert "--require-mfa" in shanzhi("serve", "--help", home=tmp_path).stdout


def test_a_cli_command_loads_none_of_the_server() -> None:
    """Every command is a fresh process: the client's commands must not load the server's layers
    (the API, services, store, controllers, providers, ledger), which `serve` imports when it runs.
    One such import at module level once tripled every command's start-up."""
    code = "import sys, shanzhi.cli.main; print('\\n'.join(m for m in sys.modules if m.startswith('shanzhi.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    server = ("api", "services", "store", "controllers", "providers", "ledger", "scheduler", "dr")
    assert "shanzhi.cli.apps" in loaded  # the commands themselves are there
    assert [m for m in loaded if m.split(".")[1] in server] == []
