"""conf/serve.yaml: query-time settings for `lifecycle search`, `lifecycle ask` (and later the serving
API). Not part of any stage's cache key: editing them never rebuilds the index or retrains a model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lifecycle.config.base import Section


class SearchConfig(Section):
    mode: Literal["dense", "fts", "hybrid"]
    top_k: int = Field(ge=1)
    rrf_k: int = Field(ge=1)  # reciprocal-rank fusion constant: score = sum 1 / (rrf_k + rank)
    nprobes: int = Field(ge=1)  # ANN partitions searched
    refine_factor: int | None = Field(ge=1)  # re-rank nprobes' candidates x this with exact distances
    query_threads: int = Field(ge=0)  # torch CPU threads to embed one query (0: the index's embed.threads)


class AnswerConfig(Section):
    top_k: int = Field(ge=1)  # chunks retrieved; as many as fit the model's context are used
    max_new_tokens: int = Field(ge=1)  # at most; fewer when the model's context leaves less room
    system_prompt: str | None = Field(min_length=1)  # null: the model's own default (set by the sft stage)


class ServeConfig(Section):
    search: SearchConfig
    answer: AnswerConfig
