"""Alignment: supervised fine-tuning (sft.py, sft_data.py); reward model, RLOO/GRPO and DPO later. TRL."""
