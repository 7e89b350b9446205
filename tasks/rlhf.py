"""The rlhf stage: align the SFT model (passed by reference) with the preference set. `rlhf.method` rloo or
grpo: train a reward model (registered as run.models.reward), then optimise the policy against it with a
KL leash to the SFT model, watching its health; dpo: train the policy on the pairs directly. The policy
is registered as a new version of run.models.chat with its lineage (preference-set hash, SFT version,
reward-model version, config hash) and a reward-hacking alarm tag the promotion gate reads: KL or length
running away while reward rises, or (simulated preferences: a gold judge on held-out prompts) the proxy
reward rising while the gold judge falls, for RLOO/GRPO and DPO alike. With
rlhf.distributed asking for more than one process, the training runs under torchrun (lifecycle/align/launch.py)
and this task registers what it wrote, on node 0. With LoRA (rlhf.reward.peft, rlhf.policy.peft, rlhf.dpo.peft)
each version holds the merged model or the adapter naming its base (lifecycle/lora.py)."""

from __future__ import annotations

import json

import mlflow
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pathlib import Path

from lifecycle import names
from lifecycle.align.pairs import split_pairs, unique_prompts
from lifecycle.config import Config
from lifecycle.config.rlhf import REWARD_POLICY
from lifecycle.errors import LifecycleError
from lifecycle.hashing import hash_json
from lifecycle.hub import checkpoint_digest, configured_checkpoint
from lifecycle.lora import LoraSettings, lora_tags, plain_copy, point_to
from lifecycle.manifest import write_json_atomic
from lifecycle.preferences.export import SNAPSHOT, read_snapshot
from lifecycle.registry import ModelRef, local_copy
from lifecycle.resume import register_once
from lifecycle.stages import Stage
from lifecycle.store import StageOutput
from lifecycle.train.tracking import mlflow_hooks
from tasks.common import RunContext, StageDirs, StageResult, run_stage, seed
from tasks.launch import device_tags, launch_stage
from tasks.retries import STAGE_RETRIES


@task(name="rlhf", cache_policy=NO_CACHE, **STAGE_RETRIES)
def rlhf(ctx: RunContext, inputs: dict[str, StageOutput]) -> StageOutput:
    cfg, logger, sft, prefs = ctx.cfg, get_run_logger(), inputs["sft"], inputs["preferences"]
    if sft.model is None:
        raise LifecycleError(f"rlhf: the sft output {sft.path} carries no model reference; re-run sft")

    def work(dirs: StageDirs) -> StageResult:
        run_id, launch = mlflow.active_run().info.run_id, cfg.rlhf.distributed
        on_metrics, _ = mlflow_hooks(run_id)
        rows = read_snapshot(prefs.file(SNAPSHOT))
        sft_dir = plain_copy(local_copy(sft.model, ctx.models_dir), ctx.models_dir)  # an adapter: merged
        lineage = {names.STAGE: "rlhf", names.STAGE_KEY: dirs.key, names.BASE_MODEL: str(sft.model),
                   names.PREFERENCE_SET_HASH: prefs.identity, names.RLHF_METHOD: cfg.rlhf.method,
                   names.CONFIG_HASH: ctx.config_hash, "mlflow.source.git.commit": ctx.git_commit,
                   names.section_hash("rlhf"): hash_json(cfg.rlhf.model_dump(mode="json"))}
        mlflow.log_params({"method": cfg.rlhf.method, "sft_model": str(sft.model), "pairs": len(rows),
                           "nproc": launch.nproc, "nnodes": launch.nnodes})
        if launch.world_size > 1:
            trained = train_under_torchrun(ctx, sft_dir, prefs, dirs, run_id)
            if trained is None:  # a node other than 0: node 0 registers
                return StageResult({"world_size": launch.world_size, "node_rank": launch.node_rank},
                                   tags=device_tags(cfg.rlhf.device, launch.nproc), worker=True)
            metrics, tags = register_trained(ctx, trained, dirs, lineage)
        elif cfg.rlhf.method == "dpo":
            from lifecycle.align.dpo import train_dpo

            dpo = train_dpo(cfg, sft_dir, rows, dirs.out, dirs.checkpoints / "dpo", on_metrics)
            metrics, tags = report_policy(None, {}, dpo.metrics, dpo.health)
        else:
            metrics, tags = optimise_policy(ctx, sft_dir, rows, dirs, lineage, on_metrics)
        lora = policy_lora_of(cfg)
        if lora is not None and lora.register == "adapter":  # it names its base by registry version
            point_to(dirs.out / "policy", sft.model.uri)
        policy = register_once(dirs.out / "policy", cfg.run.models.chat, lineage | tags | lora_tags(lora),
                               ctx.models_dir)
        logger.info("rlhf: registered %s (%s on %d preference pairs, from %s)", policy, cfg.rlhf.method, len(rows),
                    sft.model)
        return StageResult(metrics, model=policy, tags=tags | device_tags(cfg.rlhf.device, launch.world_size))

    return run_stage(STAGE, ctx, inputs, work)


