"""The report card's model comparison: the metrics table (deltas against the champion, better or worse by
each metric's direction) and the figures: training curves read from MLflow (one panel per curve group), metric
deltas against the champion, or the models' absolute metrics when there is no champion, as PNGs.

    lines, pngs = draw_figures(MlflowClient(), {"pretrain": run, "rlhf": run2}, evaluation, Path("plots"))
    plot_deltas([compare_metric("val_bpb", 2.10, 2.15)], Path("plots/deltas.png"), "candidate vs champion")

`draw_figures` returns the report's figure sections as Markdown (an image link, or a line saying why a figure
is missing). Figures use matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), so
plotting works in worker threads and headless processes and changes nothing for other matplotlib users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

BETTER, WORSE, NEUTRAL = "tab:green", "tab:red", "tab:gray"
HIGHER_IS_BETTER = ("rouge_", "win_rate_", "recall_", "mrr", "rag_gain", "tokens_per_s")  # prefixes
LOWER_IS_BETTER = ("val_bpb", "perplexity", "latency_")
MODELS = ("candidate", "champion", "sft", "base")
METRICS = ("val_bpb", "perplexity", "rouge_l_rag", "rouge_l_no_rag", "rag_gain", "win_rate_vs_champion",
           "win_rate_vs_sft", "recall_at_5", "mrr", "latency_p50_ms", "tokens_per_s")  # table order; others follow


@dataclass(frozen=True)
class Series:
    label: str
    steps: list[float]
    values: list[float]


@dataclass(frozen=True)
class Panel:
    title: str
    series: list[Series]
    ylabel: str = ""


@dataclass(frozen=True)
class Delta:
    metric: str
    change: float  # candidate - champion
    percent: float | None  # change relative to |champion|, None when the champion's value is 0
    better: bool | None  # None: no known direction, or no change


# (stage, panel title, ((curve label, metric key), ...)): a panel is drawn when its stage logged any of them.
LOSS_PANELS = (
    ("pretrain", "pretraining", (("train", "pretrain/train/loss"), ("validation", "pretrain/eval/val_loss"))),
    ("sft", "SFT", (("train", "sft/train/loss"), ("eval", "sft/eval/loss"))),
    ("rlhf", "RLHF reward model", (("train", "rlhf/reward_model/train/loss"),
                                   ("eval", "rlhf/reward_model/eval/loss"))),
    ("rlhf", "RLHF policy", (("train", "rlhf/policy/train/loss"),)),
    ("rlhf", "DPO", (("train", "rlhf/dpo/train/loss"), ("eval", "rlhf/dpo/eval/loss"))),
)
REWARD_PANELS = (
    ("rlhf", "policy reward (reward model score)", (("reward", "rlhf/policy/train/reward"),)),
    ("rlhf", "KL to the reference (SFT) policy", (("KL", "rlhf/policy/train/kl"),)),
    ("rlhf", "DPO implicit rewards", (("margin", "rlhf/dpo/train/rewards/margins"),
                                      ("chosen", "rlhf/dpo/train/rewards/chosen"),
                                      ("rejected", "rlhf/dpo/train/rewards/rejected"))),
    # proxy vs gold on held-out prompts (lifecycle/align/gold.py): greedy answers, every rlhf.gold.every steps
    ("rlhf", "held-out: proxy (reward model; DPO: implicit)", (("proxy", "rlhf/gold/proxy"),)),
    ("rlhf", "held-out: gold judge (ROUGE-L vs reference)", (("gold", "rlhf/gold/gold"),)),
    ("rlhf", "held-out: KL to the reference (SFT) policy", (("KL", "rlhf/gold/kl"),)),
)


def fetch_series(client: MlflowClient, run_id: str, key: str, label: str) -> Series | None:
    """A metric's history by step (the latest value where a step was logged twice, e.g. after a resume)."""
    points: dict[int, float] = {}
    for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        points[m.step] = m.value
    if not points:
        return None
    return Series(label, list(map(float, points)), list(points.values()))


