"""Fit hybrid search to a corpus: which fusion (weighted reciprocal ranks, or a weighted sum of min-max normalised
scores), which dense weight and which title boost put a relevant chunk first most often, on questions whose
relevant documents are known (the rag_index stage's python-docs questions, or a SQuAD-format file).

Each question is searched densely once and with full-text once per title boost, `fusion.candidates` deep; every
combination in conf/rag_index.yaml `evaluate.fit` is then scored on those rankings in memory, with the same
`fuse_pair` that serves queries. The best recall@1 wins (then MRR, then recall at the largest k; a tie keeps the
configured settings). The grid must hold dense weights 0 and 1, so the choice is never worse at rank 1 than
full-text alone or dense alone on these questions. A k-fold estimate (choose on k-1 folds, measure on the
held-out one) says how much of that carries over to questions the fit did not see.

    result = fit_search(retriever, questions, cfg.rag_index.evaluate.fit, ks=[1, 5, 10])
    result.search       # serve.search with the chosen values (for evaluate_retrieval)
    result.overlay()    # the chosen values as a `serve:` overlay, to paste into conf/serve.yaml or a profile
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifecycle.config import SearchConfig
from lifecycle.config.rag_index import RagFitConfig
from lifecycle.progress import progress
from lifecycle.rag.evaluate import Question, stable_order, rank_of_first_relevant
from lifecycle.rag.search import Hit, Retriever, fuse_pair

log = logging.getLogger("lifecycle.rag.fit")


@dataclass(frozen=True)
class Setting:
    title_boost: float
    method: str
    dense_weight: float
    rrf_k: int

    @classmethod
    def of(cls, search: SearchConfig) -> Setting:
        f = search.fusion
        return cls(search.title_boost, f.method, f.dense_weight, f.rrf_k)

    def apply(self, search: SearchConfig) -> SearchConfig:
        fusion = search.fusion.model_copy(update={"method": self.method, "dense_weight": self.dense_weight,
                                                  "rrf_k": self.rrf_k})
        return search.model_copy(update={"mode": "hybrid", "title_boost": self.title_boost, "fusion": fusion})

    def to_dict(self) -> dict[str, Any]:
        return {"title_boost": self.title_boost, "fusion": {"method": self.method, "dense_weight": self.dense_weight,
                                                            "rrf_k": self.rrf_k}}


def settings_grid(fit: RagFitConfig, search: SearchConfig) -> list[Setting]:
    """The configured setting first (a tie keeps it), then every combination of the fit's values."""
    grid = [Setting.of(search)]
    for boost in fit.title_boosts:
        for method in fit.methods:
            for weight in fit.dense_weights:
                for rrf_k in fit.rrf_ks if method == "rrf" else [search.fusion.rrf_k]:
                    grid.append(Setting(float(boost), method, float(weight), int(rrf_k)))
    return list(dict.fromkeys(grid))


@dataclass(frozen=True)
class Rankings:
    """Each question's dense and full-text candidates (one full-text list per title boost)."""

    dense: list[list[Hit]]
    fts: dict[float, list[list[Hit]]]


def collect_rankings(retriever: Retriever, questions: list[Question], boosts: list[float], depth: int) -> Rankings:
    vectors = retriever.embedder.embed([q.text for q in questions], desc="embed questions")
    dense = [retriever.dense(v, depth) for v in progress(list(vectors), desc="fit: dense search", logger=log)]
    fts = {b: [retriever.fts(q.text, depth, title_boost=b)
               for q in progress(questions, desc=f"fit: full-text, title boost {b:g}", logger=log)]
           for b in sorted(set(boosts))}
    return Rankings(dense, fts)


def rank_matrix(grid: list[Setting], rankings: Rankings, questions: list[Question], search: SearchConfig,
                depth: int) -> np.ndarray:
    """(settings, questions) rank of the first relevant chunk within `depth` under each setting (0: none)."""
    out = np.zeros((len(grid), len(questions)), dtype=np.int32)
    for i, setting in enumerate(progress(grid, desc="fit: score settings", logger=log)):
        fusion = setting.apply(search).fusion
        for j, question in enumerate(questions):
            hits = fuse_pair(rankings.dense[j], rankings.fts[setting.title_boost][j], depth, fusion)
            out[i, j] = rank_of_first_relevant([h.doc_id for h in hits], question.relevant) or 0
    return out


