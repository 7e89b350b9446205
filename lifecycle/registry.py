"""The model registry (MLflow): register versions with their lineage, set and read aliases, resolve a
reference, fetch a version's files, and find what a version was built from. Every other module goes
through here; nothing picks "the newest version": models move between stages as `ModelRef`s.

Aliases on the chat model line (run.models.chat): `@candidate` and `@challenger` (the final model of the
latest pipeline run, under evaluation), `@champion` (in production; moves only through the promotion gate,
a hand promotion or a rollback, one at a time under `promotion_lock`, each move recording the champion it
replaced so `rollback_champion` can restore it).

Each version is tagged at registration with the sha256 of its files (`lifecycle.files_sha256`); `local_copy`
refuses a download that differs (the registry's artifact store was changed since) and fetches again a local
copy that was truncated or changed (it is sealed: lifecycle/manifest.py).

    ref = register_model(model_dir, "lifecycle-gpt", tags={"lifecycle.base_model": "lifecycle-gpt-base/3"})
    set_alias(ref, CANDIDATE); get_alias("lifecycle-gpt", CANDIDATE) == ref
    resolve("lifecycle-gpt@champion"), resolve("lifecycle-gpt/4"), resolve("models:/lifecycle-gpt/4")
    lineage(ref)["built_from"]           # the base model's lineage, and so on down to the data
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.errors import LifecycleError
from lifecycle.manifest import hash_tree, seal, tree_digest, unsealed_reason
from lifecycle.names import (ADAPTER_BASE, BASE_MODEL, FILES_SHA256, KEY, PEFT, PREVIOUS_CHAMPION, PROMOTED_AT,
                             REWARD_MODEL, ROLLED_BACK_AT, ROLLED_BACK_TO)

CANDIDATE, CHALLENGER, CHAMPION = "candidate", "challenger", "champion"
PREVIOUS = PREVIOUS_CHAMPION
PARENT_TAGS = (BASE_MODEL,)  # version tags naming the model a version was trained from
log = logging.getLogger("lifecycle.registry")
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
    flavor) and register it as a new version of `name`, tagged with `tags` (its lineage). A LoRA adapter
    folder is registered as its files (register_adapter)."""
    import mlflow
    import torch
    import transformers

    from lifecycle.lora import adapter_base
    from lifecycle.model import load_causal_lm

    if (base := adapter_base(model_dir)) is not None:
        return register_adapter(model_dir, name, tags | {PEFT: "adapter", ADAPTER_BASE: base})
    if task == "text-classification":  # a reward model: a sequence-classification head with one output
        model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    else:
        model, tokenizer = load_causal_lm(model_dir)
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
    info = mlflow.transformers.log_model(transformers_model={"model": model, "tokenizer": tokenizer}, name="model",
                                         task=task, registered_model_name=name, pip_requirements=requirements)
    ref = ModelRef(name, str(info.registered_model_version))
    tag_registered(ref, tags)
    return ref


def register_adapter(adapter_dir: Path, name: str, tags: dict[str, str]) -> ModelRef:
    """Log a LoRA adapter folder (adapter_config.json naming its base, adapter_model.safetensors, the tokenizer)
    as the active run's `model` artifacts and register them as a new version of `name`: MLflow's transformers
    flavor would need the base from the Hugging Face hub, so the files go as they are (every loader here reads
    them: lifecycle/model.py load_causal_lm, the reward model's load_classifier)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client, run = _client(), mlflow.active_run()
    if run is None:
        raise LifecycleError(f"registering {adapter_dir} as '{name}': no active MLflow run to log it to")
    mlflow.log_artifacts(str(adapter_dir), "model")
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    ref = ModelRef(name, str(version.version))
    tag_registered(ref, tags)
    return ref


def tag_registered(ref: ModelRef, tags: dict[str, str]) -> None:
    """Tag a new version with its lineage and the digest of its files as the registry holds them."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=tmp)
        files = tree_digest(hash_tree(Path(tmp)))
    tag_version(ref, tags | {FILES_SHA256: files})


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


