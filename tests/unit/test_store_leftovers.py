"""What a killed run was building stays out of sight (`.tmp-<key>-...`) and is removed by the next build of
the same key on the same host; a build still running (its process alive) is left alone."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from lifecycle.store import ArtifactStore


def test_a_killed_builds_temporary_folder_is_removed_by_the_next_build(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host, folder = socket.gethostname(), tmp_path / "artifacts" / "sft"
    dead = folder / f".tmp-k1-0123abcd-{gone.stdout.strip()}@{host}"
    alive = folder / f".tmp-k1-4567abcd-1@{host}"  # pid 1 is always running
    elsewhere = folder / f".tmp-k1-89abcdef-{gone.stdout.strip()}@not-{host}"  # another node's (shared storage)
    other_key = folder / f".tmp-k2-0123abcd-{gone.stdout.strip()}@{host}"
    for path in (dead, alive, elsewhere, other_key):
        (path / "model").mkdir(parents=True)
    with ArtifactStore(tmp_path / "artifacts").building("sft", "k1") as tmp:
        assert tmp.is_dir() and tmp.name.endswith(f"@{host}")
        assert not dead.exists() and alive.exists() and elsewhere.exists() and other_key.exists()
