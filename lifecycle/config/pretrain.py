"""conf/pretrain.yaml: the decoder-only transformer (new, or an open checkpoint) and the lean pretraining loop
that trains it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lifecycle.config.base import Section
from lifecycle.config.distributed import LaunchConfig


class ModelArchConfig(Section):
    """The decoder-only transformer, built from config by lifecycle/model.py."""

    arch: Literal["llama", "gpt2"]
    n_layer: int = Field(ge=1)
    n_head: int = Field(ge=1)
    n_kv_head: int = Field(ge=1)  # llama: key/value heads (grouped-query attention); gpt2 ignores it
    d_model: int = Field(ge=8)
    d_ff: int = Field(ge=8)  # MLP hidden size
    dropout: float = Field(ge=0, lt=1)
    tie_embeddings: bool
    rope_theta: float = Field(gt=0)  # llama only
    init_std: float = Field(gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelArchConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be a multiple of n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        return self


class OptimConfig(Section):
    lr: float = Field(gt=0)  # peak learning rate, after warmup
    min_lr_ratio: float = Field(ge=0, le=1)  # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = Field(ge=0)
    weight_decay: float = Field(ge=0)  # on matrices only; norms, biases and embeddings get none
    beta1: float = Field(ge=0, lt=1)
    beta2: float = Field(ge=0, lt=1)
    eps: float = Field(gt=0)
    grad_clip: float = Field(ge=0)  # max global grad norm; 0 = no clipping


class SampleConfig(Section):
    prompts: list[str]  # greedy continuations logged at every evaluation (empty: none)
    max_new_tokens: int = Field(ge=1)


class DistributedConfig(LaunchConfig):
    """Processes, nodes and rendezvous (LaunchConfig), and how the pretraining loop spreads the model."""

    strategy: Literal["ddp", "fsdp"]
    backend: Literal["auto", "nccl", "gloo"]  # auto: nccl on CUDA, gloo on CPU


class PretrainConfig(Section):
    init: str = Field("scratch", min_length=1)  # scratch (a new model from `model`) | a hub id | a folder
    revision: str | None = Field(None, min_length=1)  # a hub id's branch, tag or commit; null: main
    trust_remote_code: bool = False  # load a checkpoint that brings code of its own (auto_map); off unless set here
    model: ModelArchConfig
    optim: OptimConfig
    sample: SampleConfig
    distributed: DistributedConfig
    max_steps: int = Field(ge=0)  # 0: register the init checkpoint as the base model, untrained
    batch_size: int = Field(ge=1)  # sequences per optimizer step, all processes together
    micro_batch_size: int = Field(ge=1)  # sequences per forward/backward in one process
    eval_every: int = Field(ge=0)  # steps; 0 = only at the end
    eval_batches: int | None = Field(ge=1)  # micro-batches per evaluation; null = the whole validation split
    log_every: int = Field(ge=1)
    checkpoint_every: int = Field(ge=0)  # steps; 0 = never (no resume)
    keep_checkpoints: int = Field(ge=1)
    device: Literal["auto", "cpu", "cuda"]
    dtype: Literal["auto", "fp32", "bf16"]  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: Literal["auto"] | bool  # auto: torch.compile on CUDA only
    num_threads: int | None = Field(ge=1)  # CPU threads per process; null = torch's default
    deterministic: bool  # torch.use_deterministic_algorithms (bit-exact resume on CPU)
    peak_flops: float | None = Field(gt=0)  # per device, for MFU; null = detect (lifecycle/train/flops.py)

    @model_validator(mode="after")
    def _steps_need_a_model(self) -> PretrainConfig:
        if self.max_steps == 0 and self.init == "scratch":
            raise ValueError("max_steps=0 registers pretrain.init as it is: it needs a checkpoint (a hub id or a "
                             "folder), not scratch")
        return self

    @model_validator(mode="after")
    def _batch_divides(self) -> PretrainConfig:
        d = self.distributed
        if self.batch_size % (self.micro_batch_size * d.world_size):
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of micro_batch_size x "
                             f"distributed.nproc x distributed.nnodes = {self.micro_batch_size} x {d.nproc} x "
                             f"{d.nnodes}")
        return self