def collect_panels(client: MlflowClient, sources: dict[str, Run], specs: tuple[Any, ...],
                   ylabel: str) -> tuple[list[Panel], list[str]]:
    """(the panels of `specs` with data, notes naming the stages without any and why); `sources` maps a stage
    to the run that computed it."""
    panels: list[Panel] = []
    for stage, title, curves in specs:
        run = sources.get(stage)
        if run is None:
            continue
        series = [fetch_series(client, run.info.run_id, key, label) for label, key in curves
                  if key in run.data.metrics]
        if any(series):
            panels.append(Panel(title, [s for s in series if s is not None], ylabel))
    drawn = {spec[0] for spec in specs if any(p.title == spec[1] for p in panels)}
    notes = []
    for stage in dict.fromkeys(spec[0] for spec in specs):
        keys = ", ".join(f"`{key}`" for spec in specs if spec[0] == stage for _, key in spec[2])
        if stage not in sources:
            notes.append(f"No {stage} curves: this pipeline run has no {stage} stage.")
        elif stage not in drawn:
            notes.append(f"No {stage} curves: run `{sources[stage].info.run_id}` logged none of {keys}.")
    return panels, notes


def metric_direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when the report does not know."""
    if metric.startswith(HIGHER_IS_BETTER):
        return 1
    return -1 if metric.startswith(LOWER_IS_BETTER) else 0


def compare_metric(metric: str, candidate: float, champion: float) -> Delta:
    change = candidate - champion
    gain = metric_direction(metric) * change  # > 0: the candidate is better
    return Delta(metric, change, 100 * change / abs(champion) if champion else None, None if gain == 0 else gain > 0)


def draw_figures(client: MlflowClient, sources: dict[str, Run], evaluation: dict[str, Any],
                 plot_dir: Path) -> tuple[list[str], list[Path]]:
    """(the report's figure sections as Markdown lines, the PNGs written); `sources` maps a stage to the run
    that computed it. A figure without data is a line saying why."""
    lines: list[str] = []
    plots: list[Path] = []

    def show(title: str, name: str, draw: Any, notes: list[str]) -> None:
        lines.extend([f"## {title}", ""])
        if draw is not None:
            plots.append(draw(plot_dir / f"{name}.png"))
            lines.extend([f"![{title}](plots/{name}.png)", ""])
        lines.extend([f"- {note}" for note in notes] + ([""] if notes else []))

    metrics = model_metrics(evaluation)
    cand, champ, names = metrics["candidate"], metrics["champion"], metric_names(metrics)
    if champ:
        deltas = [compare_metric(m, cand[m], champ[m]) for m in names if m in cand and m in champ]
        show("Metric deltas against the champion", "deltas",
             (lambda p: plot_deltas(deltas, p, "candidate vs champion (green: better, red: worse)")) if deltas
             else None, [] if deltas else ["No metric was measured for both the candidate and the champion."])
    else:
        values = {m: {r: metrics[r][m] for r in ("candidate", "sft", "base") if m in metrics[r]}
                  for m in names}
        values = {m: v for m, v in values.items() if v}
        show("Candidate, SFT and base models (no champion to compare with)", "metrics",
             (lambda p: plot_absolute(values, p, "absolute values")) if values else None,
             [] if values else ["No metric values in the evaluation."])
    loss, notes = collect_panels(client, sources, LOSS_PANELS, "loss")
    show("Loss curves", "losses", (lambda p: plot_curves(loss, p)) if loss else None, notes)
    reward, notes = collect_panels(client, sources, REWARD_PANELS, "")
    if "rlhf" in sources and any(k.startswith("rlhf/dpo/") for k in sources["rlhf"].data.metrics):
        notes.append("The policy was trained by DPO: no reward model, so no training reward or KL curve (its KL "
                     "leash is the β term of its loss); the held-out curves use its implicit reward and measure "
                     "its KL to the SFT model.")
    show("Reward and KL of the policy optimisation", "reward_kl",
         (lambda p: plot_curves(reward, p)) if reward else None, notes)
    return lines, plots


def model_metrics(evaluation: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The evaluation's numbers by role (candidate, champion, sft, base, any other); a role or value that is
    missing or null is left out."""
    found = evaluation.get("metrics") or {}
    return {role: {k: float(v) for k, v in (found.get(role) or {}).items() if isinstance(v, (int, float))}
            for role in dict.fromkeys(MODELS + tuple(found))}


def metric_names(metrics: dict[str, dict[str, float]]) -> list[str]:
    seen = {k for values in metrics.values() if values for k in values}
    return [m for m in METRICS if m in seen] + sorted(seen - set(METRICS))


def metrics_lines(evaluation: dict[str, Any]) -> list[str]:
    """The metrics table: candidate, champion, Δ and verdict by direction (when there is a champion), SFT, base."""
    metrics = model_metrics(evaluation)
    cand, champ = metrics["candidate"], metrics["champion"]
    others = [r for r in ("sft", "base") if metrics[r]]
    head = ["metric", "candidate"] + (["champion", "Δ (candidate − champion)", "better?"] if champ else []) + others
    rows = []
    for m in metric_names(metrics):
        row = [f"`{m}`", format_number(cand.get(m))]
        if champ:
            delta = compare_metric(m, cand[m], champ[m]) if m in cand and m in champ else None
            pct = "" if delta is None or delta.percent is None else f" ({delta.percent:+.1f}%)"
            row += [format_number(champ.get(m)), "—" if delta is None else f"{delta.change:+.4g}{pct}",
                    verdict_of(delta)]
        rows.append(row + [format_number(metrics[r].get(m)) for r in others])
    return ["## Metrics", ""] + table_lines(head, rows) + [
        "", "Higher is better for `rouge_*`, `win_rate_*`, `recall_*`, `mrr`, `rag_gain` and `tokens_per_s`; "
        "lower for `val_bpb`, `perplexity` and `latency_*`.", ""]


def verdict_of(delta: Delta | None) -> str:
    if delta is None:
        return "—"
    if delta.better is None:
        return "same" if delta.change == 0 else "direction unknown"
    return "better" if delta.better else "worse"


def table_lines(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def format_number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_curves(panels: list[Panel], path: Path, title: str = "") -> Path:
    """One line panel per entry of `panels`, side by side (two rows when there are more than three)."""
    if not panels:
        raise ValueError("plot_curves: no panels to draw")
    cols = 2 if len(panels) == 4 else min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = new_figure(4.6 * cols, 3.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        for series in panel.series:
            style = "o-" if len(series.steps) <= 12 else "-"
            ax.plot(series.steps, series.values, style, markersize=3, linewidth=1.4, label=series.label)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if len(panel.series) > 1:
            ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_deltas(deltas: list[Delta], path: Path, title: str) -> Path:
    """Horizontal bars of the relative change of each metric (absolute change where the champion's is 0):
    green where the candidate is better, red where worse, grey where neither is known."""
    if not deltas:
        raise ValueError("plot_deltas: no metric has a value for both candidate and champion")
    fig = new_figure(8.0, 0.45 * len(deltas) + 1.6)
    ax = fig.subplots()
    shown = [d.percent if d.percent is not None else d.change for d in deltas]
    colours = [NEUTRAL if d.better is None else BETTER if d.better else WORSE for d in deltas]
    labels = [d.metric + ("" if d.percent is not None else " (abs.)") for d in deltas]
    bars = ax.barh(labels, shown, color=colours)
    for bar, delta in zip(bars, deltas):
        text = f"{delta.change:+.3g}" + ("" if delta.percent is None else f" ({delta.percent:+.1f}%)")
        ax.annotate(text, (bar.get_width(), bar.get_y() + bar.get_height() / 2), fontsize=8, va="center",
                    ha="left" if bar.get_width() >= 0 else "right", xytext=(3 if bar.get_width() >= 0 else -3, 0),
                    textcoords="offset points")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()  # first metric on top, as in the table
    ax.set_xlabel("change vs champion (%)")
    ax.margins(x=0.25)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_absolute(values: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Small multiples, one panel per metric, one bar per model: `values[metric][model]`."""
    if not values:
        raise ValueError("plot_absolute: no metric values")
    cols = min(len(values), 4)
    rows = math.ceil(len(values) / cols)
    fig = new_figure(3.2 * cols, 2.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (metric, by_model) in zip(axes, values.items()):
        bars = ax.bar(list(by_model), list(by_model.values()), width=0.6,
                      color=["tab:blue" if m == "candidate" else "tab:gray" for m in by_model])
        for bar, value in zip(bars, by_model.values()):
            ax.annotate(f"{value:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=7)
        pad = max(0, 3 - len(by_model)) / 2  # bars as wide as in a three-model panel, centred
        ax.set_xlim(-0.5 - pad, len(by_model) - 0.5 + pad)
        ax.set_title(metric + {1: " (higher is better)", -1: " (lower is better)"}.get(metric_direction(metric), ""),
                     fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.margins(y=0.2)
    for ax in axes[len(values):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return save_figure(fig, path)
