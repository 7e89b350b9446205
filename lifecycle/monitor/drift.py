"""Drift figures of a window of served questions against the reference questions, the thresholds they cross,
the drifted questions, and the thumbs of each served version. Pure: vectors and scores come in computed (the
served index's embedding model and dense search, tasks/monitoring.py).

    figures = drift_figures(current, reference, vocabulary, low_score=0.35, novel_similarity=0.6)
    alarms = [c for c in crossings(figures, cfg.monitor.thresholds) if c["crossed"]]
    drifted = drifted_questions(current, reference, 0.35, 0.6, max_prompts=50)   # furthest first
    feedback = feedback_figures({"lifecycle-gpt/3": (up, down)}, cfg.monitor.feedback)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from lifecycle.config.monitor import BELOW, MonitorFeedbackConfig, MonitorThresholds
from lifecycle.evaluate.bootstrap import wilson
from lifecycle.monitor.reference import words


@dataclass(frozen=True)
class Sample:
    """Questions with their embeddings and the score of the best chunk dense search finds for each."""

    prompts: list[str]
    vectors: np.ndarray  # (n, dim) unit length
    best_scores: np.ndarray  # (n,) cosine similarity of each question's best chunk

    def lengths(self) -> np.ndarray:
        return np.array([len(words(p)) for p in self.prompts], dtype=np.float64)  # (n,)

    def nearest(self, other: Sample) -> np.ndarray:
        """(n,) each question's cosine similarity to its nearest question of `other`."""
        return (self.vectors @ other.vectors.T).max(axis=1)


def drift_figures(current: Sample, reference: Sample, vocabulary: set[str], low_score: float,
                  novel_similarity: float) -> dict[str, float]:
    lengths = ks_2samp(current.lengths(), reference.lengths())
    scores = ks_2samp(current.best_scores, reference.best_scores)
    seen = Counter(w for p in current.prompts for w in words(p))
    known = Counter(w for p in reference.prompts for w in words(p))
    union = sorted(seen | known)
    total = sum(seen.values())
    means = current.vectors.mean(axis=0), reference.vectors.mean(axis=0)
    cosine = float(means[0] @ means[1] / (np.linalg.norm(means[0]) * np.linalg.norm(means[1])))
    return {
        "requests": float(len(current.prompts)),
        "mean_length": float(current.lengths().mean()),
        "reference_mean_length": float(reference.lengths().mean()),
        "length_ks_statistic": float(lengths.statistic),
        "length_ks_p_value": float(lengths.pvalue),
        "oov_share": sum(n for w, n in seen.items() if w not in vocabulary) / total if total else 0.0,
        "vocabulary_js": float(jensenshannon([seen[w] for w in union], [known[w] for w in union], base=2))
        if total else 0.0,
        "embedding_distance": 1.0 - cosine,
        "novel_share": float((current.nearest(reference) < novel_similarity).mean()),
        "mean_best_score": float(current.best_scores.mean()),
        "reference_mean_best_score": float(reference.best_scores.mean()),
        "retrieval_ks_statistic": float(scores.statistic),
        "retrieval_ks_p_value": float(scores.pvalue),
        "low_score_share": float((current.best_scores < low_score).mean()),
        "reference_low_score_share": float((reference.best_scores < low_score).mean()),
    }


def crossings(figures: dict[str, float], thresholds: MonitorThresholds) -> list[dict[str, Any]]:
    """Each configured threshold with its figure: p-values cross below theirs, the other figures above."""
    rows = []
    for name, threshold in thresholds.model_dump().items():
        if threshold is not None:
            op = "<" if name in BELOW else ">"
            value = figures[name]
            rows.append({"figure": name, "value": value, "op": op, "threshold": threshold,
                         "crossed": value < threshold if op == "<" else value > threshold})
    return rows


def drifted_questions(current: Sample, reference: Sample, low_score: float, novel_similarity: float,
                      max_prompts: int) -> list[dict[str, Any]]:
    """The window's distinct questions that are new (nearest reference question below `novel_similarity`) or
    retrieve badly (best chunk below `low_score`), the furthest from the reference first."""
    nearest = current.nearest(reference)
    found: dict[str, dict[str, Any]] = {}
    for prompt, near, best in zip(current.prompts, nearest, current.best_scores):
        if prompt in found:
            found[prompt]["requests"] += 1
        elif near < novel_similarity or best < low_score:
            found[prompt] = {"prompt": prompt, "nearest_similarity": round(float(near), 4),
                             "best_score": round(float(best), 4), "requests": 1}
    ranked = sorted(found.values(), key=lambda q: (q["nearest_similarity"], q["best_score"]))
    return ranked[:max_prompts]


def feedback_figures(thumbs: dict[str, tuple[int, int]], cfg: MonitorFeedbackConfig) -> list[dict[str, Any]]:
    """Per version (up, down): its thumbs-down share with a 95% Wilson interval; degraded when it has
    `min_ratings` and the interval's lower bound is above `max_negative_share`."""
    rows = []
    for version, (up, down) in sorted(thumbs.items()):
        share = wilson(down, up + down)
        judged = up + down >= cfg.min_ratings
        rows.append({"version": version, "up": up, "down": down, "negative_share": share["estimate"],
                     "low": share["low"], "high": share["high"], "threshold": cfg.max_negative_share,
                     "judged": judged, "degraded": judged and share["low"] > cfg.max_negative_share})
    return rows
