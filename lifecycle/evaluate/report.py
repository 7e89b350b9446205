"""The report card: what a person reads to decide whether a candidate model replaces the champion.

`report.md` with PNG plots beside it (`plots/*.png`, relative links, so it renders in MLflow's artifact viewer):
metrics against the champion (and the SFT and base models), every comparison with its 95% interval and n
(report_intervals.py), lm-evaluation-harness scores with their standard errors (harness.py), loss curves of
pretraining, SFT and RLHF, reward and KL curves, answers side by side, each stage's wall time and compute
cost, and the gate's decision (with the bound and interval of each rule).

    card = build_report(parent_run_id, evaluation, Path("state/report"), prices={"cpu": 0.05, "cuda": 3.5},
                        currency="USD", decision=decision)
    mlflow.log_artifacts("state/report", "report")                         # report.md + plots/
    create_markdown_artifact(report_markdown_for_prefect(card), key="report-card")

Data comes from MLflow (the tracking URI already set): the pipeline's child runs, or for a cache hit the run
that computed the stage. Cost = `<stage>/seconds` / 3600 x tag `lifecycle.device_count` x the price of tag
`lifecycle.device` (the exact string, e.g. "cuda:NVIDIA H200", else its kind before ":", e.g. "cuda").
"""

from __future__ import annotations

import html
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lifecycle import names
from lifecycle.evaluate.harness import harness_lines
from lifecycle.evaluate.plots import draw_figures, format_number, metrics_lines, table_lines
from lifecycle.evaluate.report_intervals import interval_lines, span

log = logging.getLogger(__name__)

TRAINING_STAGES = ("pretrain", "sft", "rlhf")
# Training tokens per stage: the first of these metrics the stage's run has (the last logged value).
TOKEN_METRICS = {"pretrain": ("pretrain/tokens",), "sft": ("sft/train/num_tokens",),
                 "rlhf": ("rlhf/policy/train/num_tokens", "rlhf/dpo/train/num_tokens")}
SAMPLE_COLUMNS = ("question", "reference", "candidate", "candidate_no_rag", "champion", "sft", "base")
SAMPLES_SHOWN = 8
CELL_CHARS = 240  # a longer answer is cut with "…"


@dataclass(frozen=True)
class StageRun:
    stage: str
    run: Run  # the child run of the pipeline run
    source: Run  # the run that computed the stage's output: `run` itself unless a cache hit
    cached: bool


@dataclass(frozen=True)
class StageCost:
    stage: str
    run_id: str  # the child run of this pipeline run
    computed_by: str  # the run that did the work: `run_id` unless the stage was a cache hit
    cached: bool
    device: str
    device_count: int
    seconds: float | None  # wall time of the computing run; None while it has none (still running)
    own_seconds: float | None  # wall time in this pipeline run: `seconds` when computed here, else the cache hit's
    price: float | None  # per device-hour; None: no price configured for `device`
    cost: float | None  # None when `seconds` or `price` is None (then left out of the totals)

    @property
    def device_hours(self) -> float | None:
        return None if self.seconds is None else self.seconds / 3600 * self.device_count


@dataclass(frozen=True)
class ReportCard:
    markdown: str
    plots: list[Path]
    costs: list[StageCost]
    total_cost: float  # what the model cost to build: every priced stage, cached ones at their original cost
    cost_per_million_tokens: float | None  # training stages' cost / million training tokens
    run_cost: float = 0.0  # what this pipeline run spent: the priced stages it computed itself
    training_tokens: dict[str, float] | None = None  # metric key -> tokens


