"""The reward model as everything that trains, calls or measures it reads it: the reward training, the policy
optimisation (RLOO/GRPO, as a TRL reward function), the gold monitor's proxy, `lifecycle eval-reward` and the
evaluate stage's win rates all go through `RewardModel`, which knows both kinds:

- chat (`rlhf.reward.model: policy`): the SFT model with a one-logit score head. It reads the prompt and the
  answer through the chat template, as TRL's RewardTrainer tokenises a conversation, scored at the last token;
  a conversation longer than its context does not fit (training and measuring drop it; the policy's scores
  cut it from its start, keeping the answer's end).
- pair: an encoder of its own (all-MiniLM-L6-v2, installed offline; a folder; a hub id already in the
  Hugging Face cache) with its own tokenizer. It reads `[CLS] answer [SEP] context [SEP]` (the context: the
  prompt's last user turn, the question with its retrieved chunks), cut to `rlhf.reward.max_length` tokens
  from the longer side (the context, in practice), scored at [CLS]. Its special tokens and truncation are ours:
  TRL's own model-reward path tokenises with add_special_tokens=False (no [CLS]/[SEP]) and never truncates.
  Token type ids are left out, as RewardTrainer's collator leaves them out: all zeros, in training and in use.

With `rlhf.reward.peft` a LoRA adapter trains (and the score head in full); a saved adapter loads as its base
with the adapter merged. A saved reward model says which it is: its tokenizer has a chat template (chat) or not
(pair; the saved tokenizer's `model_max_length` is the length it was trained with). Weights load from
safetensors only, and no checkpoint's own code is ever run.

    reward = start_reward_model(cfg, sft_dir)   # a fresh one-logit head on the SFT model or the encoder
    reward = RewardModel.load(folder)           # a trained one (save_pretrained or MLflow layout)
    reward.margins(rows, batch_size=32)         # r(chosen) - r(rejected) per preference row
    reward(prompts=..., completions=...)        # a TRL reward function: one float per completion
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lifecycle.config import Config
from lifecycle.config.rlhf import REWARD_POLICY
from lifecycle.errors import LifecycleError
from lifecycle.hub import configured_checkpoint
from lifecycle.lora import LoraSettings, adapter_base, base_cache, fetch_base, merge_adapter, quantized
from lifecycle.model import context_window, evaluating, find_hf_dirs, right_pad

log = logging.getLogger("lifecycle.rlhf")
Messages = list[dict[str, str]]
Row = dict[str, Any]
KEY = "rlhf.reward.model"
NEW_HEAD = ("classifier.", "score.", "pooler.")  # what a sequence-classification head adds to an encoder or decoder


def conversation_ids(tokenizer: PreTrainedTokenizerBase, messages: Messages,
                     add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a conversation as TRL's preference trainers make them (trl.data_utils._tokenize); quietly:
    a conversation longer than the context is expected here (callers measure it to drop it)."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, tools=None,
                                        add_generation_prompt=add_generation_prompt,
                                        tokenizer_kwargs={"verbose": False})
    return list(out["input_ids"])


def chat_fits(tokenizer: PreTrainedTokenizerBase, row: Row, max_length: int) -> bool:
    """Whether prompt + chosen and prompt + rejected both fit `max_length` tokens through the chat template."""
    return max(len(conversation_ids(tokenizer, row["prompt"] + row[side])) for side in ("chosen", "rejected")) \
        <= max_length


def context_of(prompt: Messages) -> str:
    """What an encoder reads the answer against: the prompt's last user turn (question and retrieved context)."""
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


class RewardModel:
    """A one-logit sequence classifier and how it reads a (prompt, reply): `chat` or a sentence pair (above).
    Called as a TRL reward function, it scores conversational prompts and completions."""

    __name__ = "reward_model"  # TRL names its reward logs after a reward function's name

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 base_dir: Path | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.base_dir = base_dir  # the checkpoint a fresh head was put on (what a LoRA adapter of it names)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id  # a decoder's score is read at the last non-pad token
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        window = context_window(model, tokenizer)
        self.max_length = window if self.chat else min(window, int(tokenizer.model_max_length))

    @classmethod
    def load(cls, path: Path, models_dir: Path | None = None) -> RewardModel:
        """A trained reward model from a folder (save_pretrained or MLflow layout, or a LoRA adapter: its base
        fetched into `models_dir`, else a temporary folder), either kind."""
        return cls(*load_classifier(Path(path), models_dir=models_dir))

    @property
    def kind(self) -> str:
        return "chat" if self.chat else "pair"

    def ids(self, prompt: Messages, reply: Messages) -> list[int]:
        """The tokens the model reads for `reply` to `prompt` (chat: not cut; pair: at most max_length)."""
        if self.chat:
            return conversation_ids(self.tokenizer, prompt + reply)
        answer = "\n".join(m["content"] for m in reply)
        return list(self.tokenizer(answer, context_of(prompt), truncation="longest_first",
                                   max_length=self.max_length, verbose=False)["input_ids"])

    def fits(self, row: Row) -> bool:
        """Whether both sides of a preference row are read whole (a pair always is: it is cut to fit)."""
        return chat_fits(self.tokenizer, row, self.max_length) if self.chat else True

    def training_row(self, row: Row) -> dict[str, list[int]]:
        """A preference row pre-tokenised for RewardTrainer (which then tokenises nothing itself)."""
        return {"chosen_ids": self.ids(row["prompt"], row["chosen"]),
                "rejected_ids": self.ids(row["prompt"], row["rejected"])}

    def score(self, prompts: list[Messages], replies: list[Messages], batch_size: int = 32) -> list[float]:
        """One reward per (prompt, reply): right-padded batches, as RewardTrainer's collator pads them; a chat
        longer than the context is cut from its start (the answer's end is kept)."""
        seqs = [self.ids(p, r)[-self.max_length:] for p, r in zip(prompts, replies, strict=True)]
        scores: list[float] = []
        with evaluating(self.model), torch.inference_mode():
            for start in range(0, len(seqs), batch_size):
                ids, mask = right_pad(seqs[start:start + batch_size], self.tokenizer.pad_token_id)
                device = self.model.device
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (b, 1)
                scores += logits[:, 0].float().cpu().tolist()
        return scores

    def margins(self, rows: list[Row], batch_size: int = 32) -> list[float]:
        """r(chosen) - r(rejected) per preference row, chosen and rejected in one batch (as the collator)."""
        margins: list[float] = []
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            scores = self.score([r["prompt"] for r in batch] * 2, [r["chosen"] for r in batch]
                                + [r["rejected"] for r in batch], batch_size=2 * len(batch))
            margins += [c - r for c, r in zip(scores[:len(batch)], scores[len(batch):], strict=True)]
        return margins

    def to(self, device: torch.device | str) -> RewardModel:
        self.model.to(device)
        return self

    def __call__(self, prompts: list[Messages], completions: list[Messages], **kwargs: Any) -> list[float]:
        return self.score(prompts, completions, batch_size=max(1, len(prompts)))


