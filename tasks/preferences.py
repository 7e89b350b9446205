"""The preferences stage: publish a batch of comparison items (answers sampled from the SFT model, passed
by reference) to the preference store, wait for the votes (mode `human`), and export them as the preference
set: TRL prompt/chosen/rejected, content-hashed, logged to MLflow as a dataset with its quality statistics.

Waiting for people (tasks/votes.py): the stage's flow run pauses until the batch has its votes and is resumed
by the annotation app, the Prefect UI or `lifecycle preferences resume`; as a deployment it suspends and is
re-executed from the top, the batch found by its id (it derives from what the batch holds). Prefect pauses flow
runs, not tasks: `run` is called by the stage's flow, outside any task.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lifecycle import names
from lifecycle.config import Config
from lifecycle.errors import LifecycleError
from lifecycle.hashing import hash_file, hash_json
from lifecycle.preferences.export import SNAPSHOT, export_rows, pairs_to_rows, write_snapshot
from lifecycle.preferences.importers import read_preference_file
from lifecycle.preferences.simulated import vote_on_batch
from lifecycle.preferences.stats import BatchStats, batch_stats, plot_stats
from lifecycle.preferences.store import NewBatch
from lifecycle.registry import ModelRef, local_copy
from lifecycle.runtime import RunSettings
from lifecycle.stages import Stage
from lifecycle.store import StageOutput
from tasks.common import RunContext, StageDirs, StageResult, computes_now, run_stage
from tasks.retries import STAGE_RETRIES
from tasks.votes import Waiting, open_store, wait_for_votes


def run(ctx: RunContext, inputs: dict[str, StageOutput]) -> StageOutput:
    """Publish the batch, wait for its votes (mode `human`), export the set."""
    sft, docs = inputs["sft"], inputs["ingest"]
    batch_id = publish_batch(ctx, sft, docs)
    resumed = None
    if batch_id and ctx.cfg.preferences.mode == "human":
        human = ctx.cfg.preferences.human
        resumed = wait_for_votes(ctx, batch_id, Waiting(human.timeout_s, human.poll_interval_s, "preferences.human"))
    return export_preferences(ctx, sft, docs, batch_id, resumed)


def announce_set(output: StageOutput, settings: RunSettings) -> None:
    """The event infra/prefect.yaml's align-and-promote deployment is triggered by: a new preference set."""
    from prefect.events import emit_event

    emit_event(event=names.PREFERENCE_SET_EXPORTED, resource={"prefect.resource.id": f"{names.PREFERENCE_SET}.{output.identity}",
                                             names.PROFILE: settings.profile},
               payload={"path": output.path, "run_id": output.run_id, "cached": output.cached,
                        "rows": output.metrics.get("rows", 0)})


def batch_id_for(ctx: RunContext, sft: StageOutput, docs: StageOutput) -> str:
    """What the batch holds, and only that: the model, the prompts, the sampling, the round and the votes
    asked for (waiting, export and agreement settings may change without starting a new batch)."""
    p = ctx.cfg.preferences
    votes = p.human.model_dump() if p.mode == "human" else p.simulated.model_dump()
    votes.pop("timeout_s", None), votes.pop("poll_interval_s", None), votes.pop("min_agreement", None)
    what = {"sft": sft.key, "ingest": docs.key, "mode": p.mode, "round": p.round, "votes": votes,
            "prompts": p.prompts.model_dump(), "sampling": p.sampling.model_dump(),
            "files": preference_files(ctx.cfg)}  # not the feedback: it joins the set at export, not the batch
    return f"{p.mode[:5]}-{hash_json(what)}"