def build_report(parent_run_id: str, evaluation: dict[str, Any], out_dir: Path, prices: dict[str, float],
                 currency: str, decision: dict[str, Any] | None = None) -> ReportCard:
    """Write `out_dir/report.md` and `out_dir/plots/*.png` for the pipeline run `parent_run_id`; return the card.
    The files appear together at the end (built in a temporary folder inside `out_dir`, then moved)."""
    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    runs = fetch_stage_runs(client, parent)
    costs = [stage_cost(r, prices) for r in runs]
    tokens = count_training_tokens(runs)
    totals = summarise_costs(costs, tokens)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir))
    try:
        figures, plots = draw_figures(client, {r.stage: r.source for r in runs}, evaluation, staging / "plots")
        compared, forest = interval_lines(evaluation, staging / "plots")
        plots += forest
        lines = (header_lines(parent, evaluation, decision) + metrics_lines(evaluation) + compared
                 + human_lines(evaluation.get("human")) + harness_lines(evaluation) + figures
                 + sample_lines(evaluation.get("samples") or []) + cost_lines(costs, totals, tokens, prices, currency)
                 + decision_lines(decision))
        markdown = "\n".join(lines).rstrip() + "\n"
        (staging / "report.md").write_text(markdown, encoding="utf-8")
        shutil.rmtree(out_dir / "plots", ignore_errors=True)
        if plots:
            os.replace(staging / "plots", out_dir / "plots")
        os.replace(staging / "report.md", out_dir / "report.md")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ReportCard(markdown=markdown, plots=[out_dir / "plots" / p.name for p in plots], costs=costs,
                      total_cost=totals["total"], cost_per_million_tokens=totals["per_million"],
                      run_cost=totals["run"], training_tokens=tokens)


def report_markdown_for_prefect(card: ReportCard, where: str = "the evaluate run's MLflow artifacts") -> str:
    """The report without its image lines (a Prefect markdown artifact cannot show local files): each plot
    becomes a line saying where to find it."""
    return re.sub(r"^!\[([^\]]*)\]\((plots/[^)\s]+)\)$", lambda m: f"_{m[1]}: `{m[2]}` in {where}._",
                  card.markdown, flags=re.MULTILINE)


def fetch_stage_runs(client: MlflowClient, parent: Run) -> list[StageRun]:
    """The pipeline run's stages in the order they started; per stage its latest finished child run (a resumed
    pipeline may hold a failed attempt too), and for a cache hit the run that computed it."""
    parent_id = parent.info.run_id
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                  max_results=1000, order_by=["attributes.start_time ASC"])
    chosen: dict[str, Run] = {}
    for run in children:
        stage = run.data.tags.get(names.STAGE)
        if stage and (stage not in chosen or _rank(run) >= _rank(chosen[stage])):
            chosen[stage] = run
    out = []
    for stage, run in chosen.items():
        cached = run.data.tags.get(names.CACHE_HIT) == "true"
        origin = run.data.tags.get(names.CACHED_FROM_RUN)
        source = run
        if cached and origin:
            try:
                source = client.get_run(origin)
            except MlflowException as err:
                log.warning("%s: cache hit of run %s, which MLflow cannot find (%s); using the cache hit's run",
                            stage, origin, err)
        out.append(StageRun(stage=stage, run=run, source=source, cached=cached))
    return out


def _rank(run: Run) -> tuple[bool, int]:
    return run.info.status == "FINISHED", run.info.start_time or 0


def price_for(device: str, prices: dict[str, float]) -> float | None:
    """Price per device-hour: the exact device string first ("cuda:NVIDIA H200"), then its kind ("cuda")."""
    if device in prices:
        return float(prices[device])
    kind = device.split(":", 1)[0].strip()
    return float(prices[kind]) if kind in prices else None


def stage_cost(stage_run: StageRun, prices: dict[str, float]) -> StageCost:
    tags, metrics = stage_run.source.data.tags, stage_run.source.data.metrics
    device = tags.get(names.DEVICE) or "cpu"
    raw_count = tags.get(names.DEVICE_COUNT) or "1"
    try:
        count = int(float(raw_count))
    except ValueError:
        raise ValueError(f"run {stage_run.source.info.run_id} ({stage_run.stage}): tag lifecycle.device_count is "
                         f"{raw_count!r}, expected a number of devices") from None
    seconds = metrics.get(f"{stage_run.stage}/seconds")
    own = _run_seconds(stage_run.run) if stage_run.cached else seconds
    price = price_for(device, prices)
    cost = None if seconds is None or price is None else seconds / 3600 * count * price
    return StageCost(stage=stage_run.stage, run_id=stage_run.run.info.run_id,
                     computed_by=stage_run.source.info.run_id, cached=stage_run.cached, device=device,
                     device_count=count, seconds=seconds, own_seconds=own, price=price, cost=cost)


def _run_seconds(run: Run) -> float | None:
    if not run.info.end_time or not run.info.start_time:
        return None
    return (run.info.end_time - run.info.start_time) / 1000


