"""The decoder-only transformer: a Hugging Face `LlamaForCausalLM` or `GPT2LMHeadModel` built from
`pretrain.model` in the config (no download), so TRL, MLflow and `from_pretrained` use it as is; and
loading a trained one back, with its tokenizer, from any folder that holds them.

    model = build_model(cfg.pretrain.model, vocab_size=len(tok), context_length=128,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = load_checkpoint_model(folder, tok)   # an open checkpoint, grown to tok's added tokens
    count_params(model)  # {"total": ..., "non_embedding": ..., "matmul": ...}
    model, tokenizer = load_causal_lm(path)   # save_pretrained output or an MLflow transformers model
    model, tokenizer = load_causal_lm(adapter_dir, models_dir)   # a LoRA adapter: its base + the adapter, merged
    context_window(model, tokenizer)          # positions the model was trained with
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lifecycle.config import ModelArchConfig
from lifecycle.errors import LifecycleError

log = logging.getLogger("lifecycle.model")


def build_config(cfg: ModelArchConfig, vocab_size: int, context_length: int, eos_token_id: int,
                 pad_token_id: int | None) -> LlamaConfig | GPT2Config:
    """The transformers config for `cfg`; attention runs through fused SDPA kernels."""
    ids = {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    if cfg.arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                           num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                           num_key_value_heads=cfg.n_kv_head, max_position_embeddings=context_length,
                           rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                           attention_dropout=cfg.dropout, initializer_range=cfg.init_std,
                           tie_word_embeddings=cfg.tie_embeddings, attn_implementation="sdpa", **ids)
    return GPT2Config(vocab_size=vocab_size, n_positions=context_length, n_embd=cfg.d_model, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, n_inner=cfg.d_ff, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                      attn_pdrop=cfg.dropout, initializer_range=cfg.init_std, tie_word_embeddings=cfg.tie_embeddings,
                      attn_implementation="sdpa", **ids)


def build_model(cfg: ModelArchConfig, vocab_size: int, context_length: int, eos_token_id: int,
                pad_token_id: int | None) -> PreTrainedModel:
    """A freshly initialised causal LM (fp32, on CPU; the caller moves it)."""
    config = build_config(cfg, vocab_size, context_length, eos_token_id, pad_token_id)
    model_cls = LlamaForCausalLM if cfg.arch == "llama" else GPT2LMHeadModel
    model = model_cls(config)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id if pad_token_id is not None else eos_token_id
    model.generation_config.bos_token_id = eos_token_id
    sizes = count_params(model)
    log.info("model: %s, %d layers, d_model %d, %d heads, vocab %d, context %d: %.2fM parameters (%.2fM non-embedding)",
             cfg.arch, cfg.n_layer, cfg.d_model, cfg.n_head, vocab_size, context_length, sizes["total"] / 1e6,
             sizes["non_embedding"] / 1e6)
    return model


def load_checkpoint_model(folder: Path, tokenizer: PreTrainedTokenizerBase,
                          remote_code: bool = False) -> PreTrainedModel:
    """An open checkpoint to train on (fp32, on CPU; the caller moves it): safetensors weights only, its
    embeddings grown to the tokens the tokenize stage added (ChatML's), padding and EOS from `tokenizer`."""
    model = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True, trust_remote_code=remote_code,
                                                 dtype=torch.float32)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    for config in (model.config, model.generation_config):
        config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    sizes = count_params(model)
    log.info("model: %s from %s, vocab %d: %.2fM parameters (%.2fM non-embedding)", type(model).__name__, folder,
             len(tokenizer), sizes["total"] / 1e6, sizes["non_embedding"] / 1e6)
    return model


def depth_and_width(model: PreTrainedModel) -> tuple[int, int]:
    """(layers, hidden size) from the model's config, whatever its architecture calls them."""
    text = model.config.get_text_config()
    return int(text.num_hidden_layers), int(text.hidden_size)


def count_params(model: PreTrainedModel) -> dict[str, int]:
    """total: unique parameters; non_embedding: without token/position embeddings (and a tied LM head);
    matmul: the weights a token is multiplied with (non-embedding + the LM head), for FLOP estimates."""
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in params.values())
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head_weight = model.get_output_embeddings().weight
    embeddings.add(id(head_weight))  # tied: already there; untied: the LM head is vocabulary-sized too
    non_embedding = total - sum(params[i].numel() for i in embeddings)
    head = head_weight.numel()
    return {"total": total, "non_embedding": non_embedding, "matmul": non_embedding + head}


def find_hf_dirs(root: Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) under `root`: save_pretrained output or an MLflow transformers model."""
    weights = [p.parent for p in root.rglob("config.json") if any(p.parent.glob("*.safetensors"))]
    pickled = [p for p in root.rglob("*.bin") if p.parent.joinpath("config.json").is_file()]
    if not weights and pickled:  # torch.load of a pickle can run code: weights are read from safetensors only
        raise LifecycleError(f"{root}: the model's weights are a pickle ({pickled[0].name}), which is never loaded "
                             "here; save it with safetensors (save_pretrained's default)")
    configs = sorted(weights, key=lambda p: len(p.parts))
    tokenizers = sorted((p.parent for p in root.rglob("tokenizer_config.json")), key=lambda p: len(p.parts))
    if not configs or not tokenizers:
        raise LifecycleError(f"{root}: not a Hugging Face causal LM folder (needs config.json with weights and a "
                             f"tokenizer; found {'weights' if configs else 'no weights'}, "
                             f"{'a tokenizer' if tokenizers else 'no tokenizer'})")
    model_dir = configs[0]
    return model_dir, model_dir if model_dir in tokenizers else tokenizers[0]


def load_causal_lm(path: Path, models_dir: Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (eval mode) and tokenizer from a folder; the tokenizer may sit in a sub-folder. A LoRA adapter
    folder loads as its base with the adapter merged (load_adapted_lm)."""
    if (Path(path) / "adapter_config.json").is_file():
        return load_adapted_lm(Path(path), models_dir)
    model_dir, tok_dir = find_hf_dirs(Path(path))
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True)
    model.eval()
    return model, tokenizer


def load_adapted_lm(adapter_dir: Path, models_dir: Path | None = None) -> tuple[
        PreTrainedModel, PreTrainedTokenizerBase]:
    """An adapter folder (lifecycle/lora.py) as a plain model: its base fetched (a registry version into
    `models_dir`, else a temporary folder) and loaded, the adapter applied through PeftModel and merged; the
    tokenizer is the adapter folder's."""
    from lifecycle.lora import adapter_base, base_cache, fetch_base, merge_adapter

    base = adapter_base(adapter_dir)
    assert base is not None
    with base_cache(models_dir) as cache:
        model, _ = load_causal_lm(fetch_base(base, cache))
        model = merge_adapter(model, adapter_dir)
    return model, AutoTokenizer.from_pretrained(str(adapter_dir))


def context_window(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The positions the model was trained with (its config), else the tokenizer's limit."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(model.config, name, None)
        if value:
            return int(value)
    return int(tokenizer.model_max_length)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout) inside the block, then back to the mode the model had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each (n, longest): the sequences left-aligned, padded with `pad_id`."""
    ids = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, seq in enumerate(seqs):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
    return ids, mask
