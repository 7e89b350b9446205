"""Content-addressed artifact store: `<state>/artifacts/<stage>/<key>/`.

A stage's key (lifecycle/stages.py: `stage_key`) hashes its config section, the keys of its inputs and
its code, so an unchanged re-run finds its output here and does no work. Outputs are built in a temporary
folder and renamed into place only when complete, so a failed or killed stage never leaves a half-written
artifact. A committed output is immutable: later stages read it and write only into their own folders.
Its manifest (`_lifecycle.json`) records the size and sha256 of every file; a lookup checks them, and an
output that was truncated or changed since is moved aside as `.damaged-<key>-<time>` (kept for inspection)
and recomputed, with a warning naming the files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lifecycle.manifest import check_tree, hash_tree, write_json_atomic
from lifecycle.registry import ModelRef

MANIFEST = "_lifecycle.json"
log = logging.getLogger("lifecycle.store")


@dataclass(frozen=True)
class StageOutput:
    """What a stage hands to the next one: a reference, never the data itself."""

    stage: str
    key: str
    path: str
    run_id: str
    cached: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    model: ModelRef | None = None  # the registered version, for stages that produce a model
    digest: str | None = None  # a content hash of what it holds, when that is not fixed by its key (votes)

    @property
    def identity(self) -> str:
        """What a stage reading this output puts in its own cache key: the content hash when there is one
        (a preference set's votes), else the key."""
        return self.digest or self.key

    def file(self, *parts: str) -> Path:
        return Path(self.path).joinpath(*parts)


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> StageOutput | None:
        """The committed output of `stage` for `key`, None when there is none or it is damaged (then it is
        moved aside and the reason logged, so the stage computes it again)."""
        folder = self.path(stage, key)
        manifest = folder / MANIFEST
        if not manifest.is_file():
            return None
        try:
            record = json.loads(manifest.read_text())
            data = record["output"]
        except (ValueError, KeyError, TypeError) as err:
            return self._damaged(folder, [f"{MANIFEST}: unreadable ({err})"])
        problems = check_tree(folder, record.get("files", {}))  # outputs from before manifests: no files
        if problems:
            return self._damaged(folder, problems)
        model = ModelRef(**data["model"]) if data.get("model") else None
        return StageOutput(**{**data, "model": model, "cached": True})

    def _damaged(self, folder: Path, problems: list[str]) -> None:
        aside = folder.with_name(f".damaged-{folder.name}-{time.strftime('%Y%m%dT%H%M%S')}")
        os.rename(folder, aside)
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        log.warning("cached output %s is damaged: %s%s; moved aside to %s and computing it again",
                    folder, "; ".join(problems[:3]), more, aside.name)
        return None

    @contextmanager
    def building(self, stage: str, key: str) -> Iterator[Path]:
        """Yield a temporary folder; on success it replaces `<stage>/<key>` in one rename. The temporary
        folders of the same key that a killed process on this host left behind are removed first."""
        _remove_leftovers(self.root / stage, key)
        tmp = self.root / stage / f".tmp-{key}-{uuid.uuid4().hex[:8]}-{os.getpid()}@{socket.gethostname()}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def commit(self, tmp: Path, output: StageOutput) -> StageOutput:
        manifest = {"output": asdict(output), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "files": hash_tree(tmp, skip={MANIFEST})}
        write_json_atomic(tmp / MANIFEST, manifest)
        final = self.path(output.stage, output.key)
        if final.exists():  # a forced re-run (--from): move the old one aside, then swap
            old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        return output


def _remove_leftovers(folder: Path, key: str) -> None:
    """`.tmp-<key>-<random>-<pid>@<host>` folders of this host whose process is gone (or is this one: a pid
    reused after a restart): what a killed run was building."""
    for tmp in folder.glob(f".tmp-{key}-*@*"):
        rest, _, host = tmp.name.rpartition("@")
        pid = rest.rsplit("-", 1)[-1]
        if host == socket.gethostname() and pid.isdigit() and (
                int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists()):
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("removed %s: a killed run was building it", tmp)