def count_training_tokens(runs: list[StageRun]) -> dict[str, float]:
    """Tokens each training stage trained on, by metric key (last logged value of a cumulative count)."""
    found = {}
    for stage_run in runs:
        metrics = stage_run.source.data.metrics
        key = next((k for k in TOKEN_METRICS.get(stage_run.stage, ()) if k in metrics), None)
        if key is not None:
            found[key] = metrics[key]
    return found


def summarise_costs(costs: list[StageCost], tokens: dict[str, float]) -> dict[str, Any]:
    """Totals: `total` (every priced stage), `run` (priced stages computed in this run), `training` (priced
    training stages), `per_million` (training / million training tokens), `unpriced` (stages left out)."""
    priced = {c.stage: c.cost for c in costs if c.cost is not None}
    training = sum(cost for stage, cost in priced.items() if stage in TRAINING_STAGES)
    token_total = sum(tokens.values())
    has_training = any(stage in TRAINING_STAGES for stage in priced)
    return {"total": sum(priced.values()), "run": sum(c.cost or 0.0 for c in costs if not c.cached),
            "training": training, "tokens": token_total,
            "per_million": training / (token_total / 1e6) if token_total > 0 and has_training else None,
            "unpriced": [c for c in costs if c.cost is None]}


def header_lines(parent: Run, evaluation: dict[str, Any], decision: dict[str, Any] | None) -> list[str]:
    models = evaluation.get("models") or {}
    champion = models.get("champion")
    versus = f"vs champion `{champion}`" if champion else "(no champion yet)"
    facts = [f"pipeline run `{parent.info.run_id}` ({parent.info.run_name})",
             f"{evaluation.get('prompts', '?')} evaluation prompts"]
    facts += [f"{role} `{models[role]}`" for role in ("sft", "base") if models.get(role)]
    lines = [f"# Report card: `{models.get('candidate', '?')}` {versus}", "", " · ".join(facts), ""]
    if decision is not None:
        lines += [f"**Gate: {'passed' if decision.get('passed') else 'refused'}** "
                  f"({decision.get('mode', '?')}): {escape_cell(decision.get('reason', ''), 2000)}", ""]
    if not champion:
        lines += ["> No champion yet: the metrics are absolute values, with nothing to compare against.", ""]
    return lines


def human_lines(human: dict[str, Any] | None) -> list[str]:
    """The human round (evaluation.json "human", lifecycle/evaluate/human.py): who voted on what, and the result."""
    if not human:
        return []
    iv = human["win_rate"]
    who = "People" if human["mode"] == "human" else "Simulated judges (synthetic votes)"
    result = ("no vote yet" if iv is None else
              f"**{format_number(iv['estimate'])}** {span(iv)} over {iv['n']} questions")
    bias = "n/a" if human["left_wins"] is None else format_number(human["left_wins"])
    return ["## Human evaluation (blind pairwise)", "",
            f"{who} compared the candidate's answers with the {human['other']}'s "
            f"(`{escape_cell(human['other_model'])}`) on {human['questions']} held-out questions, batch "
            f"`{escape_cell(human['batch_id'])}`: {human['items']} pairs asked, {human['identical']} identical "
            f"answers counted as ties, {human['votes']} votes by {human['annotators']} annotators "
            f"(left side won {bias} of decided votes; 0.5: no position bias).", "",
            f"- The candidate's win rate (ties ½): {result}.", ""]


def sample_lines(samples: list[dict[str, Any]]) -> list[str]:
    if not samples:
        return ["## Samples", "", "- The evaluation recorded no samples.", ""]
    columns = [c for c in SAMPLE_COLUMNS if any(c in s for s in samples)]
    rows = [[escape_cell(s.get(c, "")) for c in columns] for s in samples[:SAMPLES_SHOWN]]
    return ["## Samples", "", f"{len(rows)} of {len(samples)} samples, answers with retrieval unless marked "
            "`no_rag`.", ""] + table_lines(columns, rows) + [""]


