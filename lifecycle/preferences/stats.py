"""Quality statistics of a batch of pairwise votes: inter-annotator agreement, position and length bias,
gold accuracy and self-contradictions.

    stats = batch_stats(judgements)          # Sequence[Judgement] -> BatchStats
    mlflow.log_metrics({f"preferences/{k}": v for k, v in stats.to_metrics().items()})
    plot_stats(stats, out_dir / "preference_stats.png")

Gold items measure accuracy, so agreement (Cohen, Fleiss, Krippendorff, majority) uses non-gold items only;
position and length bias use every vote. If an annotator voted twice on one item, agreement uses the later
vote. Fleiss' kappa is generalised to a varying number of raters per item: P_i = sum_j n_ij (n_ij - 1) /
(n_i (n_i - 1)), P-bar = mean of P_i, p_j = share of category j among all ratings, P_e = sum_j p_j^2,
kappa = (P-bar - P_e) / (1 - P_e); with a constant number of raters this is Fleiss' original formula.
A statistic that is undefined (no data, a single category used throughout) is None, never NaN.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

CHOICES = ("a", "b", "tie")


@dataclass(frozen=True)
class Judgement:
    """One vote as the statistics see it. `a`/`b` are the item's two responses in their stored
    (canonical) order; `left` is the one the annotator saw on the left."""

    item_id: str
    annotator: str
    choice: str  # "a" | "b" | "tie": which canonical response won
    left: str  # "a" | "b"
    len_a: int  # characters of response a
    len_b: int
    gold: str | None = None  # the known answer of a gold item ("a" | "b" | "tie"), None otherwise
    pair: tuple[str, str] | None = None  # (response id of a, response id of b)
    prompt_id: str = ""  # the prompt both responses answer
    synthetic: bool = False  # cast by the simulated judge


def majority(choices: Sequence[str]) -> tuple[str, float]:
    """(the most frequent choice, its share of the votes); a draw between a and b counts as a tie."""
    if not choices:
        raise ValueError("no votes")
    counts = Counter(choices).most_common()
    top = [c for c, n in counts if n == counts[0][1]]
    winner = top[0] if len(top) == 1 else "tie"
    return winner, counts[0][1] / len(choices)


@dataclass(frozen=True)
class BatchStats:
    """The quality of one batch of votes; every rate is in [0, 1] (kappa/alpha in [-1, 1]) or None."""

    votes: int = 0
    items: int = 0  # distinct non-gold items voted on
    annotators: int = 0
    synthetic_votes: int = 0
    tie_share: float | None = None
    cohen_kappa: float | None = None  # mean over annotator pairs sharing >= 2 non-gold items
    cohen_pairs: int = 0  # pairs in that mean (pairs whose kappa is undefined are left out)
    fleiss_kappa: float | None = None
    krippendorff_alpha: float | None = None  # nominal
    majority_agreement: float | None = None  # mean share of the majority choice on items with >= 2 votes
    position_bias: float | None = None  # share of non-tie votes won by the left response; 0.5 = none
    length_bias: float | None = None  # share of non-tie votes won by the longer response; 0.5 = none
    gold_accuracy: dict[str, float] = field(default_factory=dict)  # annotator -> share of gold votes right
    contradictions: dict[str, int] = field(default_factory=dict)  # annotator -> disagreeing repeats + 3-cycles

    def to_metrics(self) -> dict[str, float]:
        """Flat float metrics for MLflow (None values left out); prefix them with the stage name."""
        keys = ("votes", "items", "annotators", "synthetic_votes", "tie_share", "cohen_kappa", "cohen_pairs",
                "fleiss_kappa", "krippendorff_alpha", "majority_agreement", "position_bias", "length_bias")
        out = {k: float(getattr(self, k)) for k in keys if getattr(self, k) is not None}
        if self.gold_accuracy:
            out["gold_accuracy_mean"] = float(np.mean(list(self.gold_accuracy.values())))
        out["contradictions_total"] = float(sum(self.contradictions.values()))
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (None stays None)."""
        return asdict(self)