def optimise_policy(ctx: RunContext, sft_dir, rows: list[dict], dirs: StageDirs, lineage: dict[str, str],
                    on_metrics) -> tuple[dict[str, float], dict[str, str]]:
    """The reward model, registered, then RLOO/GRPO against it, watched on the held-out prompts by the gold
    judge; (metrics, tags for the policy version)."""
    from lifecycle.align.gold import gold_set
    from lifecycle.align.policy import train_policy
    from lifecycle.align.reward import train_reward

    cfg = ctx.cfg
    reward = train_reward(cfg, sft_dir, rows, dirs.out, dirs.checkpoints / "reward", on_metrics)
    reward_ref = register_reward(ctx, dirs, lineage, reward.metrics, reward.flagged, reward.kind)
    train, held_out = split_pairs(rows, cfg.rlhf.held_out_fraction)
    prompts = unique_prompts(train, cfg.rlhf.policy.max_prompts)
    result = train_policy(cfg, sft_dir, dirs.out / "reward_model", prompts, dirs.out, dirs.checkpoints / "policy",
                          on_metrics, gold=gold_set(held_out, cfg.rlhf.gold))
    return report_policy(reward_ref, reward.metrics, result.metrics, result.health)


def train_under_torchrun(ctx: RunContext, sft_dir, prefs: StageOutput, dirs: StageDirs,
                         run_id: str) -> dict | None:
    """rlhf.distributed: the training (lifecycle/align/launch.py) under torchrun, its rank 0 logging the curves
    to the stage's run; global rank 0's result (JSON), or None on a node other than 0."""
    launch = ctx.cfg.rlhf.distributed
    spec = dirs.checkpoints.parent / f"{dirs.key}-node{launch.node_rank}.json"  # one per node: shared storage
    result = spec.with_suffix(".result.json")
    spec.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    write_json_atomic(spec, {"config": ctx.cfg.dump(), "sft_dir": str(sft_dir),
                             "preferences": str(prefs.file(SNAPSHOT)), "out": str(dirs.out),
                             "checkpoints": str(dirs.checkpoints), "result": str(result), "mlflow_run_id": run_id})
    import lifecycle.align.launch as entry  # imported, not named: part of the stage's code (its cache key)

    if not launch_stage("rlhf", entry.__name__, ["--spec", str(spec)], launch, dirs, expect=result):
        return None
    return json.loads(result.read_text())


def register_trained(ctx: RunContext, trained: dict, dirs: StageDirs,
                     lineage: dict[str, str]) -> tuple[dict[str, float], dict[str, str]]:
    """What the launched training wrote (train_under_torchrun): the reward model registered, the health
    reported; (metrics, tags for the policy version), as the in-process path returns them."""
    from lifecycle.align.health import HealthReport

    world = {"world_size": float(trained["world_size"])}
    if "dpo" in trained:
        metrics, tags = report_policy(None, {}, trained["dpo"]["metrics"], HealthReport(**trained["dpo"]["health"]))
        return metrics | world, tags
    reward = trained["reward"]
    reward_ref = register_reward(ctx, dirs, lineage, reward["metrics"], reward["flagged"], reward["kind"])
    metrics, tags = report_policy(reward_ref, reward["metrics"], trained["policy"]["metrics"],
                                  HealthReport(**trained["policy"]["health"]))
    return metrics | world, tags


def register_reward(ctx: RunContext, dirs: StageDirs, lineage: dict[str, str], metrics: dict[str, float],
                    flagged: bool, kind: str) -> ModelRef:
    cfg, logger = ctx.cfg, get_run_logger()
    flag = {names.REWARD_FLAGGED: "does not beat the longer-answer-wins baseline"} if flagged else {}
    from lifecycle.align.reward import reward_lora

    lora = reward_lora(cfg)
    tags = reward_lineage(cfg, lineage) | flag | lora_tags(lora) | {
        names.REWARD_ACCURACY: f"{metrics['accuracy']:.4f}", names.REWARD_INPUT: kind}
    if lora is not None and lora.register == "adapter":  # its base: the SFT version, or the encoder's name
        setting = cfg.rlhf.reward.model
        point_to(dirs.out / "reward_model",
                 f"models:/{lineage[names.BASE_MODEL]}" if setting == REWARD_POLICY else setting)
    reward_ref = register_once(dirs.out / "reward_model", cfg.run.models.reward, task="text-classification",
                               tags=tags, models_dir=ctx.models_dir)
    if flagged:
        logger.warning("rlhf: reward model %s: held-out accuracy %.3f does not beat the length baseline %.3f",
                       reward_ref, metrics["accuracy"], metrics["length_baseline"])
    return reward_ref