def cost_lines(costs: list[StageCost], totals: dict[str, Any], tokens: dict[str, float], prices: dict[str, float],
               currency: str) -> list[str]:
    rows = []
    for c in costs:
        where = f"cached: computed by run `{c.computed_by}`" if c.cached else "this run"
        cost = (_money(c.cost, currency) if c.cost is not None else "no wall time recorded (still running?)"
                if c.seconds is None else f"no price configured for `{c.device}`")
        rows.append([c.stage, where, f"{c.device} × {c.device_count}", _duration(c.seconds),
                     "—" if c.device_hours is None else f"{c.device_hours:.4g}",
                     "—" if c.price is None else _money(c.price, currency), cost])
    lines = ["## Cost", ""] + table_lines(["stage", "computed by", "device", "wall time", "device-hours",
                                      "price / device-hour", "cost"], rows) + [""]
    build_s = sum(c.seconds or 0.0 for c in costs)
    own = [c for c in costs if not c.cached]
    lines.append(f"- **What this model cost to build**: {_money(totals['total'], currency)} over "
                 f"{_duration(build_s)} of stage wall time (cache hits at their original cost).")
    if totals["unpriced"]:
        left = ", ".join(f"{c.stage} ({'no wall time' if c.seconds is None else 'no price for ' + c.device})"
                         for c in totals["unpriced"])
        lines.append(f"- Left out of the totals: {left}.")
    run_s = sum(c.own_seconds or 0.0 for c in costs)
    lines.append(f"- **What this run cost**: {_money(totals['run'], currency)}: {len(own)} stages computed here, "
                 f"{len(costs) - len(own)} cache hits, {_duration(run_s)} of stage wall time in this run.")
    lines.append(_tokens_line(costs, totals, tokens, currency))
    listed = ", ".join(f"`{d}` {_money(p, currency)}" for d, p in prices.items()) or "none"
    return lines + [f"- Prices per device-hour: {listed}.", ""]


def _tokens_line(costs: list[StageCost], totals: dict[str, Any], tokens: dict[str, float], currency: str) -> str:
    counted = " + ".join(f"{v:,.0f} (`{k}`)" for k, v in tokens.items()) or "none recorded"
    unpriced = [c.stage for c in costs if c.stage in TRAINING_STAGES and c.cost is None]
    per_m = totals["per_million"]
    if per_m is None:
        why = "no training tokens recorded" if not tokens else "no training stage has a cost"
        return f"- **Training tokens**: {counted}; cost per million training tokens: n/a ({why})."
    left = f"; leaves out {', '.join(unpriced)}: no cost" if unpriced else ""
    return (f"- **Training tokens**: {counted} = {totals['tokens']:,.0f}; cost per million training tokens: "
            f"{_money(per_m, currency)} ({_money(totals['training'], currency)} for the training stages / "
            f"{totals['tokens'] / 1e6:.4g} M tokens{left}).")


def decision_lines(decision: dict[str, Any] | None) -> list[str]:
    if decision is None:
        return []
    verdict = "passed: promote" if decision.get("passed") else "refused: keep the champion"
    rows = [[r.get("rule", "?"), f"`{r.get('metric', '?')}`", format_number(r.get("value")),
             f"{r.get('op', '')} {format_number(r.get('threshold'))}",
             {True: "pass", False: "**FAIL**"}.get(r.get("passed"), "skipped"), r.get("bound", "estimate"),
             f"{span(r['interval'])}, n {r['interval']['n']}" if r.get("interval") else "—",
             escape_cell(r.get("detail", ""))]
            for r in decision.get("rules") or []]
    lines = [f"## Decision: {verdict}", "", f"Mode `{decision.get('mode', '?')}`, candidate "
             f"`{decision.get('candidate', '?')}`, champion `{decision.get('champion') or 'none'}`.", "",
             escape_cell(decision.get("reason", ""), 2000), ""]
    head = ["rule", "metric", "value", "threshold", "result", "compared", "interval", "detail"]
    return lines + (table_lines(head, rows) if rows else ["- No rules were applied."]) + [""]


def escape_cell(value: Any, limit: int = CELL_CHARS) -> str:
    """Text safe inside a Markdown table cell: HTML shown as text, `|` escaped, line breaks as ↵, cut at `limit`."""
    text = re.sub(r"\s*\r?\n\s*", " ↵ ", str(value).strip())
    if len(text) > limit:
        text = text[:limit].rstrip() + "…"
    return html.escape(text, quote=False).replace("|", "\\|")


def _money(value: float, currency: str) -> str:
    """Cents from 1 up; below, three significant digits without an exponent (a CPU minute costs little)."""
    if abs(value) >= 1 or value == 0:
        return f"{value:,.2f} {currency}"
    text = f"{value:.{2 - math.floor(math.log10(abs(value)))}f}".rstrip("0")
    return f"{text}0 {currency}" if text.endswith(".") else f"{text} {currency}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {seconds % 60:.0f} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
