"""conf/serve.yaml: query-time settings for `lifecycle search`, `lifecycle ask` and `lifecycle serve` (the
OpenAI-shaped API and chat page, `server:`). Not part of any stage's cache key: editing them never rebuilds
the index or retrains a model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lifecycle.config.base import Section


class FusionConfig(Section):
    """How hybrid search combines the dense and full-text rankings (fitted by `lifecycle eval-retrieval --fit`)."""

    method: Literal["rrf", "linear"]  # rrf: sum of weight / (rrf_k + rank); linear: sum of weight x min-max score
    dense_weight: float = Field(ge=0, le=1)  # the dense share; full-text gets 1 - this (1: dense only, 0: fts only)
    rrf_k: int = Field(ge=0)  # rrf: a larger k flattens the difference between ranks
    candidates: int = Field(ge=1)  # each retriever's top n that are fused (at least the k asked for)


class RerankConfig(Section):
    """An optional cross-encoder that re-scores the top candidates of any mode (slower, often better at rank 1)."""

    model: str | None = Field(min_length=1)  # sentence-transformers CrossEncoder: a local folder or hub id; null: off
    candidates: int = Field(ge=1)  # the top n of the first-stage ranking that are re-scored
    batch_size: int = Field(ge=1)
    max_length: int = Field(ge=8)  # tokens of question + chunk read by the cross-encoder
    device: Literal["cpu", "cuda"]
    threads: int = Field(ge=0)  # torch CPU threads while re-scoring (0: as set for the process)


class SearchConfig(Section):
    mode: Literal["dense", "fts", "hybrid"]
    top_k: int = Field(ge=1)
    title_boost: float = Field(ge=0)  # full-text: weight of a match in the chunk's title next to its text (0: text)
    fusion: FusionConfig
    rerank: RerankConfig
    nprobes: int = Field(ge=1)  # ANN partitions searched
    refine_factor: int | None = Field(ge=1)  # re-rank nprobes' candidates x this with exact distances
    query_threads: int = Field(ge=0)  # torch CPU threads to embed one query (0: the index's embed.threads)


class AnswerConfig(Section):
    top_k: int = Field(ge=1)  # chunks retrieved; as many as fit the model's context are used
    max_new_tokens: int = Field(ge=1)  # at most; fewer when the model's context leaves less room
    system_prompt: str | None = Field(min_length=1)  # null: the model's own default (set by the sft stage)


class ServerConfig(Section):
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    public_url: str | None  # the address people open, when not http://host:port (a proxy)
    reload_interval_s: float = Field(ge=0)  # how often the aliases are checked for a move (0: never)
    compare_with_challenger: bool  # also serve NAME@challenger, for side-by-side comparisons on the chat page
    max_body_bytes: int = Field(ge=1024)  # larger request bodies are refused (413)
    max_prompt_chars: int = Field(ge=1)  # the question plus any system message, in characters
    api_key_env: str = Field(min_length=1)  # when this environment variable is set, /v1/* need it as a bearer key
    rate_limit_per_minute: int = Field(ge=0)  # /v1/* requests per API key (or client address), 0: no limit
    rate_limit_burst: int = Field(ge=1)  # requests at once before the rate applies
    trace: bool  # one MLflow trace per completion (retrieve + generate spans)
    recent_answers: int = Field(ge=1)  # answers kept in memory, so feedback can name them by id
    feedback_annotator: str = Field(min_length=1, max_length=64)  # who chat-page votes are recorded as


class TrafficConfig(Section):
    """The canary: requests that do not name a version go to @challenger at this share, sticky per end user."""

    challenger_share: float = Field(ge=0, le=1)  # 0: every such request to the primary (@champion)


class ServeConfig(Section):
    search: SearchConfig
    answer: AnswerConfig
    server: ServerConfig
    traffic: TrafficConfig