def batch_stats(judgements: Sequence[Judgement]) -> BatchStats:
    """Compute every statistic of `judgements`; raises ValueError on a choice, left or gold outside CHOICES."""
    _validate(judgements)
    if not judgements:
        return BatchStats()
    # item -> annotator -> choice of the non-gold votes (a later repeat replaces an earlier one)
    table: dict[str, dict[str, str]] = defaultdict(dict)
    for j in judgements:
        if j.gold is None:
            table[j.item_id][j.annotator] = j.choice
    multi = [votes for votes in table.values() if len(votes) >= 2]
    kappa, pairs = _cohen(table)
    gold: dict[str, list[bool]] = defaultdict(list)
    for j in judgements:
        if j.gold is not None:
            gold[j.annotator].append(j.choice == j.gold)
    decided = [j for j in judgements if j.choice != "tie"]
    by_length = [j for j in decided if j.len_a != j.len_b]
    return BatchStats(
        votes=len(judgements),
        items=len(table),
        annotators=len({j.annotator for j in judgements}),
        synthetic_votes=sum(j.synthetic for j in judgements),
        tie_share=sum(j.choice == "tie" for j in judgements) / len(judgements),
        cohen_kappa=kappa,
        cohen_pairs=pairs,
        fleiss_kappa=_fleiss([list(v.values()) for v in multi]),
        krippendorff_alpha=_krippendorff(table) if multi else None,
        majority_agreement=float(np.mean([majority(list(v.values()))[1] for v in multi])) if multi else None,
        position_bias=_share([j.choice == j.left for j in decided]),
        length_bias=_share([(j.len_a > j.len_b) == (j.choice == "a") for j in by_length]),
        gold_accuracy={a: sum(ok) / len(ok) for a, ok in sorted(gold.items())},
        contradictions=_contradictions(judgements),
    )


def _validate(judgements: Sequence[Judgement]) -> None:
    for j in judgements:
        if j.choice not in CHOICES:
            raise ValueError(f"item {j.item_id!r} (annotator {j.annotator!r}): choice {j.choice!r}, "
                             f"expected one of {CHOICES}")
        if j.left not in ("a", "b"):
            raise ValueError(f"item {j.item_id!r} (annotator {j.annotator!r}): left {j.left!r}, "
                             "expected 'a' or 'b'")
        if j.gold is not None and j.gold not in CHOICES:
            raise ValueError(f"item {j.item_id!r}: gold {j.gold!r}, expected one of {CHOICES} or None")


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _cohen(table: dict[str, dict[str, str]]) -> tuple[float | None, int]:
    from sklearn.metrics import cohen_kappa_score  # scikit-learn, krippendorff, matplotlib: imported where used,
    # since every pipeline run imports this module (for the store) and most runs compute no statistics

    """Mean Cohen's kappa over annotator pairs sharing >= 2 items, and how many pairs were averaged."""
    raters = sorted({a for votes in table.values() for a in votes})
    kappas = []
    for r1, r2 in combinations(raters, 2):
        shared = [votes for votes in table.values() if r1 in votes and r2 in votes]
        if len(shared) < 2:
            continue
        with warnings.catch_warnings():  # one category used by both: kappa is 0/0, left out below
            warnings.simplefilter("ignore")
            k = cohen_kappa_score([v[r1] for v in shared], [v[r2] for v in shared], labels=list(CHOICES))
        if not math.isnan(k):
            kappas.append(float(k))
    return (float(np.mean(kappas)) if kappas else None), len(kappas)


def _fleiss(items: list[list[str]]) -> float | None:
    """Fleiss' kappa generalised to n_i raters on item i (see the module docstring); items need n_i >= 2."""
    if not items:
        return None
    counts = np.array([[votes.count(c) for c in CHOICES] for votes in items], dtype=float)  # [items, 3]
    n = counts.sum(axis=1)  # [items]
    p_item = (counts * (counts - 1)).sum(axis=1) / (n * (n - 1))
    p_cat = counts.sum(axis=0) / n.sum()  # [3]
    p_e = float((p_cat**2).sum())
    if p_e >= 1.0:  # a single category throughout: agreement by chance is certain, kappa undefined
        return None
    return (float(p_item.mean()) - p_e) / (1.0 - p_e)