def reward_lineage(cfg: Config, lineage: dict[str, str]) -> dict[str, str]:
    """The stage's lineage as the reward model's: trained from the SFT model (`policy`), or from an encoder,
    named with the digest of its files (and no base model in the registry)."""
    setting = cfg.rlhf.reward.model
    if setting == REWARD_POLICY:
        return lineage | {names.REWARD_BASE: setting}
    return {k: v for k, v in lineage.items() if k != names.BASE_MODEL} | {
        names.REWARD_BASE: setting, names.REWARD_BASE_SHA256: checkpoint_digest(reward_checkpoint(cfg))}


def reward_checkpoint(cfg: Config) -> Path:
    """The folder of the encoder `rlhf.reward.model` names (a ConfigError naming the key when there is none)."""
    return configured_checkpoint("rlhf.reward.model", cfg.rlhf.reward.model, cfg._origin)


def policy_lora_of(cfg: Config) -> LoraSettings | None:
    """The LoRA settings of the policy the chosen method trains (rlhf.dpo.peft or rlhf.policy.peft)."""
    from lifecycle.align.dpo import dpo_lora
    from lifecycle.align.policy import policy_lora

    return dpo_lora(cfg) if cfg.rlhf.method == "dpo" else policy_lora(cfg)


def extras(cfg: Config) -> dict[str, str]:
    """The key's extras: the seed, and an encoder reward model's files (what a folder holds can change under
    the same name)."""
    found = seed(cfg)
    if cfg.rlhf.method != "dpo" and cfg.rlhf.reward.model != REWARD_POLICY:
        found["reward_model"] = checkpoint_digest(reward_checkpoint(cfg))
    return found


def report_policy(reward_ref: ModelRef | None, reward_metrics: dict[str, float], policy_metrics: dict[str, float],
                  report) -> tuple[dict[str, float], dict[str, str]]:
    """The health report as a Prefect artifact and an MLflow text; (metrics, tags for the policy version).
    `reward_ref` None: DPO, no reward model."""
    create_markdown_artifact(key="rlhf-health", markdown=report.markdown(), description="RLHF health checks")
    mlflow.log_text(report.markdown(), "rlhf/health.md")
    tags = {names.RLHF_ALARM: "; ".join(report.reasons) if report.alarm else "none"}
    if reward_ref is not None:
        tags[names.REWARD_MODEL] = str(reward_ref)
    if report.alarm:
        get_run_logger().warning("rlhf: HEALTH ALARM: %s", "; ".join(report.reasons))
    metrics = {**{f"reward_model/{k}": v for k, v in reward_metrics.items()}, **policy_metrics,
               "health_alarm": float(report.alarm)}
    return metrics, tags


def check_trainers(cfg: Config, scratch: Path) -> None:
    """The TRL sections of the chosen method pass through to TRL's configs and its `peft` sections to peft's
    LoraConfig: construct them, and load an encoder reward model, so a bad key or a model that cannot load fails
    before any work."""
    from lifecycle.align.dpo import dpo_args
    from lifecycle.align.policy import policy_args
    from lifecycle.align.reward import reward_args, reward_lora
    from lifecycle.align.reward_model import load_encoder

    policy_lora_of(cfg)
    if cfg.rlhf.method == "dpo":
        dpo_args(cfg, scratch, max_length=1)
    else:
        reward_args(cfg, scratch, max_length=1)
        reward_lora(cfg)
        policy_args(cfg, scratch, cfg.rlhf.method)
        if cfg.rlhf.reward.model != REWARD_POLICY:
            load_encoder(cfg)  # loads, or a ConfigError naming rlhf.reward.model and its value


STAGE = Stage("rlhf", __name__, inputs=("sft", "preferences"), run=rlhf, model="chat", extras=extras,
              check=check_trainers,
              produces="the aligned policy (RLOO/GRPO against a reward model with a KL leash, or DPO) and the reward "
                       "model, registered: the policy's reference; health checks and the reward-hacking alarm")
