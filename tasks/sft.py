"""The sft stage: fine-tune the base model (passed by reference) on instruction pairs with TRL's SFTTrainer,
log curves and the held-out comparison with the base model to MLflow, and register the result as a new
version of run.models.chat with its lineage (base model version, instruction data hash). With sft.peft (LoRA),
the version holds the merged model or the adapter naming its base's version (lifecycle/lora.py)."""

from __future__ import annotations

import mlflow
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pathlib import Path

from lifecycle import names
from lifecycle.config import Config
from lifecycle.errors import LifecycleError
from lifecycle.hashing import hash_json
from lifecycle.registry import local_copy
from lifecycle.resume import register_once
from lifecycle.stages import Stage
from lifecycle.store import StageOutput
from lifecycle.train.tracking import mlflow_hooks
from tasks.common import RunContext, StageDirs, StageResult, run_stage, seed
from tasks.launch import device_tags
from tasks.retries import STAGE_RETRIES


@task(name="sft", cache_policy=NO_CACHE, **STAGE_RETRIES)
def sft(ctx: RunContext, inputs: dict[str, StageOutput]) -> StageOutput:
    cfg, base, docs = ctx.cfg, inputs["pretrain"], inputs["ingest"]
    logger = get_run_logger()
    if base.model is None:
        raise LifecycleError(f"sft: the pretrain output {base.path} carries no model reference; re-run pretrain")

    def work(dirs: StageDirs) -> StageResult:
        from lifecycle.align.sft import sft_lora, train_sft
        from lifecycle.data.ingest import read_documents
        from lifecycle.lora import lora_tags, plain_copy, point_to

        run_id = mlflow.active_run().info.run_id
        mlflow.log_params({"base_model": str(base.model), "system_prompt": cfg.sft.data.system_prompt,
                           **{f"trainer.{k}": v for k, v in cfg.sft.trainer.items()}})
        on_metrics, _ = mlflow_hooks(run_id)
        base_dir = plain_copy(local_copy(base.model, ctx.models_dir), ctx.models_dir)  # an adapter: merged
        result = train_sft(cfg, base_dir, read_documents(docs.path), dirs.out, dirs.checkpoints, on_metrics)
        mlflow.log_table(pd.DataFrame(result.samples), "sft/samples.json")
        markdown = samples_markdown(result.metrics, result.samples)
        mlflow.log_text(markdown, "sft/report.md")
        create_markdown_artifact(key="sft-report", markdown=markdown, description="SFT model vs base model")
        lora = sft_lora(cfg)
        if lora is not None and lora.register == "adapter":  # it names its base by registry version
            point_to(dirs.out / "model", base.model.uri)
        ref = register_once(dirs.out / "model", cfg.run.models.chat, models_dir=ctx.models_dir, tags={
            names.STAGE: "sft", names.STAGE_KEY: dirs.key, names.BASE_MODEL: str(base.model),
            names.SFT_DATA_HASH: result.data_hash, names.CONFIG_HASH: ctx.config_hash,
            names.section_hash("sft"): hash_json(cfg.sft.model_dump(mode="json")),
            "mlflow.source.git.commit": ctx.git_commit} | lora_tags(lora))
        logger.info("sft: registered %s, trained from %s", ref, base.model)
        return StageResult(result.metrics, model=ref,
                           tags={names.SFT_DATA_HASH: result.data_hash} | device_tags(cfg.sft.device))

    return run_stage(STAGE, ctx, inputs, work)


def check_trainer(cfg: Config, scratch: Path) -> None:
    """sft.trainer passes through to TRL's SFTConfig and sft.peft to peft's LoraConfig: construct them, so a bad
    key fails before any work."""
    from lifecycle.align.sft import sft_args, sft_lora

    sft_args(cfg, scratch, max_length=1)
    sft_lora(cfg)


def samples_markdown(metrics: dict[str, float], samples: list[dict], n: int = 8) -> str:
    """The held-out comparison a person reads: loss and ROUGE-L, then a few answers side by side."""
    def cell(text: str) -> str:
        return " ".join(text.split())[:160].replace("|", "\\|") or " "

    lines = ["# SFT: held-out comparison with the base model", "",
             "| | base | sft |", "|---|---:|---:|",
             f"| assistant-token loss | {metrics.get('base_eval_loss', float('nan')):.3f} | "
             f"{metrics.get('eval_loss', float('nan')):.3f} |",
             f"| ROUGE-L ({int(metrics['rouge_pairs'])} python-docs pairs) | {metrics['base_rouge_l']:.3f} | "
             f"{metrics['rouge_l']:.3f} |", "", "| question | reference | base | sft |", "|---|---|---|---|"]
    lines += [f"| {cell(s['question'])} | {cell(s['reference'])} | {cell(s['base'])} | {cell(s['sft'])} |"
              for s in samples[:n]]
    return "\n".join(lines)


STAGE = Stage("sft", __name__, inputs=("pretrain", "ingest"), run=sft, model="chat", extras=seed, check=check_trainer,
              produces="the instruction-tuned chat model, registered: its reference; held-out loss and ROUGE-L")