def _krippendorff(table: dict[str, dict[str, str]]) -> float | None:
    """Nominal alpha on the annotators x items matrix (NaN where an annotator did not vote)."""
    import krippendorff

    raters = sorted({a for votes in table.values() for a in votes})
    code = {c: i for i, c in enumerate(CHOICES)}
    data = np.full((len(raters), len(table)), np.nan)
    for col, votes in enumerate(table.values()):
        for row, rater in enumerate(raters):
            if rater in votes:
                data[row, col] = code[votes[rater]]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    except (ValueError, ZeroDivisionError):  # e.g. only one category present
        return None
    return None if math.isnan(alpha) else float(alpha)


def _contradictions(judgements: Sequence[Judgement]) -> dict[str, int]:
    """Per annotator: disagreeing vote pairs on the same unordered response pair, plus preference 3-cycles
    within one prompt. Votes are turned into "winner > loser" on response ids (a tie keeps no edge)."""
    out = {a: 0 for a in sorted({j.annotator for j in judgements})}
    same_pair: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    edges: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for j in judgements:
        if j.pair is None:
            continue
        x, y = sorted(j.pair)
        # the choice seen from (x, y): swapped storage turns "a" into "b"
        swapped = j.pair != (x, y)
        canon = j.choice if j.choice == "tie" or not swapped else ("b" if j.choice == "a" else "a")
        same_pair[(j.annotator, j.prompt_id, x, y)].append(canon)
        if j.choice != "tie":
            winner, loser = (j.pair[0], j.pair[1]) if j.choice == "a" else (j.pair[1], j.pair[0])
            edges[(j.annotator, j.prompt_id)].add((winner, loser))
    for (annotator, *_), votes in same_pair.items():
        out[annotator] += sum(v != w for v, w in combinations(votes, 2))
    for (annotator, _), beats in edges.items():
        nodes = sorted({r for edge in beats for r in edge})
        for x, y, z in combinations(nodes, 3):  # the two orientations of a triangle are distinct cycles
            out[annotator] += ({(x, y), (y, z), (z, x)} <= beats) + ({(x, z), (z, y), (y, x)} <= beats)
    return out


def _bars(ax: Any, labels: list[str], values: list[float | None], ref: float, title: str) -> None:
    shown = [0.0 if v is None else v for v in values]
    bars = ax.bar(labels, shown, color=["lightgrey" if v is None else "tab:blue" for v in values])
    for bar, v in zip(bars, values):
        ax.annotate("n/a" if v is None else f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.axhline(ref, color="black", linewidth=0.8, linestyle="--" if ref else "-")
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=8)


def plot_stats(stats: BatchStats, path: Path) -> Path:
    """Write a PNG of agreement, bias, per-annotator gold accuracy and contradictions to `path`, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(11, 8), layout="constrained")
    FigureCanvasAgg(fig)
    (ag, bias), (gold, contra) = fig.subplots(2, 2)
    _bars(ag, ["Cohen", "Fleiss", "Krippendorff", "majority"],
          [stats.cohen_kappa, stats.fleiss_kappa, stats.krippendorff_alpha, stats.majority_agreement], 0.0,
          "agreement")
    ag.set_ylim(min(-0.1, *(v for v in (stats.cohen_kappa, stats.fleiss_kappa, stats.krippendorff_alpha)
                            if v is not None), 0.0) - 0.05, 1.1)
    _bars(bias, ["left wins", "longer wins"], [stats.position_bias, stats.length_bias], 0.5,
          "position / length bias (0.5 = none)")
    bias.set_ylim(0, 1.1)
    _bars(gold, list(stats.gold_accuracy) or ["(no gold votes)"], list(stats.gold_accuracy.values()) or [None],
          0.0, "gold accuracy per annotator")
    gold.set_ylim(0, 1.1)
    contra.bar(list(stats.contradictions) or ["(no votes)"], list(stats.contradictions.values()) or [0],
               color="tab:red")
    contra.set_title("contradictions per annotator")
    contra.tick_params(axis="x", labelsize=8, rotation=45)
    gold.tick_params(axis="x", rotation=45)
    fig.suptitle(f"{stats.votes} votes, {stats.items} items, {stats.annotators} annotators")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
