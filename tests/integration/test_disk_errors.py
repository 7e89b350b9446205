"""A full or read-only disk under the state directory, through the real CLI: the run stops with one line naming
the path and what to do, no traceback, no retry, and no partial output (docs/RELIABILITY.md).

Tests run as root here, and root ignores permission bits, so the faults are real mounts in a private mount
namespace (`unshare -rm`): a tiny tmpfs (ENOSPC) or a read-only bind mount (EROFS) over the state directory or
its artifact store. The mount, and anything written on it, lives as long as that namespace: what is left
behind is listed from inside it."""

from __future__ import annotations

import os
import random
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_bad_input import CLEAN_ENV, ROOT

pytestmark = pytest.mark.integration
LEFT = "left behind:"


def namespace_available() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


if not namespace_available():
    pytest.skip("`unshare -rm` (a private user + mount namespace) is not available: no tmpfs or read-only mount "
                "can be made without changing the host", allow_module_level=True)


def run_in_namespace(mount: str, state: Path, listed: Path, *args: str, env: dict[str, str] | None = None
                     ) -> tuple[int, str, list[str]]:
    """(exit status, output, files under `listed`) of `lifecycle run --state-dir STATE ARGS` after `mount`."""
    cli = shlex.join([sys.executable, "-m", "lifecycle.cli", "run", "--state-dir", str(state), *args])
    script = (f"{mount} || exit 99\n{cli}\nrc=$?\necho '{LEFT}'\n"
              f"find {shlex.quote(str(listed))} -mindepth 2 -maxdepth 2 -print\nexit $rc")
    base = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=base | (env or {}),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 99, f"mount failed: {done.stderr}"
    out, _, left = done.stdout.partition(LEFT)
    return done.returncode, out + done.stderr, left.split()


def write_corpus(folder: Path, files: int = 30, paragraphs: int = 30) -> Path:
    """About 1 MB of distinct text (no near-duplicates), more than the 512 KB tmpfs holds once ingested."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(5000)]
    folder.mkdir()
    for i in range(files):
        text = "\n\n".join(" ".join(rng.choice(words) for _ in range(200)) + "." for _ in range(paragraphs))
        (folder / f"doc{i}.txt").write_text(text)
    return folder


def assert_reported_once(rc: int, output: str, message: str) -> None:
    assert rc == 2, output[-3000:]
    assert f"error: {message}" in output, output[-3000:]
    assert output.count(message) == 1 and "Traceback" not in output
    assert "transient failure" not in output and "Retry 1/" not in output  # not retried


def test_a_full_artifact_store_stops_ingest_with_the_folder_named_and_nothing_half_written(tmp_path: Path) -> None:
    state, corpus = tmp_path / "state", write_corpus(tmp_path / "corpus")
    artifacts = state / "artifacts"
    artifacts.mkdir(parents=True)
    rc, output, left = run_in_namespace(f"mount -t tmpfs -o size=512k tmpfs {artifacts}", state, artifacts,
                                        "--until", "ingest", "--source", str(corpus))
    assert_reported_once(rc, output, f"ingest: no space left on device while writing under '{artifacts / 'ingest'}' "
                                     "(free some space or point --state-dir elsewhere)")
    assert left == []  # neither a .tmp-* build folder nor a committed output


def test_a_read_only_artifact_store_stops_ingest_with_the_path_named(tmp_path: Path) -> None:
    state, corpus = tmp_path / "state", write_corpus(tmp_path / "corpus", files=2)
    artifacts = state / "artifacts"
    artifacts.mkdir(parents=True)
    mount = f"mount --bind {artifacts} {artifacts} && mount -o remount,ro,bind {artifacts}"
    rc, output, left = run_in_namespace(mount, state, artifacts, "--until", "ingest", "--source", str(corpus))
    assert_reported_once(rc, output, f"ingest: read-only file system while writing '{artifacts / 'ingest'}' "
                                     "(point --state-dir at a writable folder)")
    assert left == []


def test_a_state_dir_too_full_for_the_tracking_database_stops_the_run_before_any_stage(tmp_path: Path) -> None:
    state, corpus = tmp_path / "state", write_corpus(tmp_path / "corpus", files=2)
    state.mkdir()
    rc, output, left = run_in_namespace(f"mount -t tmpfs -o size=200k tmpfs {state}", state, state,
                                        "--until", "ingest", "--source", str(corpus),
                                        env={"PREFECT_HOME": str(tmp_path / "prefect")})
    assert_reported_once(rc, output, f"no space left on device while writing under '{state / 'mlflow'}' "
                                     "(free some space or point --state-dir elsewhere)")
    assert "Task run 'ingest" not in output and not any("/artifacts/" in path for path in left)


def test_a_read_only_state_dir_is_refused_before_anything_starts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    rc, output, left = run_in_namespace(f"mount --bind {state} {state} && mount -o remount,ro,bind {state}", state,
                                        state, "--until", "ingest")
    assert_reported_once(rc, output, f"state directory '{state}' cannot be written: Read-only file system "
                                     "(point --state-dir at a writable folder)")
    assert left == [] and "Flow run" not in output  # refused before the Prefect API or any flow run started
