"""conf/tokenize.yaml: the byte-level BPE tokenizer and the packing of documents into blocks."""

from __future__ import annotations

from pydantic import Field

from lifecycle.config.base import Section


class TokenizeConfig(Section):
    vocab_size: int = Field(ge=300, le=262_144)
    min_frequency: int = Field(ge=1)
    train_max_chars: int = Field(ge=1000)  # BPE is trained on at most this many characters of train text
    context_length: int = Field(ge=8)  # tokens per packed block, and the model's context (max positions)
    batch_size: int = Field(ge=1)  # documents encoded per shard: the unit of work on run.engine