def reward_model_of(policy: ModelRef) -> ModelRef | None:
    """The reward model a policy version was optimised against (its lineage tag)."""
    tag = version_tags(policy).get(REWARD_MODEL)
    return resolve(tag) if tag else None


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
    """The version's files in `cache_dir/<name>/<version>`: downloaded once, atomically, checked against the
    digest taken at registration (a mismatch is refused), and sealed; a copy damaged since is fetched again."""
    import mlflow

    dest = Path(cache_dir) / ref.name / ref.version
    if dest.is_dir() and (reason := unsealed_reason(dest)) is not None:
        log.warning("local copy %s of %s is damaged (%s): downloading it again", dest, ref, reason)
        aside = dest.with_name(f".damaged-{ref.version}-{uuid.uuid4().hex[:8]}")
        os.replace(dest, aside)
        shutil.rmtree(aside, ignore_errors=True)
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{ref.version}-{uuid.uuid4().hex[:8]}")
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(tmp))
            files = hash_tree(tmp)
            expected = version_tags(ref).get(FILES_SHA256)
            if expected is not None and tree_digest(files) != expected:
                raise LifecycleError(f"{ref}: its files in the registry ({ref.uri}) differ from the ones registered "
                                     f"(sha256 {tree_digest(files)[:12]}..., registered {expected[:12]}...): the "
                                     "artifact store was changed or damaged; register the model again")
            seal(tmp)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def versions_tagged(name: str, tag: str) -> dict[str, str]:
    """{version: tag value} of every version of `name` that carries `tag`."""
    if "'" in name:
        return {}
    return {v.version: v.tags[tag] for v in _client().search_model_versions(f"name = '{name}'") if tag in v.tags}


def unfinished_versions(name: str, key: str) -> list[ModelRef]:
    """Versions of `name` registered by a stage run for cache key `key` that did not finish (killed or failed
    before its output was committed): dangling unless a re-run adopts them (lifecycle/resume.py)."""
    if "'" in name:
        return []
    client, found = _client(), []
    for v in client.search_model_versions(f"name = '{name}'"):
        run = client.get_run(v.run_id) if v.run_id else None
        if run and run.data.tags.get(KEY) == key and run.info.status in ("KILLED", "FAILED"):
            found.append(ModelRef(name, str(v.version)))
    return sorted(found, key=lambda r: int(r.version))


def delete_version(ref: ModelRef) -> None:
    _client().delete_model_version(ref.name, ref.version)


def list_versions(name: str) -> list[dict[str, Any]]:
    """Every version of `name` (oldest first) with its aliases and tags."""
    if "'" in name:
        raise LifecycleError(f"model name {name!r}: quotes are not allowed")
    from mlflow.exceptions import MlflowException

    try:
        aliases = _client().get_registered_model(name).aliases  # {alias: version}; searches leave aliases out
    except MlflowException:
        raise LifecycleError(f"no model named '{name}' is registered") from None
    found = _client().search_model_versions(f"name = '{name}'")
    return sorted(({"version": int(v.version),
                    "aliases": sorted(a for a, ver in aliases.items() if str(ver) == str(v.version)),
                    "created": v.creation_timestamp,
                    "run_id": v.run_id, "tags": dict(v.tags)} for v in found), key=lambda v: v["version"])


@contextmanager
def promotion_lock(lock_dir: Path, name: str) -> Iterator[None]:
    """One alias move of `name` at a time: an exclusive lock file under `lock_dir` on this machine and, with a
    Prefect server (PREFECT_API_URL), its global concurrency limit `promote-<name>` (limit 1) across
    machines. Callers re-read the champion inside the lock, so a promotion decided on a stale view is refused."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(lock_dir) / f"promote-{slug}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            with _server_lock(f"promote-{slug}"):
                yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _server_lock(limit: str) -> AbstractContextManager[Any]:
    """The Prefect server's global concurrency limit `limit` (created with one slot when missing); nothing
    without a server of the user's (the run's own temporary API serves one process)."""
    from lifecycle.runtime import is_temporary_api

    if is_temporary_api(os.environ.get("PREFECT_API_URL")):
        return nullcontext()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(limit)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
            except ObjectAlreadyExists:  # another machine created it first
                pass
    return concurrency(limit, occupy=1, strict=True, timeout_seconds=600)


def move_champion(ref: ModelRef, tags: dict[str, str]) -> ModelRef | None:
    """Point `name@champion` at `ref` (hold `promotion_lock`), recording the version it replaced on `ref`;
    returns that version (None for the first champion)."""
    previous = get_alias(ref.name, CHAMPION)
    stamp = {PROMOTED_AT: time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if previous != ref:
        stamp[PREVIOUS] = str(previous) if previous else "none"
    tag_version(ref, tags | stamp)
    set_alias(ref, CHAMPION)
    return previous


def rollback_champion(name: str, tags: dict[str, str]) -> tuple[ModelRef, ModelRef]:
    """(rolled back, restored): `name@champion` back to the version the current one replaced (hold
    `promotion_lock`); the rolled-back version is tagged with `tags` and where the alias went."""
    current = get_alias(name, CHAMPION)
    if current is None:
        raise LifecycleError(f"rollback: '{name}' has no @{CHAMPION}")
    previous = version_tags(current).get(PREVIOUS, "none")
    if previous == "none":
        raise LifecycleError(f"rollback: {current} was the first champion of '{name}': there is no previous one "
                             "(promote another version by hand instead)")
    restored = resolve(previous)
    set_alias(restored, CHAMPION)
    tag_version(current, tags | {ROLLED_BACK_TO: str(restored),
                                 ROLLED_BACK_AT: time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return current, restored