def drop_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in record.getMessage()


def load_classifier(path: Path, num_labels: int | None = None, models_dir: Path | None = None,
                    lora: LoraSettings | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence-classification model and its tokenizer from a folder (save_pretrained or MLflow layout);
    `num_labels=1` puts a fresh one-logit head on a causal LM or an encoder (and replaces a head with another
    number of labels). Weights the checkpoint lacks, other than such a head, are logged. A LoRA adapter folder
    loads as its base (fetched into `models_dir`, else a temporary folder) with the adapter, and its trained head,
    merged; `lora` with load_in_4bit loads the weights quantised (QLoRA)."""
    if (base := adapter_base(Path(path))) is not None:
        with base_cache(models_dir) as cache:
            model, _ = load_classifier(fetch_base(base, cache), num_labels=1)
            model = merge_adapter(model, Path(path))
        return model, AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    model_dir, tok_dir = find_hf_dirs(Path(path))
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=False)
    fresh = {"num_labels": num_labels, "ignore_mismatched_sizes": True} if num_labels else {}
    report = logging.getLogger("transformers.modeling_utils")
    report.addFilter(drop_load_report)  # it would list the new head ("classifier.weight MISSING"); logged below
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), use_safetensors=True, trust_remote_code=False, output_loading_info=True, **fresh,
            **quantized(lora))
    finally:
        report.removeFilter(drop_load_report)
    missing = sorted(k for k in info["missing_keys"] if not (num_labels and k.startswith(NEW_HEAD)))
    if missing:
        log.warning("reward model %s: %d weights are not in the checkpoint and start random: %s", model_dir,
                    len(missing), ", ".join(missing[:6]))
    return model, tokenizer


def load_encoder(cfg: Config, lora: LoraSettings | None = None) -> RewardModel:
    """The checkpoint `rlhf.reward.model` names with a one-logit head and its own tokenizer, reading at most
    `rlhf.reward.max_length` tokens; a ConfigError naming the key and the value when it cannot be loaded."""
    setting = cfg.rlhf.reward.model
    folder = configured_checkpoint(KEY, setting, cfg._origin)
    try:
        model, tokenizer = load_classifier(folder, num_labels=1, lora=lora)
    except (OSError, ValueError, RuntimeError, LifecycleError) as err:
        from lifecycle.config.loader import describe
        from lifecycle.errors import ConfigError

        raise ConfigError("invalid configuration:\n" + describe(
            KEY, setting, f"cannot load {folder} as a sequence classifier (an encoder or a sequence-classification "
                          f"checkpoint, safetensors weights, no remote code): {err}", cfg._origin)) from None
    tokenizer.model_max_length = min(cfg.rlhf.reward.max_length, context_window(model, tokenizer))
    return RewardModel(model, tokenizer, base_dir=folder)


def start_reward_model(cfg: Config, sft_dir: Path, lora: LoraSettings | None = None) -> RewardModel:
    """What the reward training starts from: the SFT model in `sft_dir` with a fresh one-logit head (`policy`),
    or the encoder `rlhf.reward.model` names (quantised to 4 bits with QLoRA)."""
    if cfg.rlhf.reward.model == REWARD_POLICY:
        return RewardModel(*load_classifier(sft_dir, num_labels=1, lora=lora), base_dir=sft_dir)
    reward = load_encoder(cfg, lora)
    log.info("rlhf: reward model from %s (%s, its own tokenizer: %s inputs of at most %d tokens)",
             cfg.rlhf.reward.model, type(reward.model).__name__, reward.kind, reward.max_length)
    return reward
