"""Alignment with TRL: supervised fine-tuning (sft.py, sft_data.py); the reward model (reward.py), RLOO/GRPO
(policy.py) and its health (health.py), DPO (dpo.py); the same training under torchrun (launch.py)."""
