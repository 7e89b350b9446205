"""conf/ingest.yaml: corpus sources, clean-up, de-duplication and the train/validation split."""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import Field, model_validator

from lifecycle.config.base import Section


class SourceConfig(Section):
    """One named corpus source. `kind` decides which of the other keys apply."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["files", "python-docs", "hf"]
    paths: list[str] = []  # files: files, directories or globs
    text_field: str = "text"  # files (.jsonl/.json/.csv/.parquet) and hf: the column holding the text
    encoding: str = "utf-8"  # files: the encoding of text files without a byte-order mark (e.g. cp1252, latin-1)
    include: list[str] = []  # python-docs: module-name prefixes to keep (empty: the whole stdlib)
    exclude: list[str] = []  # python-docs: module-name prefixes to drop
    dataset: str | None = None  # hf: dataset name on the Hugging Face hub
    subset: str | None = None  # hf: configuration name
    split: str = "train"  # hf

    @model_validator(mode="after")
    def _kind_has_what_it_needs(self) -> SourceConfig:
        if self.kind == "files" and not self.paths:
            raise ValueError(f"source '{self.name}' of kind 'files' needs at least one entry in 'paths'")
        if self.kind == "hf" and not self.dataset:
            raise ValueError(f"source '{self.name}' of kind 'hf' needs 'dataset'")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"source '{self.name}': unknown encoding {self.encoding!r} (a Python codec name, "
                             "e.g. utf-8, cp1252, latin-1)") from None
        return self


class NearDupConfig(Section):
    enabled: bool
    threshold: float = Field(gt=0, le=1)  # estimated Jaccard similarity at or above which docs are near-duplicates
    num_perm: int = Field(ge=16, le=1024)
    shingle_words: int = Field(ge=1, le=32)


class IngestConfig(Section):
    sources: list[SourceConfig] = Field(min_length=1)
    normalization: Literal["NFC", "NFKC"]
    min_doc_chars: int = Field(ge=0)  # shorter documents are dropped (and counted)
    max_doc_chars: int = Field(ge=64)  # longer files are split at paragraph boundaries
    max_undecodable_share: float = Field(ge=0, le=1)  # a file with more invalid UTF-8 bytes is rejected
    val_fraction: float = Field(ge=0, lt=1)
    near_dup: NearDupConfig
    max_docs: int | None = Field(default=None, ge=1)  # cap after dedup (deterministic, by hash order)
    shard_size: int = Field(ge=1)  # records cleaned / texts signed per shard: the unit of work on run.engine
