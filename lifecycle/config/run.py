"""conf/run.yaml: where runs are tracked and what the registry calls the models."""

from __future__ import annotations

from pydantic import Field

from lifecycle.config.base import Section


class ModelNames(Section):
    """Registered model names in the MLflow registry, one per kind of model."""

    base: str = Field(min_length=1)  # pretrain: the base language model
    chat: str = Field(min_length=1)  # sft, then the RLHF policy: the line @candidate/@challenger/@champion live on
    reward: str = Field(min_length=1)  # rlhf: the reward model


class RunConfig(Section):
    experiment: str = Field(min_length=1)
    models: ModelNames
    state_dir: str = Field(min_length=1)
    seed: int
