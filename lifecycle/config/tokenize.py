"""conf/tokenize.yaml: the byte-level BPE tokenizer and the packing of documents into blocks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lifecycle.config.base import Section


class TokenizeConfig(Section):
    tokenizer: Literal["train", "from_model"] = "train"  # train a BPE tokenizer | pretrain.init's own (no training)
    vocab_size: int = Field(ge=300, le=262_144)  # train only
    min_frequency: int = Field(ge=1)
    train_max_chars: int = Field(ge=1000)  # BPE is trained on at most this many characters of train text
    context_length: int | None = Field(ge=8)  # tokens per packed block, and the model's context (max positions);
    # from_model: at most the checkpoint's own, null = the checkpoint's own
    batch_size: int = Field(ge=1)  # documents encoded per shard: the unit of work on run.engine

    @model_validator(mode="after")
    def _length_given(self) -> TokenizeConfig:
        if self.context_length is None and self.tokenizer == "train":
            raise ValueError("context_length: null means the checkpoint's own, which needs tokenizer: from_model")
        return self
