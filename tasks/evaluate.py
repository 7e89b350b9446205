"""The evaluate stage: the run's candidate (the rlhf policy, by reference) against the champion it would replace,
the SFT model and the base model, on the same held-out data (lifecycle/evaluate/metrics.py), and with
`evaluate.harness` on, on the standard benchmarks it names (lifecycle/evaluate/harness.py); with
`evaluate.human` on, a blind pairwise round of people (or simulated judges) between the candidate's answers and
the champion's (lifecycle/evaluate/human.py), which the flow waits for as the preferences stage waits for its
votes (tasks/votes.py); the report card with its plots and costs (lifecycle/evaluate/report.py), logged to MLflow
and as a Prefect artifact. The champion's version is part of the stage's key: a new champion means a new
evaluation; so are the harness's own task files."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lifecycle import names
from lifecycle.config import Config
from lifecycle.errors import LifecycleError
from lifecycle.evaluate import EVALUATION
from lifecycle.evaluate.harness import check_harness, harness_files, harness_metrics
from lifecycle.evaluate.human import SOURCE, RoundPlan, batch_id_for, human_result, round_items
from lifecycle.hashing import hash_json
from lifecycle.preferences.simulated import vote_on_batch
from lifecycle.preferences.store import NewBatch, NewItem
from lifecycle.preferences.summary import complete_if_ready
from lifecycle.registry import ModelRef, local_copy, reward_model_of, tag_version
from lifecycle.stages import Stage
from lifecycle.store import StageOutput
from tasks.common import RunContext, StageDirs, StageResult, computes_now, run_stage
from tasks.launch import device_tags
from tasks.retries import STAGE_RETRIES
from tasks.votes import Waiting, open_store, wait_for_votes

TAGGED = ("val_bpb", "rouge_l_rag", "rouge_l_no_rag", "win_rate_vs_champion")  # on the version, for `lifecycle models`


def run(ctx: RunContext, inputs: dict[str, StageOutput]) -> StageOutput:
    """The human round first when it is on (published, then waited for in mode `human`), then the measurements."""
    human, plan, resumed = ctx.cfg.evaluate.human_round, None, None
    if human and computes_now(ctx, STAGE, inputs):
        plan = publish_round(ctx, inputs)
        if plan.mode == "human" and plan.items:
            resumed = wait_for_votes(ctx, plan.batch_id, Waiting(human.timeout_s, human.poll_interval_s,
                                                                 "evaluate.human"))
    return evaluate(ctx, inputs, plan, resumed)


@task(name="evaluate-human-round", cache_policy=NO_CACHE, **STAGE_RETRIES)
def publish_round(ctx: RunContext, inputs: dict[str, StageOutput]) -> RoundPlan:
    """Answer the first held-out questions with the candidate and the other model (greedy, with retrieval, as
    `evaluate` does), and publish the pairs that differ as the batch people (or the simulated judges) vote on."""
    from lifecycle.data.ingest import read_documents
    from lifecycle.evaluate.metrics import answer_all, held_out_questions, load_model
    from lifecycle.evaluate.promotion import champion_before
    from lifecycle.model import context_window
    from lifecycle.rag.search import open_index
    from lifecycle.train.distributed import resolve_device

    cfg, human, logger = ctx.cfg, ctx.cfg.evaluate.human, get_run_logger()
    candidate, docs = inputs["rlhf"].model, inputs["ingest"]
    champion = champion_before(cfg.run.models.chat, candidate)
    role, other = ("champion", champion) if champion is not None else ("sft", inputs["sft"].model)
    if candidate is None or other is None:
        raise LifecycleError("evaluate.human: the rlhf or sft output carries no model reference; re-run it")
    batch_id, device = batch_id_for(str(candidate), str(other), human.round), resolve_device(cfg.evaluate.device)
    model, tokenizer = load_model(local_copy(candidate, ctx.models_dir), device, cfg.sft.data.system_prompt)
    questions = held_out_questions(cfg, read_documents(docs.path), tokenizer,
                                   context_window(model, tokenizer))[:human.prompts]
    retriever = open_index(json.loads(inputs["rag_index"].file("index.json").read_text()), cfg.serve.search)
    hits = [retriever.search(p.question, k=cfg.serve.answer.top_k) for p in questions]
    ours = answer_all(model, tokenizer, cfg, questions, hits, False, "candidate (human round)")
    del model
    other_model, other_tokenizer = load_model(local_copy(other, ctx.models_dir), device, cfg.sft.data.system_prompt)
    theirs = answer_all(other_model, other_tokenizer, cfg, questions, hits, False, f"{role} (human round)")
    items, identical = round_items(batch_id, questions, ours.rag_prompts, ours.rag, theirs.rag)
    plan = RoundPlan(batch_id, human.mode, role, str(candidate), str(other), tuple(p.id for p in questions),
                     tuple(identical), len(items))
    if items:
        publish_items(ctx, plan, items)
    logger.info("evaluate.human: batch %s: %d pairs of %s and %s (%s) on %d questions; %d identical (ties)",
                batch_id, len(items), candidate, other, role, len(questions), len(identical))
    return plan


def publish_items(ctx: RunContext, plan: RoundPlan, items: list[NewItem]) -> None:
    """The round's batch in the preference store (found again by its id on a re-run), voted at once by the
    simulated judges in mode `simulated`."""
    human, simulated, store = ctx.cfg.evaluate.human, ctx.cfg.preferences.simulated, open_store(ctx)
    people = plan.mode == "human"
    new = store.publish_batch(NewBatch(plan.batch_id, SOURCE, human.votes_per_item if people else simulated.judges,
                                       model=f"{plan.candidate_model} vs {plan.other_model}",
                                       min_agreement=human.min_agreement if people else -1.0), items)
    if not new and {(i.response_a, i.response_b) for i in store.items(plan.batch_id)} != {
            (i.response_a, i.response_b) for i in items}:
        raise LifecycleError(f"evaluate.human: batch {plan.batch_id} holds other pairs than these answers give "
                             f"(evaluate.human.prompts or the questions changed); set evaluate.human.round to "
                             f"{human.round + 1} for a new batch")
    if not people:
        cast, fresh = vote_on_batch(store, plan.batch_id, simulated.judges, simulated.noise)
        get_run_logger().info("evaluate.human: %d synthetic votes by %d simulated judges (%d new)", cast,
                              simulated.judges, fresh)
        complete_if_ready(store, plan.batch_id)


@task(name="evaluate", cache_policy=NO_CACHE, **STAGE_RETRIES)
def evaluate(ctx: RunContext, inputs: dict[str, StageOutput], plan: RoundPlan | None = None,
             resumed: dict | None = None) -> StageOutput:
    """`plan`: the human round published (None: off, or the output is cached); `resumed`: the input a person
    resumed its wait with (None: the votes were all in)."""
    cfg, logger = ctx.cfg, get_run_logger()
    docs, base, sft, rlhf, rag = (inputs[s] for s in ("ingest", "pretrain", "sft", "rlhf", "rag_index"))
    for out in (base, sft, rlhf):
        if out.model is None:
            raise LifecycleError(f"evaluate: the {out.stage} output {out.path} carries no model reference; re-run it")

    def work(dirs: StageDirs) -> StageResult:
        from lifecycle.data.ingest import read_documents
        from lifecycle.evaluate.compare import split_retrieval_metrics
        from lifecycle.evaluate.metrics import evaluate_models, held_out_questions, load_model, validation_texts
        from lifecycle.evaluate.promotion import champion_before
        from lifecycle.evaluate.report import build_report, report_markdown_for_prefect
        from lifecycle.model import context_window
        from lifecycle.rag.search import open_index
        from lifecycle.train.distributed import resolve_device

        candidate = rlhf.model
        champion = champion_before(cfg.run.models.chat, candidate)
        refs = {"candidate": candidate, "champion": champion, "sft": sft.model, "base": base.model}
        dirs_by_role = {role: local_copy(ref, ctx.models_dir) for role, ref in refs.items() if ref is not None}
        reward = reward_model_of(candidate)
        device = resolve_device(cfg.evaluate.device)
        documents = read_documents(docs.path)
        model, tokenizer = load_model(dirs_by_role["candidate"], device, cfg.sft.data.system_prompt)
        questions = held_out_questions(cfg, documents, tokenizer, context_window(model, tokenizer))
        retriever = open_index(json.loads(rag.file("index.json").read_text()), cfg.serve.search)
        logger.info("evaluate: %s against %s (sft %s, base %s) on %d held-out questions", candidate,
                    champion or "no champion", sft.model, base.model, len(questions))
        mlflow.log_params({f"{role}_model": str(ref) for role, ref in refs.items()} |
                          {"reward_model": str(reward), "questions": len(questions), "device": str(device)})
        result = evaluate_models(cfg, dirs_by_role, questions, validation_texts(documents, cfg.evaluate.text_bytes),
                                 retriever, local_copy(reward, ctx.models_dir) if reward else None, device,
                                 dirs.checkpoints)
        resumed = result.pop("resumed_models")  # measured by a killed run (not part of the evaluation itself)
        indexes = {"candidate": rag.metrics} | ({"champion": champion_index_metrics(ctx, champion)}
                                                 if champion is not None and "champion" in result["metrics"] else {})
        for role, index_metrics in indexes.items():
            found, intervals = split_retrieval_metrics(index_metrics, cfg.serve.search.mode,
                                                       cfg.evaluate.intervals.level)
            result["metrics"][role] |= found
            result["intervals"][role] |= intervals
        evaluation = {"models": {role: str(ref) if ref else None for role, ref in refs.items()}} | result
        if plan is not None:
            found = human_result(open_store(ctx) if plan.items else None, plan, cfg.evaluate.intervals)
            add_human_round(evaluation, found | {"resumed_by": (resumed or {}).get("resumed_by", "")[:200]})
        (dirs.out / EVALUATION).write_text(json.dumps(evaluation, indent=2))
        mlflow.log_table(pd.DataFrame(evaluation["samples"]), "evaluate/samples.json")
        card = build_report(ctx.parent_run_id, evaluation, dirs.out, cfg.evaluate.prices, cfg.evaluate.currency)
        mlflow.log_artifacts(str(dirs.out), "evaluate")
        create_markdown_artifact(key="report-card", markdown=report_markdown_for_prefect(card),
                                 description=f"{candidate} report card")
        cand = evaluation["metrics"]["candidate"]
        tag_version(candidate, {names.EVAL + k: f"{cand[k]:.4f}" for k in TAGGED if k in cand} |
                    {names.EVAL + "run_id": mlflow.active_run().info.run_id, names.EVAL + "against": str(champion)} |
                    human_tags(evaluation.get("human")))
        metrics = {f"{role}/{k}": v for role, found in evaluation["metrics"].items() for k, v in found.items()}
        metrics |= {f"{name}/{k}{end}": iv[field] for name, found in evaluation["comparisons"].items()
                    for k, iv in found.items() for end, field in (("", "estimate"), ("_low", "low"), ("_high", "high"))}
        metrics |= harness_metrics(evaluation["harness"]) if "harness" in evaluation else {}
        return StageResult(metrics | {"questions": len(questions), "cost": card.total_cost, "resumed_models": resumed},
                           tags={names.CANDIDATE: str(candidate), names.CHAMPION: str(champion)}
                           | device_tags(cfg.evaluate.device))

    return run_stage(STAGE, ctx, inputs, work)


def add_human_round(evaluation: dict, human: dict) -> None:
    """evaluation.json's "human", and its win rate among the comparisons with the model it was against."""
    evaluation["human"] = human
    if human["win_rate"] is not None:
        evaluation["comparisons"].setdefault(f"candidate_vs_{human['other']}", {})["human_win_rate"] = human["win_rate"]


