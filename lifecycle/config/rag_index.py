"""conf/rag_index.yaml: what the index is built from and how (chunking, embeddings, ANN index, the
retrieval evaluation after each build, which old table versions are kept). Everything here is part of
the stage's cache key; query-time settings live in conf/serve.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lifecycle.config.base import Section


class RagChunkConfig(Section):
    unit: Literal["tokens", "characters"]  # tokens: of the embedding model's tokenizer
    size: int = Field(ge=16)  # tokens: keep under the model's max_seq_length (256 for MiniLM) minus the title
    overlap: int = Field(ge=0)
    title_prefix: bool  # embed and full-text index "title\ntext" when the chunk does not start with its title

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RagChunkConfig:
        if self.overlap >= self.size:
            raise ValueError(f"overlap={self.overlap} must be smaller than size={self.size}")
        return self


class RagEmbedConfig(Section):
    model: str = Field(min_length=1)  # sentence-transformers model: a local folder or a name
    device: Literal["auto", "cpu", "cuda"]
    dtype: Literal["auto", "float32", "bfloat16"]  # auto: bfloat16 on GPUs and CPUs with native bf16 (AMX, AVX512-BF16)
    batch_size: int = Field(ge=1)  # most texts per forward pass
    max_batch_tokens: int = Field(ge=16)  # most padded tokens per forward pass (texts are length-sorted)
    threads: int = Field(ge=0)  # torch CPU threads; 0 = all cores
    # chunks embedded together (length-sorted within): the unit of work on run.engine; a default because
    # index.json of older runs stores this section without it (lifecycle/rag/search.py reads it back)
    shard_size: int = Field(default=4096, ge=1)


class RagAnnConfig(Section):
    kind: Literal["ivf_pq", "ivf_flat", "hnsw_sq"]
    min_rows: int = Field(ge=0)  # smaller tables get no ANN index: exact search is as fast there
    partitions_per_sqrt_rows: float = Field(gt=0)  # num_partitions = round(this * sqrt(rows))
    num_sub_vectors: int = Field(ge=1)  # ivf_pq: must divide the embedding dimension


class RagFitConfig(Section):
    """The serve.search values `lifecycle eval-retrieval --fit` tries (every combination) on these questions."""

    methods: list[Literal["linear", "rrf"]] = Field(min_length=1)
    dense_weights: list[float] = Field(min_length=2)  # must hold 0 and 1: full-text alone and dense alone
    rrf_ks: list[int] = Field(min_length=1)  # rrf only
    title_boosts: list[float] = Field(min_length=1)
    folds: int = Field(ge=2)  # cross-validation: fit on all folds but one, measure on that one

    @field_validator("dense_weights")
    @classmethod
    def _endpoints(cls, weights: list[float]) -> list[float]:
        if any(not 0 <= w <= 1 for w in weights):
            raise ValueError(f"each weight must be in [0, 1], got {weights}")
        if 0 not in weights or 1 not in weights:
            raise ValueError(f"must include 0 and 1 (full-text alone, dense alone), so that the fit is never worse "
                             f"than the better of the two; got {weights}")
        return weights

    @field_validator("rrf_ks", "title_boosts")
    @classmethod
    def _not_negative(cls, values: list[float]) -> list[float]:
        if any(v < 0 for v in values):
            raise ValueError(f"values must be >= 0, got {values}")
        return values


class RagEvalConfig(Section):
    max_questions: int = Field(ge=0)  # python-docs objects asked about (0: no evaluation in the stage)
    ks: list[int] = Field(min_length=1)
    question_template: str = Field(pattern=r"\{object\}")
    fit: RagFitConfig


class RagRetentionConfig(Section):
    # table versions that a cached rag_index output or a registered model points at are always kept
    unreferenced_days: float = Field(ge=0)  # other old versions are deleted once older than this (0: at once)


class RagIndexConfig(Section):
    table: str = Field(pattern=r"^[A-Za-z0-9_-]+$")  # LanceDB table under <state_dir>/rag/lancedb
    chunk: RagChunkConfig
    embed: RagEmbedConfig
    ann: RagAnnConfig
    evaluate: RagEvalConfig
    retention: RagRetentionConfig
