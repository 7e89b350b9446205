"""The pretrain stage: train the causal LM (from scratch, or on from the open checkpoint pretrain.init names)
on the tokenize stage's blocks (in this process, or under torchrun when pretrain.distributed asks for more, on
one node or several), then register it (on node 0) as a new version of run.models.base, tagged with its
lineage (and where its checkpoint came from), and hand on its reference. `pretrain.max_steps: 0` registers
the checkpoint as it is. No alias is set: the base model is not a chat model, and `@champion` only moves
through the promotion gate."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lifecycle import names
from lifecycle.hashing import hash_json
from lifecycle.hub import Checkpoint, init_checkpoint
from lifecycle.manifest import write_json_atomic
from lifecycle.registry import register_model
from lifecycle.stages import Stage
from lifecycle.store import StageOutput
from lifecycle.train.tracking import mlflow_hooks
from tasks.common import RunContext, StageDirs, StageResult, check_init, init_extras, run_stage, seed
from tasks.launch import device_tags, launch_stage
from tasks.retries import STAGE_RETRIES


@task(name="pretrain", cache_policy=NO_CACHE, **STAGE_RETRIES)
def pretrain(ctx: RunContext, inputs: dict[str, StageOutput]) -> StageOutput:
    cfg, tokens = ctx.cfg, inputs["tokenize"]
    section, seed = cfg.pretrain, cfg.run.seed
    logger = get_run_logger()

    def work(dirs: StageDirs) -> StageResult:
        from lifecycle.train.pretrain import train

        run_id = mlflow.active_run().info.run_id
        m, launch, checkpoint = section.model, section.distributed, init_checkpoint(cfg)
        shape = ({"init": checkpoint.identity} if checkpoint else
                 {"arch": m.arch, "n_layer": m.n_layer, "n_head": m.n_head, "d_model": m.d_model, "d_ff": m.d_ff})
        mlflow.log_params(shape | {"max_steps": section.max_steps, "batch_size": section.batch_size, "seed": seed,
                                   "lr": section.optim.lr, "nproc": launch.nproc, "nnodes": launch.nnodes})
        mlflow.log_dict(section.model_dump(mode="json"), "pretrain/config.json")
        if launch.world_size == 1:
            on_metrics, on_text = mlflow_hooks(run_id)
            metrics = train(section, seed, Path(tokens.path), dirs.out, dirs.checkpoints, on_metrics, on_text)
        else:
            spec = dirs.checkpoints.parent / f"{dirs.key}-node{launch.node_rank}.json"  # one per node: shared storage
            spec.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(spec, {"seed": seed, "pretrain": section.model_dump(mode="json")})
            if not launch_stage("pretrain", train.__module__,
                                ["--data", tokens.path, "--config", str(spec), "--out", str(dirs.out),
                                 "--checkpoints", str(dirs.checkpoints), "--mlflow-run-id", run_id],
                                launch, dirs, expect=dirs.out / "metrics.json"):
                return StageResult({"world_size": launch.world_size, "node_rank": launch.node_rank},
                                   tags=device_tags(section.device, launch.nproc), worker=True)
            metrics = json.loads((dirs.out / "metrics.json").read_text())
        tokenize_tags = mlflow.get_run(tokens.run_id).data.tags
        ref = register_model(dirs.out / "model", cfg.run.models.base, tags={
            names.STAGE: "pretrain", names.STAGE_KEY: dirs.key,
            names.DATA_KEY: tokenize_tags.get(names.INPUT + "ingest", "unknown"),
            names.TOKENIZER_KEY: tokens.key, names.CONFIG_HASH: ctx.config_hash,
            names.section_hash("pretrain"): hash_json(section.model_dump(mode="json")),
            "mlflow.source.git.commit": ctx.git_commit} | init_lineage(checkpoint))
        logger.info("pretrain: registered %s (val %.3f bits/byte, unigram baseline %.3f)", ref, metrics["val_bpb"],
                    metrics["unigram_bpb"])
        return StageResult({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, model=ref,
                           tags=device_tags(cfg.pretrain.device, int(metrics.get("world_size", 1))))

    return run_stage(STAGE, ctx, inputs, work)


def init_lineage(checkpoint: Checkpoint | None) -> dict[str, str]:
    """Where the base model's weights came from: the hub id and its resolved commit, or the folder and the
    digest of its files (nothing: from scratch)."""
    if checkpoint is None:
        return {}
    found = {names.INIT_REVISION: checkpoint.commit} if checkpoint.commit else {names.INIT_SHA256: checkpoint.sha256}
    return {names.INIT: checkpoint.name} | {k: str(v) for k, v in found.items()}


STAGE = Stage("pretrain", __name__, inputs=("tokenize",), run=pretrain, model="base",
              extras=lambda cfg: seed(cfg) | init_extras(cfg), check=check_init,
              produces="the base model (trained, or an open checkpoint), registered: its reference (name, version, "
                       "URI)")