@task(name="preferences-publish", cache_policy=NO_CACHE, **STAGE_RETRIES)
def publish_batch(ctx: RunContext, sft: StageOutput, docs: StageOutput) -> str | None:
    """The batch id to wait for and export, or None when nothing is to be collected (import mode, or the
    stage's output is cached already)."""
    cfg, logger = ctx.cfg, get_run_logger()
    if cfg.preferences.mode == "import" or not computes_now(ctx, STAGE, {"sft": sft, "ingest": docs}):
        return None
    if sft.model is None:
        raise LifecycleError(f"preferences: the sft output {sft.path} carries no model reference; re-run sft")
    batch_id, store = batch_id_for(ctx, sft, docs), open_store(ctx)
    if store.batch(batch_id) is None:
        from lifecycle.data.ingest import read_documents
        from lifecycle.model import context_window, load_causal_lm
        from lifecycle.preferences.collect import build_prompts, make_items, sample_answers

        model, tokenizer = load_causal_lm(local_copy(sft.model, ctx.models_dir), ctx.models_dir)
        prompts = build_prompts(cfg, read_documents(docs.path), tokenizer, context_window(model, tokenizer))
        answers = sample_answers(model, tokenizer, prompts, cfg.preferences.sampling)
        human = cfg.preferences.mode == "human"
        items, skipped = make_items(prompts, answers, cfg.preferences.human.gold_items if human else 0,
                                    meta={"model": str(sft.model)})
        votes_per_item = cfg.preferences.human.votes_per_item if human else cfg.preferences.simulated.judges
        store.publish_batch(NewBatch(batch_id, cfg.preferences.mode, votes_per_item, model=str(sft.model),
                                     min_agreement=cfg.preferences.human.min_agreement if human else -1.0), items)
        logger.info("preferences: batch %s: %d items from %d prompts x %d answers of %s (%d identical pairs "
                    "skipped)", batch_id, len(items), len(prompts), cfg.preferences.sampling.responses, sft.model,
                    skipped)
    if cfg.preferences.mode == "simulated":
        sim = cfg.preferences.simulated
        cast, new = vote_on_batch(store, batch_id, sim.judges, sim.noise)
        logger.info("preferences: %d synthetic votes by %d simulated judges (%d new)", cast, sim.judges, new)
    return batch_id


@task(name="preferences", cache_policy=NO_CACHE, **STAGE_RETRIES)
def export_preferences(ctx: RunContext, sft: StageOutput, docs: StageOutput, batch_id: str | None,
                       resumed: dict | None = None) -> StageOutput:
    cfg = ctx.cfg

    def work(dirs: StageDirs) -> StageResult:
        if cfg.preferences.mode == "import":
            rows, stats, counts = import_rows(cfg.preferences.import_.files, dirs.out)
            store = None
        else:
            if batch_id is None:
                raise LifecycleError("preferences: no batch to export (the publish step did not run)")
            store = open_store(ctx)
            exp = cfg.preferences.export
            rows, counts = export_rows(store.voted_items(batch_id), exp.ties, exp.min_agreement, exp.min_votes)
            stats = batch_stats(store.judgements(batch_id))
        from lifecycle.preferences.feedback import feedback_rows

        feedback = feedback_rows(open_store(ctx))  # what people said on the chat page (lifecycle serve)
        rows, counts = rows + feedback, counts | {"feedback": len(feedback)}
        if feedback:
            get_run_logger().info("preferences: %d pairs from the chat page's feedback join the set", len(feedback))
        if not rows:
            raise LifecycleError(f"preferences: no pair survived the export ({counts}); every vote is kept in the "
                                 "store: collect more votes or relax preferences.export")
        set_hash = write_snapshot(rows, dirs.out / SNAPSHOT)
        (dirs.out / "stats.json").write_text(json.dumps({"stats": stats.to_dict(), "counts": counts,
                                                         "hash": set_hash, "batch": batch_id}, indent=2))
        log_preference_set(dirs.out, rows, stats, set_hash, cfg.preferences.mode)
        tags = {names.PREFERENCE_SET_HASH: set_hash, names.PREFERENCES_MODE: cfg.preferences.mode,
                names.PREFERENCES_SYNTHETIC: str(cfg.preferences.mode == "simulated").lower(),
                names.PREFERENCES_MODEL: str(sft.model)}
        if batch_id:
            tags[names.PREFERENCES_BATCH] = batch_id
        if resumed:
            tags[names.PREFERENCES_RESUMED_BY] = str(resumed.get("resumed_by", ""))[:200]
        if store is not None and batch_id:
            store.set_status(batch_id, "exported")
        return StageResult({**counts, **stats.to_metrics()}, tags=tags, digest=set_hash[:16])

    return run_stage(STAGE, ctx, {"sft": sft, "ingest": docs}, work)


