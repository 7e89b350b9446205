"""RLHF under torchrun: the reward model and the policy (RLOO/GRPO), or DPO, trained by one process per
device. TRL's trainers read torchrun's environment (RANK, WORLD_SIZE, ...) through accelerate and run
DDP (NCCL on GPUs, gloo on CPUs); each process takes `per_device_train_batch_size` of every batch.

The rlhf task launches this when `rlhf.distributed` asks for more than one process, then registers what
global rank 0 wrote: the files of the in-process path (reward_model/, reward_metrics.json, policy/,
policy_health.json, or dpo_metrics.json) in OUT, and the metrics and health report as JSON in RESULT.
Rank 0 logs the training curves to the stage's MLflow run (MLFLOW_TRACKING_URI from the environment).

    torchrun --standalone --nproc_per_node 2 -m lifecycle.align.launch --spec SPEC.json
    # SPEC.json: {"config": cfg.dump(), "sft_dir": ..., "preferences": SNAPSHOT.jsonl, "out": OUT,
    #             "checkpoints": CKPT, "result": RESULT.json, "mlflow_run_id": RUN_ID or null}

Re-running the same command after a crash resumes each trainer from its newest checkpoint in CKPT.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lifecycle.align.callbacks import MetricsHook
from lifecycle.align.pairs import Row, split_pairs, unique_prompts
from lifecycle.config import Config
from lifecycle.errors import LifecycleError

log = logging.getLogger("lifecycle.rlhf")


def train_rlhf(cfg: Config, sft_dir: Path, rows: list[Row], out_dir: Path, ckpt_dir: Path,
               on_metrics: MetricsHook | None = None) -> dict[str, Any]:
    """What the rlhf task trains, in this process (one of several under torchrun); JSON-ready: the world
    size and, per trainer, its metrics (reward: and whether it is flagged; policy and dpo: and the health
    report, with the gold judge's verdict on held-out prompts where there is one)."""
    if cfg.rlhf.method == "dpo":
        from lifecycle.align.dpo import train_dpo

        dpo = train_dpo(cfg, sft_dir, rows, out_dir, ckpt_dir / "dpo", on_metrics)
        result = {"dpo": {"metrics": dpo.metrics, "health": asdict(dpo.health)}}
    else:
        from lifecycle.align.gold import gold_set
        from lifecycle.align.policy import train_policy
        from lifecycle.align.reward import fit_reward

        reward, scorer = fit_reward(cfg, sft_dir, rows, out_dir, ckpt_dir / "reward", on_metrics)
        train, held_out = split_pairs(rows, cfg.rlhf.held_out_fraction)
        prompts = unique_prompts(train, cfg.rlhf.policy.max_prompts)
        # the reward model in memory, not out_dir/reward_model: only global rank 0 wrote that, on its node
        policy = train_policy(cfg, sft_dir, None, prompts, out_dir, ckpt_dir / "policy", on_metrics,
                              reward_funcs=[scorer],
                              gold=gold_set(held_out, cfg.rlhf.gold))
        result = {"reward": {"metrics": reward.metrics, "flagged": reward.flagged, "kind": reward.kind},
                  "policy": {"metrics": policy.metrics, "health": asdict(policy.health)}}
    return {"world_size": world_size(), **result}


def world_size() -> int:
    """The processes of the group the trainers joined (accelerate sets it up from torchrun's environment)."""
    import torch.distributed as tdist

    return tdist.get_world_size() if tdist.is_initialized() else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lifecycle.align.launch", description=__doc__.split("\n")[0])
    p.add_argument("--spec", required=True, help="JSON file: config, sft_dir, preferences, out, checkpoints, "
                                                 "result, mlflow_run_id")
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"[rank {rank}] %(name)s: %(message)s")
    try:
        spec = json.loads(Path(args.spec).read_text())
    except (OSError, ValueError) as err:
        print(f"error: --spec {args.spec}: not a readable JSON file ({err})", file=sys.stderr)
        return 2
    import datasets
    import transformers

    from lifecycle.preferences.export import read_snapshot

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()  # one "Tokenizing" bar per process and dataset otherwise
    cfg = Config.model_validate(spec["config"])
    on_metrics = None
    if spec.get("mlflow_run_id") and rank == 0:  # global rank 0: one writer of the curves
        from lifecycle.train.tracking import mlflow_hooks

        on_metrics, _ = mlflow_hooks(spec["mlflow_run_id"])
    try:
        rows = read_snapshot(Path(spec["preferences"]))
        result = train_rlhf(cfg, Path(spec["sft_dir"]), rows, Path(spec["out"]), Path(spec["checkpoints"]),
                            on_metrics)
    except LifecycleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("rlhf: %d processes trained %s", result["world_size"], cfg.rlhf.method)
    if rank == 0:
        target = Path(spec["result"])
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        tmp.write_text(json.dumps(result, indent=2))  # NaN (a metric never logged) survives as NaN
        tmp.rename(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