def human_tags(human: dict | None) -> dict[str, str]:
    """The round's verdict on the version (`lifecycle models` shows it): win rate [interval] n, against whom."""
    if human is None:
        return {}
    iv = human["win_rate"]
    shown = "no votes" if iv is None else f"{iv['estimate']:.4f} [{iv['low']:.4f}, {iv['high']:.4f}] n {iv['n']}"
    return {names.EVAL + "human_win_rate": f"{shown} vs {human['other_model']} ({human['batch_id']})"}


def champion_index_metrics(ctx: RunContext, champion: ModelRef) -> dict[str, float]:
    """The retrieval metrics of the index the champion serves with (its rag_index output, when still stored)."""
    from lifecycle.registry import version_tags

    key = version_tags(champion).get(names.RAG_INDEX_KEY)
    found = ctx.store.lookup("rag_index", key) if key else None
    return found.metrics if found else {}


def query_settings(cfg: Config) -> dict[str, str]:
    """What it measures at query time: the search and answer settings (conf/serve.yaml); and the content of
    the harness's own task files (evaluate.harness.include_path)."""
    return {"serve": hash_json(cfg.serve.model_dump(mode="json", include={"search", "answer"}))} | harness_files(cfg)


def champion(ctx: RunContext, models: dict[str, ModelRef | None]) -> str:
    """The champion the candidate (the rlhf model) is compared with: the current `@champion`, or, when the
    candidate already is the champion, the one it replaced (a re-run after a promotion is a cache hit)."""
    from lifecycle.evaluate.promotion import champion_before

    found = champion_before(ctx.cfg.run.models.chat, models.get("rlhf"))
    return str(found) if found else "none"


STAGE = Stage("evaluate", __name__, inputs=("ingest", "pretrain", "sft", "rlhf", "rag_index"), run=run,
              extras=query_settings, dynamic={"champion": champion}, candidate=True, check=check_harness,
              produces="the candidate against @champion, the SFT and base models on held-out data: bits per byte, "
                       "ROUGE-L with and without retrieval, reward-model win rates, recall@k, latency, optional "
                       "lm-evaluation-harness benchmarks and human round; the report card")