def import_rows(files: list[str], out: Path) -> tuple[list[dict], BatchStats, dict[str, int]]:
    logger = get_run_logger()
    pairs, refused = [], []
    for name in files:
        found, bad = read_preference_file(Path(name).expanduser())
        pairs += found
        refused += bad
    for line in refused[:20]:
        logger.warning("preferences: refused %s", line)
    if refused:
        (out / "refused.txt").write_text("\n".join(refused) + "\n")
    rows = pairs_to_rows(pairs)
    return rows, BatchStats(), {"items": len(pairs), "rows": len(rows), "refused_rows": len(refused)}


def log_preference_set(out: Path, rows: list[dict], stats: BatchStats, set_hash: str, mode: str) -> None:
    """The set as an MLflow dataset input (name and digest: its content hash), its statistics and plot."""
    frame = pd.DataFrame([{"prompt": json.dumps(r["prompt"]), "chosen": r["chosen"][0]["content"],
                           "rejected": r["rejected"][0]["content"], "source": r["source"], "votes": r["votes"],
                           "agreement": r["agreement"]} for r in rows])
    dataset = mlflow.data.from_pandas(frame, source=str(out / SNAPSHOT), name=f"preferences-{mode}",
                                      digest=set_hash[:16])
    mlflow.log_input(dataset, context="preferences")
    mlflow.log_dict(stats.to_dict(), "preferences/stats.json")
    mlflow.log_artifact(str(out / SNAPSHOT), "preferences")
    if stats.votes:
        mlflow.log_artifact(str(plot_stats(stats, out / "quality.png")), "preferences")
    markdown = quality_markdown(stats, len(rows), set_hash, mode)
    mlflow.log_text(markdown, "preferences/report.md")
    create_markdown_artifact(key="preferences-report", markdown=markdown, description="preference set quality")


def quality_markdown(stats: BatchStats, rows: int, set_hash: str, mode: str) -> str:
    def show(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"# Preference set ({mode}{', synthetic votes' if mode == 'simulated' else ''})", "",
             f"{rows} pairs, content hash `{set_hash[:16]}`; {stats.votes} votes by {stats.annotators} annotators "
             f"on {stats.items} items.", "", "| measure | value |", "|---|---:|"]
    lines += [f"| {name} | {show(getattr(stats, field))} |" for name, field in (
        ("Cohen's kappa (mean over pairs)", "cohen_kappa"), ("Fleiss' kappa", "fleiss_kappa"),
        ("Krippendorff's alpha", "krippendorff_alpha"), ("majority agreement", "majority_agreement"),
        ("ties", "tie_share"), ("left response wins (0.5: no position bias)", "position_bias"),
        ("longer response wins (0.5: no length bias)", "length_bias"))]
    lines += [f"| gold accuracy: {name} | {acc:.3f} |" for name, acc in sorted(stats.gold_accuracy.items())]
    lines += [f"| self-contradictions: {name} | {n} |" for name, n in sorted(stats.contradictions.items()) if n]
    return "\n".join(lines)


def preference_files(cfg: Config) -> dict[str, str]:
    """What the key takes from the prompt files (and, importing, the preference files): their contents."""
    p = cfg.preferences
    files = [*p.prompts.files, *(p.import_.files if p.mode == "import" else [])]
    return {f"file.{name}": hash_file(Path(name).expanduser()) for name in files}


def feedback(ctx: RunContext, models: dict[str, ModelRef | None]) -> str:
    """The digest of the chat page's feedback in the preference store: new feedback, a new set."""
    from lifecycle.preferences.feedback import feedback_digest

    return feedback_digest(open_store(ctx))


STAGE = Stage("preferences", __name__, inputs=("sft", "ingest"), run=run, extras=preference_files,
              dynamic={"feedback": feedback}, announce=announce_set,
              lineage=lambda out: {names.PREFERENCE_SET_HASH: out.identity},
              produces="a preference set (TRL prompt/chosen/rejected, content-hashed) voted by people in the annotation "
                       "app, by a simulated judge, or imported; its quality statistics")
