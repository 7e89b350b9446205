"""The report card's intervals: every comparison of the evaluation (evaluation.json `comparisons`, schema in
compare.py) with its 95% interval and n, a verdict that holds only when the interval excludes "no difference",
a forest plot of the same (matplotlib object API, as plots.py), and each model's metrics with their intervals.

    lines, pngs = interval_lines(evaluation, Path("plots"))   # "## Comparisons with 95% intervals" ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lifecycle.evaluate.plots import BETTER, NEUTRAL, WORSE, format_number, new_figure, save_figure, table_lines

# comparison metric -> (label, short label for the plot, value of "no difference", +1 higher is better / -1 lower)
COMPARED = {"rouge_l_rag_delta": ("ROUGE-L with retrieval, Δ", "ROUGE-L Δ", 0.0, 1),
            "val_bpb_delta": ("bits per byte, Δ", "bits per byte Δ", 0.0, -1),
            "gold_win_rate": ("gold win rate (closer to the reference; ties ½)", "gold win rate", 0.5, 1),
            "reward_win_rate": ("reward-model win rate (ties ½)", "reward-model win rate", 0.5, 1),
            "human_win_rate": ("people's win rate, blind pairwise (ties ½)", "human win rate", 0.5, 1),
            "rouge_l_delta": ("gain from retrieval (ROUGE-L with − without)", "ROUGE-L Δ", 0.0, 1)}


def comparison_label(name: str) -> str:
    return "candidate: with vs without retrieval" if name == "candidate_rag_vs_no_rag" else name.replace("_", " ")


def short_label(name: str, metric: str) -> str:
    return f"{comparison_label(name).removeprefix('candidate').strip(' :')}: {COMPARED[metric][1]}"


def verdict(metric: str, iv: dict[str, Any]) -> str:
    """"better" / "worse" for the candidate when the interval excludes no difference, else "not distinguishable"."""
    _, _, null, direction = COMPARED[metric]
    side = 1 if iv["low"] > null else -1 if iv["high"] < null else 0
    return "not distinguishable" if side == 0 else "better" if side == direction else "worse"


def span(iv: dict[str, Any]) -> str:
    return f"[{format_number(iv['low'])}, {format_number(iv['high'])}]"


def comparison_rows(evaluation: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(comparison, metric, interval) in evaluation order."""
    return [(name, metric, iv) for name, found in (evaluation.get("comparisons") or {}).items()
            for metric, iv in found.items()]


def interval_lines(evaluation: dict[str, Any], plot_dir: Path) -> tuple[list[str], list[Path]]:
    """(the Markdown section, the forest plot written, if any)."""
    rows = comparison_rows(evaluation)
    level = rows[0][2]["level"] if rows else None
    title = f"Comparisons with {100 * level:g}% intervals" if level else "Comparisons with intervals"
    if not rows:
        return [f"## {title}", "", "- The evaluation recorded no intervals (evaluated before they existed).", ""], []
    table = [[comparison_label(name), COMPARED[metric][0], format_number(iv["estimate"]), span(iv),
              str(iv["n"]), verdict(metric, iv)] for name, metric, iv in rows]
    png = plot_forest(rows, plot_dir / "intervals.png")
    lines = [f"## {title}", "", "Paired bootstrap over the same questions (bits per byte: over validation texts), "
             "percentile intervals; Δ is candidate − other. A verdict holds only when the interval excludes no "
             "difference (0 for a Δ, ½ for a win rate).", ""]
    lines += table_lines(["comparison", "metric", "estimate", "interval", "n", "verdict"], table) + [""]
    lines += [f"![{title}](plots/{png.name})", ""] + model_interval_lines(evaluation)
    return lines, [png]


def model_interval_lines(evaluation: dict[str, Any]) -> list[str]:
    """Each model's metrics that have an interval (those the gate reads among them)."""
    rows = [[role, f"`{metric}`", format_number(iv["estimate"]), span(iv), str(iv["n"])]
            for role, found in (evaluation.get("intervals") or {}).items() for metric, iv in found.items()]
    if not rows:
        return []
    return ["Each model's metrics with their intervals:", ""] + table_lines(
        ["model", "metric", "estimate", "interval", "n"], rows) + [""]


def plot_forest(rows: list[tuple[str, str, dict[str, Any]]], path: Path) -> Path:
    """Two panels, one above the other, differences (line at 0) and win rates (line at ½): each comparison's
    estimate with its interval as error bars, green where the candidate is shown better, red where worse, grey
    where neither."""
    panels = [p for p in ([r for r in rows if COMPARED[r[1]][2] == null] for null in (0.0, 0.5)) if p]
    fig = new_figure(8.0, 0.4 * len(rows) + 1.2 * len(panels))
    grid = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": [len(p) + 1 for p in panels]})
    for ax, panel in zip(grid[:, 0], panels):
        null = COMPARED[panel[0][1]][2]
        for y, (_, metric, iv) in enumerate(panel):
            colour = {"better": BETTER, "worse": WORSE}.get(verdict(metric, iv), NEUTRAL)
            ax.errorbar([iv["estimate"]], [y], xerr=[[iv["estimate"] - iv["low"]], [iv["high"] - iv["estimate"]]],
                        fmt="o", color=colour, capsize=3, markersize=4)
        ax.set_yticks(range(len(panel)), [short_label(name, metric) for name, metric, _ in panel], fontsize=8)
        ax.set_ylim(len(panel) - 0.5, -0.5)  # first comparison on top, as in the table
        ax.axvline(null, color="black", linewidth=0.8)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title("differences (candidate − other)" if null == 0.0 else "win rates of the candidate", fontsize=10)
    return save_figure(fig, path)
