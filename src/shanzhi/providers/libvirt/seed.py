"""cloud-init NoCloud seeds: a small ISO 9660 volume labelled `cidata` that tells a VM who it is.

It holds `meta-data` (instance id, host name) and `user-data` (#cloud-config: the host name, an
SSH key when the cloud has one, and `/etc/shanzhi/env` with the component's env and ports), which
real distribution images read with cloud-init; and `shanzhi.env`, the same facts as shell
assignments, which the tiny image's `/init` reads (it has no YAML parser). Made with xorriso
from Debian; attached to the VM as its last virtio disk.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path


class SeedError(Exception):
    pass


def env_lines(values: Mapping[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def build_seed(
    path: Path,
    instance: str,
    ports: Mapping[str, int],
    volumes: Mapping[str, str],
    env: Mapping[str, str],
    ssh_key: str | None = None,
    address: str | None = None,
) -> Path:
    """Write the seed ISO to `path`. `ports`: name -> port in the guest; `volumes`: device -> mount path."""
    xorriso = shutil.which("xorriso")
    if xorriso is None:
        raise SeedError("xorriso is not installed (apt-get install xorriso): VMs get their configuration from it")
    facts = {
        "SHANZHI_NAME": instance,
        "SHANZHI_PORTS": ",".join(str(p) for p in ports.values()),
        "SHANZHI_VOLS": ",".join(f"{dev}:{mount}" for dev, mount in volumes.items()),
    }
    facts.update({f"PORT_{k.upper().replace('-', '_')}": str(v) for k, v in ports.items()})
    if address:  # on the tenant fabric: the guest's own address (else QEMU's user network)
        facts["SHANZHI_ADDRESS"] = address
    facts = {**env, **facts}  # the spec's env cannot pass itself off as the platform's facts
    user: dict[str, object] = {
        "hostname": instance,
        "write_files": [{"path": "/etc/shanzhi/env", "permissions": "0644", "content": env_lines(facts)}],
    }
    if ssh_key:
        user["ssh_authorized_keys"] = [ssh_key]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        # JSON is YAML: no YAML writer needed, and nothing in it can be misread
        (d / "meta-data").write_text(json.dumps({"instance-id": instance, "local-hostname": instance}) + "\n")
        (d / "user-data").write_text("#cloud-config\n" + json.dumps(user, indent=1) + "\n")
        (d / "shanzhi.env").write_text(env_lines(facts))
        out = path.with_suffix(".making")
        done = subprocess.run(
            [xorriso, "-as", "mkisofs", "-quiet", "-o", str(out), "-V", "cidata", "-J", "-r", str(d)],
            check=False,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SeedError(f"xorriso could not make the seed for {instance}: {done.stderr.strip()[-300:]}")
        out.chmod(0o644)
        out.rename(path)
    return path
