"""Content-addressed artifact store: `<state>/artifacts/<stage>/<key>/`.

A stage's key (lifecycle/stages.py: `stage_key`) hashes its config section, the keys of its inputs and
its code, so an unchanged re-run finds its output here and does no work. Outputs are built in a temporary
folder and renamed into place only when complete, so a failed or killed stage never leaves a half-written
artifact. A committed output is immutable: later stages read it and write only into their own folders.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lifecycle.registry import ModelRef

MANIFEST = "_lifecycle.json"


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
        manifest = self.path(stage, key) / MANIFEST
        if not manifest.is_file():
            return None
        data = json.loads(manifest.read_text())["output"]
        model = ModelRef(**data["model"]) if data.get("model") else None
        return StageOutput(**{**data, "model": model, "cached": True})

    @contextmanager
    def building(self, stage: str, key: str) -> Iterator[Path]:
        """Yield a temporary folder; on success it replaces `<stage>/<key>` in one rename."""
        tmp = self.root / stage / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def commit(self, tmp: Path, output: StageOutput) -> StageOutput:
        manifest = {"output": asdict(output), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        final = self.path(output.stage, output.key)
        if final.exists():  # a forced re-run (--from): move the old one aside, then swap
            old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        return output
