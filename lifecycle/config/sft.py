"""conf/sft.yaml: supervised fine-tuning. `data` and `eval` are ours; `trainer` passes straight through
to TRL's `SFTConfig` (validated by constructing it, see lifecycle/config/passthrough.py), `peft` to
`peft.LoraConfig` (lifecycle/lora.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from lifecycle.config.base import Section


class SftDataConfig(Section):
    python_docs: bool  # derive "What does X do?" -> first docstring paragraph pairs from ingested python-docs
    context: bool  # python-docs pairs: put the object's document in the prompt as retrieved context (RAG format)
    question_template: str = Field(pattern=r"\{object\}")
    max_answer_chars: int = Field(ge=16)  # python-docs answers longer than this are skipped
    files: list[str]  # JSONL or Parquet in TRL's prompt/completion or messages format
    val_fraction: float = Field(ge=0, lt=1)  # held-out share of file pairs (python-docs: the validation split)
    max_train_pairs: int | None = Field(ge=1)  # cap (deterministic, by content hash)
    system_prompt: str | None = Field(min_length=1)  # trained with, and the default of the model's chat template


class SftEvalConfig(Section):
    max_pairs: int = Field(ge=0)  # held-out python-docs pairs answered by the base and the SFT model (ROUGE-L)
    max_new_tokens: int = Field(ge=1)


class SftConfig(Section):
    data: SftDataConfig
    eval: SftEvalConfig
    device: Literal["auto", "cpu", "cuda"]
    trainer: dict[str, Any]  # trl.SFTConfig keys, passed through as is
    peft: dict[str, Any] | None  # LoRA: peft.LoraConfig keys + register, load_in_4bit (lifecycle/lora.py); null: full
