"""conf/run.yaml: where runs are tracked and what the registry calls the models."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lifecycle.config.base import Section


class ModelNames(Section):
    """Registered model names in the MLflow registry, one per kind of model."""

    base: str = Field(min_length=1)  # pretrain: the base language model
    chat: str = Field(min_length=1)  # sft, then the RLHF policy: the line @candidate/@challenger/@champion live on
    reward: str = Field(min_length=1)  # rlhf: the reward model


class RayConfig(Section):
    """run.engine: ray. Where the data stages' shards run (lifecycle/engine.py); not in any stage's key."""

    address: str | None  # None: a local cluster for the run; "auto" or ray://HOST:10001: an existing one
    num_cpus: int | None = Field(ge=1)  # the local cluster's worker CPUs (None: all)


class RunConfig(Section):
    experiment: str = Field(min_length=1)
    models: ModelNames
    state_dir: str = Field(min_length=1)
    seed: int
    engine: Literal["local", "ray"]  # where the data stages' shard work runs; outputs are the same either way
    ray: RayConfig
