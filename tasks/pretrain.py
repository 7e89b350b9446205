"""pretrain task: train the causal LM from scratch on the tokenize stage's blocks (in this process, or
under torchrun when pretrain.distributed.nproc > 1), then log it to MLflow with its tokenizer and
register it as a new version of run.registered_model, tagged with its lineage. No alias is set:
`@champion` only moves through the promotion gates."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import torch
import transformers
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import lifecycle.model
import lifecycle.train.checkpoint
import lifecycle.train.data
import lifecycle.train.distributed
import lifecycle.train.evaluate
import lifecycle.train.flops
import lifecycle.train.pretrain
import lifecycle.train.trainer
from lifecycle.config import Config, hash_json
from lifecycle.store import StageOutput, code_hash
from lifecycle.train.distributed import launch_torchrun
from lifecycle.train.pretrain import train
from lifecycle.train.tracking import mlflow_hooks
from tasks.common import RunContext, StageDirs, run_stage

CODE = (lifecycle.model, lifecycle.train.pretrain, lifecycle.train.trainer, lifecycle.train.data,
        lifecycle.train.checkpoint, lifecycle.train.distributed, lifecycle.train.evaluate, lifecycle.train.flops)


@task(name="pretrain", cache_policy=NO_CACHE)
def pretrain(cfg: Config, tokens: StageOutput, ctx: RunContext) -> StageOutput:
    section, seed = cfg.pretrain, cfg.run.seed
    logger = get_run_logger()

    def work(dirs: StageDirs) -> dict[str, float]:
        run_id = mlflow.active_run().info.run_id
        m = section.model
        mlflow.log_params({"arch": m.arch, "n_layer": m.n_layer, "n_head": m.n_head, "d_model": m.d_model,
                           "d_ff": m.d_ff, "max_steps": section.max_steps, "batch_size": section.batch_size,
                           "lr": section.optim.lr, "nproc": section.distributed.nproc, "seed": seed})
        mlflow.log_dict(section.model_dump(mode="json"), "pretrain/config.json")
        if section.distributed.nproc == 1:
            on_metrics, on_text = mlflow_hooks(run_id)
            metrics = train(section, seed, Path(tokens.path), dirs.out, dirs.checkpoints, on_metrics, on_text)
        else:
            spec = dirs.checkpoints.parent / f"{dirs.key}.json"
            spec.parent.mkdir(parents=True, exist_ok=True)
            spec.write_text(json.dumps({"seed": seed, "pretrain": section.model_dump(mode="json")}))
            launch_torchrun("lifecycle.train.pretrain",
                            ["--data", tokens.path, "--config", str(spec), "--out", str(dirs.out),
                             "--checkpoints", str(dirs.checkpoints), "--mlflow-run-id", run_id],
                            section.distributed.nproc, env={"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()},
                            logger=logger)
            metrics = json.loads((dirs.out / "metrics.json").read_text())
        version = register_model(cfg, dirs, tokens, ctx)
        logger.info("pretrain: registered %s version %s (val %.3f bits/byte, unigram baseline %.3f)",
                    cfg.run.registered_model, version, metrics["val_bpb"], metrics["unigram_bpb"])
        return metrics | {"registered_version": float(version)}

    return run_stage("pretrain", ctx, section, {"tokenize": tokens}, code_hash(*CODE), work,
                     extra_key={"seed": str(seed)})


def register_model(cfg: Config, dirs: StageDirs, tokens: StageOutput, ctx: RunContext) -> int:
    """Log model + tokenizer (transformers flavor) and register a version tagged with its lineage."""
    model_dir = dirs.out / "model"
    components = {"model": transformers.AutoModelForCausalLM.from_pretrained(str(model_dir)),
                  "tokenizer": transformers.AutoTokenizer.from_pretrained(str(model_dir))}
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
    info = mlflow.transformers.log_model(transformers_model=components, name="model", task="text-generation",
                                         registered_model_name=cfg.run.registered_model,
                                         pip_requirements=requirements)
    version = info.registered_model_version
    client = MlflowClient()
    tokenize_run = client.get_run(tokens.run_id)
    tags = {"lifecycle.data_key": tokenize_run.data.tags.get("lifecycle.input.ingest", "unknown"),
            "lifecycle.tokenizer_key": tokens.key, "lifecycle.config_hash": ctx.config_hash,
            "lifecycle.pretrain_config_hash": hash_json(cfg.pretrain.model_dump(mode="json")),
            "lifecycle.stage_key": dirs.key, "lifecycle.stage": "pretrain",
            "mlflow.source.git.commit": ctx.git_commit}
    for key, value in tags.items():
        client.set_model_version_tag(cfg.run.registered_model, str(version), key, value)
    return int(version)
