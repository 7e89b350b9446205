"""rlhf task: align the SFT model (passed by reference) with the preference set. `rlhf.method` rloo or
grpo: train a reward model (registered as run.models.reward), then optimise the policy against it with a
KL leash to the SFT model, watching its health; dpo: train the policy on the pairs directly. The policy
is registered as a new version of run.models.chat with its lineage (preference-set hash, SFT version,
reward-model version, config hash) and a reward-hacking alarm tag the promotion gate reads."""

from __future__ import annotations

import mlflow
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lifecycle.align.pairs import split_pairs, unique_prompts
from lifecycle.errors import LifecycleError
from lifecycle.hashing import hash_json
from lifecycle.preferences.export import read_snapshot
from lifecycle.registry import ModelRef, local_copy, register_model
from lifecycle.store import StageOutput
from lifecycle.train.tracking import mlflow_hooks
from tasks.common import RunContext, StageDirs, StageResult, device_tags, run_stage
from tasks.preferences import SNAPSHOT

ALARM_TAG = "lifecycle.rlhf.alarm"


@task(name="rlhf", cache_policy=NO_CACHE)
def rlhf(ctx: RunContext, sft: StageOutput, prefs: StageOutput) -> StageOutput:
    cfg, logger = ctx.cfg, get_run_logger()
    if sft.model is None:
        raise LifecycleError(f"rlhf: the sft output {sft.path} carries no model reference; re-run sft")

    def work(dirs: StageDirs) -> StageResult:
        on_metrics, _ = mlflow_hooks(mlflow.active_run().info.run_id)
        rows = read_snapshot(prefs.file(SNAPSHOT))
        sft_dir = local_copy(sft.model, ctx.models_dir)
        lineage = {"lifecycle.stage": "rlhf", "lifecycle.stage_key": dirs.key, "lifecycle.base_model": str(sft.model),
                   "lifecycle.preference_set_hash": prefs.identity, "lifecycle.rlhf.method": cfg.rlhf.method,
                   "lifecycle.config_hash": ctx.config_hash, "mlflow.source.git.commit": ctx.git_commit,
                   "lifecycle.rlhf_config_hash": hash_json(cfg.rlhf.model_dump(mode="json"))}
        mlflow.log_params({"method": cfg.rlhf.method, "sft_model": str(sft.model), "pairs": len(rows)})
        if cfg.rlhf.method == "dpo":
            from lifecycle.align.dpo import train_dpo

            metrics, tags = train_dpo(cfg, sft_dir, rows, dirs.out, dirs.checkpoints / "dpo", on_metrics).metrics, {}
        else:
            metrics, tags = optimise_policy(ctx, sft_dir, rows, dirs, lineage, on_metrics)
        policy = register_model(dirs.out / "policy", cfg.run.models.chat, tags=lineage | tags)
        logger.info("rlhf: registered %s (%s on %d preference pairs, from %s)", policy, cfg.rlhf.method, len(rows),
                    sft.model)
        return StageResult(metrics, model=policy, tags=tags | device_tags(cfg.rlhf.device))

    return run_stage("rlhf", ctx, {"sft": sft, "preferences": prefs}, work)


def optimise_policy(ctx: RunContext, sft_dir, rows: list[dict], dirs: StageDirs, lineage: dict[str, str],
                    on_metrics) -> tuple[dict[str, float], dict[str, str]]:
    """The reward model, registered, then RLOO/GRPO against it; (metrics, tags for the policy version)."""
    from lifecycle.align.policy import train_policy
    from lifecycle.align.reward import train_reward

    cfg, logger = ctx.cfg, get_run_logger()
    reward = train_reward(cfg, sft_dir, rows, dirs.out, dirs.checkpoints / "reward", on_metrics)
    flag = {"lifecycle.reward.flagged": "does not beat the longer-answer-wins baseline"} if reward.flagged else {}
    reward_ref = register_model(dirs.out / "reward_model", cfg.run.models.reward, task="text-classification",
                                tags=lineage | flag | {"lifecycle.reward.accuracy": f"{reward.metrics['accuracy']:.4f}"})
    if reward.flagged:
        logger.warning("rlhf: reward model %s: held-out accuracy %.3f does not beat the length baseline %.3f",
                       reward_ref, reward.metrics["accuracy"], reward.metrics["length_baseline"])
    train, _ = split_pairs(rows, cfg.rlhf.held_out_fraction)
    prompts = unique_prompts(train, cfg.rlhf.policy.max_prompts)
    result = train_policy(cfg, sft_dir, dirs.out / "reward_model", prompts, dirs.out, dirs.checkpoints / "policy",
                          on_metrics)
    report = result.health
    create_markdown_artifact(key="rlhf-health", markdown=report.markdown(), description="RLHF health checks")
    mlflow.log_text(report.markdown(), "rlhf/health.md")
    tags = {"lifecycle.reward_model": str(reward_ref), ALARM_TAG: "; ".join(report.reasons) if report.alarm else "none"}
    if report.alarm:
        logger.warning("rlhf: HEALTH ALARM: %s", "; ".join(report.reasons))
    metrics = {**{f"reward_model/{k}": v for k, v in reward.metrics.items()}, **result.metrics,
               "health_alarm": float(report.alarm)}
    return metrics, tags


def reward_model_of(policy: ModelRef) -> ModelRef | None:
    """The reward model a policy version was optimised against (its lineage tag)."""
    from lifecycle.registry import resolve, version_tags

    tag = version_tags(policy).get("lifecycle.reward_model")
    return resolve(tag) if tag else None
