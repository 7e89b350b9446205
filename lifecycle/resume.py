"""What a stage keeps across a kill -9, beyond its trainers' checkpoints: finished pieces of work (the
embedding shards of rag_index, the models evaluate has measured), each written atomically into the stage's
checkpoint folder and read back by the re-run instead of being computed again; and the model versions a
killed or failed run registered before its output was committed, which the re-run adopts (the same
weights) or deletes, so the registry holds what one clean run would have registered.

    parts = Parts(dirs.checkpoints, "embed", log)
    done = parts.load_arrays(names)              # logs "resuming: 3 of 8 embed parts already done"
    parts.save_array(name, vectors)              # a temporary file, fsynced, then renamed
    ref = register_once(model_dir, name, tags, models_dir)   # adopts a dangling version with these weights
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle.names import STAGE_KEY
from lifecycle.manifest import write_bytes_atomic, write_json_atomic
from lifecycle.registry import ModelRef, delete_version, local_copy, register_model, tag_version, unfinished_versions

log = logging.getLogger("lifecycle.resume")


class Parts:
    """Finished pieces of one stage's work under `folder` (its `dirs.checkpoints`), `<kind>-<name>.<ext>`."""

    def __init__(self, folder: Path, kind: str, logger: logging.Logger) -> None:
        self.folder, self.kind, self.log = Path(folder), kind, logger

    def path(self, name: str, ext: str) -> Path:
        return self.folder / f"{self.kind}-{name}.{ext}"

    def load_arrays(self, names: list[str]) -> dict[str, np.ndarray]:
        """{name: array} of the parts already saved (an unreadable one is computed again)."""
        found = {}
        for name in dict.fromkeys(names):
            path = self.path(name, "npy")
            if path.is_file():
                try:
                    found[name] = np.load(path, allow_pickle=False)
                except (OSError, ValueError) as err:
                    self.log.warning("%s: unreadable (%s): computing it again", path, err)
        self._report(len([n for n in names if n in found]), len(names))
        return found

    def save_array(self, name: str, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.path(name, "npy"), buffer.getvalue())

    def load_json(self, expect: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """{name: value} of the JSON parts already saved with the same header as `expect[name]` (what they were
        computed from); others are computed again."""
        found = {}
        for name in expect:
            path = self.path(name, "json")
            try:
                saved = json.loads(path.read_text()) if path.is_file() else None
            except (OSError, ValueError) as err:
                self.log.warning("%s: unreadable (%s): computing it again", path, err)
                continue
            if saved is not None and saved.get("expect") == expect[name]:
                found[name] = saved["value"]
        self._report(len(found), len(expect))
        return found

    def save_json(self, name: str, value: Any, expect: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path(name, "json"), {"expect": expect, "value": value})

    def _report(self, done: int, total: int) -> None:
        if done:
            self.log.info("resuming: %d of %d %s parts already done (%s)", done, total, self.kind, self.folder)


def same_weights(a: Path, b: Path) -> bool:
    """Whether two Hugging Face model folders (save_pretrained or MLflow layout, or LoRA adapters) hold equal
    tensors."""
    import torch
    from safetensors.torch import load_file

    from lifecycle.lora import adapter_base
    from lifecycle.model import find_hf_dirs

    def tensors(root: Path) -> dict[str, torch.Tensor]:
        found: dict[str, torch.Tensor] = {}
        folder = root if adapter_base(root) is not None else find_hf_dirs(root)[0]
        for file in sorted(folder.glob("*.safetensors")):
            found |= load_file(str(file))
        return found

    left, right = tensors(a), tensors(b)
    return bool(left) and left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def _holds(ref: ModelRef, model_dir: Path, models_dir: Path) -> bool:
    """Whether `ref` holds the weights in `model_dir`; a version whose upload was cut short does not."""
    try:
        return same_weights(model_dir, local_copy(ref, models_dir))
    except Exception as err:  # noqa: BLE001 - whatever is wrong with it, it is not these weights
        log.warning("%s cannot be read (%s)", ref, err)
        return False


def register_once(model_dir: Path, name: str, tags: dict[str, str], models_dir: Path,
                  task: str = "text-generation") -> ModelRef:
    """register_model, unless a killed or failed run of the same stage key registered these weights already
    (its output never committed): that version is adopted and re-tagged; one with other weights is deleted."""
    adopted = None
    for ref in unfinished_versions(name, tags[STAGE_KEY]):
        if adopted is None and _holds(ref, model_dir, models_dir):
            adopted = ref
            log.info("%s was registered by a run that did not finish, with these weights: adopting it", ref)
        else:
            delete_version(ref)
            log.warning("deleted %s: registered by a run that did not finish, and not what this run trained", ref)
    if adopted is None:
        return register_model(model_dir, name, tags=tags, task=task)
    tag_version(adopted, tags)
    return adopted
