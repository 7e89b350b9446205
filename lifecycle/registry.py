"""The model registry (MLflow): register versions with their lineage, set and read aliases, resolve a
reference, fetch a version's files, and find what a version was built from. Every other module goes
through here; nothing picks "the newest version": models move between stages as `ModelRef`s.

Aliases on the chat model line (run.models.chat): `@candidate` (the final model of the latest pipeline
run), `@challenger` (a candidate under evaluation), `@champion` (in production; moves only through the
promotion gate).

    ref = register_model(model_dir, "lifecycle-gpt", tags={"lifecycle.base_model": "lifecycle-gpt-base/3"})
    set_alias(ref, CANDIDATE); get_alias("lifecycle-gpt", CANDIDATE) == ref
    resolve("lifecycle-gpt@champion"), resolve("lifecycle-gpt/4"), resolve("models:/lifecycle-gpt/4")
    lineage(ref)["built_from"]           # the base model's lineage, and so on down to the data
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.errors import LifecycleError

CANDIDATE, CHALLENGER, CHAMPION = "candidate", "challenger", "champion"
PARENT_TAGS = ("lifecycle.base_model",)  # version tags naming the model a version was trained from
_REF = re.compile(r"^(?:models:/)?(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


@dataclass(frozen=True)
class ModelRef:
    """One registered model version: what stages hand to each other."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def register_model(model_dir: Path, name: str, tags: dict[str, str], task: str = "text-generation") -> ModelRef:
    """Log the Hugging Face model + tokenizer in `model_dir` to the active MLflow run (transformers
    flavor) and register it as a new version of `name`, tagged with `tags` (its lineage)."""
    import mlflow
    import torch
    import transformers

    from lifecycle.model import load_causal_lm

    if task == "text-classification":  # a reward model: a sequence-classification head with one output
        model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    else:
        model, tokenizer = load_causal_lm(model_dir)
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
    info = mlflow.transformers.log_model(transformers_model={"model": model, "tokenizer": tokenizer}, name="model",
                                         task=task, registered_model_name=name, pip_requirements=requirements)
    ref = ModelRef(name, str(info.registered_model_version))
    tag_version(ref, tags)
    return ref


def tag_version(ref: ModelRef, tags: dict[str, str]) -> None:
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(ref.name, ref.version, key, str(value))


def version_tags(ref: ModelRef) -> dict[str, str]:
    return dict(_client().get_model_version(ref.name, ref.version).tags)


def set_alias(ref: ModelRef, alias: str) -> None:
    _client().set_registered_model_alias(ref.name, alias, ref.version)


def get_alias(name: str, alias: str) -> ModelRef | None:
    """The version `name@alias` points at, or None (no such alias, or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        return ModelRef(name, str(_client().get_model_version_by_alias(name, alias).version))
    except MlflowException:
        return None


def resolve(spec: str) -> ModelRef:
    """`NAME/VERSION`, `NAME@ALIAS` or `models:/...` of either, as a reference to an existing version."""
    from mlflow.exceptions import MlflowException

    match = _REF.match(spec.strip())
    if not match:
        raise LifecycleError(f"model reference {spec!r}: expected NAME/VERSION, NAME@ALIAS or models:/NAME/VERSION")
    name, version, alias = match["name"], match["version"], match["alias"]
    if alias:
        ref = get_alias(name, alias)
        if ref is None:
            raise LifecycleError(f"model reference {spec!r}: '{name}' has no alias @{alias}")
        return ref
    try:
        _client().get_model_version(name, version)
    except MlflowException:
        raise LifecycleError(f"model reference {spec!r}: no version {version} of '{name}' is registered") from None
    return ModelRef(name, version)


def lineage(ref: ModelRef) -> dict[str, Any]:
    """What `ref` was built from: its run, its lineage tags, and the lineage of the model it was trained
    from (followed through `lifecycle.base_model`, down to the base model's data and tokenizer keys)."""
    version = _client().get_model_version(ref.name, ref.version)
    tags = dict(version.tags)
    parents = [resolve(tags[t]) for t in PARENT_TAGS if t in tags]
    return {"model": str(ref), "run_id": version.run_id, "aliases": list(version.aliases),
            "tags": {k: v for k, v in sorted(tags.items()) if k.startswith(("lifecycle.", "mlflow."))},
            "built_from": [lineage(p) for p in parents]}


def local_copy(ref: ModelRef, cache_dir: Path) -> Path:
    """The version's files in `cache_dir/<name>/<version>` (downloaded once, atomically)."""
    import mlflow

    dest = Path(cache_dir) / ref.name / ref.version
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{ref.version}-{uuid.uuid4().hex[:8]}")
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(tmp))
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def versions_tagged(name: str, tag: str) -> dict[str, str]:
    """{version: tag value} of every version of `name` that carries `tag`."""
    if "'" in name:
        return {}
    return {v.version: v.tags[tag] for v in _client().search_model_versions(f"name = '{name}'") if tag in v.tags}
