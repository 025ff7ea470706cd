"""Writing secrets to disk: the one way tokens, keys and saved credentials reach a file."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, readable by the owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def secure_data_dir(data_dir: Path) -> list[str]:
    """Make the data directory the server's alone: no group or other access to it or below it.

    Older versions left the SQLite database (and its -wal) 0644. Returns what was tightened.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fixed = []
    for path in (data_dir, *data_dir.rglob("*")):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if not path.is_symlink() and st.st_mode & 0o077:
            os.chmod(path, st.st_mode & 0o700)
            fixed.append(str(path))
    return fixed
