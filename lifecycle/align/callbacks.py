"""What the alignment trainers (TRL's SFT, reward and DPO trainers) report while they run: their logs go to
an `on_metrics(metrics, step)` hook (an explicit MLflow run id: Prefect runs tasks in threads) under a
`prefix`, and one log line each, instead of the Trainer printing dicts to stdout.

    trainer = trl.RewardTrainer(..., callbacks=[MetricsCallback(on_metrics, prefix="rlhf/reward_model")])
    trainer.remove_callback(PrinterCallback)   # MetricsCallback logs instead
    # on_metrics({"rlhf/reward_model/train/loss": 0.41, ...}, step=20)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

MetricsHook = Callable[[dict[str, float], int], None]
# the numbers worth a log line (with or without "eval_"); every number goes to on_metrics
SHOWN = ("loss", "train_loss", "learning_rate", "grad_norm", "mean_token_accuracy", "accuracy", "margin",
         "rewards/accuracies", "rewards/margins", "reward", "kl", "completions/mean_length")


class MetricsCallback(TrainerCallback):
    """Trainer logs -> `on_metrics` as `<prefix>/train/<name>` or `<prefix>/eval/<name>`, and a log line."""

    def __init__(self, on_metrics: MetricsHook | None, prefix: str = "sft",
                 logger: logging.Logger | None = None) -> None:
        self.on_metrics = on_metrics
        self.prefix = prefix
        self.log = logger or logging.getLogger(f"lifecycle.{prefix.split('/')[0]}")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        if not numbers or not state.is_world_process_zero:
            return
        shown = ", ".join(f"{k} {v:.4g}" for k, v in numbers.items() if k.removeprefix("eval_") in SHOWN)
        self.log.info("%s: %s: %s", self.prefix,
                      f"step {state.global_step}/{state.max_steps}" if state.max_steps else "before training", shown)
        if self.on_metrics:
            kind = "eval" if any(k.startswith("eval_") for k in numbers) else "train"
            self.on_metrics({f"{self.prefix}/{kind}/{k.removeprefix('eval_')}": v for k, v in numbers.items()},
                            state.global_step)