def scores(ranks: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
    """recall@k and MRR of each row of a (settings, questions) rank matrix."""
    found = ranks > 0
    out = {f"recall_at_{k}": (found & (ranks <= k)).mean(axis=-1) for k in sorted(ks)}
    out["mrr"] = np.where(found, 1.0 / np.maximum(ranks, 1), 0.0).mean(axis=-1)
    return out


def best(ranks: np.ndarray, ks: list[int]) -> int:
    """The row with the best recall@1, then MRR, then recall at the largest k; the first such row on a tie."""
    s = scores(ranks, sorted({1, *ks}))
    key = np.round(np.stack([s["recall_at_1"], s["mrr"], s[f"recall_at_{max(ks)}"]], axis=1), 12)  # (settings, 3)
    return max(range(len(key)), key=lambda i: (tuple(key[i]), -i))


def cross_validate(ranks: np.ndarray, questions: list[Question], folds: int, ks: list[int]) -> dict[str, float]:
    """recall@k / MRR on held-out folds: each fold scored with the setting chosen on the other folds."""
    order = sorted(range(len(questions)), key=lambda j: stable_order(questions[j].text, 0))
    fold_of = np.empty(len(questions), dtype=np.int32)
    fold_of[order] = np.arange(len(questions)) % folds
    held_out = np.zeros(len(questions), dtype=np.int32)
    for fold in range(folds):
        train, test = fold_of != fold, fold_of == fold
        if train.any() and test.any():
            held_out[test] = ranks[best(ranks[:, train], ks), test]
    return {k: float(v[0]) for k, v in scores(held_out[None, :], ks).items()} | {"folds": float(folds)}


@dataclass(frozen=True)
class FitResult:
    chosen: Setting
    search: SearchConfig  # serve.search with the chosen values
    table: list[dict[str, Any]]  # the configured, chosen and single-retriever settings with their scores
    cross_validated: dict[str, float]
    settings_tried: int
    questions: int

    def overlay(self) -> dict[str, Any]:
        return {"serve": {"search": {"mode": "hybrid"} | self.chosen.to_dict()}}

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.overlay()["serve"]["search"], "table": self.table,
                "cross_validated": self.cross_validated, "settings_tried": self.settings_tried,
                "questions": self.questions}


def fit_search(retriever: Retriever, questions: list[Question], fit: RagFitConfig, ks: list[int]) -> FitResult:
    """The grid's best setting on `questions`, with the configured one and each retriever alone beside it."""
    search = retriever.cfg
    ks = sorted({1, *ks})
    depth = max(ks)
    grid = settings_grid(fit, search)
    rankings = collect_rankings(retriever, questions, [s.title_boost for s in grid],
                                max(depth, search.fusion.candidates))
    ranks = rank_matrix(grid, rankings, questions, search, depth)
    chosen = best(ranks, ks)
    s = scores(ranks, ks)
    boosts = sorted({g.title_boost for g in grid})
    rows = [("configured", 0), ("fitted", chosen), ("dense alone", _find(grid, grid[chosen], dense_weight=1.0))]
    rows += [(f"full-text alone, title boost {b:g}", _find(grid, grid[chosen], dense_weight=0.0, title_boost=b))
             for b in boosts]
    table = [{"setting": name, **grid[i].to_dict(), **{k: float(v[i]) for k, v in s.items()}}
             for name, i in rows if i is not None]
    result = FitResult(grid[chosen], grid[chosen].apply(search), table,
                       cross_validate(ranks, questions, fit.folds, ks), len(grid), len(questions))
    log.info("fit: %d settings on %d questions: %s (recall@1 %.3f; %d-fold held-out %.3f)", len(grid),
             len(questions), grid[chosen], s["recall_at_1"][chosen], fit.folds,
             result.cross_validated["recall_at_1"])
    return result


def _find(grid: list[Setting], prefer: Setting, **fixed: float) -> int | None:
    """The first setting with the `fixed` values (one retriever alone), of the preferred method when tried."""
    found = [i for i, s in enumerate(grid) if all(getattr(s, k) == v for k, v in fixed.items())]
    return next((i for i in found if grid[i].method == prefer.method), found[0] if found else None)
