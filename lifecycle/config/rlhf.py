"""conf/rlhf.yaml: alignment with the preference set. A reward model (TRL RewardTrainer: the SFT model with a
score head, or an encoder of its own, `reward.model`) and a policy optimised against it with a KL leash (RLOO
or GRPO), or DPO straight on the pairs. Each `trainer` mapping passes through to TRL's own config class
(RewardConfig, RLOOConfig, GRPOConfig, DPOConfig) and is checked by constructing it; each `peft` mapping (LoRA)
passes through to peft.LoraConfig (lifecycle/lora.py). `gold` measures the policy against the simulated judges'
criterion on held-out prompts while it trains. `distributed` runs the training under torchrun, on one node or
several."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from lifecycle.config.base import Section
from lifecycle.config.distributed import LaunchConfig

REWARD_POLICY = "policy"  # rlhf.reward.model: the SFT model with a score head (else an encoder of its own)


class RewardModelConfig(Section):
    model: str = Field(min_length=1)  # "policy": the SFT model with a score head; else an encoder (lifecycle/hub.py)
    max_length: int = Field(ge=8)  # an encoder's input tokens: (answer, prompt with its context), the context cut
    trainer: dict[str, Any]  # trl.RewardConfig keys
    peft: dict[str, Any] | None  # LoRA: peft.LoraConfig keys + register, load_in_4bit (lifecycle/lora.py); null: full
    baseline_margin: float = Field(ge=0, le=1)  # flag a reward model not beating "longer wins" by this much
    batch_size: int = Field(ge=1)  # scoring held-out pairs


class PolicyConfig(Section):
    max_prompts: int = Field(ge=1)  # prompts of the preference set the policy practises on
    rloo: dict[str, Any]  # trl.RLOOConfig keys (beta: the KL coefficient, generation settings)
    grpo: dict[str, Any]  # trl.GRPOConfig keys; beta must be > 0 (TRL's default 0 means no KL at all)
    peft: dict[str, Any] | None  # LoRA for RLOO and GRPO: as DpoConfig.peft


class DpoConfig(Section):
    trainer: dict[str, Any]  # trl.DPOConfig keys
    peft: dict[str, Any] | None  # LoRA: peft.LoraConfig keys + register, load_in_4bit (lifecycle/lora.py); null: full


class HealthConfig(Section):
    max_kl: float = Field(gt=0)  # mean KL to the reference model above this while reward rises: alarm
    max_length_growth: float = Field(gt=1)  # mean completion length above this x its first value: alarm
    min_reward_rise: float = Field(ge=0)  # reward "rises" when its last-quarter mean beats its first by this


class GoldConfig(Section):
    """Proxy vs gold during policy optimisation (lifecycle/align/gold.py) and its over-optimisation alarm."""
    every: int = Field(ge=1)  # steps between measurements (and step 0, and the last step)
    prompts: int = Field(ge=0)  # held-out prompts with a reference answer, at most; 0: no gold curve
    max_new_tokens: int = Field(ge=1)  # greedy answer length
    batch_size: int = Field(ge=1)  # prompts per generation batch
    min_proxy_rise: float = Field(ge=0)  # proxy last - first above this ...
    min_gold_fall: float = Field(ge=0)  # ... while gold first - last is above this: alarm


class RlhfConfig(Section):
    method: Literal["rloo", "grpo", "dpo"]
    device: Literal["auto", "cpu", "cuda"]
    held_out_fraction: float = Field(gt=0, lt=1)  # preference pairs kept out of training (by content hash)
    reward: RewardModelConfig
    policy: PolicyConfig
    dpo: DpoConfig
    gold: GoldConfig
    health: HealthConfig
    distributed: LaunchConfig  # > 1 process in all: the reward model and policy train under torchrun (DDP)
